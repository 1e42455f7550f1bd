"""Durable records: users, their auth tokens (hashes only) and calls (the call log).

`Storage` is the interface the server uses; `SqliteStorage` keeps everything in
`<data_dir>/kiosk.db`. A Redis or PostgreSQL implementation only has to provide the same coroutines.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from kiosk.protocol import CallStatus, CallType, DoorOpeningJson
from kiosk.server.clock import now_ms
from kiosk.server.models import CallRecord, User

DB_FILENAME = "kiosk.db"
Direction = Literal["incoming", "outgoing"]
_T = TypeVar("_T")


class UserExistsError(Exception):
    def __init__(self, uid: str) -> None:
        super().__init__(f"user {uid!r} already exists")
        self.uid = uid


class Storage(ABC):
    """Users, auth tokens and calls. Auth tokens are passed and kept as SHA-256 hex hashes only."""

    @abstractmethod
    async def create_user(self, user: User, token_hash: str) -> None:
        """Add a user with its first auth token; raise UserExistsError if the uid is taken."""

    @abstractmethod
    async def get_user(self, uid: str) -> User | None: ...

    @abstractmethod
    async def user_for_auth_token(self, token_hash: str) -> User | None: ...

    @abstractmethod
    async def list_users(self) -> list[User]:
        """All users ordered by uid (removed ones left out)."""

    @abstractmethod
    async def revoke_tokens(self, uid: str, new_token_hash: str | None = None) -> bool:
        """Revoke every auth token of the user, then give it `new_token_hash` if one is given.
        False if there is no such user."""

    @abstractmethod
    async def remove_user(self, uid: str) -> bool:
        """Revoke the user's tokens and take it out of the directory. Its calls stay in the other
        party's log, under its name, so the uid stays taken. False if there is no such user."""

    @abstractmethod
    async def revocations(self) -> int:
        """A count that grows with every revocation or removal, made by any process or by
        `kiosk users`: open connections are checked again whenever it changes."""

    @abstractmethod
    async def create_group(self, group: User) -> None:
        """Add a ring group (an entry callable like a user, with no auth token); UserExistsError if
        the uid is taken."""

    @abstractmethod
    async def group_members(self, uid: str) -> list[User] | None:
        """The members of ring group `uid`, ordered by uid; None if `uid` is not a group."""

    @abstractmethod
    async def set_group_member(self, group_uid: str, member_uid: str, member: bool) -> bool:
        """Add or remove a member; False if there is no such group or no such (non-group) user."""

    @abstractmethod
    async def list_groups(self) -> list[tuple[User, list[str]]]:
        """Every ring group with its members' uids, ordered by uid."""

    @abstractmethod
    async def add_call_members(self, session_id: str, uids: Collection[str]) -> None:
        """Who a ring group's call rings (they see it in their call logs)."""

    @abstractmethod
    async def call_members(self, session_id: str) -> dict[str, str | None]:
        """A ring group's call: each member rung, with how it declined (None: it did not)."""

    @abstractmethod
    async def decline_call_member(
        self, session_id: str, uid: str, status: CallStatus
    ) -> dict[str, str | None]:
        """A member declined a ring group's call (rejected or busy); the members after it."""

    @abstractmethod
    async def set_call_picture(self, session_id: str, jpeg: bytes) -> None:
        """Keep this still of the caller for the call (replacing the one before)."""

    @abstractmethod
    async def call_picture(self, session_id: str) -> tuple[bytes, int] | None:
        """The call's still and when it was taken (ms), if it has one."""

    @abstractmethod
    async def delete_pictures_before(self, at_ms: int) -> int:
        """Remove the stills of calls begun before `at_ms` (the retention); how many."""

    @abstractmethod
    async def set_door_permission(self, uid: str, allowed: bool) -> bool:
        """Whether the user may ask a door to open; False if there is no such user."""

    @abstractmethod
    async def door_permission(self, uid: str) -> bool:
        """Whether the user may ask a door to open (False for an unknown or removed user)."""

    @abstractmethod
    async def add_door_request(self, session_id: str, nonce: str, door_uid: str, by_uid: str) -> bool:
        """Record that `by_uid` asked `door_uid` to open in this session; False if this session's
        `nonce` was used before (a replayed request)."""

    @abstractmethod
    async def answer_door_request(
        self, session_id: str, nonce: str, door_uid: str, by_uid: str, opened: bool, reason: str | None
    ) -> bool:
        """Record the door's answer; False unless exactly that request is waiting for it."""

    @abstractmethod
    async def door_openings(self, session_ids: Collection[str]) -> dict[str, list[DoorOpeningJson]]:
        """The door requests of these calls, oldest first (the call log shows them)."""

    @abstractmethod
    async def create_call(self, call: CallRecord) -> None: ...

    @abstractmethod
    async def update_call(
        self,
        session_id: str,
        *,
        if_status: Collection[CallStatus] | None = None,
        status: CallStatus | None = None,
        type: CallType | None = None,
        joined_at: int | None = None,
        ended_at: int | None = None,
        duration_seconds: int | None = None,
        has_recording: bool | None = None,
        answered_by: str | None = None,
    ) -> CallRecord | None:
        """Change the given fields (None: unchanged) and return the new call.

        With `if_status`, change only if the call's status is one of those (an atomic compare-and-set,
        so two racing transitions cannot both win). None when there is no such call or the check failed.
        """

    @abstractmethod
    async def get_call(self, session_id: str) -> CallRecord | None: ...

    @abstractmethod
    async def list_calls(
        self,
        uid: str,
        *,
        type: CallType | None = None,
        status: CallStatus | None = None,
        direction: Direction | None = None,
        has_recording: bool | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> tuple[list[CallRecord], int]:
        """One page of the calls `uid` initiated or received, newest first, and the total count."""

    @abstractmethod
    async def calls_with_status(self, statuses: Collection[CallStatus]) -> list[CallRecord]:
        """Every call in one of these statuses (used to close calls a previous run left open)."""

    @abstractmethod
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    avatar TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_tokens (
    token_hash TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES users(uid) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_uid TEXT NOT NULL REFERENCES users(uid),
    member_uid TEXT NOT NULL REFERENCES users(uid),
    PRIMARY KEY (group_uid, member_uid)
);
CREATE TABLE IF NOT EXISTS call_members (
    session_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    declined TEXT,
    PRIMARY KEY (session_id, uid)
);
CREATE INDEX IF NOT EXISTS call_members_by_uid ON call_members(uid);
CREATE TABLE IF NOT EXISTS call_pictures (
    session_id TEXT PRIMARY KEY,
    jpeg BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS door_requests (
    session_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    door_uid TEXT NOT NULL,
    by_uid TEXT NOT NULL,
    asked_at INTEGER NOT NULL,
    answered_at INTEGER,
    opened INTEGER,
    reason TEXT,
    PRIMARY KEY (session_id, nonce)
);
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    initiator_uid TEXT NOT NULL REFERENCES users(uid),
    receiver_uid TEXT NOT NULL REFERENCES users(uid),
    initiated_at INTEGER NOT NULL,
    joined_at INTEGER,
    ended_at INTEGER,
    duration_seconds INTEGER NOT NULL DEFAULT 0,
    has_recording INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_by_initiator ON calls(initiator_uid, initiated_at);
CREATE INDEX IF NOT EXISTS calls_by_receiver ON calls(receiver_uid, initiated_at);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls(status);
"""

_CALL_SELECT = """
SELECT c.session_id, c.type, c.status, c.initiated_at, c.joined_at, c.ended_at, c.duration_seconds,
       c.has_recording, i.uid, i.name, i.avatar, r.uid, r.name, r.avatar, r.is_group, a.uid, a.name, a.avatar,
       EXISTS (SELECT 1 FROM call_pictures p WHERE p.session_id = c.session_id)
FROM calls c JOIN users i ON i.uid = c.initiator_uid JOIN users r ON r.uid = c.receiver_uid
LEFT JOIN users a ON a.uid = c.answered_by
"""


_UPDATABLE_COLUMNS = frozenset(
    {"status", "type", "joined_at", "ended_at", "duration_seconds", "has_recording", "answered_by"}
)


def door_opening(
    door_uid: str, by_uid: str, asked_at: int, opened: int | bool | None, reason: str | None
) -> DoorOpeningJson:
    entry: DoorOpeningJson = {
        "door": door_uid,
        "by": by_uid,
        "at": asked_at,
        "opened": None if opened is None else bool(opened),
    }
    if reason:
        entry["reason"] = reason
    return entry


def _call_from_row(row: tuple[Any, ...]) -> CallRecord:
    return CallRecord(
        session_id=row[0],
        type=CallType(row[1]),
        status=CallStatus(row[2]),
        initiated_at=row[3],
        joined_at=row[4],
        ended_at=row[5],
        duration_seconds=row[6],
        has_recording=bool(row[7]),
        initiator=User(row[8], row[9], row[10]),
        receiver=User(row[11], row[12], row[13]),
        group=bool(row[14]),
        answered_by=User(row[15], row[16], row[17]) if row[15] is not None else None,
        has_picture=bool(row[18]),
    )


class SqliteDatabase:
    """Synchronous access to kiosk.db; `SqliteStorage` runs it on one worker thread.

    Also used directly by `kiosk users add`, which may run while a server has the same file open
    (WAL mode and a busy timeout make that safe).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_FILENAME
        self._conn: sqlite3.Connection | None = None

    def connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Token hashes and the call log are for the server's user only, whatever the umask: the
            # file is made 0600 before SQLite opens it (its -wal and -shm files take the same mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            for part in (self.path, *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm"))):
                if part.exists() and part.stat().st_mode & 0o077:
                    part.chmod(0o600)  # a database made before this
            # Autocommit; the few multi-statement writes open their own transaction.
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
            if "removed_at" not in columns:  # a database made before users could be removed
                conn.execute("ALTER TABLE users ADD COLUMN removed_at INTEGER")
            if "can_open_doors" not in columns:  # ... or before doors
                conn.execute("ALTER TABLE users ADD COLUMN can_open_doors INTEGER NOT NULL DEFAULT 0")
            if "is_group" not in columns:  # ... or before ring groups
                conn.execute("ALTER TABLE users ADD COLUMN is_group INTEGER NOT NULL DEFAULT 0")
            if "answered_by" not in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}:
                conn.execute("ALTER TABLE calls ADD COLUMN answered_by TEXT")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def create_user(self, user: User, token_hash: str) -> None:
        conn = self.connect()
        now = now_ms()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO users (uid, name, avatar, created_at) VALUES (?, ?, ?, ?)",
                (user.uid, user.name, user.avatar, now),
            )
            conn.execute(
                "INSERT INTO auth_tokens (token_hash, uid, created_at) VALUES (?, ?, ?)",
                (token_hash, user.uid, now),
            )
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            raise UserExistsError(user.uid) from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def get_user(self, uid: str) -> User | None:
        row = (
            self.connect()
            .execute("SELECT uid, name, avatar FROM users WHERE uid = ? AND removed_at IS NULL", (uid,))
            .fetchone()
        )
        return User(*row) if row else None

    def revoke_tokens(self, uid: str, new_token_hash: str | None = None, remove: bool = False) -> bool:
        conn = self.connect()
        now = now_ms()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if (
                conn.execute("SELECT 1 FROM users WHERE uid = ? AND removed_at IS NULL", (uid,)).fetchone()
                is None
            ):
                conn.execute("ROLLBACK")
                return False
            conn.execute("DELETE FROM auth_tokens WHERE uid = ?", (uid,))
            if new_token_hash is not None:
                conn.execute(
                    "INSERT INTO auth_tokens (token_hash, uid, created_at) VALUES (?, ?, ?)",
                    (new_token_hash, uid, now),
                )
            if remove:
                conn.execute("UPDATE users SET removed_at = ? WHERE uid = ?", (now, uid))
            conn.execute("INSERT INTO revocations (uid, at) VALUES (?, ?)", (uid, now))
            conn.execute("COMMIT")
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def revocations(self) -> int:
        row = self.connect().execute("SELECT COALESCE(MAX(id), 0) FROM revocations").fetchone()
        return int(row[0])

    def create_group(self, group: User) -> None:
        try:
            self.connect().execute(
                "INSERT INTO users (uid, name, avatar, created_at, is_group) VALUES (?, ?, ?, ?, 1)",
                (group.uid, group.name, group.avatar, now_ms()),
            )
        except sqlite3.IntegrityError:
            raise UserExistsError(group.uid) from None

    def _is_group(self, uid: str) -> bool:
        row = (
            self.connect()
            .execute("SELECT is_group FROM users WHERE uid = ? AND removed_at IS NULL", (uid,))
            .fetchone()
        )
        return bool(row and row[0])

    def group_members(self, uid: str) -> list[User] | None:
        if not self._is_group(uid):
            return None
        rows = (
            self.connect()
            .execute(
                "SELECT u.uid, u.name, u.avatar FROM group_members g JOIN users u ON u.uid = g.member_uid "
                "WHERE g.group_uid = ? AND u.removed_at IS NULL ORDER BY u.uid",
                (uid,),
            )
            .fetchall()
        )
        return [User(*row) for row in rows]

    def set_group_member(self, group_uid: str, member_uid: str, member: bool) -> bool:
        user = self.get_user(member_uid)
        if not self._is_group(group_uid) or user is None or self._is_group(member_uid):
            return False
        if member:
            self.connect().execute(
                "INSERT OR IGNORE INTO group_members (group_uid, member_uid) VALUES (?, ?)",
                (group_uid, member_uid),
            )
        else:
            self.connect().execute(
                "DELETE FROM group_members WHERE group_uid = ? AND member_uid = ?", (group_uid, member_uid)
            )
        return True

    def list_groups(self) -> list[tuple[User, list[str]]]:
        groups = (
            self.connect()
            .execute(
                "SELECT uid, name, avatar FROM users WHERE is_group = 1 AND removed_at IS NULL ORDER BY uid"
            )
            .fetchall()
        )
        return [(User(*row), [m.uid for m in self.group_members(row[0]) or []]) for row in groups]

    def add_call_members(self, session_id: str, uids: list[str]) -> None:
        self.connect().executemany(
            "INSERT OR IGNORE INTO call_members (session_id, uid) VALUES (?, ?)",
            [(session_id, u) for u in uids],
        )

    def call_members(self, session_id: str) -> dict[str, str | None]:
        rows = (
            self.connect()
            .execute(
                "SELECT uid, declined FROM call_members WHERE session_id = ? ORDER BY uid", (session_id,)
            )
            .fetchall()
        )
        return {row[0]: row[1] for row in rows}

    def decline_call_member(self, session_id: str, uid: str, status: str) -> dict[str, str | None]:
        self.connect().execute(
            "UPDATE call_members SET declined = ? WHERE session_id = ? AND uid = ?", (status, session_id, uid)
        )
        return self.call_members(session_id)

    def set_call_picture(self, session_id: str, jpeg: bytes) -> None:
        self.connect().execute(
            "INSERT INTO call_pictures (session_id, jpeg, at) VALUES (?, ?, ?) "
            "ON CONFLICT(session_id) DO UPDATE SET jpeg = excluded.jpeg, at = excluded.at",
            (session_id, jpeg, now_ms()),
        )

    def call_picture(self, session_id: str) -> tuple[bytes, int] | None:
        row = (
            self.connect()
            .execute("SELECT jpeg, at FROM call_pictures WHERE session_id = ?", (session_id,))
            .fetchone()
        )
        return (bytes(row[0]), int(row[1])) if row else None

    def delete_pictures_before(self, at_ms: int) -> int:
        cursor = self.connect().execute(
            "DELETE FROM call_pictures WHERE session_id IN (SELECT session_id FROM calls WHERE initiated_at < ?)",
            (at_ms,),
        )
        return cursor.rowcount

    def set_door_permission(self, uid: str, allowed: bool) -> bool:
        cursor = self.connect().execute(
            "UPDATE users SET can_open_doors = ? WHERE uid = ? AND removed_at IS NULL", (int(allowed), uid)
        )
        return cursor.rowcount == 1

    def door_permission(self, uid: str) -> bool:
        row = (
            self.connect()
            .execute("SELECT can_open_doors FROM users WHERE uid = ? AND removed_at IS NULL", (uid,))
            .fetchone()
        )
        return bool(row and row[0])

    def add_door_request(self, session_id: str, nonce: str, door_uid: str, by_uid: str) -> bool:
        try:
            self.connect().execute(
                "INSERT INTO door_requests (session_id, nonce, door_uid, by_uid, asked_at) VALUES (?, ?, ?, ?, ?)",
                (session_id, nonce, door_uid, by_uid, now_ms()),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def answer_door_request(
        self, session_id: str, nonce: str, door_uid: str, by_uid: str, opened: bool, reason: str | None
    ) -> bool:
        cursor = self.connect().execute(
            "UPDATE door_requests SET answered_at = ?, opened = ?, reason = ? WHERE session_id = ? AND nonce = ? "
            "AND door_uid = ? AND by_uid = ? AND answered_at IS NULL",
            (now_ms(), int(opened), reason, session_id, nonce, door_uid, by_uid),
        )
        return cursor.rowcount == 1

    def door_openings(self, session_ids: list[str]) -> dict[str, list[DoorOpeningJson]]:
        found: dict[str, list[DoorOpeningJson]] = {}
        for start in range(0, len(session_ids), 500):  # SQLite's limit on bound parameters
            chunk = session_ids[start : start + 500]
            rows = (
                self.connect()
                .execute(
                    "SELECT session_id, door_uid, by_uid, asked_at, opened, reason FROM door_requests "
                    f"WHERE session_id IN ({','.join('?' * len(chunk))}) ORDER BY asked_at, rowid",
                    chunk,
                )
                .fetchall()
            )
            for row in rows:
                found.setdefault(row[0], []).append(door_opening(row[1], row[2], row[3], row[4], row[5]))
        return found

    def user_for_auth_token(self, token_hash: str) -> User | None:
        """The owner of the token with this SHA-256 hash.

        The lookup is by hash: its timing can tell at most how a guess's hash compares with stored
        hashes, which does not help to find a token (that takes a SHA-256 preimage). The match itself
        is then confirmed in constant time."""
        row = (
            self.connect()
            .execute(
                "SELECT t.token_hash, u.uid, u.name, u.avatar FROM auth_tokens t JOIN users u ON u.uid = t.uid "
                "WHERE t.token_hash = ?",
                (token_hash,),
            )
            .fetchone()
        )
        if row is None or not hmac.compare_digest(str(row[0]).encode(), token_hash.encode()):
            return None
        return User(*row[1:])

    def list_users(self) -> list[User]:
        rows = (
            self.connect()
            .execute(
                "SELECT uid, name, avatar FROM users WHERE removed_at IS NULL AND is_group = 0 ORDER BY uid"
            )
            .fetchall()
        )
        return [User(*row) for row in rows]

    def create_call(self, call: CallRecord) -> None:
        self.connect().execute(
            "INSERT INTO calls (session_id, type, status, initiator_uid, receiver_uid, initiated_at, "
            "joined_at, ended_at, duration_seconds, has_recording) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.session_id,
                str(call.type),
                str(call.status),
                call.initiator.uid,
                call.receiver.uid,
                call.initiated_at,
                call.joined_at,
                call.ended_at,
                call.duration_seconds,
                int(call.has_recording),
            ),
        )

    def get_call(self, session_id: str) -> CallRecord | None:
        row = self.connect().execute(_CALL_SELECT + " WHERE c.session_id = ?", (session_id,)).fetchone()
        return _call_from_row(row) if row else None

    def update_call(
        self, session_id: str, if_status: Collection[CallStatus] | None, changes: dict[str, Any]
    ) -> CallRecord | None:
        unknown = set(changes) - _UPDATABLE_COLUMNS
        if unknown:  # column names go into the SQL text, so only known ones
            raise ValueError(f"cannot update {sorted(unknown)}")
        conn = self.connect()
        sets = ", ".join(f"{column} = ?" for column in changes) or "session_id = session_id"
        sql = f"UPDATE calls SET {sets} WHERE session_id = ?"
        params: list[Any] = [*changes.values(), session_id]
        if if_status is not None:
            statuses = [str(s) for s in if_status]
            if not statuses:
                return None
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params += statuses
        try:
            conn.execute("BEGIN IMMEDIATE")
            updated = conn.execute(sql, params).rowcount
            call = self.get_call(session_id) if updated else None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return call

    def list_calls(
        self,
        uid: str,
        type: CallType | None,
        status: CallStatus | None,
        direction: Direction | None,
        has_recording: bool | None,
        page: int,
        per_page: int,
    ) -> tuple[list[CallRecord], int]:
        params: list[str | int]
        # A ring group's call is in the log of every member it rang (an incoming call for them).
        rung = "c.session_id IN (SELECT session_id FROM call_members WHERE uid = ?)"
        if direction == "outgoing":
            where, params = ["c.initiator_uid = ?"], [uid]
        elif direction == "incoming":
            where, params = [f"(c.receiver_uid = ? OR {rung})"], [uid, uid]
        else:
            where, params = [f"(c.initiator_uid = ? OR c.receiver_uid = ? OR {rung})"], [uid, uid, uid]
        if type is not None:
            where.append("c.type = ?")
            params.append(str(type))
        if status is not None:
            where.append("c.status = ?")
            params.append(str(status))
        if has_recording is not None:
            where.append("c.has_recording = ?")
            params.append(int(has_recording))
        clause = " WHERE " + " AND ".join(where)
        conn = self.connect()
        total = conn.execute("SELECT COUNT(*) FROM calls c" + clause, params).fetchone()[0]
        rows = conn.execute(
            _CALL_SELECT + clause + " ORDER BY c.initiated_at DESC, c.rowid DESC LIMIT ? OFFSET ?",
            [*params, per_page, (page - 1) * per_page],
        ).fetchall()
        return [_call_from_row(row) for row in rows], total

    def calls_with_status(self, statuses: Collection[CallStatus]) -> list[CallRecord]:
        names = [str(s) for s in statuses]
        if not names:
            return []
        rows = (
            self.connect()
            .execute(_CALL_SELECT + f" WHERE c.status IN ({', '.join('?' * len(names))})", names)
            .fetchall()
        )
        return [_call_from_row(row) for row in rows]


class StorageClosedError(RuntimeError):
    """A query after the storage was closed (a connection's last work at server shutdown)."""


class SqliteStorage(Storage):
    """`Storage` on SQLite. Every query runs on one dedicated thread, so the event loop never waits on
    disk and the sqlite connection is only ever used from the thread that opened it."""

    def __init__(self, data_dir: Path) -> None:
        self._db = SqliteDatabase(Path(data_dir))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiosk-sqlite")
        self._closed = False

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise StorageClosedError("storage is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def create_user(self, user: User, token_hash: str) -> None:
        await self._run(self._db.create_user, user, token_hash)

    async def get_user(self, uid: str) -> User | None:
        return await self._run(self._db.get_user, uid)

    async def user_for_auth_token(self, token_hash: str) -> User | None:
        return await self._run(self._db.user_for_auth_token, token_hash)

    async def list_users(self) -> list[User]:
        return await self._run(self._db.list_users)

    async def revoke_tokens(self, uid: str, new_token_hash: str | None = None) -> bool:
        return await self._run(self._db.revoke_tokens, uid, new_token_hash)

    async def remove_user(self, uid: str) -> bool:
        return await self._run(self._db.revoke_tokens, uid, None, True)

    async def revocations(self) -> int:
        return await self._run(self._db.revocations)

    async def create_group(self, group: User) -> None:
        await self._run(self._db.create_group, group)

    async def group_members(self, uid: str) -> list[User] | None:
        return await self._run(self._db.group_members, uid)

    async def set_group_member(self, group_uid: str, member_uid: str, member: bool) -> bool:
        return await self._run(self._db.set_group_member, group_uid, member_uid, member)

    async def list_groups(self) -> list[tuple[User, list[str]]]:
        return await self._run(self._db.list_groups)

    async def add_call_members(self, session_id: str, uids: Collection[str]) -> None:
        await self._run(self._db.add_call_members, session_id, list(uids))

    async def call_members(self, session_id: str) -> dict[str, str | None]:
        return await self._run(self._db.call_members, session_id)

    async def decline_call_member(
        self, session_id: str, uid: str, status: CallStatus
    ) -> dict[str, str | None]:
        return await self._run(self._db.decline_call_member, session_id, uid, str(status))

    async def set_call_picture(self, session_id: str, jpeg: bytes) -> None:
        await self._run(self._db.set_call_picture, session_id, jpeg)

    async def call_picture(self, session_id: str) -> tuple[bytes, int] | None:
        return await self._run(self._db.call_picture, session_id)

    async def delete_pictures_before(self, at_ms: int) -> int:
        return await self._run(self._db.delete_pictures_before, at_ms)

    async def set_door_permission(self, uid: str, allowed: bool) -> bool:
        return await self._run(self._db.set_door_permission, uid, allowed)

    async def door_permission(self, uid: str) -> bool:
        return await self._run(self._db.door_permission, uid)

    async def add_door_request(self, session_id: str, nonce: str, door_uid: str, by_uid: str) -> bool:
        return await self._run(self._db.add_door_request, session_id, nonce, door_uid, by_uid)

    async def answer_door_request(
        self, session_id: str, nonce: str, door_uid: str, by_uid: str, opened: bool, reason: str | None
    ) -> bool:
        return await self._run(
            self._db.answer_door_request, session_id, nonce, door_uid, by_uid, opened, reason
        )

    async def door_openings(self, session_ids: Collection[str]) -> dict[str, list[DoorOpeningJson]]:
        return await self._run(self._db.door_openings, list(session_ids))

    async def create_call(self, call: CallRecord) -> None:
        await self._run(self._db.create_call, call)

    async def update_call(
        self,
        session_id: str,
        *,
        if_status: Collection[CallStatus] | None = None,
        status: CallStatus | None = None,
        type: CallType | None = None,
        joined_at: int | None = None,
        ended_at: int | None = None,
        duration_seconds: int | None = None,
        has_recording: bool | None = None,
        answered_by: str | None = None,
    ) -> CallRecord | None:
        columns = {
            "status": None if status is None else str(status),
            "type": None if type is None else str(type),
            "joined_at": joined_at,
            "ended_at": ended_at,
            "duration_seconds": duration_seconds,
            "has_recording": None if has_recording is None else int(has_recording),
            "answered_by": answered_by,
        }
        changes = {column: value for column, value in columns.items() if value is not None}
        return await self._run(self._db.update_call, session_id, if_status, changes)

    async def get_call(self, session_id: str) -> CallRecord | None:
        return await self._run(self._db.get_call, session_id)

    async def list_calls(
        self,
        uid: str,
        *,
        type: CallType | None = None,
        status: CallStatus | None = None,
        direction: Direction | None = None,
        has_recording: bool | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> tuple[list[CallRecord], int]:
        return await self._run(
            self._db.list_calls, uid, type, status, direction, has_recording, page, per_page
        )

    async def calls_with_status(self, statuses: Collection[CallStatus]) -> list[CallRecord]:
        return await self._run(self._db.calls_with_status, list(statuses))

    async def close(self) -> None:
        if self._closed:
            return
        # Close on the worker thread (sqlite connections belong to their thread), then stop it.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._closed = True
        self._executor.shutdown(wait=False)
