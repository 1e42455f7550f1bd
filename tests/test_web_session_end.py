"""How a session ends in the browser SDK (kiosk/web/calls.js), as the documents and the Python SDK say:
onCallEnded for a 1:1 call only; one left alone in a group is warned, can stay, and is timed out; a
listener given twice is called once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_support import chromium
from calls_support import endpoints, make_user, new_session_id, running_server, wait_until
from test_web import _open_app

pytestmark = pytest.mark.timeout(90)

# Joins a session by id with an idle period, one listener both in the settings and registered by id;
# every event it hears is kept in window.sessionEvents as [name, argument].
_JOIN_RECORDING = """
async ([sessionId, idleSeconds]) => {
  const Calls = window.kioskCalls;
  window.sessionEvents = [];
  const names = ["onUserJoined", "onUserLeft", "onCallEnded", "onSessionTimeout", "onSessionTimeoutWarning",
                 "onRecordingToggled", "onError", "onUserListUpdated"];
  const describe = (arg) => Array.isArray(arg) ? arg.map((user) => user.uid) : typeof arg !== "object" || arg === null ? arg ?? null
    : arg.user ? [arg.user.uid, arg.recording, arg.at] : arg.uid ?? arg.code;
  const listener = new Calls.OngoingCallListener(Object.fromEntries(names.map((name) => [name, (arg) =>
    window.sessionEvents.push([name, describe(arg)])])));
  Calls.addCallEventListener("twice", listener);
  const settings = new Calls.CallSettingsBuilder().setCallListener(listener).setIdleTimeoutPeriod(idleSeconds).build();
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""


async def _events(page: Any, name: str) -> list[Any]:
    return [arg for event, arg in await page.evaluate("() => window.sessionEvents") if event == name]


async def test_the_page_left_alone_in_a_group_is_warned_can_stay_and_is_timed_out(tmp_path):
    async with (
        asyncio.timeout(80),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "ann", "ben") as (ann, ben),
        chromium() as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        session = new_session_id()
        await ann.join(session)
        await ben.join(session)
        await page.evaluate(_JOIN_RECORDING, [session, 4])
        await wait_until(lambda: _joined(page, 2), 20, "ann and ben in the page's list")
        # Those already there come in the user list (no join event); the listener given twice hears it once.
        assert await _events(page, "onUserListUpdated") in (
            [["visitor", "ann", "ben"]],
            [["visitor", "ben", "ann"]],
        )
        assert not await _events(page, "onUserJoined")

        await ann.calls.end_session()
        await ben.calls.end_session()
        await wait_until(lambda: _left(page, 2), 10, "ann and ben left, in the page")
        assert await _events(page, "onUserLeft") in (["ann", "ben"], ["ben", "ann"])
        assert await page.evaluate("() => window.kioskCalls.inSession()")
        assert not await _events(page, "onCallEnded")

        await wait_until(lambda: _events(page, "onSessionTimeoutWarning"), 3, "the idle warning")
        assert await _events(page, "onSessionTimeoutWarning") == [4]  # a period under 60 s: all of it
        await asyncio.sleep(3.0)
        await page.evaluate("() => window.kioskCalls.stay()")  # 1 s before the end: a new period
        await asyncio.sleep(2.0)
        assert not await _events(page, "onSessionTimeout")
        await wait_until(lambda: _events(page, "onSessionTimeout"), 5, "the idle timeout")
        assert len(await _events(page, "onSessionTimeout")) == 1
        assert not await page.evaluate("() => window.kioskCalls.inSession()")
        assert not await _events(page, "onCallEnded")


async def test_a_group_ended_for_all_is_no_call_ended_but_a_one_to_one_end_is(tmp_path):
    async with (
        asyncio.timeout(80),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "ann", "ben") as (ann, ben),
        chromium() as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        group = new_session_id()
        await ann.join(group)
        await ben.join(group)
        await page.evaluate(_JOIN_RECORDING, [group, 180])
        await wait_until(lambda: _joined(page, 2), 20, "ann and ben in the page's list")
        await _end_for_all(ann, group)
        await wait_until(lambda: _left(page, 2), 10, "the others gone, in the page")
        await wait_until(lambda: ann.calls.session is None, 10, "the group session over for ann")
        assert not await _events(page, "onCallEnded")
        assert not await page.evaluate("() => window.kioskCalls.inSession()")

        one_to_one = new_session_id()
        await ann.join(one_to_one)
        await page.evaluate(_JOIN_RECORDING, [one_to_one, 180])
        await wait_until(lambda: _joined(page, 1), 20, "ann in the page's list")
        await _end_for_all(ann, one_to_one)
        await wait_until(lambda: _events(page, "onCallEnded"), 10, "the page's call to end")
        assert len(await _events(page, "onCallEnded")) == 1  # the listener given twice hears it once


async def test_a_page_that_joins_while_a_kiosk_records_is_told(tmp_path):
    async with (
        asyncio.timeout(80),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "ann", "ben") as (ann, ben),
        chromium() as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        session = new_session_id()
        await ann.join(session)
        await ben.join(session)
        ann.calls.start_recording()
        started = (await ben.events.wait_for("on_recording_toggled"))[0]
        await page.evaluate(_JOIN_RECORDING, [session, 180])
        await wait_until(lambda: _events(page, "onRecordingToggled"), 20, "the recording, in the page")
        assert await _events(page, "onRecordingToggled") == [["ann", True, started.at_ms]]


async def _end_for_all(endpoint: Any, session_id: str) -> None:
    """The protocol's `end`: the session is over for everyone in it (reason `ended`)."""
    await endpoint.calls.signaling.request({"type": "end", "sessionId": session_id})


async def _joined(page: Any, count: int) -> bool:
    """The page's latest user list holds itself and `count` others."""
    lists = await _events(page, "onUserListUpdated")
    return bool(lists) and len(lists[-1]) == count + 1


async def _left(page: Any, count: int) -> bool:
    return len(await _events(page, "onUserLeft")) >= count
