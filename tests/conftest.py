"""Shared fixtures: a real call server on loopback, users created through REST, signaling clients.

- `start_call_server(**overrides)`: factory; starts a server (127.0.0.1, port 0, a tmp data dir shared by
  every server of the test, admin key ADMIN_KEY) and stops it after the test. Overrides are ServerConfig
  fields, e.g. `ring_timeout=0.3`. `start_call_server.latest` is the server started last.
- `call_server`: one started server; `@pytest.mark.parametrize("call_server", [{"ring_timeout": 0.3}],
  indirect=True)` passes overrides (a bare number is taken as the ring timeout).
- `http`: an aiohttp ClientSession.
- `create_user(uid, name=None, avatar=None, server=None)`: POST /v1/users with the admin key; returns a
  TestUser with its auth token. `server` defaults to the server started last.
- `ws_connect(user=None, server=None)`: a SignalingClient on /v1/ws, authenticated as `user` if given.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

# Imported before any test runs: otherwise its pytest plugin imports it at the end of a run that did
# not use it, deep in pytest's hooks, where Python 3.11.7's ast.parse (pytest rewrites what it
# imports) has failed with "SystemError: AST constructor recursion depth mismatch" after a passing run.
import hypothesis  # noqa: F401
import pytest
from stand_in_support import pi  # noqa: F401  (the picamera2 stand-in fixture, for every test module)

from kiosk.server import RunningServer, ServerConfig, start_server

ADMIN_KEY = "test-admin-key"
REPLY_TYPES = frozenset({"ok", "error", "joined", "pong"})

Message = dict[str, Any]
Predicate = Callable[[Message], bool]


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class, despite the name

    uid: str
    name: str
    avatar: str | None
    auth_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"}

    @property
    def public(self) -> dict[str, Any]:
        """As the protocol shows a user: {"uid", "name", "avatar"}."""
        return {"uid": self.uid, "name": self.name, "avatar": self.avatar}


class SignalingClient:
    """A WebSocket client for /v1/ws that keeps messages it was not waiting for, so tests can wait for
    one message type while others (pushes) queue up."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, server: RunningServer) -> None:
        self.ws = ws
        self.server = server
        self.user: TestUser | None = None
        self.inbox: list[Message] = []
        self._ids = 0

    async def send(self, message: Message) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        """Send with a fresh `id` and return the reply carrying that id."""
        self._ids += 1
        request_id = f"r{self._ids}"
        await self.send({**message, "id": request_id})
        return await self.wait_for(lambda m: m.get("id") == request_id and m["type"] in REPLY_TYPES, timeout)

    async def call(self, message_type: str, timeout: float = 5.0, **fields: Any) -> Message:
        return await self.request({"type": message_type, **fields}, timeout)

    async def ok(self, message_type: str, **fields: Any) -> Message:
        """A request that must succeed."""
        reply = await self.call(message_type, **fields)
        assert reply["type"] != "error", reply
        return reply

    async def error(self, message_type: str, **fields: Any) -> str:
        """A request that must be refused; returns the error code."""
        reply = await self.call(message_type, **fields)
        assert reply["type"] == "error", reply
        return reply["error"]["code"]

    async def join(self, session_id: str, token: str | None = None, **fields: Any) -> Message:
        """Join with a fresh call token (of this client's user) unless one is given."""
        assert self.user is not None
        if token is None:
            token = await issue_call_token(self.server, self.user, session_id)
        return await self.call("join", sessionId=session_id, callToken=token, **fields)

    async def receive(self, timeout: float = 5.0) -> Message:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected a text frame, got {frame.type!r} {frame.data!r}")
        return json.loads(frame.data)

    async def wait_for(self, match: str | Predicate, timeout: float = 5.0) -> Message:
        """The first message (queued or arriving) of this type / matching this predicate."""
        predicate: Predicate = (lambda m: m.get("type") == match) if isinstance(match, str) else match
        for i, message in enumerate(self.inbox):
            if predicate(message):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; got {self.inbox}")
            try:
                message = await self.receive(remaining)
            except TimeoutError:
                raise TimeoutError(f"no matching message; got {self.inbox}") from None
            if predicate(message):
                return message
            self.inbox.append(message)

    def discard(self, *types: str) -> None:
        """Forget queued messages of these types (e.g. participant.joined noise before a check)."""
        self.inbox = [m for m in self.inbox if m.get("type") not in types]

    async def assert_silent(self, wait: float = 0.2) -> None:
        """Nothing queued and nothing arrives within `wait` seconds."""
        assert self.inbox == [], self.inbox
        try:
            message = await self.receive(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message}")

    async def close(self) -> None:
        await self.ws.close()


async def issue_call_token(server: RunningServer, user: TestUser, session_id: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/v1/calls/token", json={"sessionId": session_id}, headers=user.headers) as r,
    ):
        assert r.status == 200, await r.text()
        return (await r.json())["token"]


CreateUser = Callable[..., Awaitable[TestUser]]
WsConnect = Callable[..., Awaitable[SignalingClient]]


class ServerFactory:
    """`await start_call_server(**overrides)`; remembers what it started, newest last."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.servers: list[RunningServer] = []

    async def __call__(self, **overrides: Any) -> RunningServer:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": self.data_dir,
            "admin_key": ADMIN_KEY,
            "ring_timeout": 30.0,
        }
        settings.update(overrides)
        server = await start_server(ServerConfig(**settings))
        self.servers.append(server)
        return server

    @property
    def latest(self) -> RunningServer:
        assert self.servers, "no call server started"
        return self.servers[-1]


@pytest.fixture
async def start_call_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    factory = ServerFactory(tmp_path / "data")
    yield factory
    for server in reversed(factory.servers):
        await server.close()  # closing twice is harmless, so tests may close (and restart) themselves


@pytest.fixture
async def call_server(request: pytest.FixtureRequest, start_call_server: ServerFactory) -> RunningServer:
    param = getattr(request, "param", None)
    if isinstance(param, int | float):
        param = {"ring_timeout": float(param)}
    return await start_call_server(**(param or {}))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def create_user(start_call_server: ServerFactory, http: aiohttp.ClientSession) -> CreateUser:
    """Users go to `server`, by default the server started last."""

    async def create(
        uid: str, name: str | None = None, avatar: str | None = None, server: RunningServer | None = None
    ) -> TestUser:
        body: dict[str, Any] = {"uid": uid, "name": name or uid.capitalize()}
        if avatar is not None:
            body["avatar"] = avatar
        target = server or start_call_server.latest
        async with http.post(f"{target.url}/v1/users", json=body, headers={"X-Admin-Key": ADMIN_KEY}) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
        return TestUser(created["uid"], created["name"], created["avatar"], created["authToken"])

    return create


@pytest.fixture
async def ws_connect(
    start_call_server: ServerFactory, http: aiohttp.ClientSession
) -> AsyncIterator[WsConnect]:
    """Connections go to `server`, by default the server started last."""
    clients: list[SignalingClient] = []

    async def connect(user: TestUser | None = None, server: RunningServer | None = None) -> SignalingClient:
        target = server or start_call_server.latest
        ws = await http.ws_connect(f"{target.url}/v1/ws")
        client = SignalingClient(ws, target)
        clients.append(client)
        if user is not None:
            reply = await client.call("auth", authToken=user.auth_token)
            assert reply["type"] == "ok", reply
            client.user = user
        return client

    yield connect
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
