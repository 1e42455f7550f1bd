"""LiveState behaviour, the same for MemoryState and RedisState (against a real redis-server), plus
what only the Redis one has: atomicity across processes, relayed delivery and dead-node takeover."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from calls_support import wait_until

from kiosk.protocol import ErrorCode, ProtocolError, SessionType
from kiosk.server.connections import Hub
from kiosk.server.models import User
from kiosk.server.state import LiveState, MemoryState, Participant, Session

REDIS_SERVER = shutil.which("redis-server")
MISSING = "redis-server is not installed: run scripts/setup.sh --tests (apt-get install redis-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port, without persistence; yields its URL."""
    if REDIS_SERVER is None:
        pytest.fail(MISSING)  # these tests run where CI runs them: a missing server is a failure, not a skip
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(directory), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def new_redis_state(url: str, prefix: str, **options: Any) -> Any:
    from kiosk.server.redis_state import RedisState

    options.setdefault("rejoin_grace", 1.0)
    options.setdefault("ring_timeout", 30.0)
    return RedisState(url, prefix=prefix, **options)


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[LiveState]:
    if request.param == "memory":
        yield MemoryState()
        return
    url = request.getfixturevalue("redis_url")
    redis_state = new_redis_state(url, f"t{uuid.uuid4().hex[:8]}:")
    await redis_state.start()
    try:
        yield redis_state
    finally:
        await redis_state.close()


def participant(conn_id: str, uid: str, joined_at: int = 1) -> Participant:
    return Participant(
        conn_id=conn_id,
        user=User(uid=uid, name=uid.title()),
        audio_muted=False,
        video_muted=False,
        joined_at=joined_at,
    )


async def join(
    state: LiveState,
    session_id: str,
    p: Participant,
    max_participants: int = 4,
    max_sessions: int = 3,
    session_type: SessionType = SessionType.DIRECT,
) -> Session:
    return await state.join(
        session_id,
        p,
        session_type=session_type,
        audio_only=False,
        max_participants=max_participants,
        max_sessions_per_connection=max_sessions,
    )


async def expect_error(code: ErrorCode, awaitable: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        await awaitable
    assert info.value.code == code


# --- the behaviours every LiveState has ---


async def test_presence(state: LiveState) -> None:
    await state.add_connection("alice", "c1")
    await state.add_connection("alice", "c2")
    await state.add_connection("bob", "c3")
    assert await state.connections_of("alice") == ["c1", "c2"]
    assert await state.online_uids() == {"alice", "bob"}
    await state.remove_connection("alice", "c1")
    assert await state.online_uids() == {"alice", "bob"}
    await state.remove_connection("alice", "c2")
    await state.remove_connection("alice", "c2")  # twice is harmless
    assert await state.connections_of("alice") == []
    assert await state.online_uids() == {"bob"}


async def test_join_rules(state: LiveState) -> None:
    session = await join(state, "s1", participant("c1", "alice", 1))
    assert session.type == SessionType.DIRECT and list(session.participants) == ["c1"]
    await expect_error(ErrorCode.ALREADY_IN_SESSION, join(state, "s1", participant("c1", "alice")))
    await expect_error(ErrorCode.ALREADY_IN_SESSION, join(state, "s1", participant("c9", "alice")))
    await join(state, "s1", participant("c2", "bob", 2), max_participants=3)
    session = await join(state, "s1", participant("c3", "carol", 3), max_participants=3)
    assert [p.uid for p in session.participants.values()] == ["alice", "bob", "carol"]
    await expect_error(
        ErrorCode.SESSION_FULL, join(state, "s1", participant("c4", "dave"), max_participants=3)
    )
    await join(state, "s2", participant("c1", "alice"), max_sessions=2)
    await expect_error(ErrorCode.BAD_REQUEST, join(state, "s3", participant("c1", "alice"), max_sessions=2))
    assert await state.sessions_of_connection("c1") == ["s1", "s2"]
    got, me = await state.member("s1", "c2")
    assert me.uid == "bob" and len(got.participants) == 3
    await expect_error(ErrorCode.NOT_IN_SESSION, state.member("s1", "c9"))


async def test_rejoin_takes_the_place_over(state: LiveState) -> None:
    await join(state, "s1", participant("c1", "alice", 1))
    await join(state, "s1", participant("c2", "bob", 2))
    await join(state, "s1", participant("c3", "carol", 3))
    session = await state.rejoin("s1", "alice", "c7", audio_muted=True, video_muted=False)
    assert session is not None
    assert list(session.participants) == ["c7", "c2", "c3"]  # still first in join order
    assert session.participants["c7"].audio_muted is True
    assert await state.sessions_of_connection("c1") == []
    assert await state.sessions_of_connection("c7") == ["s1"]
    assert await state.rejoin("s1", "dave", "c8", False, False) is None
    assert await state.rejoin("nope", "alice", "c8", False, False) is None
    same = await state.rejoin("s1", "bob", "c2", audio_muted=False, video_muted=True)
    assert same is not None and same.participants["c2"].video_muted is True


async def test_leaving_a_rung_one_to_one_call_ends_it_for_both(state: LiveState) -> None:
    await join(state, "s1", participant("c1", "alice"), session_type=SessionType.DEFAULT)
    await join(state, "s1", participant("c2", "bob"), session_type=SessionType.DEFAULT)
    outcome = await state.leave("s1", "c1")
    assert outcome.participant.uid == "alice" and [p.uid for p in outcome.others] == ["bob"]
    assert outcome.session_over and outcome.session_empty
    assert await state.get_session("s1") is None
    assert await state.sessions_of_connection("c2") == []
    await expect_error(ErrorCode.NOT_IN_SESSION, state.leave("s1", "c2"))


async def test_the_last_one_stays_in_a_direct_session_or_one_that_was_a_group(state: LiveState) -> None:
    # A session joined by id, and a rung call that a third person joined, are not one to one: the
    # last one left stays in it (and its idle timeout ends it), whatever the store.
    await join(state, "direct", participant("c1", "alice"))
    await join(state, "direct", participant("c2", "bob"))
    outcome = await state.leave("direct", "c1")
    assert not outcome.session_over and not outcome.session_empty
    assert await state.sessions_of_connection("c2") == ["direct"]

    for i, uid in enumerate(["carol", "dave", "erin"]):
        await join(state, "rung", participant(f"r{i}", uid), session_type=SessionType.DEFAULT)
    assert not (await state.leave("rung", "r2")).session_over  # three to two: still a group
    outcome = await state.leave("rung", "r1")
    assert not outcome.session_over and [p.uid for p in outcome.others] == ["carol"]
    left = await state.get_session("rung")
    assert left is not None and left.was_group and list(left.participants) == ["r0"]


async def test_leave_a_group_and_end(state: LiveState) -> None:
    for i, uid in enumerate(["alice", "bob", "carol"]):
        await join(state, "s1", participant(f"c{i}", uid))
    outcome = await state.leave("s1", "c0")
    assert not outcome.session_over and not outcome.session_empty
    assert len(outcome.others) == 2
    session = await state.set_media("s1", "c1", audio_muted=True, video_muted=True)
    assert session.participants["c1"].audio_muted and session.participants["c1"].video_muted
    await expect_error(ErrorCode.NOT_IN_SESSION, state.set_media("s1", "c0", True, True))
    await state.set_audio_only("s1", True)
    got = await state.get_session("s1")
    assert got is not None and got.audio_only
    ended = await state.end_session("s1")
    assert sorted(p.uid for p in ended) == ["bob", "carol"]
    assert await state.get_session("s1") is None
    assert await state.end_session("s1") == []
    assert await state.sessions_of_connection("c1") == []


async def test_the_first_sfu_room_given_stays(state: LiveState) -> None:
    assert await state.set_sfu("nowhere", {"room": 1}) is None
    for i, uid in enumerate(["alice", "bob"]):
        await join(state, "s1", participant(f"c{i}", uid))
    assert (await state.get_session("s1")).sfu is None
    first = {"room": 7, "pin": "p", "secret": "s"}
    assert await state.set_sfu("s1", first) == first
    # A second join racing the first (here, or on another server process) keeps the first room.
    assert await state.set_sfu("s1", {"room": 8, "pin": "q", "secret": "t"}) == first
    await join(state, "s1", participant("c2", "carol"))
    session = await state.get_session("s1")
    assert session is not None and session.sfu == first
    await state.leave("s1", "c0")
    assert (await state.get_session("s1")).sfu == first
    # Janus lost the room: a new one replaces it, once; a replacement naming a stale room is refused.
    second = {"room": 9, "pin": "r", "secret": "u"}
    assert await state.set_sfu("s1", second, replacing=7) == second
    assert await state.set_sfu("s1", {"room": 10, "pin": "v", "secret": "w"}, replacing=7) == second
    assert (await state.get_session("s1")).sfu == second


async def test_busy_check(state: LiveState) -> None:
    assert await state.reserve_call("call1", "alice", "bob")
    assert not await state.reserve_call("call2", "carol", "bob")  # bob is being called
    assert not await state.reserve_call("call3", "carol", "alice")  # alice is calling
    await state.release_call("call1")
    await state.release_call("call1")
    assert await state.reserve_call("call4", "carol", "bob")
    await join(state, "s1", participant("c1", "dave"))
    assert not await state.reserve_call("call5", "alice", "dave")  # dave is in a session
    await state.leave("s1", "c1")
    assert await state.reserve_call("call6", "alice", "dave")


# --- only the shared one ---


async def test_rules_hold_across_processes(redis_url: str) -> None:
    """Two nodes racing: the participant limit and the busy check are applied once, not per node."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a, b = new_redis_state(redis_url, prefix), new_redis_state(redis_url, prefix)
    await a.start()
    await b.start()
    try:
        joins = [
            join(node, "s1", participant(f"c{i}", f"user{i}"), max_participants=5)
            for i, node in enumerate([a, b] * 10)
        ]
        results = await asyncio.gather(*joins, return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 5
        errors = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, ProtocolError) and r.code == ErrorCode.SESSION_FULL for r in errors)
        session = await b.get_session("s1")
        assert session is not None and len(session.participants) == 5
        reserved = await asyncio.gather(
            *(node.reserve_call(f"call{i}", f"caller{i}", "target") for i, node in enumerate([a, b] * 5))
        )
        assert sum(reserved) == 1
    finally:
        await a.close()
        await b.close()


class FakeConnection:
    def __init__(self, conn_id: str) -> None:
        self.id = conn_id
        self.received: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.received.append(message)


async def test_messages_reach_connections_of_another_node(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a, b = new_redis_state(redis_url, prefix), new_redis_state(redis_url, prefix)
    hub_a = Hub(a, relay=a, node_id=a.node_id)
    hub_b = Hub(b, relay=b, node_id=b.node_id)
    await a.start(hub_a.deliver_local)
    await b.start(hub_b.deliver_local)
    try:
        on_a, on_b = FakeConnection("x1"), FakeConnection("x2")
        hub_a.add(on_a)  # type: ignore[arg-type]
        hub_b.add(on_b)  # type: ignore[arg-type]
        assert on_a.id.startswith(a.node_id + ".") and on_b.id.startswith(b.node_id + ".")
        await a.add_connection("alice", on_a.id)
        await b.add_connection("bob", on_b.id)
        assert await a.online_uids() == {"alice", "bob"}
        for n in range(20):
            hub_a.send_many([on_a.id, on_b.id], {"n": n})
        await hub_b.push_to_user("alice", {"n": "pushed"})
        await wait_until(lambda: len(on_b.received) >= 20 and len(on_a.received) >= 21, 5, "relayed messages")
        assert on_b.received == [{"n": n} for n in range(20)]  # in order
        assert on_a.received == [{"n": n} for n in range(20)] + [{"n": "pushed"}]
    finally:
        await a.close()
        await b.close()


async def test_a_dead_nodes_participants_leave_after_the_grace_unless_back(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    dead = new_redis_state(redis_url, prefix, rejoin_grace=0.5)
    left: list[tuple[str, str]] = []

    async def leave_orphan(session_id: str, conn_id: str) -> None:
        left.append((session_id, conn_id))
        await survivor.leave(session_id, conn_id)

    survivor = new_redis_state(redis_url, prefix, rejoin_grace=0.5, heartbeat=0.1)
    await dead.start()
    await survivor.start(leave_orphan=leave_orphan)
    try:
        alice, bob, carol = (f"{dead.node_id}.{n}" for n in ("alice", "bob", "carol"))
        dave = f"{survivor.node_id}.dave"
        for conn_id in (alice, bob, carol, dave):
            uid = conn_id.split(".")[1]
            await dead.add_connection(uid, conn_id)
            await join(dead, "s1", participant(conn_id, uid))
        assert dead.node_id in await survivor.live_nodes()
        await dead.close()  # as if stopped; a killed one's heartbeat key expires instead
        await wait_until(lambda: survivor.orphan_count_is(3), 5, "the survivor to claim the dead node")
        assert dead.node_id not in await survivor.live_nodes()
        assert await survivor.online_uids() == {"dave"}  # the dead node's connections are gone at once
        # alice comes back on the survivor within the grace; bob's session place is taken by a leave.
        await survivor.rejoin("s1", "alice", f"{survivor.node_id}.alice2", False, False)
        await survivor.leave("s1", bob)
        await wait_until(lambda: survivor.orphan_count_is(0), 5, "the grace to run out")
        assert left == [("s1", carol)]
        session = await survivor.get_session("s1")
        assert session is not None
        assert [p.uid for p in session.participants.values()] == ["alice", "dave"]
    finally:
        await survivor.close()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    state = new_redis_state(f"redis://127.0.0.1:{free_port()}/0", "t:")
    with pytest.raises(ConnectionError):
        await state.start()
    await state.close()


async def test_a_node_taken_for_dead_takes_its_own_back(redis_url: str) -> None:
    """A node whose heartbeat lapsed (Redis out of reach for a while) but which is alive: once it beats
    again, its connections are back online and its participants are no longer orphans."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    node = new_redis_state(redis_url, prefix, rejoin_grace=60.0)
    other = new_redis_state(redis_url, prefix, rejoin_grace=60.0)
    conn_id = f"{node.node_id}.erin"
    await node.start(local_connections=lambda: [("erin", conn_id)])
    await other.start()
    try:
        await node.add_connection("erin", conn_id)
        await join(node, "s1", participant(conn_id, "erin"))
        await other._redis.delete(f"{prefix}node:{node.node_id}:alive")  # the lapse
        assert await other.claim_dead_nodes() == [node.node_id]
        assert await other.online_uids() == set() and await other.orphan_count_is(1)
        await node.maintain()
        assert await other.online_uids() == {"erin"} and await other.orphan_count_is(0)
        # Its participant is its own again: were it to die now, the participant would be orphaned.
        await node._redis.delete(f"{prefix}node:{node.node_id}:alive")
        assert await other.claim_dead_nodes() == [node.node_id]
        assert await other.orphan_count_is(1)
    finally:
        await node.close()
        await other.close()


async def test_calls_whose_timers_died_with_their_process_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from calls_support import make_user, running_server

    from kiosk.protocol import CallStatus, CallType
    from kiosk.server import ringing
    from kiosk.server.clock import now_ms
    from kiosk.server.context import CONTEXT
    from kiosk.server.models import CallRecord

    monkeypatch.setattr(ringing, "_OVERDUE_MARGIN_SECONDS", 0.0)
    async with running_server(tmp_path / "server", ring_timeout=1.0) as server:
        ctx = server.app[CONTEXT]
        for uid in ("door", "desk"):
            await make_user(server.url, uid)
        door, desk = await ctx.storage.get_user("door"), await ctx.storage.get_user("desk")
        assert door is not None and desk is not None
        old = now_ms() - 5000

        def call(
            session_id: str, status: CallStatus, joined_at: int | None, initiated_at: int = old
        ) -> CallRecord:
            return CallRecord(
                session_id, CallType.VIDEO, status, door, desk, initiated_at, joined_at=joined_at
            )

        await ctx.storage.create_call(call("ringing-old", CallStatus.INITIATED, None))
        await ctx.storage.create_call(call("ringing-new", CallStatus.INITIATED, None, initiated_at=now_ms()))
        await ctx.storage.create_call(call("ongoing-empty", CallStatus.ONGOING, old))
        await ctx.storage.create_call(call("ongoing-live", CallStatus.ONGOING, old))
        await join(ctx.state, "ongoing-live", participant("c1", "door"))
        await ctx.ringing.close_overdue_calls()
        statuses = {
            sid: (await ctx.storage.get_call(sid)).status  # type: ignore[union-attr]
            for sid in ("ringing-old", "ringing-new", "ongoing-empty", "ongoing-live")
        }
        assert statuses == {
            "ringing-old": CallStatus.UNANSWERED,
            "ringing-new": CallStatus.INITIATED,
            "ongoing-empty": CallStatus.ENDED,
            "ongoing-live": CallStatus.ONGOING,
        }
