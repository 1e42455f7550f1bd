"""Property-based fuzzing (hypothesis) of a running `kiosk server` in its own process.

What is sent: JSON values of any shape, valid-looking messages with wrong field types, unknown types
and unknown fields, oversized strings, sender fields naming other users, random sequences of
otherwise valid messages in any order (offer before join, leave twice, end of a session never
joined...), random text and binary frames; over REST, random methods, paths, bodies and headers.

What must hold:
- every WebSocket frame gets exactly one reply (`ok`, `joined`, `pong` or an `error` with a protocol
  code), and the connection stays open (the final `ping` is answered);
- every REST answer is below 500, and every refusal is a protocol error object;
- a session joined before the fuzzing (a rung call between two users, on 127.0.0.1) keeps working:
  nothing reaches it, ping and relay still work;
- the server process never logs an unexpected error, stays up, and its memory stays bounded.

The examples are derandomized (the same inputs every run) and `deadline=None`; the whole file takes
about 30 s. `KIOSK_FUZZ_SCALE=10` runs ten times as many examples (still derandomized, so also set
a different `KIOSK_FUZZ_SEED` to explore new inputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kiosk.protocol import CLIENT_MESSAGES, SERVER_MESSAGES, ErrorCode

_T = TypeVar("_T")

SCALE = float(os.environ.get("KIOSK_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("KIOSK_FUZZ_SEED", "20261121"))
REPLY_TYPES = {"ok", "error", "joined", "pong"}
PROTOCOL_CODES = {str(code) for code in ErrorCode} - {"INTERNAL"}
# Growth of the server's RSS allowed over the whole fuzz after a warm-up round. Measured here: 0.4 to
# 2.5 MB (the allocator keeps freed arenas, SQLite its page cache); a leak of even 10 KB per example
# over the ~700 examples would pass 7 MB.
RSS_GROWTH_LIMIT_KB = 6 * 1024


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ----------------------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    admin_key: str

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    admin_key = secrets.token_hex(16)
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "kiosk.cli", "server", "--port", "0", "--data-dir", str(tmp_path / "data")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KIOSK_ADMIN_KEY": admin_key}
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield ServerProcess(proc, found.group(1), log, admin_key)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoopThread:
    """An event loop on a thread of its own, so hypothesis (synchronous) can drive async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# ----------------------------------------------------------------------------- clients


class Client:
    """A signaling WebSocket that sorts replies from pushes. It reads all the time (as real clients
    do), so the server's heartbeat pings are answered however long the fuzzing takes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushes: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.ws.receive()
            await self._queue.put(frame)
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await asyncio.wait_for(self._queue.get(), timeout)
        if frame.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"connection closed: {frame.type!r} {frame.data!r} {self.ws.close_code}")
        message = json.loads(frame.data)
        assert isinstance(message, dict) and message.get("type") in SERVER_MESSAGES, message
        return message

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def reply_to(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.receive(max(0.01, deadline - time.monotonic()))
            if message.get("id") == request_id and message["type"] in REPLY_TYPES:
                return message
            self.pushes.append(message)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        request_id = secrets.token_hex(4)
        await self.ws.send_str(json.dumps({**message, "id": request_id}))
        return await self.reply_to(request_id)


@dataclass
class World:
    url: str
    http: aiohttp.ClientSession  # from 127.0.0.1: setup and the healthy session
    attacker: aiohttp.ClientSession  # from 127.0.0.2: authenticated fuzzing
    stranger: aiohttp.ClientSession  # from 127.0.0.3: unauthenticated fuzzing, wrong secrets
    insider: aiohttp.ClientSession  # from 127.0.0.4: REST with valid secrets (never rate limited)
    admin_key: str
    tokens: dict[str, str]  # uid -> auth token
    call_tokens: list[str]
    healthy_session: str
    amy: Client | None = None
    bob: Client | None = None

    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/v1/ws"


async def _rest(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    async with http.request(method, url, **kwargs) as r:
        body = await r.json()
        assert r.status < 300, (method, url, r.status, body)
        return body


async def connect(http: aiohttp.ClientSession, world: World, uid: str | None) -> Client:
    client = Client(await http.ws_connect(world.ws_url()))
    if uid is not None:
        reply = await client.request({"type": "auth", "authToken": world.tokens[uid]})
        assert reply["type"] == "ok", reply
    return client


async def build_world(url: str, admin_key: str) -> World:
    def session(address: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0))

    http, attacker, stranger = session("127.0.0.1"), session("127.0.0.2"), session("127.0.0.3")
    insider = session("127.0.0.4")
    tokens = {}
    for uid in ("amy", "bob", "mal"):
        created = await _rest(
            http,
            "POST",
            f"{url}/v1/users",
            json={"uid": uid, "name": uid},
            headers={"X-Admin-Key": admin_key},
        )
        tokens[uid] = created["authToken"]

    def bearer(uid: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[uid]}"}

    # The healthy session: a rung call, so only amy and bob can ever get a token for it.
    call = await _rest(
        http,
        "POST",
        f"{url}/v1/calls",
        json={"receiverUid": "bob", "callType": "video"},
        headers=bearer("amy"),
    )
    sid = call["sessionId"]
    await _rest(http, "POST", f"{url}/v1/calls/{sid}/accept", headers=bearer("bob"))
    call_tokens = []
    for uid, session_id in [("mal", "fz-a"), ("mal", "fz-b"), ("mal", "fz-c"), ("amy", "fz-a")]:
        issued = await _rest(
            http, "POST", f"{url}/v1/calls/token", json={"sessionId": session_id}, headers=bearer(uid)
        )
        call_tokens.append(issued["token"])
    world = World(url, http, attacker, stranger, insider, admin_key, tokens, call_tokens, sid)
    world.amy, world.bob = await connect(http, world, "amy"), await connect(http, world, "bob")
    for uid, client in (("amy", world.amy), ("bob", world.bob)):
        issued = await _rest(
            http, "POST", f"{url}/v1/calls/token", json={"sessionId": sid}, headers=bearer(uid)
        )
        joined = await client.request({"type": "join", "sessionId": sid, "callToken": issued["token"]})
        assert joined["type"] == "joined", joined
    await world.amy.receive()  # participant.joined (bob)
    await check_healthy(world)
    return world


async def check_healthy(world: World) -> None:
    """The session joined before the fuzzing: nothing unexpected reached it, and it still works."""
    amy, bob = world.amy, world.bob
    assert amy is not None and bob is not None
    for client in (amy, bob):
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    sdp = f"v=0 {secrets.token_hex(4)}"
    reply = await amy.request({"type": "offer", "sessionId": world.healthy_session, "to": "bob", "sdp": sdp})
    assert reply["type"] == "ok", reply
    relayed = await bob.receive()
    assert (relayed["type"], relayed["from"], relayed["sdp"]) == ("offer", "amy", sdp), relayed
    reply = await bob.request(
        {"type": "media.state", "sessionId": world.healthy_session, "audioMuted": False, "videoMuted": False}
    )
    assert reply["type"] == "ok", reply
    state = await amy.receive()
    assert (state["type"], state["user"]["uid"]) == ("media.state", "bob"), state
    for client in (amy, bob):
        assert client.pushes == [], client.pushes  # nothing from the fuzzing ever reached them


async def close_world(world: World) -> None:
    for client in (world.amy, world.bob):
        if client is not None:
            await client.close()
    for http in (world.http, world.attacker, world.stranger, world.insider):
        await http.close()


# ----------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    # Lone surrogates too: valid JSON ("\\ud800"), but not UTF-8.
    | st.lists(st.integers(0xD800, 0xDFFF).map(chr) | st.characters(), min_size=1, max_size=6).map("".join)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.from_regex(r"\A[A-Za-z0-9_.@-]{1,12}\Z") | st.text(max_size=12)
BIG = "x" * 61_000  # over the 60 KiB sdp limit, under the 64 KiB message limit


def message_strategy(world: World) -> st.SearchStrategy[dict[str, Any]]:
    valid: dict[str, st.SearchStrategy[Any]] = {
        "sessionId": st.sampled_from(["fz-a", "fz-b", "fz-c", world.healthy_session]) | ids,
        "to": st.sampled_from(["amy", "bob", "mal", "nobody"]) | ids,
        "sdp": st.sampled_from(["v=0", "", BIG]) | st.text(max_size=40),
        "candidate": st.none()
        | st.dictionaries(st.sampled_from(["candidate", "sdpMid"]), st.text(max_size=20)),
        "callToken": st.sampled_from(world.call_tokens) | st.text(max_size=40),
        "authToken": st.sampled_from([world.tokens["mal"], "0" * 64]) | st.text(max_size=40),
        "recording": st.booleans(),
    }
    sender_fields = st.dictionaries(
        st.sampled_from(["from", "uid", "user"]),
        st.sampled_from(["amy", "bob", "mal", {"uid": "amy"}, {"uid": "mal"}]) | json_values,
        max_size=2,
    )
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        kind = draw(st.sampled_from(sorted(CLIENT_MESSAGES)) | st.text(max_size=12))
        message: dict[str, Any] = {"type": kind}
        for name in CLIENT_MESSAGES.get(kind, {}):
            how = draw(st.sampled_from(["valid", "valid", "valid", "random", "absent"]))
            if how == "absent":
                continue
            good = valid.get(name, st.booleans())
            message[name] = draw(good if how == "valid" else json_values)
        if draw(st.booleans()):
            message.update(draw(extra))
        if draw(st.integers(0, 9)) == 0:
            message.update(draw(sender_fields))
        if draw(st.integers(0, 9)) == 0:
            message["id"] = draw(json_values)  # ids of any shape (the caller's own id otherwise)
        return message

    return build()


def frame_strategy(world: World) -> st.SearchStrategy[str | bytes]:
    messages = message_strategy(world)
    as_json = messages.map(lambda m: json.dumps(m))
    truncated = st.tuples(as_json, st.integers(0, 50)).map(lambda t: t[0][: t[1]])
    return (
        as_json
        | as_json
        | as_json
        | truncated
        | json_values.map(json.dumps)
        | st.text(max_size=60)
        | st.binary(max_size=40)
        | st.just("[" * 40_000)
    )


# ----------------------------------------------------------------------------- the checks


async def run_sequence(world: World, frames: list[str | bytes], uid: str | None) -> None:
    """Send the frames on a fresh connection, then a ping; exactly one reply each, all in protocol."""
    http = world.attacker if uid is not None else world.stranger
    client = await connect(http, world, uid)
    try:
        for frame in frames:
            if isinstance(frame, bytes):
                await client.ws.send_bytes(frame)
            else:
                await client.ws.send_str(frame)
        await client.ws.send_str(json.dumps({"type": "ping", "id": "fz-end"}))
        replies: list[dict[str, Any]] = []
        while True:
            message = await client.receive()
            if message["type"] in REPLY_TYPES:
                replies.append(message)
                if message.get("id") == "fz-end":
                    break
            # pushes to the attacker (its own sessions) are fine; anything is checked by receive()
        assert len(replies) == len(frames) + 1, (frames, replies)
        for reply in replies:
            if reply["type"] == "error":
                assert reply["error"]["code"] in PROTOCOL_CODES, reply
                assert isinstance(reply["error"]["message"], str)
        last = replies[-1]  # a pong, or (never authenticated) NOT_AUTHENTICATED: the connection is alive
        assert last["type"] == "pong" or last["error"]["code"] in ("NOT_AUTHENTICATED", "RATE_LIMITED"), last
    finally:
        await client.close()


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
ROUTES = [
    "/v1/users",
    "/v1/me",
    "/v1/calls",
    "/v1/calls/token",
    "/v1/calls/{x}",
    "/v1/calls/{x}/accept",
    "/v1/calls/{x}/reject",
    "/v1/calls/{x}/end",
    "/v1/sessions/{x}/participants",
    "/v1/{x}",
    "/{x}",
    "/v1/ws",
]
REAL_ROUTES = [
    ("POST", "/v1/users"),
    ("GET", "/v1/users"),
    ("GET", "/v1/me"),
    ("POST", "/v1/calls/token"),
    ("GET", "/v1/sessions/{x}/participants"),
    ("POST", "/v1/calls"),
    ("GET", "/v1/calls"),
    ("GET", "/v1/calls/{x}"),
    ("POST", "/v1/calls/{x}/accept"),
    ("POST", "/v1/calls/{x}/reject"),
    ("POST", "/v1/calls/{x}/end"),
]
path_text = st.text(
    alphabet=st.characters(codec="ascii", exclude_categories=["Cc"], exclude_characters="/?#"), max_size=20
)


def rest_strategy(world: World, valid_secrets: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Requests with random everything; with `valid_secrets`, they carry mal's auth token and the
    admin key (so they reach the handlers' own checks instead of the authentication's)."""
    auth_values = st.sampled_from(
        [
            f"Bearer {world.tokens['mal']}",
            "Bearer 0000",
            "Basic abc",
            "Bearer ",
            f"bearer  {world.tokens['amy']}",
        ]
    ) | st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=30)
    if valid_secrets:
        auth_values = st.just(f"Bearer {world.tokens['mal']}")
    headers = st.fixed_dictionaries(
        {"X-Admin-Key": st.just(world.admin_key)} if valid_secrets else {},
        optional={
            "Authorization": auth_values,
            **({} if valid_secrets else {"X-Admin-Key": st.sampled_from(["wrong", ""]) | path_text}),
            "Content-Type": st.sampled_from(["application/json", "text/plain", "multipart/form-data"]),
        },
    )
    bodies = (
        st.none()
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=60)
        | st.fixed_dictionaries(
            {},
            optional={
                "uid": ids,
                "name": st.text(max_size=20) | json_scalars,
                "sessionId": ids,
                "receiverUid": st.sampled_from(["amy", "bob", "mal"]) | ids,
                "callType": st.sampled_from(["audio", "video"]) | json_values,
                "status": st.sampled_from(["rejected", "busy", "cancelled"]) | json_values,
            },
        ).map(lambda d: json.dumps(d).encode())
        | st.just(b"[" * 30_000)
        | st.just(b'{"pad": "' + b"x" * 70_000 + b'"}')
    )
    query = st.dictionaries(
        st.sampled_from(["type", "status", "direction", "hasRecording", "page", "perPage"]) | path_text,
        path_text | st.sampled_from(["1", "0", "-1", "100", "101", "1000001", "9" * 25, "true"]),
        max_size=3,
    )
    # Mostly the routes that exist (so bodies and queries reach their handlers), sometimes anything.
    target = st.sampled_from(REAL_ROUTES) | st.tuples(st.sampled_from(METHODS), st.sampled_from(ROUTES))
    return st.fixed_dictionaries(
        {
            "target": target,
            "segment": st.sampled_from(["fz-a", "c-unknown"]) | path_text,
            "headers": headers,
            "client": st.just(world.insider if valid_secrets else world.stranger),
            "body": bodies,
            "query": query,
        }
    )


async def rest_once(world: World, req: dict[str, Any]) -> None:
    method, route = req["target"]
    path = route.replace("{x}", req["segment"] or "x")
    url = world.url + path
    async with req["client"].request(
        method, url, headers=req["headers"], data=req["body"], params=req["query"]
    ) as r:
        raw = await r.read()
        assert r.status < 500, (req, r.status, raw[:200])
        if r.status >= 400 and method != "HEAD":
            body = json.loads(raw)
            assert body["error"]["code"] in PROTOCOL_CODES, body
            assert isinstance(body["error"]["message"], str)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1


# ----------------------------------------------------------------------------- the test


def test_fuzzing_never_breaks_the_server(server_process: ServerProcess) -> None:
    loop = LoopThread()
    world: World | None = None
    try:
        world = loop.run(build_world(server_process.url, server_process.admin_key))
        frames = frame_strategy(world)
        counts = {"ws": 0, "frames": 0, "rest": 0}

        def fuzz_ws(examples: int) -> None:
            @seed(SEED)
            @fuzz_settings(examples)
            @given(st.lists(frames, max_size=12), st.booleans())
            def sequences(batch: list[str | bytes], authenticated: bool) -> None:
                counts["ws"] += 1
                counts["frames"] += len(batch)
                loop.run(run_sequence(world, batch, "mal" if authenticated else None))

            sequences()

        def fuzz_rest(examples: int) -> None:
            @seed(SEED)
            @fuzz_settings(examples)
            @given(rest_strategy(world, valid_secrets=True) | rest_strategy(world, valid_secrets=False))
            def requests(req: dict[str, Any]) -> None:
                counts["rest"] += 1
                loop.run(rest_once(world, req))

            requests()

        # Warm-up round (first connections, lazy imports, caches), then the measured fuzzing.
        fuzz_ws(30)
        fuzz_rest(30)
        loop.run(check_healthy(world))
        before = server_process.rss_kb()
        fuzz_ws(1500)
        fuzz_rest(1000)
        loop.run(check_healthy(world))
        loop.run(asyncio.sleep(0.5))
        after = server_process.rss_kb()
        print(f"fuzzed {counts}; server RSS {before} KB -> {after} KB ({after - before:+d} KB)")
        assert after - before < RSS_GROWTH_LIMIT_KB, (before, after)

        # A frame over 256 KiB closes only that connection (1009), as documented.
        async def oversized() -> None:
            client = await connect(world.attacker, world, "mal")
            await client.ws.send_str("x" * (300 * 1024))
            with pytest.raises(ConnectionError):
                await client.receive()
            assert client.ws.close_code == 1009

        loop.run(oversized())
        loop.run(check_healthy(world))

        assert server_process.proc.poll() is None
        log = server_process.log_text()
        assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
    finally:
        if world is not None:
            loop.run(close_world(world))
        loop.close()
