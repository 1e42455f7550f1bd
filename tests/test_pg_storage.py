"""Storage behaviour, the same for SqliteStorage and PostgresStorage (against a private PostgreSQL
started from Debian's binaries), what only PostgreSQL has (shared secrets, concurrent schema creation,
clear errors), and two `kiosk server --redis --database` processes as if on two hosts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from test_redis_state import free_port, redis_server
from test_scale_out import ServerProcess, start_server_process

from kiosk.protocol import CallStatus, CallType
from kiosk.server.config import ServerConfig
from kiosk.server.models import CallRecord, User
from kiosk.server.storage import SqliteStorage, Storage, UserExistsError
from kiosk.server.storage_pg import DatabaseUnavailableError, PostgresStorage
from kiosk.server.tokens import hash_secret


def _postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl (Debian's layout)."""
    found = []
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            version = bin_dir.parent.name
            found.append((int(version) if version.isdigit() else 0, bin_dir))
    return max(found)[1] if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL on a free loopback port (socket directory and data in a temporary
    directory, trust authentication, no fsync); yields the URL of its `postgres` database."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/<version>/bin/initdb): "
            "run scripts/setup.sh --tests, which installs the postgresql package"
        )
    root = Path(tempfile.mkdtemp(prefix="kiosk-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and there is no postgres system user to run PostgreSQL as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "postgres.log"
    port = free_port()

    def run(*command: str | Path) -> None:
        done = subprocess.run(
            [*as_postgres, *map(str, command)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            extra = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}{extra}")

    try:
        run(bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N")
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=100"
        )
        run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "30", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[str]:
    with postgres_server() as url:
        yield url


async def new_database(cluster_url: str) -> str:
    """A fresh, empty database in the private cluster; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(cluster_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return cluster_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def pg_url(pg_cluster: str) -> str:
    return await new_database(pg_cluster)


OpenStorage = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStorage]:
    """Opens storage objects on one store (as separate processes would): SQLite in one data
    directory, or one PostgreSQL database."""
    opened: list[Storage] = []
    url = await new_database(request.getfixturevalue("pg_cluster")) if request.param == "postgres" else ""

    async def open_one() -> Storage:
        storage: Storage = await PostgresStorage.connect(url) if url else SqliteStorage(tmp_path / "data")
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        await storage.close()


DOOR, DESK, HALL = (
    User("door", "Front door"),
    User("desk", "Reception", "https://x/a.png"),
    User("hall", "Hall"),
)


def make_call(session_id: str, initiated_at: int, **fields: Any) -> CallRecord:
    values: dict[str, Any] = {
        "type": CallType.VIDEO,
        "status": CallStatus.INITIATED,
        "initiator": DOOR,
        "receiver": DESK,
    }
    values.update(fields)
    return CallRecord(session_id=session_id, initiated_at=initiated_at, **values)


async def with_users(storage: Storage) -> None:
    for user in (DOOR, DESK, HALL):
        await storage.create_user(user, hash_secret(f"token-{user.uid}"))


async def test_users(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    assert await storage.list_users() == [] and await storage.get_user("door") is None
    await with_users(storage)
    assert await storage.get_user("desk") == DESK  # the avatar too
    assert await storage.get_user("door") == DOOR and (await storage.get_user("door")).avatar is None  # type: ignore[union-attr]
    assert await storage.user_for_auth_token(hash_secret("token-hall")) == HALL
    assert await storage.user_for_auth_token(hash_secret("token-nobody")) is None
    with pytest.raises(UserExistsError):
        await storage.create_user(User("door", "Other"), hash_secret("another-token"))
    # The refused user left nothing behind: neither its name nor its token.
    assert await storage.get_user("door") == DOOR
    assert await storage.user_for_auth_token(hash_secret("another-token")) is None
    await storage.create_user(User("Zed", "Upper case"), hash_secret("token-zed"))
    await storage.create_user(User("a-1", "Digits"), hash_secret("token-a1"))
    assert [u.uid for u in await storage.list_users()] == ["Zed", "a-1", "desk", "door", "hall"]
    # Keys no row can have are simply not found.
    assert await storage.get_user("do\x00or") is None and await storage.get_call("x\x00") is None
    # A second storage object (another process) sees the same users.
    other = await open_storage()
    assert await other.get_user("desk") == DESK


async def test_calls_update_and_compare_and_set(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await with_users(storage)
    call = make_call("s1", 1000)
    await storage.create_call(call)
    assert await storage.get_call("s1") == call
    assert await storage.get_call("nope") is None
    assert await storage.update_call("nope", status=CallStatus.ONGOING) is None

    ongoing = await storage.update_call(
        "s1", if_status=[CallStatus.INITIATED], status=CallStatus.ONGOING, joined_at=2000
    )
    assert ongoing == make_call("s1", 1000, status=CallStatus.ONGOING, joined_at=2000)
    # The check fails: nothing changes.
    assert (
        await storage.update_call("s1", if_status=[CallStatus.INITIATED], status=CallStatus.REJECTED) is None
    )
    assert await storage.update_call("s1", if_status=[], status=CallStatus.REJECTED) is None
    assert (await storage.get_call("s1")) == ongoing
    # No field to change: the call as it is, if the check holds.
    assert await storage.update_call("s1", if_status={CallStatus.ONGOING}) == ongoing
    assert await storage.update_call("s1") == ongoing
    ended = await storage.update_call(
        "s1",
        if_status=(CallStatus.INITIATED, CallStatus.ONGOING),
        status=CallStatus.ENDED,
        type=CallType.AUDIO,
        ended_at=9000,
        duration_seconds=7,
        has_recording=True,
    )
    assert ended == make_call(
        "s1",
        1000,
        status=CallStatus.ENDED,
        type=CallType.AUDIO,
        joined_at=2000,
        ended_at=9000,
        duration_seconds=7,
        has_recording=True,
    )
    assert await storage.get_call("s1") == ended
    assert (await storage.update_call("s1", has_recording=False)).has_recording is False  # type: ignore[union-attr]

    await storage.create_call(make_call("s2", 1100, status=CallStatus.ONGOING, initiator=DESK, receiver=HALL))
    await storage.create_call(make_call("s3", 1200, status=CallStatus.UNANSWERED))
    open_ones = await storage.calls_with_status([CallStatus.INITIATED, CallStatus.ONGOING])
    assert [c.session_id for c in open_ones] == ["s2"]
    assert {
        c.session_id for c in await storage.calls_with_status({CallStatus.ENDED, CallStatus.UNANSWERED})
    } == {
        "s1",
        "s3",
    }
    assert await storage.calls_with_status([]) == []


async def test_call_log_order_filters_and_pages(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await with_users(storage)
    # Same initiated_at for s2 and s3: the one stored later comes first.
    rows = [
        make_call("s1", 1000),
        make_call("s2", 2000, type=CallType.AUDIO, status=CallStatus.ENDED, has_recording=True),
        make_call("s3", 2000, initiator=DESK, receiver=DOOR, status=CallStatus.UNANSWERED),
        make_call("s4", 3000, initiator=HALL, receiver=DESK, status=CallStatus.ENDED),
        make_call("s5", 500, initiator=HALL, receiver=DOOR, type=CallType.AUDIO),
    ]
    for row in rows:
        await storage.create_call(row)

    async def ids(uid: str, **query: Any) -> tuple[list[str], int]:
        calls, total = await storage.list_calls(uid, **query)
        return [c.session_id for c in calls], total

    assert await ids("door") == (["s3", "s2", "s1", "s5"], 4)
    assert await ids("door", direction="outgoing") == (["s2", "s1"], 2)
    assert await ids("door", direction="incoming") == (["s3", "s5"], 2)
    assert await ids("door", type=CallType.AUDIO) == (["s2", "s5"], 2)
    assert await ids("door", status=CallStatus.ENDED) == (["s2"], 1)
    assert await ids("door", has_recording=True) == (["s2"], 1)
    assert await ids("door", has_recording=False) == (["s3", "s1", "s5"], 3)
    assert await ids("desk", direction="incoming", status=CallStatus.ENDED) == (["s4", "s2"], 2)
    assert await ids("door", page=1, per_page=3) == (["s3", "s2", "s1"], 4)
    assert await ids("door", page=2, per_page=3) == (["s5"], 4)
    assert await ids("door", page=3, per_page=3) == ([], 4)
    assert await ids("nobody") == ([], 0)
    full = (await storage.list_calls("hall", direction="outgoing"))[0]
    assert full == [rows[3], rows[4]]


async def test_racing_transitions_from_two_stores_only_one_wins(open_storage: OpenStorage) -> None:
    a, b = await open_storage(), await open_storage()
    await with_users(a)
    for n in range(25):
        await a.create_call(make_call(f"r{n}", n))

    async def race(n: int) -> None:
        sid = f"r{n}"
        # One side accepts, the other rejects (as receiver and caller might on two hosts).
        results = await asyncio.gather(
            a.update_call(sid, if_status=[CallStatus.INITIATED], status=CallStatus.ONGOING, joined_at=5),
            b.update_call(sid, if_status=[CallStatus.INITIATED], status=CallStatus.CANCELLED, ended_at=6),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        final = await a.get_call(sid)
        assert final == winners[0]
        assert (final.joined_at is None) != (final.ended_at is None)  # type: ignore[union-attr]

    await asyncio.gather(*(race(n) for n in range(25)))


async def test_revocation_doors_and_ring_groups_on_both_stores(open_storage: OpenStorage) -> None:
    storage, other = await open_storage(), await open_storage()  # as two processes would
    await with_users(storage)
    # Revocation and removal: counted where every process sees it.
    before = await other.revocations()
    assert await storage.revoke_tokens("hall", hash_secret("new-hall"))
    assert await other.revocations() > before
    assert await other.user_for_auth_token(hash_secret("token-hall")) is None
    assert await other.user_for_auth_token(hash_secret("new-hall")) == HALL
    assert not await storage.revoke_tokens("nobody")
    # Doors: a permission, each nonce once, one answer per request, the log.
    assert not await other.door_permission("desk")
    assert await storage.set_door_permission("desk", True) and await other.door_permission("desk")
    assert not await storage.set_door_permission("nobody", True)
    assert await storage.add_door_request("s1", "n" * 20, "door", "desk")
    assert not await other.add_door_request("s1", "n" * 20, "door", "desk")  # replayed
    assert not await other.answer_door_request("s1", "n" * 20, "door", "hall", True, None)  # not hall's
    assert await other.answer_door_request("s1", "n" * 20, "door", "desk", False, "held open")
    assert not await storage.answer_door_request("s1", "n" * 20, "door", "desk", True, None)  # answered
    assert await other.door_openings(["s1", "s2"]) == {
        "s1": [{"door": "door", "by": "desk", "at": ANY_INT, "opened": False, "reason": "held open"}]
    }
    # Ring groups: one namespace with users, members, who a call rang and who declined.
    reception = User("reception", "Reception")
    await storage.create_group(reception)
    with pytest.raises(UserExistsError):
        await other.create_group(User("desk", "Desk"))
    assert await other.group_members("reception") == [] and await other.group_members("desk") is None
    assert await storage.set_group_member("reception", "desk", True)
    assert await storage.set_group_member("reception", "hall", True)
    assert not await storage.set_group_member("reception", "nobody", True)
    assert not await storage.set_group_member("desk", "hall", True)  # desk is no group
    assert [u.uid for u in await other.group_members("reception") or []] == ["desk", "hall"]
    assert await other.list_groups() == [(reception, ["desk", "hall"])]
    assert "reception" not in [u.uid for u in await other.list_users()]
    await storage.create_call(make_call("g1", 1000, receiver=reception, group=True))
    await storage.add_call_members("g1", ["desk", "hall"])
    assert await other.decline_call_member("g1", "hall", CallStatus.BUSY) == {"desk": None, "hall": "busy"}
    answered = await other.update_call(
        "g1", if_status=[CallStatus.INITIATED], status=CallStatus.ONGOING, answered_by="desk"
    )
    assert answered is not None and answered.group and answered.answered_by == DESK
    calls, total = await storage.list_calls("hall", direction="incoming")
    assert total == 1 and calls[0].session_id == "g1"  # a member it rang has it in its log
    # A ringing caller's stills: the newest kept, flagged on the call, removed by the retention.
    assert await other.call_picture("g1") is None and not calls[0].has_picture
    await storage.set_call_picture("g1", b"\xff\xd8\xff first")
    await other.set_call_picture("g1", b"\xff\xd8\xff second")
    picture = await storage.call_picture("g1")
    assert picture is not None and picture[0] == b"\xff\xd8\xff second"
    assert (await other.get_call("g1")).has_picture  # type: ignore[union-attr]
    assert await storage.delete_pictures_before(500) == 0  # g1 began at 1000
    assert await other.delete_pictures_before(1001) == 1 and await storage.call_picture("g1") is None
    # A removed user is gone from the directory; its uid stays taken.
    assert await storage.remove_user("hall")
    assert await other.get_user("hall") is None and not await other.remove_user("hall")
    with pytest.raises(UserExistsError):
        await other.create_user(User("hall", "New hall"), hash_secret("x"))


class _AnyInt:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int)


ANY_INT: Any = _AnyInt()


async def test_closed_storage_refuses(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await storage.close()
    with pytest.raises(RuntimeError, match="closed"):
        await storage.get_user("door")
    await storage.close()  # again: nothing happens


# --- only PostgreSQL ---


async def test_processes_starting_together_share_schema_and_secrets(pg_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStorage.connect(pg_url, max_connections=2) for _ in range(5)))
    try:
        keys = await asyncio.gather(*(s.signing_key() for s in stores))
        assert len(set(keys)) == 1 and len(keys[0]) == 64
        saved = os.environ.pop("KIOSK_ADMIN_KEY", None)
        try:
            admins = await asyncio.gather(*(s.admin_key(None) for s in stores))
        finally:
            if saved is not None:
                os.environ["KIOSK_ADMIN_KEY"] = saved
        generated = [a for a in admins if a.generated]
        assert len(generated) == 1 and generated[0].plain
        assert all(a.checker.matches(generated[0].plain) for a in admins)
        assert not any(a.checker.matches("wrong") for a in admins)
        assert all(a.plain is None for a in admins if not a.generated)
        # A configured key is used as given; nothing is stored for it.
        given = await stores[0].admin_key("configured-admin-key-0123456789")
        assert given.plain == "configured-admin-key-0123456789" and not given.generated
        # Started again later: the same key.
        assert await stores[1].signing_key() == keys[0]
    finally:
        for s in stores:
            await s.close()


async def test_unreachable_or_unusable_database_is_one_clear_error(pg_cluster: str, pg_url: str) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as raised:
        await PostgresStorage.connect(f"postgresql://kiosk:s3cret-pw@127.0.0.1:{port}/kiosk")
    message = str(raised.value)
    assert message.startswith(f"cannot reach PostgreSQL at postgresql://kiosk:***@127.0.0.1:{port}/kiosk")
    assert "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 10
    with pytest.raises(DatabaseUnavailableError, match="cannot reach PostgreSQL at .*no_such_db"):
        await PostgresStorage.connect(pg_cluster.rsplit("/", 1)[0] + "/no_such_db")
    # A schema from a newer server is not touched.
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE TABLE kiosk_schema (version INTEGER NOT NULL); INSERT INTO kiosk_schema VALUES (99)"
        )
    finally:
        await conn.close()
    with pytest.raises(DatabaseUnavailableError, match="schema version 99"):
        await PostgresStorage.connect(pg_url)


def test_database_url_setting_and_cli_errors(tmp_path: Path) -> None:
    assert ServerConfig(data_dir=tmp_path).database_url is None
    assert ServerConfig(data_dir=tmp_path, database_url="postgres://h/db").database_url == "postgres://h/db"
    with pytest.raises(ValueError, match=r"must start with postgresql:// or postgres:// \(got mysql://...\)"):
        ServerConfig(data_dir=tmp_path, database_url="mysql://u:secret@h/db")
    assert "secret" not in repr(ServerConfig(data_dir=tmp_path, database_url="postgresql://u:secret@h/db"))

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kiosk.cli", "server", "--port", "0", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "KIOSK_ADMIN_KEY": "test-admin-key-0123456789", **(env or {})},
        )

    bad = run("--database", "mysql://u:secret@h/db")
    assert (
        bad.returncode == 2 and "must start with postgresql://" in bad.stderr and "secret" not in bad.stderr
    )
    url = f"postgresql://kiosk:secret@127.0.0.1:{free_port()}/kiosk"
    for unreachable in (run("--database", url), run(env={"KIOSK_DATABASE_URL": url})):
        assert unreachable.returncode == 2, unreachable.stderr
        lines = [line for line in unreachable.stderr.splitlines() if " INFO " not in line]  # log lines
        assert len(lines) == 1 and lines[0].startswith("kiosk server: cannot reach PostgreSQL at "), lines
        assert "secret" not in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert not (tmp_path / "signing.key").exists()  # nothing was made in the data directory


# --- two server processes, as if on two hosts ---


async def start_server(name: str, tmp: Path, redis_url: str, database_url: str) -> ServerProcess:
    """A server process as on a host of its own: its own data dir, no admin key given, the database shared."""
    env = {k: v for k, v in os.environ.items() if k not in ("KIOSK_ADMIN_KEY", "KIOSK_DATABASE_URL")}
    return await start_server_process(
        name, tmp / f"host-{name}", redis_url, tmp, args=(), env={**env, "KIOSK_DATABASE_URL": database_url}
    )


async def request(method: str, url: str, *, token: str = "", admin: str = "", body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {"X-Admin-Key": admin}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, json=body, headers=headers) as response:
            assert response.status in (200, 201), await response.text()
            return await response.json()


async def ws_request(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json({**message, "id": message["type"]})
    while True:
        reply = await ws.receive_json(timeout=10)
        if reply.get("id") == message["type"]:
            return dict(reply)


async def test_two_hosts_share_users_keys_and_call_log(pg_url: str, tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis_url:
        a = await start_server("a", tmp_path, redis_url, pg_url)
        try:
            b = await start_server("b", tmp_path, redis_url, pg_url)
            try:
                await check_two_hosts(a, b, tmp_path)
            finally:
                await b.stop()
        finally:
            await a.stop()
    logs = a.log.read_text() + b.log.read_text()
    assert "Traceback" not in logs, logs[-3000:]


async def check_two_hosts(a: ServerProcess, b: ServerProcess, tmp: Path) -> None:
    # A started first and generated the admin key; B found its hash in the database.
    shown = re.findall(r"admin key: (\w+)", a.log.read_text())
    assert len(shown) == 1 and "admin key:" not in b.log.read_text()
    admin_key = shown[0]
    door = await request("POST", f"{a.url}/v1/users", admin=admin_key, body={"uid": "door", "name": "Door"})
    desk = await request("POST", f"{b.url}/v1/users", admin=admin_key, body={"uid": "desk", "name": "Desk"})
    # A user created through A authenticates on B, and the other way round.
    assert (await request("GET", f"{b.url}/v1/me", token=door["authToken"]))["uid"] == "door"
    assert (await request("GET", f"{a.url}/v1/me", token=desk["authToken"]))["uid"] == "desk"
    for url in (a.url, b.url):
        users = (await request("GET", f"{url}/v1/users", token=door["authToken"]))["users"]
        assert [u["uid"] for u in users] == ["desk", "door"]

    # A call rung on A is in B's call log; accepted on B, it is ongoing on A.
    call = await request(
        "POST",
        f"{a.url}/v1/calls",
        token=door["authToken"],
        body={"receiverUid": "desk", "callType": "video"},
    )
    sid = call["sessionId"]
    log_b = await request("GET", f"{b.url}/v1/calls", token=desk["authToken"])
    assert [(c["sessionId"], c["status"], c["direction"]) for c in log_b["calls"]] == [
        (sid, "initiated", "incoming")
    ]
    await request("POST", f"{b.url}/v1/calls/{sid}/accept", token=desk["authToken"])
    log_a = await request("GET", f"{a.url}/v1/calls", token=door["authToken"])
    assert [(c["sessionId"], c["status"]) for c in log_a["calls"]] == [(sid, "ongoing")]

    # A call token issued by A is accepted by B.
    issued = await request(
        "POST", f"{a.url}/v1/calls/token", token=door["authToken"], body={"sessionId": sid}
    )
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{b.url.replace('http', 'ws')}/v1/ws") as ws:
        assert (await ws_request(ws, {"type": "auth", "authToken": door["authToken"]}))["type"] == "ok"
        forged = issued["token"][:-4] + ("AAAA" if not issued["token"].endswith("AAAA") else "BBBB")
        refused = await ws_request(ws, {"type": "join", "sessionId": sid, "callToken": forged})
        assert refused["type"] == "error" and refused["error"]["code"] == "TOKEN_INVALID", refused
        joined = await ws_request(
            ws, {"type": "join", "sessionId": sid, "callToken": issued["token"], "audioOnly": True}
        )
        assert joined["type"] == "joined" and joined["sessionId"] == sid, joined
        assert await request("GET", f"{a.url}/v1/calls/{sid}", token=desk["authToken"])

    # Nothing shared was written to either host's data directory.
    for host in ("a", "b"):
        data_dir = tmp / f"host-{host}"
        leftovers = {p.name for p in data_dir.iterdir()} if data_dir.exists() else set()
        assert not leftovers & {"signing.key", "admin-key.sha256", "kiosk.db"}, leftovers
