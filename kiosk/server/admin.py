"""User administration straight on the data directory's database, with or without a running server.

Synchronous (it is what `kiosk users` runs); from async code, call it through `asyncio.to_thread`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiosk.protocol import MAX_AVATAR_LENGTH, MAX_NAME_LENGTH, ProtocolError, UserJson
from kiosk.server.models import User
from kiosk.server.storage import SqliteDatabase, UserExistsError
from kiosk.server.tokens import hash_secret, new_secret
from kiosk.server.validation import optional_text, require_id, require_text

__all__ = [
    "UnknownUserError",
    "UserExistsError",
    "add_user",
    "list_users",
    "remove_user",
    "revoke_tokens",
    "set_door_permission",
]


class UnknownUserError(LookupError):
    def __init__(self, uid: str) -> None:
        super().__init__(f"no user {uid!r}")


def add_user(data_dir: Path, uid: str, name: str, avatar: str | None = None) -> dict[str, Any]:
    """Create a user; returns {"uid", "name", "avatar", "authToken"} (the token is shown only here).

    Raises UserExistsError if the uid is taken, ValueError if a field is invalid.
    """
    fields = {"uid": uid, "name": name, "avatar": avatar}
    try:
        user = User(
            uid=require_id(fields, "uid"),
            name=require_text(fields, "name", MAX_NAME_LENGTH),
            avatar=optional_text(fields, "avatar", MAX_AVATAR_LENGTH),
        )
    except ProtocolError as exc:
        raise ValueError(exc.message) from None
    token = new_secret()
    db = SqliteDatabase(Path(data_dir))
    try:
        db.create_user(user, hash_secret(token))
    finally:
        db.close()
    return {**user.to_json(), "authToken": token}


def list_users(data_dir: Path) -> list[UserJson]:
    """All users ordered by uid, as {"uid", "name", "avatar"}."""
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        return []  # listing must not create a database in a mistyped directory
    try:
        return [user.to_json() for user in db.list_users()]
    finally:
        db.close()


def revoke_tokens(data_dir: Path, uid: str, *, new_token: bool = False) -> str | None:
    """Revoke every auth token of the user; with `new_token`, make one and return it. A running
    server closes the user's open connections within a few seconds (kiosk.server.revocation).

    Raises UnknownUserError if there is no such user."""
    token = new_secret() if new_token else None
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        raise UnknownUserError(uid)  # must not create a database in a mistyped directory
    try:
        if not db.revoke_tokens(uid, None if token is None else hash_secret(token)):
            raise UnknownUserError(uid)
    finally:
        db.close()
    return token


def remove_user(data_dir: Path, uid: str) -> None:
    """Remove the user (its tokens revoked, its calls kept in the other party's log).

    Raises UnknownUserError if there is no such user."""
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        raise UnknownUserError(uid)
    try:
        if not db.revoke_tokens(uid, None, True):
            raise UnknownUserError(uid)
    finally:
        db.close()


def set_door_permission(data_dir: Path, uid: str, allowed: bool) -> None:
    """Let the user ask a door kiosk in its call to open (or not); counts at its next request.

    Raises UnknownUserError if there is no such user."""
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        raise UnknownUserError(uid)
    try:
        if not db.set_door_permission(uid, allowed):
            raise UnknownUserError(uid)
    finally:
        db.close()


def add_group(data_dir: Path, uid: str, name: str) -> None:
    """Create a ring group (called like a user; it rings every member). UserExistsError if the uid is
    taken, ValueError if a field is invalid."""
    fields = {"uid": uid, "name": name}
    try:
        group = User(
            uid=require_id(fields, "uid"), name=require_text(fields, "name", MAX_NAME_LENGTH), avatar=None
        )
    except ProtocolError as exc:
        raise ValueError(exc.message) from None
    db = SqliteDatabase(Path(data_dir))
    try:
        db.create_group(group)
    finally:
        db.close()


def list_groups(data_dir: Path) -> list[tuple[UserJson, list[str]]]:
    """Every ring group with its members' uids."""
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        return []
    try:
        return [(group.to_json(), members) for group, members in db.list_groups()]
    finally:
        db.close()


def set_group_member(data_dir: Path, group_uid: str, member_uid: str, member: bool) -> None:
    """Add `member_uid` to ring group `group_uid` (or take it out). UnknownUserError if either is
    unknown (or the member is itself a group)."""
    db = SqliteDatabase(Path(data_dir))
    if not db.path.exists():
        raise UnknownUserError(group_uid)
    try:
        if not db.set_group_member(group_uid, member_uid, member):
            raise UnknownUserError(group_uid if db.group_members(group_uid) is None else member_uid)
    finally:
        db.close()
