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

from kiosk.protocol import CallStatus, CallType
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
       c.has_recording, i.uid, i.name, i.avatar, r.uid, r.name, r.avatar
FROM calls c JOIN users i ON i.uid = c.initiator_uid JOIN users r ON r.uid = c.receiver_uid
"""


_UPDATABLE_COLUMNS = frozenset(
    {"status", "type", "joined_at", "ended_at", "duration_seconds", "has_recording"}
)


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
            .execute("SELECT uid, name, avatar FROM users WHERE removed_at IS NULL ORDER BY uid")
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
        if direction == "outgoing":
            where, params = ["c.initiator_uid = ?"], [uid]
        elif direction == "incoming":
            where, params = ["c.receiver_uid = ?"], [uid]
        else:
            where, params = ["(c.initiator_uid = ? OR c.receiver_uid = ?)"], [uid, uid]
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
    ) -> CallRecord | None:
        columns = {
            "status": None if status is None else str(status),
            "type": None if type is None else str(type),
            "joined_at": joined_at,
            "ended_at": ended_at,
            "duration_seconds": duration_seconds,
            "has_recording": None if has_recording is None else int(has_recording),
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
