"""`Storage` on PostgreSQL, for server processes on several hosts (`kiosk server --database URL`).

The same records and behaviour as `SqliteStorage` (kiosk/server/storage.py), plus the secrets every
process must share, which a lone host keeps as files in its data directory: the key that signs call
tokens and the admin key's hash (table `server_secrets`). The first process to start creates them;
the others read them, so a call token issued on one host is accepted on another.

The schema is created on start when missing, under a transaction-scoped advisory lock, so processes
starting at the same moment neither fail nor create it twice.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from kiosk.protocol import CallStatus, CallType, DoorOpeningJson
from kiosk.server.clock import now_ms
from kiosk.server.models import CallRecord, User
from kiosk.server.storage import Direction, Storage, UserExistsError, door_opening
from kiosk.server.tokens import ADMIN_KEY_ENV, AdminKey, AdminKeySetup, hash_secret, new_secret

SCHEMA_VERSION = 1
# pg_advisory_xact_lock key held while the schema is checked or created ("kiosk" in ASCII).
_SCHEMA_LOCK = 0x6B696F736B
_CONNECT_TIMEOUT = 10.0
_SIGNING_KEY = "signing_key"
_ADMIN_KEY_HASH = "admin_key_sha256"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kiosk_schema (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    avatar TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_tokens (
    token_hash TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES users(uid) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    session_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    initiator_uid TEXT NOT NULL REFERENCES users(uid),
    receiver_uid TEXT NOT NULL REFERENCES users(uid),
    initiated_at BIGINT NOT NULL,
    joined_at BIGINT,
    ended_at BIGINT,
    duration_seconds BIGINT NOT NULL DEFAULT 0,
    has_recording BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS calls_by_initiator ON calls(initiator_uid, initiated_at);
CREATE INDEX IF NOT EXISTS calls_by_receiver ON calls(receiver_uid, initiated_at);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls(status);
ALTER TABLE users ADD COLUMN IF NOT EXISTS removed_at BIGINT;
ALTER TABLE users ADD COLUMN IF NOT EXISTS can_open_doors BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN IF NOT EXISTS is_group BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS answered_by TEXT;
CREATE TABLE IF NOT EXISTS call_pictures (
    session_id TEXT PRIMARY KEY,
    jpeg BYTEA NOT NULL,
    at BIGINT NOT NULL
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
CREATE TABLE IF NOT EXISTS door_requests (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    session_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    door_uid TEXT NOT NULL,
    by_uid TEXT NOT NULL,
    asked_at BIGINT NOT NULL,
    answered_at BIGINT,
    opened BOOLEAN,
    reason TEXT,
    PRIMARY KEY (session_id, nonce)
);
CREATE TABLE IF NOT EXISTS revocations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS server_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
"""

_CALL_COLUMNS = """c.session_id, c.type, c.status, c.initiated_at, c.joined_at, c.ended_at, c.duration_seconds,
       c.has_recording, i.uid, i.name, i.avatar, r.uid, r.name, r.avatar, r.is_group, a.uid, a.name, a.avatar,
       EXISTS (SELECT 1 FROM call_pictures p WHERE p.session_id = c.session_id)"""
_CALL_JOINS = (
    "JOIN users i ON i.uid = c.initiator_uid JOIN users r ON r.uid = c.receiver_uid "
    "LEFT JOIN users a ON a.uid = c.answered_by"
)
_CALL_SELECT = f"SELECT {_CALL_COLUMNS} FROM calls c {_CALL_JOINS}"

_UPDATABLE_COLUMNS = (
    "status",
    "type",
    "joined_at",
    "ended_at",
    "duration_seconds",
    "has_recording",
    "answered_by",
)


class DatabaseUnavailableError(Exception):
    """PostgreSQL cannot be reached or used at start; the message is one line, without the password."""


def redact_url(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "the configured URL"


def _storable(text: str) -> bool:
    """False for a string PostgreSQL's TEXT cannot hold (NUL, lone surrogates); no row has such a key."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _call_from_row(row: Any) -> CallRecord:
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


class PostgresStorage(Storage):
    """`Storage` on PostgreSQL through an asyncpg connection pool. Create it with `await connect(url)`."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool: asyncpg.Pool | None = pool
        self.url = redact_url(url)

    @classmethod
    async def connect(cls, url: str, *, max_connections: int = 10) -> PostgresStorage:
        """Open the pool and create the schema if missing; DatabaseUnavailableError if that fails."""
        where = redact_url(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_connections, timeout=_CONNECT_TIMEOUT, command_timeout=30
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise DatabaseUnavailableError(f"cannot reach PostgreSQL at {where}: {_reason(exc)}") from None
        storage = cls(pool, url)
        try:
            await storage._create_schema()
        except DatabaseUnavailableError:
            await pool.close()
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await pool.close()
            raise DatabaseUnavailableError(f"cannot use PostgreSQL at {where}: {_reason(exc)}") from None
        except BaseException:
            pool.terminate()
            raise
        return storage

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("storage is closed")
        return self._pool

    async def _create_schema(self) -> None:
        async with self._get_pool().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(_SCHEMA)
            version = await conn.fetchval("SELECT max(version) FROM kiosk_schema")
            if version is None:
                await conn.execute("INSERT INTO kiosk_schema (version) VALUES ($1)", SCHEMA_VERSION)
            elif version > SCHEMA_VERSION:
                raise DatabaseUnavailableError(
                    f"the database at {self.url} has schema version {version}, newer than this "
                    f"kiosk server knows ({SCHEMA_VERSION}); upgrade the server"
                )

    # --- the secrets every process shares ---

    async def _shared_secret(self, name: str, candidate: bytes) -> tuple[bytes, bool]:
        """The stored value of `name`, storing `candidate` first if there is none; True if this call did."""
        async with self._get_pool().acquire() as conn:
            inserted = await conn.fetchval(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO NOTHING RETURNING value",
                name,
                candidate,
                now_ms(),
            )
            if inserted is not None:
                return bytes(inserted), True
            stored = await conn.fetchval("SELECT value FROM server_secrets WHERE name = $1", name)
        if stored is None:  # deleted in between: try once more
            return await self._shared_secret(name, candidate)
        return bytes(stored), False

    async def signing_key(self) -> bytes:
        """The call-token signing key shared by every process, generated by the first one."""
        key, _ = await self._shared_secret(_SIGNING_KEY, secrets.token_bytes(64))
        if len(key) < 32:
            raise DatabaseUnavailableError(
                f"the signing key in {self.url} is damaged (too short); delete the row "
                f"'{_SIGNING_KEY}' of server_secrets to generate a new one"
            )
        return key

    async def admin_key(self, configured: str | None) -> AdminKeySetup:
        """Like tokens.load_admin_key, with the generated key's hash kept in the database."""
        given = configured or os.environ.get(ADMIN_KEY_ENV) or None
        if given:
            return AdminKeySetup(AdminKey(hash_secret(given)), given, generated=False)
        key = new_secret()
        stored, created = await self._shared_secret(_ADMIN_KEY_HASH, hash_secret(key).encode())
        if created:
            return AdminKeySetup(AdminKey(hash_secret(key)), key, generated=True)
        text = stored.decode("ascii", "replace").strip()
        if len(text) != 64:
            raise DatabaseUnavailableError(
                f"the admin key hash in {self.url} is damaged; delete the row '{_ADMIN_KEY_HASH}' "
                "of server_secrets to generate a new admin key"
            )
        return AdminKeySetup(AdminKey(text), None, generated=False)

    # --- Storage ---

    async def create_user(self, user: User, token_hash: str) -> None:
        now = now_ms()
        try:
            async with self._get_pool().acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO users (uid, name, avatar, created_at) VALUES ($1, $2, $3, $4)",
                    user.uid,
                    user.name,
                    user.avatar,
                    now,
                )
                await conn.execute(
                    "INSERT INTO auth_tokens (token_hash, uid, created_at) VALUES ($1, $2, $3)",
                    token_hash,
                    user.uid,
                    now,
                )
        except asyncpg.UniqueViolationError:
            raise UserExistsError(user.uid) from None

    async def get_user(self, uid: str) -> User | None:
        if not _storable(uid):
            return None
        row = await self._get_pool().fetchrow(
            "SELECT uid, name, avatar FROM users WHERE uid = $1 AND removed_at IS NULL", uid
        )
        return User(*row) if row else None

    async def revoke_tokens(
        self, uid: str, new_token_hash: str | None = None, *, remove: bool = False
    ) -> bool:
        if not _storable(uid):
            return False
        now = now_ms()
        async with self._get_pool().acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT 1 FROM users WHERE uid = $1 AND removed_at IS NULL FOR UPDATE", uid
            )
            if found is None:
                return False
            await conn.execute("DELETE FROM auth_tokens WHERE uid = $1", uid)
            if new_token_hash is not None:
                await conn.execute(
                    "INSERT INTO auth_tokens (token_hash, uid, created_at) VALUES ($1, $2, $3)",
                    new_token_hash,
                    uid,
                    now,
                )
            if remove:
                await conn.execute("UPDATE users SET removed_at = $1 WHERE uid = $2", now, uid)
            await conn.execute("INSERT INTO revocations (uid, at) VALUES ($1, $2)", uid, now)
        return True

    async def remove_user(self, uid: str) -> bool:
        return await self.revoke_tokens(uid, remove=True)

    async def set_call_picture(self, session_id: str, jpeg: bytes) -> None:
        await self._get_pool().execute(
            "INSERT INTO call_pictures (session_id, jpeg, at) VALUES ($1, $2, $3) "
            "ON CONFLICT (session_id) DO UPDATE SET jpeg = EXCLUDED.jpeg, at = EXCLUDED.at",
            session_id,
            jpeg,
            now_ms(),
        )

    async def call_picture(self, session_id: str) -> tuple[bytes, int] | None:
        if not _storable(session_id):
            return None
        row = await self._get_pool().fetchrow(
            "SELECT jpeg, at FROM call_pictures WHERE session_id = $1", session_id
        )
        return (bytes(row[0]), int(row[1])) if row else None

    async def delete_pictures_before(self, at_ms: int) -> int:
        done = await self._get_pool().execute(
            "DELETE FROM call_pictures WHERE session_id IN (SELECT session_id FROM calls WHERE initiated_at < $1)",
            at_ms,
        )
        return int(str(done).rsplit(" ", 1)[-1])

    async def set_door_permission(self, uid: str, allowed: bool) -> bool:
        if not _storable(uid):
            return False
        done = await self._get_pool().execute(
            "UPDATE users SET can_open_doors = $1 WHERE uid = $2 AND removed_at IS NULL", allowed, uid
        )
        return str(done).endswith(" 1")

    async def door_permission(self, uid: str) -> bool:
        if not _storable(uid):
            return False
        allowed = await self._get_pool().fetchval(
            "SELECT can_open_doors FROM users WHERE uid = $1 AND removed_at IS NULL", uid
        )
        return bool(allowed)

    async def add_door_request(self, session_id: str, nonce: str, door_uid: str, by_uid: str) -> bool:
        try:
            await self._get_pool().execute(
                "INSERT INTO door_requests (session_id, nonce, door_uid, by_uid, asked_at) VALUES ($1, $2, $3, $4, $5)",
                session_id,
                nonce,
                door_uid,
                by_uid,
                now_ms(),
            )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def answer_door_request(
        self, session_id: str, nonce: str, door_uid: str, by_uid: str, opened: bool, reason: str | None
    ) -> bool:
        if reason is not None and not _storable(reason):
            reason = None
        done = await self._get_pool().execute(
            "UPDATE door_requests SET answered_at = $1, opened = $2, reason = $3 WHERE session_id = $4 "
            "AND nonce = $5 AND door_uid = $6 AND by_uid = $7 AND answered_at IS NULL",
            now_ms(),
            opened,
            reason,
            session_id,
            nonce,
            door_uid,
            by_uid,
        )
        return str(done).endswith(" 1")

    async def door_openings(self, session_ids: Collection[str]) -> dict[str, list[DoorOpeningJson]]:
        rows = await self._get_pool().fetch(
            "SELECT session_id, door_uid, by_uid, asked_at, opened, reason FROM door_requests "
            "WHERE session_id = ANY($1::text[]) ORDER BY asked_at, seq",
            list(session_ids),
        )
        found: dict[str, list[DoorOpeningJson]] = {}
        for row in rows:
            found.setdefault(row[0], []).append(door_opening(row[1], row[2], row[3], row[4], row[5]))
        return found

    async def revocations(self) -> int:
        return int(await self._get_pool().fetchval("SELECT COALESCE(MAX(id), 0) FROM revocations"))

    async def user_for_auth_token(self, token_hash: str) -> User | None:
        """The owner of the token with this SHA-256 hash (looked up by hash, confirmed in constant time,
        as in SqliteDatabase.user_for_auth_token)."""
        if not _storable(token_hash):
            return None
        row = await self._get_pool().fetchrow(
            "SELECT t.token_hash, u.uid, u.name, u.avatar FROM auth_tokens t JOIN users u ON u.uid = t.uid "
            "WHERE t.token_hash = $1",
            token_hash,
        )
        if row is None or not hmac.compare_digest(str(row[0]).encode(), token_hash.encode()):
            return None
        return User(row[1], row[2], row[3])

    async def list_users(self) -> list[User]:
        # COLLATE "C": code point order, as SQLite's BINARY collation, whatever the database's locale.
        rows = await self._get_pool().fetch(
            'SELECT uid, name, avatar FROM users WHERE removed_at IS NULL AND NOT is_group ORDER BY uid COLLATE "C"'
        )
        return [User(*row) for row in rows]

    async def create_group(self, group: User) -> None:
        try:
            await self._get_pool().execute(
                "INSERT INTO users (uid, name, avatar, created_at, is_group) VALUES ($1, $2, $3, $4, TRUE)",
                group.uid,
                group.name,
                group.avatar,
                now_ms(),
            )
        except asyncpg.UniqueViolationError:
            raise UserExistsError(group.uid) from None

    async def _is_group(self, uid: str) -> bool:
        if not _storable(uid):
            return False
        found = await self._get_pool().fetchval(
            "SELECT is_group FROM users WHERE uid = $1 AND removed_at IS NULL", uid
        )
        return bool(found)

    async def group_members(self, uid: str) -> list[User] | None:
        if not await self._is_group(uid):
            return None
        rows = await self._get_pool().fetch(
            "SELECT u.uid, u.name, u.avatar FROM group_members g JOIN users u ON u.uid = g.member_uid "
            'WHERE g.group_uid = $1 AND u.removed_at IS NULL ORDER BY u.uid COLLATE "C"',
            uid,
        )
        return [User(*row) for row in rows]

    async def set_group_member(self, group_uid: str, member_uid: str, member: bool) -> bool:
        user = await self.get_user(member_uid)
        if not await self._is_group(group_uid) or user is None or await self._is_group(member_uid):
            return False
        if member:
            await self._get_pool().execute(
                "INSERT INTO group_members (group_uid, member_uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                group_uid,
                member_uid,
            )
        else:
            await self._get_pool().execute(
                "DELETE FROM group_members WHERE group_uid = $1 AND member_uid = $2", group_uid, member_uid
            )
        return True

    async def list_groups(self) -> list[tuple[User, list[str]]]:
        rows = await self._get_pool().fetch(
            'SELECT uid, name, avatar FROM users WHERE is_group AND removed_at IS NULL ORDER BY uid COLLATE "C"'
        )
        return [(User(*row), [m.uid for m in await self.group_members(row[0]) or []]) for row in rows]

    async def add_call_members(self, session_id: str, uids: Collection[str]) -> None:
        await self._get_pool().executemany(
            "INSERT INTO call_members (session_id, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(session_id, uid) for uid in uids],
        )

    async def call_members(self, session_id: str) -> dict[str, str | None]:
        if not _storable(session_id):
            return {}
        rows = await self._get_pool().fetch(
            'SELECT uid, declined FROM call_members WHERE session_id = $1 ORDER BY uid COLLATE "C"',
            session_id,
        )
        return {row[0]: row[1] for row in rows}

    async def decline_call_member(
        self, session_id: str, uid: str, status: CallStatus
    ) -> dict[str, str | None]:
        await self._get_pool().execute(
            "UPDATE call_members SET declined = $1 WHERE session_id = $2 AND uid = $3",
            str(status),
            session_id,
            uid,
        )
        return await self.call_members(session_id)

    async def create_call(self, call: CallRecord) -> None:
        await self._get_pool().execute(
            "INSERT INTO calls (session_id, type, status, initiator_uid, receiver_uid, initiated_at, "
            "joined_at, ended_at, duration_seconds, has_recording) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            call.session_id,
            str(call.type),
            str(call.status),
            call.initiator.uid,
            call.receiver.uid,
            call.initiated_at,
            call.joined_at,
            call.ended_at,
            call.duration_seconds,
            bool(call.has_recording),
        )

    async def get_call(self, session_id: str) -> CallRecord | None:
        if not _storable(session_id):
            return None
        row = await self._get_pool().fetchrow(_CALL_SELECT + " WHERE c.session_id = $1", session_id)
        return _call_from_row(row) if row else None

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
        pool = self._get_pool()
        values = {
            "status": None if status is None else str(status),
            "type": None if type is None else str(type),
            "joined_at": joined_at,
            "ended_at": ended_at,
            "duration_seconds": duration_seconds,
            "has_recording": None if has_recording is None else bool(has_recording),
            "answered_by": answered_by,
        }
        changes = {column: values[column] for column in _UPDATABLE_COLUMNS if values[column] is not None}
        if not _storable(session_id):
            return None
        params: list[Any] = [session_id, *changes.values()]
        sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=2))
        where = "session_id = $1"
        if if_status is not None:
            statuses = [str(s) for s in if_status]
            if not statuses:
                return None
            params.append(statuses)
            where += f" AND status = ANY(${len(params)}::text[])"
        # One UPDATE: a racing update of the same row waits for this one, then re-checks the WHERE
        # against the row it left, so only one of two compare-and-sets on a status can win.
        row = await pool.fetchrow(
            f"WITH c AS (UPDATE calls SET {sets or 'session_id = session_id'} WHERE {where} RETURNING *) "
            f"SELECT {_CALL_COLUMNS} FROM c {_CALL_JOINS}",
            *params,
        )
        return _call_from_row(row) if row else None

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
        pool = self._get_pool()
        if not _storable(uid):
            return [], 0
        params: list[Any] = [uid]
        # A ring group's call is in the log of every member it rang (an incoming call for them).
        rung = "c.session_id IN (SELECT session_id FROM call_members WHERE uid = $1)"
        if direction == "outgoing":
            where = ["c.initiator_uid = $1"]
        elif direction == "incoming":
            where = [f"(c.receiver_uid = $1 OR {rung})"]
        else:
            where = [f"(c.initiator_uid = $1 OR c.receiver_uid = $1 OR {rung})"]
        for column, value in (
            ("type", None if type is None else str(type)),
            ("status", None if status is None else str(status)),
            ("has_recording", has_recording),
        ):
            if value is not None:
                params.append(value)
                where.append(f"c.{column} = ${len(params)}")
        clause = " WHERE " + " AND ".join(where)
        async with pool.acquire() as conn:
            total = await conn.fetchval("SELECT COUNT(*) FROM calls c" + clause, *params)
            n = len(params)
            rows = await conn.fetch(
                _CALL_SELECT
                + clause
                + f" ORDER BY c.initiated_at DESC, c.seq DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                per_page,
                (page - 1) * per_page,
            )
        return [_call_from_row(row) for row in rows], int(total)

    async def calls_with_status(self, statuses: Collection[CallStatus]) -> list[CallRecord]:
        names = [str(s) for s in statuses]
        if not names:
            return []
        rows = await self._get_pool().fetch(
            _CALL_SELECT + " WHERE c.status = ANY($1::text[]) ORDER BY c.seq", names
        )
        return [_call_from_row(row) for row in rows]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, TimeoutError):
        text = f"no answer within {_CONNECT_TIMEOUT:g} s"
    return text[:300] or type(exc).__name__
