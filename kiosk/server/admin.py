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

__all__ = ["UserExistsError", "add_user", "list_users"]


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
