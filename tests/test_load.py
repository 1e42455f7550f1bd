"""Bounded load test: 200 concurrent sessions of signaling-only clients against `kiosk server`.

The server runs in its own process (loopback, a temporary data directory; started and stopped with
bench/server_capacity.py's helpers). 200 pairs of clients each loop over rounds until the time is
up: connect and `auth` both, get call tokens over REST, `join` (the joiner sends the `offer`, the
other `answer`s), exchange `media.state` changes and a `ping` for a few seconds, then one side
`leave`s (the other gets `participant.left`: a session joined by id is not a rung 1:1 call), the other
leaves too, and both disconnect. All 200 sessions are live at once at
the start (a barrier) and most of the time after.

Asserted: no error reply and no missing or unexpected message anywhere; the server stays responsive
(a probe's ping round trip, and REST afterwards); after everyone has left, the server's open file
descriptors (/proc/<pid>/fd) are back to what they were before any client connected, and its RSS is
within RSS_MARGIN_KB of the baseline taken after a warm-up run of the same load; the server logged
no unexpected error. A second test runs a smaller load against a server in this process and checks
with tracemalloc that the Python heap returns to its baseline (the precise leak check; RSS also
moves with the allocator).

Runtime: about 85 s (25 s warm-up + KIOSK_LOAD_SECONDS=25 of load, then the heap test). For the
"several minutes" run: `KIOSK_LOAD_SECONDS=300 .venv/bin/python -m pytest -q -s tests/test_load.py`
(the warm-up is then 60 s; the test timeout follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.server_capacity import LISTENING, child_process, create_users, kiosk_server_argv, vm_rss_kb
from bench.server_capacity_load import Endpoint, raise_open_file_limit, ws_client_session, ws_url
from kiosk.server import ServerConfig, start_server

PAIRS = 200
LOAD_SECONDS = float(os.environ.get("KIOSK_LOAD_SECONDS", "25"))
# The baseline is taken after the same load has run this long: RSS climbs for the first ~30 s of
# load (allocator arenas reaching their working size) and only then is a fair baseline.
WARMUP_SECONDS = min(LOAD_SECONDS, 60.0)
TALK_SECONDS = (2.0, 5.0)  # how long a pair stays in its session, each round
REPLY_TIMEOUT = 15.0
# RSS after everyone left vs. the baseline after the warm-up. Measured here (200 pairs, phases of
# 15 s, about 840 sessions each, RSS after each phase once all had left): 68.6 MB after the first,
# then +1.6, +0.7, +0.1, +0.2, +1.3, +1.5, +0.1 MB: the allocator keeps some freed memory, a creep
# that does not follow the number of sessions, while the server's Python heap stays flat
# (test_python_heap_returns_to_baseline). A default run has about 1,300 sessions after the
# warm-up; a leak of even 5 KB a session would pass the margin.
RSS_MARGIN_KB = 6 * 1024
PROBE_PING_LIMIT = 2.0  # seconds: the slowest ping round trip allowed during the load
SDP = "v=0\r\n" + "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n" * 40  # ~2.5 KB

pytestmark = pytest.mark.timeout(int(LOAD_SECONDS) * 2 + 180)


class Client:
    """A signaling WebSocket that reads continuously (answering the server's pings)."""

    def __init__(self, uid: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.uid = uid
        self.ws = ws
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self._ids = 0

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    await self._queue.put(json.loads(frame.data))
        finally:
            await self._queue.put(None)

    async def next(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self._queue.get(), REPLY_TIMEOUT)
        if message is None:
            raise ConnectionError(f"{self.uid}: connection closed ({self.ws.close_code})")
        return message

    async def expect(self, message_type: str, **fields: Any) -> dict[str, Any]:
        """The next message must be of this type with these fields."""
        message = await self.next()
        assert message["type"] == message_type and all(message.get(k) == v for k, v in fields.items()), (
            self.uid,
            message_type,
            fields,
            message,
        )
        return message

    async def request(self, message_type: str, reply: str = "ok", **fields: Any) -> dict[str, Any]:
        self._ids += 1
        await self.ws.send_str(json.dumps({"type": message_type, "id": self._ids, **fields}))
        return await self.expect(reply, id=self._ids)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


class Load:
    def __init__(
        self, url: str, http: aiohttp.ClientSession, rest: aiohttp.ClientSession, users: list[Endpoint]
    ) -> None:
        self.pairs = len(users) // 2
        self.url = url
        self.http = http  # WebSockets
        self.rest = rest  # REST, one connection per request: no idle keep-alive sockets to count
        self.users = users
        self.live = 0
        self.peak = 0
        self.sessions = 0
        self.messages = 0
        self.all_joined = asyncio.Event()

    async def connect(self, user: Endpoint) -> Client:
        ws = await self.http.ws_connect(ws_url(self.url, "/v1/ws"), heartbeat=20.0)
        client = Client(user.uid, ws)
        reply = await client.request("auth", authToken=user.token)
        assert reply["user"]["uid"] == user.uid
        return client

    async def call_token(self, user: Endpoint, session_id: str) -> str:
        async with self.rest.post(
            f"{self.url}/v1/calls/token", json={"sessionId": session_id}, headers=user.bearer
        ) as r:
            body = await r.json()
            assert r.status == 200, body
            return str(body["token"])

    async def round(self, pair: int, number: int, talk: float, barrier: bool) -> None:
        first, second = self.users[2 * pair], self.users[2 * pair + 1]
        sid = f"load-{pair}-{number}"
        a, b = await asyncio.gather(self.connect(first), self.connect(second))
        try:
            ta, tb = await asyncio.gather(self.call_token(first, sid), self.call_token(second, sid))
            joined = await a.request("join", reply="joined", sessionId=sid, callToken=ta)
            assert joined["participants"] == []
            joined = await b.request("join", reply="joined", sessionId=sid, callToken=tb, audioMuted=True)
            assert [p["uid"] for p in joined["participants"]] == [first.uid]
            await a.expect("participant.joined", sessionId=sid)
            self.live += 1
            self.peak = max(self.peak, self.live)
            if self.live == self.pairs:
                self.all_joined.set()
            # The joiner offers, the other answers (docs/protocol.md, "Media negotiation").
            await b.request("offer", sessionId=sid, to=first.uid, sdp=SDP)
            await a.expect("offer", sessionId=sid, **{"from": second.uid, "sdp": SDP})
            await a.request("answer", sessionId=sid, to=second.uid, sdp=SDP)
            await b.expect("answer", sessionId=sid, **{"from": first.uid})
            await b.request("candidate", sessionId=sid, to=first.uid, candidate=None)
            await a.expect("candidate", sessionId=sid, candidate=None)
            if barrier:
                await asyncio.wait_for(self.all_joined.wait(), 60)
            muted = True
            deadline = time.monotonic() + talk
            while time.monotonic() < deadline:
                await asyncio.sleep(random.uniform(0.3, 1.0))
                speaker, listener = (a, b) if muted else (b, a)
                muted = not muted
                await speaker.request("media.state", sessionId=sid, audioMuted=muted, videoMuted=False)
                state = await listener.expect("media.state", sessionId=sid, audioMuted=muted)
                assert state["user"]["uid"] == speaker.uid
                await listener.request("ping", reply="pong")
                self.messages += 3
            await a.request("leave", sessionId=sid)
            left = await b.expect("participant.left", sessionId=sid, reason="left")
            assert left["participant"]["uid"] == first.uid
            await b.request("leave", sessionId=sid)
            self.live -= 1
            self.sessions += 1
            self.messages += 11
        finally:
            await asyncio.gather(a.close(), b.close())

    async def pair_loop(self, pair: int, until: float, rng: random.Random) -> None:
        number = 0
        while time.monotonic() < until:
            await self.round(pair, number, rng.uniform(*TALK_SECONDS), barrier=number == 0)
            number += 1

    async def run(self, seconds: float, seed: int) -> None:
        """All pairs at once for `seconds` (each finishes its round); the first failure is raised."""
        self.all_joined = asyncio.Event()
        until = time.monotonic() + seconds
        results = await asyncio.gather(
            *(self.pair_loop(i, until, random.Random(seed * 1000 + i)) for i in range(self.pairs)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} pairs failed, first: {errors[0]!r}"
        assert self.live == 0


async def probe_pings(client: Client, stop: asyncio.Event, times: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await client.request("ping", reply="pong")
        times.append(time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled(pid: int, idle_fds: int) -> tuple[int, int]:
    """(fds, RSS KB) once the server is quiet: its fds back to `idle_fds` (15 s at most), then the
    median of a few RSS readings."""
    for _ in range(75):
        if open_fds(pid) <= idle_fds:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    rss = []
    for _ in range(5):
        rss.append(vm_rss_kb(pid))
        await asyncio.sleep(0.2)
    return open_fds(pid), int(statistics.median(rss))


async def test_200_concurrent_sessions(tmp_path: Path) -> None:
    raise_open_file_limit(4 * PAIRS + 200)
    data_dir = tmp_path / "data"
    users = create_users(data_dir, 2 * PAIRS + 1)
    probe_user = users.pop()
    async with (
        child_process(kiosk_server_argv(data_dir), tmp_path / "server.log", LISTENING, 30.0) as server,
        ws_client_session() as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as rest,
    ):
        url = server.ready.group(1)
        pid = server.pid
        load = Load(url, http, rest, users)

        idle_fds = open_fds(pid)
        # Warm-up: the same load for a while, so one-time costs and the allocator's high-water mark
        # are in the baseline.
        await load.run(WARMUP_SECONDS, seed=1)
        assert load.peak == PAIRS
        base_fds, base_rss = await settled(pid, idle_fds)
        assert base_fds == idle_fds

        probe = await load.connect(probe_user)
        ping_times: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(probe_pings(probe, stop, ping_times))
        load.peak = load.sessions = load.messages = 0
        started = time.monotonic()
        await load.run(LOAD_SECONDS, seed=2)
        elapsed = time.monotonic() - started
        stop.set()
        await prober
        await probe.close()

        fds, rss = await settled(pid, idle_fds)
        print(
            f"\n{load.sessions} sessions ({load.peak} at once) and {load.messages} messages in {elapsed:.0f} s; "
            f"probe ping median {statistics.median(ping_times) * 1000:.1f} ms, max {max(ping_times) * 1000:.0f} ms; "
            f"server fds {base_fds} -> {fds}, RSS {base_rss} -> {rss} KB ({rss - base_rss:+d} KB)"
        )
        assert load.peak == PAIRS
        assert load.sessions >= PAIRS * 2
        assert max(ping_times) < PROBE_PING_LIMIT
        assert fds == idle_fds, (idle_fds, fds)
        assert rss - base_rss < RSS_MARGIN_KB, (base_rss, rss)
        # Still serving after all that.
        async with http.get(f"{url}/v1/me", headers=probe_user.bearer) as r:
            assert r.status == 200
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]


async def test_python_heap_returns_to_baseline(tmp_path: Path) -> None:
    """The same load, smaller (100 pairs), against a server in this process, measured with
    tracemalloc: what Python allocated (server and clients) after everyone left is back to the
    baseline taken after a warm-up, whatever the allocator does with RSS."""
    pairs = 100
    data_dir = tmp_path / "data"
    users = create_users(data_dir, 2 * pairs)
    # Hundreds of clients from one loopback address, connecting at once: no cap on pending sockets.
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        admin_key="load-test-key",
        max_pending_websockets_per_address=0,
    )
    server = await start_server(config)
    tracemalloc.start(1)
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as rest,
        ):
            load = Load(server.url, http, rest, users)
            await load.run(4.0, seed=3)
            await asyncio.sleep(1.0)
            gc.collect()
            before = tracemalloc.take_snapshot()
            load.sessions = 0
            await load.run(8.0, seed=4)
            await asyncio.sleep(1.0)
            gc.collect()
            after = tracemalloc.take_snapshot()
        growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        print(f"\n{load.sessions} sessions; Python heap {growth / 1024:+.0f} KB")
        # Enough sessions for a leak to show (usually 2-3 per pair; under tracemalloc on a busy
        # machine fewer: 195 in one CI run). This is not a throughput check.
        assert load.sessions >= pairs
        # Measured: +7 to +29 KB (hash tables at their high-water size, tracemalloc's own records);
        # a leak of 200 bytes a session would pass this.
        assert growth < 250 * 1024, growth
    finally:
        tracemalloc.stop()
        await server.close()
