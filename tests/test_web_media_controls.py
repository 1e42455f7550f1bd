"""The browser SDK's camera switch and screen share (kiosk/web/calls.js), against a kiosk SDK endpoint
that watches what the page sends: Chromium's fake devices give two cameras, and getDisplayMedia a fake
1280x720 screen."""

from __future__ import annotations

import asyncio
from typing import Any

import av
import pytest
from browser_support import chromium
from calls_support import endpoints, make_user, new_session_id, running_server, wait_until
from test_web import _open_app

from kiosk.calls import CallSettingsBuilder

pytestmark = pytest.mark.timeout(90)

# Two fake cameras, and a screen to share chosen without a picker.
BROWSER_ARGS = [
    "--use-fake-device-for-media-stream=device-count=2,fps=30",
    "--auto-select-desktop-capture-source=Entire screen",
]

_JOIN = """
async (sessionId) => {
  const Calls = window.kioskCalls;
  window.sessionEvents = [];
  const names = ["onScreenShareStarted", "onScreenShareStopped", "onError"];
  const listener = new Calls.OngoingCallListener(Object.fromEntries(names.map((name) => [name, (arg) =>
    window.sessionEvents.push([name, arg?.code ?? null])])));
  const settings = new Calls.CallSettingsBuilder().enableDefaultLayout(true).setCallListener(listener).build();
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""

# The camera or screen the page sends now: its label.
_SENDING = """
() => {
  return document.querySelector(".calls-local video")?.srcObject?.getVideoTracks()[0]?.label ?? null;
}
"""


class FrameSizes:
    """The kiosk's view: the size of the latest frame from each participant."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, int]] = {}
        self.count = 0

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        self.latest[uid] = (frame.width, frame.height)
        self.count += 1


async def _events(page: Any, name: str) -> int:
    return sum(1 for event, _ in await page.evaluate("() => window.sessionEvents") if event == name)


async def test_the_page_switches_cameras_and_shares_its_screen_and_the_kiosk_sees_each(tmp_path):
    async with (
        asyncio.timeout(80),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk") as (kiosk,),
        chromium(BROWSER_ARGS) as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        session = new_session_id()
        view = FrameSizes()
        token = await kiosk.calls.generate_token(session)
        await kiosk.calls.start_session(token, CallSettingsBuilder().build(), view=view)
        await page.evaluate(_JOIN, session)
        await wait_until(
            lambda: view.latest.get("visitor") == (640, 480), 20, "the page's camera at the kiosk"
        )

        assert await page.evaluate(_SENDING) == "fake_device_0"
        await page.evaluate("() => window.kioskCalls.switchCamera()")
        assert await page.evaluate(_SENDING) == "fake_device_1"
        await page.evaluate("() => window.kioskCalls.switchCamera()")  # round the list
        assert await page.evaluate(_SENDING) == "fake_device_0"
        seen = view.count
        await wait_until(lambda: view.count > seen + 10, 10, "frames from the other camera at the kiosk")

        await page.locator(".calls-controls button[data-action=share]").click()
        await wait_until(lambda: _events(page, "onScreenShareStarted"), 10, "the share to start")
        assert (await page.evaluate(_SENDING)).startswith("screen:")
        await wait_until(
            lambda: view.latest.get("visitor") == (1280, 720), 15, "the shared screen at the kiosk"
        )
        assert (
            await page.locator(".calls-controls button[data-action=share]").text_content() == "Stop sharing"
        )

        # The browser's own "Stop sharing" ends the track: the camera comes back, and the app is told.
        await page.evaluate(
            """() => document.querySelector(".calls-local video").srcObject.getVideoTracks()[0]
                .dispatchEvent(new Event("ended"))"""
        )
        await wait_until(lambda: _events(page, "onScreenShareStopped"), 10, "the share to stop")
        assert await page.evaluate(_SENDING) == "fake_device_0"
        await wait_until(
            lambda: view.latest.get("visitor") == (640, 480), 15, "the camera again at the kiosk"
        )
        # The SDK's own calls, as a page's script makes them.
        await page.evaluate("() => window.kioskCalls.startScreenShare()")
        await wait_until(lambda: _at_least(page, "onScreenShareStarted", 2), 10, "startScreenShare")
        assert (await page.evaluate(_SENDING)).startswith("screen:")
        await page.evaluate("() => window.kioskCalls.stopScreenShare()")
        await wait_until(lambda: _at_least(page, "onScreenShareStopped", 2), 10, "stopScreenShare")
        assert await page.evaluate(_SENDING) == "fake_device_0"
        assert await _events(page, "onError") == 0


async def _at_least(page: Any, name: str, count: int) -> bool:
    return await _events(page, name) >= count
