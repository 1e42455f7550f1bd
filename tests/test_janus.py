"""The Janus HTTP client (kiosk/janus.py) against a real Janus (Debian's janus, tests/janus_server.py):
a session and a handle made and destroyed, Janus's and the VideoRoom's error codes surfaced as
JanusError, Janus unreachable, silent or gone as JanusUnavailable, and the long poll bringing both the
replies to asynchronous requests and the events nobody asked for."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import wait_until
from janus_server import VIDEOROOM_ADMIN_KEY, JanusServer, running_janus

from kiosk.janus import (
    ERROR_NO_SUCH_ROOM,
    ERROR_NO_SUCH_SESSION,
    ERROR_PLUGIN_NOT_FOUND,
    REQUEST_TIMEOUT,
    VIDEOROOM,
    JanusError,
    JanusSession,
    JanusUnavailable,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    with running_janus(tmp_path) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client of our own, to ask Janus directly what the module under test did."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def raw(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json={**body, "transaction": secrets.token_hex(6)}) as response:
        assert response.status == 200
        reply: dict[str, Any] = await response.json(content_type=None)
        return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def create_room(janus: JanusServer) -> int:
    async with JanusSession(janus.url, long_poll=False) as session:
        handle = await session.attach(VIDEOROOM)
        data = await handle.request(
            {"request": "create", "admin_key": VIDEOROOM_ADMIN_KEY, "notify_joining": True, "publishers": 3}
        )
    return int(data["room"])


async def test_a_session_and_a_handle_are_made_and_destroyed(
    janus: JanusServer, http: aiohttp.ClientSession
) -> None:
    session = await JanusSession(janus.url).create()
    try:
        assert isinstance(session.id, int) and session.error is None and not session.closed
        assert (await raw(http, f"{janus.url}/{session.id}", {"janus": "keepalive"}))["janus"] == "ack"
        handle = await session.attach(VIDEOROOM)
        assert handle.plugin == VIDEOROOM and session.handles == {handle.id: handle}
        data = await handle.request({"request": "exists", "room": 4242})  # synchronous: its data
        assert data == {"videoroom": "success", "room": 4242, "exists": False}
        # The handle is Janus's: another client can use it (its "list" answer is the VideoRoom's).
        reply = await raw(
            http, f"{janus.url}/{session.id}/{handle.id}", {"janus": "message", "body": {"request": "list"}}
        )
        assert reply["janus"] == "success" and reply["plugindata"]["plugin"] == VIDEOROOM
        await handle.detach()
        assert session.handles == {}
        reply = await raw(
            http, f"{janus.url}/{session.id}/{handle.id}", {"janus": "message", "body": {"request": "list"}}
        )
        assert reply["janus"] == "error" and reply["error"]["code"] == 459  # no such handle
    finally:
        await session.destroy()
    assert session.closed and session.error is None
    assert all(task.done() for task in session._tasks)  # its long poll and keepalive stopped
    reply = await raw(http, f"{janus.url}/{session.id}", {"janus": "keepalive"})
    assert reply["janus"] == "error" and reply["error"]["code"] == ERROR_NO_SUCH_SESSION
    with pytest.raises(JanusUnavailable, match="closed"):
        await session.attach(VIDEOROOM)
    await session.destroy()  # twice: nothing more to do

    # As a context manager, on the caller's aiohttp session (left open).
    async with aiohttp.ClientSession() as shared:
        async with JanusSession(janus.url, http=shared, long_poll=False) as brief:
            assert brief.id is not None and brief._tasks == []
            await brief.attach(VIDEOROOM)
        assert brief.closed and not shared.closed
        reply = await raw(http, f"{janus.url}/{brief.id}", {"janus": "keepalive"})
        assert reply["janus"] == "error" and reply["error"]["code"] == ERROR_NO_SUCH_SESSION


async def test_refusals_are_janus_errors_with_their_code(janus: JanusServer) -> None:
    async with JanusSession(janus.url) as session:
        # Janus's own code: no such plugin.
        with pytest.raises(JanusError) as refused:
            await session.attach("janus.plugin.nothing")
        assert refused.value.code == ERROR_PLUGIN_NOT_FOUND and type(refused.value) is JanusError
        assert "attach" in str(refused.value) and str(ERROR_PLUGIN_NOT_FOUND) in str(refused.value)
        handle = await session.attach(VIDEOROOM)
        # The plugin's code, from a synchronous request ...
        with pytest.raises(JanusError) as refused:
            await handle.request({"request": "destroy", "room": 4242, "secret": "nope"})
        assert refused.value.code == ERROR_NO_SUCH_ROOM and type(refused.value) is JanusError
        assert "No such room" in str(refused.value) and "destroy" in str(refused.value)
        # ... and from the event that answers an asynchronous one.
        with pytest.raises(JanusError) as refused:
            await handle.message({"request": "join", "ptype": "publisher", "room": 4242})
        assert refused.value.code == ERROR_NO_SUCH_ROOM and "join" in str(refused.value)
        # A refusal loses nothing: the session and handle go on.
        assert session.error is None
        assert (await handle.request({"request": "exists", "room": 4242}))["exists"] is False
    # Without a long poll, an asynchronous request could never read its reply: refused at once.
    async with JanusSession(janus.url, long_poll=False) as session:
        handle = await session.attach(VIDEOROOM)
        started = time.monotonic()
        with pytest.raises(JanusError, match="long poll") as refused:
            await handle.message({"request": "join", "ptype": "publisher", "room": 4242})
        assert not isinstance(refused.value, JanusUnavailable) and time.monotonic() - started < 2.0


async def test_an_unreachable_janus_is_unavailable_with_a_clear_message(janus: JanusServer) -> None:
    port = free_port()  # nobody listens there
    url = f"http://127.0.0.1:{port}/janus"
    started = time.monotonic()
    with pytest.raises(JanusUnavailable) as unavailable:
        async with JanusSession(url):
            pass
    message = str(unavailable.value)
    assert message.startswith(f"Janus at {url} is unavailable: ") and "Cannot connect" in message, message
    assert time.monotonic() - started < 2.0
    # A Janus that answers with an HTTP error (a wrong path).
    with pytest.raises(JanusUnavailable, match="answered HTTP 404"):
        async with JanusSession(janus.url.replace("/janus", "/nothing")):
            pass

    # A listener that never answers: unavailable after the request timeout, and the message says why.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the request, then nothing until the client gives up and hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(JanusUnavailable) as unavailable:
            async with JanusSession(f"http://127.0.0.1:{silent_port}/janus"):
                pass
        assert REQUEST_TIMEOUT - 0.5 < time.monotonic() - started < REQUEST_TIMEOUT + 2
        assert str(unavailable.value).endswith("is unavailable: TimeoutError"), str(unavailable.value)
    finally:
        server.close()
        await server.wait_closed()

    # Janus going away under a live session: its long poll fails, and the session is lost once.
    session = await JanusSession(janus.url).create()
    lost: list[JanusUnavailable] = []
    session.on_lost = lost.append
    handle = await session.attach(VIDEOROOM)
    handle_lost: list[JanusUnavailable] = []
    handle.on_lost = handle_lost.append
    try:
        janus.stop()
        await wait_until(lambda: lost, 5, "the session lost")
        assert len(lost) == 1 and handle_lost == lost and session.error is lost[0]
        with pytest.raises(JanusUnavailable) as unavailable:
            await handle.request({"request": "list"})
        assert unavailable.value is lost[0]
    finally:
        await session.destroy()


async def test_a_session_janus_dropped_is_lost(janus: JanusServer, http: aiohttp.ClientSession) -> None:
    session = await JanusSession(janus.url).create()
    lost: list[JanusUnavailable] = []
    session.on_lost = lost.append
    try:
        handle = await session.attach(VIDEOROOM)
        assert (await raw(http, f"{janus.url}/{session.id}", {"janus": "destroy"}))["janus"] == "success"
        with pytest.raises(JanusUnavailable) as unavailable:
            await handle.request({"request": "list"})
        assert unavailable.value.code == ERROR_NO_SUCH_SESSION and "dropped" in str(unavailable.value)
        await wait_until(lambda: lost, 5, "on_lost")
        assert len(lost) == 1 and lost[0].code == ERROR_NO_SUCH_SESSION
    finally:
        await session.destroy()


async def test_the_long_poll_brings_replies_and_events(janus: JanusServer) -> None:
    room = await create_room(janus)
    async with JanusSession(janus.url) as alice, JanusSession(janus.url) as bob:
        events: list[dict[str, Any]] = []
        core: list[dict[str, Any]] = []
        handle = await alice.attach(VIDEOROOM)
        handle.on_event = lambda data, jsep: events.append(data)
        handle.on_core_event = core.append
        # An asynchronous request: Janus acks it, and its event comes back through the long poll.
        joined, jsep = await handle.message({"request": "join", "ptype": "publisher", "room": room})
        assert joined["videoroom"] == "joined" and joined["room"] == room and jsep is None
        assert events == []  # the reply went to its request, not to on_event
        # Events nobody asked for: bob joining, then the room destroyed.
        other = await bob.attach(VIDEOROOM)
        await other.message({"request": "join", "ptype": "publisher", "room": room, "display": "bob"})
        await wait_until(lambda: any("joining" in e for e in events), 5, "bob joining, at alice")
        joining = next(e for e in events if "joining" in e)
        assert joining["videoroom"] == "event" and joining["joining"]["display"] == "bob"
        async with JanusSession(janus.url, long_poll=False) as admin:
            await (await admin.attach(VIDEOROOM)).request({"request": "destroy", "room": room})
        await wait_until(lambda: any(e.get("videoroom") == "destroyed" for e in events), 5, "destroyed")
        assert alice.error is None and bob.error is None
        assert all(e.get("janus") != "event" for e in core)
