"""Rate limits (kiosk/server/limits.py): the token buckets on a fake clock, then the limits of a real
server: messages per WebSocket connection and failed authentications per client address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import ADMIN_KEY, CreateUser, SignalingClient, WsConnect

from kiosk.server import RunningServer
from kiosk.server.limits import (
    DEFAULT_LIMITS,
    FailedAuthLimiter,
    MessageLimiter,
    RateLimits,
    TokenBucket,
    Verdict,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- units ---


def test_token_bucket_spends_refills_and_caps() -> None:
    bucket = TokenBucket(3, 2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_for(0.0) == pytest.approx(0.5)
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert bucket.available(100.0) == 3.0  # never above capacity
    assert bucket.full(100.0)
    assert not bucket.take(100.0, cost=4)  # more than it can ever hold
    assert bucket.available(100.0) == 3.0  # a refused take spends nothing
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0, now=0.0)


def test_message_limiter_burst_then_sustained_rate_then_close() -> None:
    clock = FakeClock()
    limits = RateLimits(ws_burst=5, ws_rate=2.0, ws_strikes=3, ws_strike_recovery=0.1)
    limiter = MessageLimiter(limits, clock)
    assert [limiter.check(10) for _ in range(5)] == [Verdict.ALLOW] * 5
    assert limiter.check(10) is Verdict.REFUSE
    assert limiter.retry_after(10) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check(10) is Verdict.ALLOW  # one message per 0.5 s is within the rate
    assert limiter.check(10) is Verdict.REFUSE
    assert limiter.check(10) is Verdict.REFUSE
    assert limiter.check(10) is Verdict.CLOSE  # three refusals in a row: sustained abuse
    assert limiter.refused == 4


def test_message_limiter_counts_bytes_too() -> None:
    clock = FakeClock()
    limiter = MessageLimiter(RateLimits(ws_burst_bytes=100_000, ws_rate_bytes=10_000), clock)
    assert limiter.check(60_000) is Verdict.ALLOW
    assert limiter.check(60_000) is Verdict.REFUSE  # 40 000 bytes left
    assert limiter.check(30_000) is Verdict.ALLOW  # a smaller one still fits
    clock.now += 5.0
    assert limiter.check(60_000) is Verdict.ALLOW  # 10 000 + 5 s * 10 000 a second


def test_a_real_clients_call_is_far_below_the_message_limits() -> None:
    """What the Calls SDK sends on one connection in the busiest case: auth, then four sessions (the
    per-connection maximum) of a full mesh (three peers each: offer or answer of about 6 KB with all
    candidates), each with a burst of mute toggles, a video switch, recording on and off, and leave.
    All of it at once must pass without a single refusal."""
    clock = FakeClock()
    limiter = MessageLimiter(DEFAULT_LIMITS, clock)
    frames = [200]  # auth
    for _ in range(4):
        frames += [600] + [6_000] * 3 + [150] * 4 + [100] * 3 + [100]  # join, sdp, mutes, ..., leave
    assert len(frames) < DEFAULT_LIMITS.ws_burst
    assert sum(frames) < DEFAULT_LIMITS.ws_burst_bytes
    assert all(limiter.check(size) is Verdict.ALLOW for size in frames)


def test_failed_auth_limiter_per_address_and_recovery() -> None:
    clock = FakeClock()
    failures = FailedAuthLimiter(RateLimits(auth_failures=3, auth_failure_period=6.0), clock)
    for _ in range(2):
        failures.failed("10.0.0.1")
    assert failures.blocked_for("10.0.0.1") is None
    failures.failed("10.0.0.1")
    assert failures.blocked_for("10.0.0.1") == pytest.approx(6.0)
    assert failures.blocked_for("10.0.0.2") is None  # other addresses are not affected
    clock.now += 6.0
    assert failures.blocked_for("10.0.0.1") is None  # one more attempt after one period
    failures.failed("10.0.0.1")
    assert failures.blocked_for("10.0.0.1") == pytest.approx(6.0)


def test_failed_auth_table_stays_bounded() -> None:
    clock = FakeClock()
    failures = FailedAuthLimiter(RateLimits(auth_failures=2, max_tracked_addresses=100), clock)
    for i in range(1000):
        failures.failed(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.001
    assert len(failures) <= 100
    assert failures.blocked_for("10.0.3.231") is None  # the newest are kept; one failure of two
    failures.failed("10.0.3.231")
    assert failures.blocked_for("10.0.3.231") is not None


# --- on a running server ---


@pytest.fixture
async def other_address() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose connections come from 127.0.0.2: another address for the limits."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as http:
        yield http


async def _flood(client: SignalingClient, count: int) -> list[dict[str, object]]:
    """Send `count` pings without waiting, then collect the replies until the connection goes quiet."""
    for i in range(count):
        await client.send({"type": "ping", "id": i})
    replies: list[dict[str, object]] = []
    while True:
        try:
            replies.append(await client.receive(0.5))
        except TimeoutError:
            return replies


async def test_a_flooding_connection_is_refused_then_closed_and_nobody_else_notices(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, cat = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob", "cat")]
    for ws in (amy, bob, cat):
        await ws.join("room")
    await amy.wait_for("participant.joined")
    await amy.wait_for("participant.joined")
    bob.discard("participant.joined")
    cat.discard("participant.joined")

    # Over the burst (auth and join took two): the extra messages are refused, the connection stays.
    replies = await _flood(amy, DEFAULT_LIMITS.ws_burst + 10)
    pongs = [r for r in replies if r["type"] == "pong"]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(replies) == DEFAULT_LIMITS.ws_burst + 10
    assert len(pongs) >= DEFAULT_LIMITS.ws_burst - 2 and len(refused) >= 5
    for reply in refused:
        assert reply["error"]["code"] == "RATE_LIMITED"  # type: ignore[index]
        assert reply["error"]["retryAfterSeconds"] >= 1  # type: ignore[index]
        assert isinstance(reply["id"], int)  # the refused request's id, so the client's request ends
    await asyncio.sleep(1.0)
    assert (await amy.call("ping"))["type"] == "pong"  # recovered after a pause

    # Sustained abuse: closed with 1008, only this connection.
    with pytest.raises(ConnectionError):
        await _flood(amy, DEFAULT_LIMITS.ws_burst + DEFAULT_LIMITS.ws_strikes + 20)
        await amy.receive(1.0)
    assert amy.ws.close_code == 1008
    await bob.ok("offer", sessionId="room", to="cat", sdp="v=0")
    assert (await cat.wait_for("offer"))["from"] == "bob"
    assert (await cat.call("ping"))["type"] == "pong"


async def test_binary_frames_count_against_the_limit(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await ws_connect()  # nothing sent yet: the whole burst is there
    sent = DEFAULT_LIMITS.ws_burst + 10
    for _ in range(sent):
        await amy.send_raw(b"\x00" * 10)
    codes = [(await amy.receive())["error"]["code"] for _ in range(sent)]
    # Tokens refill at ws_rate while the frames arrive, so one or two more may pass.
    assert DEFAULT_LIMITS.ws_burst <= codes.count("MALFORMED") <= DEFAULT_LIMITS.ws_burst + 3
    assert codes.count("RATE_LIMITED") == sent - codes.count("MALFORMED")


async def test_failed_rest_auth_is_rate_limited_per_address(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    other_address: aiohttp.ClientSession,
    create_user: CreateUser,
) -> None:
    amy = await create_user("amy")
    url = f"{call_server.url}/v1/me"
    for i in range(DEFAULT_LIMITS.auth_failures):
        async with http.get(url, headers={"Authorization": f"Bearer wrong-{i}"}) as r:
            assert r.status == 401
    async with http.get(url, headers={"Authorization": "Bearer wrong-again"}) as r:
        body = await r.json()
        assert r.status == 429 and body["error"]["code"] == "RATE_LIMITED"
        retry = int(r.headers["Retry-After"])
        assert 1 <= retry <= DEFAULT_LIMITS.auth_failure_period + 1
        assert body["error"]["retryAfterSeconds"] == retry
    # While blocked, even the right token is not checked from this address...
    async with http.get(url, headers=amy.headers) as r:
        assert r.status == 429
    # ...but another address is not affected, with the right token or a wrong one.
    async with other_address.get(url, headers=amy.headers) as r:
        assert r.status == 200
    async with other_address.get(url, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    # Requests that need no secret still work from the blocked address.
    async with http.get(f"{call_server.url}/v1/nothing") as r:
        assert r.status == 404


async def test_failed_websocket_auth_and_admin_key_count_for_the_same_address(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    other_address: aiohttp.ClientSession,
    create_user: CreateUser,
    ws_connect: WsConnect,
) -> None:
    amy = await create_user("amy")
    early = await ws_connect(amy)  # authenticated before the address is blocked
    ws = await ws_connect()
    half = DEFAULT_LIMITS.auth_failures // 2
    for _ in range(half):
        assert await ws.error("auth", authToken="0" * 64) == "UNAUTHORIZED"
    for _ in range(DEFAULT_LIMITS.auth_failures - half):
        async with http.post(
            f"{call_server.url}/v1/users", json={"uid": "x", "name": "X"}, headers={"X-Admin-Key": "guess"}
        ) as r:
            assert r.status == 403
    reply = await ws.call("auth", authToken=amy.auth_token)
    assert reply["error"]["code"] == "RATE_LIMITED" and reply["error"]["retryAfterSeconds"] >= 1
    async with http.post(
        f"{call_server.url}/v1/users", json={"uid": "x", "name": "X"}, headers={"X-Admin-Key": ADMIN_KEY}
    ) as r:
        assert r.status == 429
    # A connection that authenticated earlier keeps working; other addresses can still log in.
    assert (await early.call("ping"))["type"] == "pong"
    other = await other_address.ws_connect(f"{call_server.url}/v1/ws")
    await other.send_str(json.dumps({"type": "auth", "authToken": amy.auth_token}))
    assert (await other.receive_json())["type"] == "ok"
    await other.close()
