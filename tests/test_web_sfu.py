"""The browser client in a group call through Janus: a headless-Chromium page is the fifth to join a
session of four kiosk SDK endpoints, so the session moves from the mesh to a VideoRoom, and the page
publishes and subscribes there as the SDK does (docs/protocol.md, "Group calls through the SFU")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_support import chromium
from calls_support import (
    audio_frames,
    endpoints,
    make_user,
    new_session_id,
    running_server,
    video_frames,
    wait_until,
)
from janus_server import VIDEOROOM_ADMIN_KEY, JanusServer, running_janus
from test_web import _browser_stats, _open_app, _poll

from kiosk.calls.sfu import SfuFeed

pytestmark = pytest.mark.timeout(90)

KIOSKS = ("ann", "ben", "cat", "dan")

# Join a session from the page, into its call screen, through the page's own Calls SDK; errors are kept.
_JOIN = """
async (sessionId) => {
  const Calls = window.kioskCalls;
  window.callErrors = [];
  const listener = new Calls.OngoingCallListener({ onError: (error) => window.callErrors.push(error) });
  const settings = new Calls.CallSettingsBuilder().setCallListener(listener).build();
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""

# Per tile: whether its <video> shows a stream with video that has rendered frames (videoWidth).
_TILES = """
() => Object.fromEntries([...document.querySelectorAll(".calls-tile")].map((tile) => {
  const video = tile.querySelector("video");
  const stream = video.srcObject;
  return [tile.dataset.uid, {
    videoTracks: stream ? stream.getVideoTracks().length : 0,
    audioTracks: stream ? stream.getAudioTracks().length : 0,
    width: video.videoWidth,
  }];
}))
"""


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    with running_janus(tmp_path) as server:
        yield server


@dataclass
class WebGroupCall:
    server: Any
    eps: list[Any]
    page: Any
    page_errors: list[str]  # uncaught errors and unhandled rejections in the page


@contextlib.asynccontextmanager
async def web_group_call(
    tmp_path: Path, janus: JanusServer, **server_options: Any
) -> AsyncIterator[WebGroupCall]:
    """A call server that sends sessions past the mesh limit to this Janus, the four kiosk endpoints
    (ICE on the address Janus gathers on: it cannot use loopback; see tests/janus_server.py), and the
    visitor's page, signed in."""
    async with (
        running_server(
            tmp_path / "server", janus_url=janus.url, janus_admin_key=VIDEOROOM_ADMIN_KEY, **server_options
        ) as server,
        endpoints(server.url, tmp_path, *KIOSKS, ice_host_addresses=[janus.ice_address]) as eps,
        chromium() as browser,
    ):
        token = await make_user(server.url, "visitor", "Visitor")
        page = await _open_app(browser, server.url, token)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        yield WebGroupCall(server, eps, page, page_errors)


@pytest.mark.parametrize(
    "page_joins",
    [
        # The page takes the session past the mesh limit (4): its joined reply names the room, and the
        # four get session.media.
        "fifth",
        # The page is in the mesh with three kiosks; the fourth kiosk's join moves everyone, the page
        # by session.media.
        "fourth",
    ],
)
async def test_browser_goes_through_the_sfu_with_four_kiosks(tmp_path, janus, page_joins):
    async with asyncio.timeout(80), web_group_call(tmp_path, janus) as call:
        eps, page, page_errors = call.eps, call.page, call.page_errors
        session = new_session_id()
        first = eps if page_joins == "fifth" else eps[:3]
        for ep in first:
            await ep.join(session)
        await page.evaluate(_JOIN, session)
        if page_joins == "fourth":

            async def mesh_media() -> dict[str, Any] | None:
                stats = await page.evaluate("() => window.kioskCalls.getSessionStats()")
                ok = stats["mediaMode"] == "mesh" and all(
                    stats["participants"].get(ep.uid, {}).get("videoFramesDecoded", 0) > 5 for ep in first
                )
                return stats if ok else None

            await _poll("mesh video from three kiosks in the page", mesh_media, 20)
            await eps[3].join(session)

        async def page_media() -> dict[str, Any] | None:
            stats = await page.evaluate("() => window.kioskCalls.getSessionStats()")
            ok = stats["mediaMode"] == "sfu" and all(
                (p := stats["participants"].get(uid, {})).get("videoFramesDecoded", 0) > 5
                and p.get("audioPacketsReceived", 0) > 5
                for uid in KIOSKS
            )
            return stats if ok else None

        stats = await _poll("video and audio from the four kiosks in the page", page_media, 25)
        assert sorted(stats["participants"]) == sorted(KIOSKS)
        assert stats["publisher"]["connectionState"] == "connected"
        # shown with -s: the pairs ICE picked (Janus gathers on janus.ice_address only)
        print(
            "page ICE:",
            {
                uid: (p.get("localCandidate"), p.get("remoteCandidate"))
                for uid, p in stats["participants"].items()
            },
        )
        # Each kiosk's feed plays in that kiosk's tile, the one the mesh used.
        tiles = await _poll(
            "every tile showing its feed",
            lambda: _rendering(page, KIOSKS),
            10,
        )
        assert sorted(tiles) == sorted([*KIOSKS, "visitor"])

        # Each kiosk receives the page's one published feed through the room.
        for ep in eps:
            await wait_until(lambda e=ep: video_frames(e, "visitor"), 20, f"page video at {ep.uid}")
            await wait_until(lambda e=ep: audio_frames(e, "visitor"), 20, f"page audio at {ep.uid}")
            assert ep.calls.session.media_mode == "sfu"
            assert isinstance(ep.calls.session.peers["visitor"], SfuFeed)
        # ... and it keeps coming (polled: on 2 cores, four aiortc decoders of the page's 640x480 video
        # can fall behind for a moment).
        before = {
            ep.uid: (ep.calls.session.peers["visitor"], await video_frames(ep, "visitor")) for ep in eps
        }
        for ep in eps:
            await wait_until(
                lambda e=ep: _going_on(e, *before[e.uid]),
                5,
                f"page video going on at {ep.uid}",
            )

        # One kiosk leaves: its tile goes from the page, the others go on.
        await eps[3].calls.end_session()
        await page.locator('.calls-tile[data-uid="dan"]').wait_for(state="detached")
        assert "dan" not in (await page.evaluate("() => window.kioskCalls.getSessionStats()"))["participants"]
        decoded = (await _browser_stats(page, "ann"))["videoFramesDecoded"]
        await _poll(
            "ann's video still coming",
            lambda: _more_than(page, "ann", decoded),
            5,
        )

        # The page leaves: its feed goes from the kiosks' sessions, and the page shows no call any more.
        await page.evaluate("() => window.kioskCalls.endSession()")
        for ep in eps[:3]:
            await wait_until(
                lambda e=ep: "visitor" not in e.calls.session.peers, 10, f"the page's feed gone at {ep.uid}"
            )
        assert await page.evaluate("() => window.kioskCalls.getSessionStats()") is None
        assert await page.evaluate("() => window.callErrors") == []
        assert page_errors == []
        for ep in eps[:3]:
            await ep.calls.end_session()


async def _rendering(page: Any, uids: tuple[str, ...]) -> dict[str, Any] | None:
    tiles = await page.evaluate(_TILES)
    ok = all(
        (t := tiles.get(uid)) and t["videoTracks"] == 1 and t["audioTracks"] == 1 and t["width"] > 0
        for uid in uids
    )
    return tiles if ok else None


async def _grew(count: Any, before: int) -> bool:
    return await count > before


async def _going_on(ep: Any, feed: Any, frames: int) -> bool:
    """More of the page's video at `ep` than `frames` on `feed`, or any on a feed made since (a feed
    whose media stopped for a moment is subscribed again, and its count starts from zero)."""
    now = await video_frames(ep, "visitor")
    return now > (frames if ep.calls.session.peers.get("visitor") is feed else 0)


async def _more_than(page: Any, uid: str, frames: int) -> bool:
    return (await _browser_stats(page, uid)).get("videoFramesDecoded", 0) > frames


async def test_page_that_cannot_reach_janus_reports_it_and_stays_in_the_call(tmp_path, janus):
    # The server makes the room, but the URL it gives endpoints leads nowhere (a wrong
    # --janus-public-url): the page says so through onError, with no uncaught promise rejection.
    async with (
        asyncio.timeout(40),
        web_group_call(tmp_path, janus, janus_public_url="http://127.0.0.1:9/janus") as call,
    ):
        eps, page, page_errors = call.eps, call.page, call.page_errors
        session = new_session_id()
        for ep in eps:
            await ep.join(session)
        await page.evaluate(_JOIN, session)

        async def reported() -> list[dict[str, Any]] | None:
            errors = await page.evaluate("() => window.callErrors")
            return errors if any(e["code"] == "SFU_UNAVAILABLE" for e in errors) else None

        errors = await _poll("SFU_UNAVAILABLE in the page", reported, 10)
        assert all(e["code"] == "SFU_UNAVAILABLE" for e in errors), errors
        assert "unavailable" in errors[0]["message"]
        # Still in the session (it retries every second, reporting once): the kiosks' tiles are there.
        await asyncio.sleep(2.5)
        assert len(await page.evaluate("() => window.callErrors")) == 1
        for uid in KIOSKS:
            await page.locator(f'.calls-tile[data-uid="{uid}"]').wait_for(state="attached")
        assert (await page.evaluate("() => window.kioskCalls.getSessionStats()"))["mediaMode"] == "sfu"
        await page.evaluate("() => window.kioskCalls.endSession()")
        assert page_errors == []
        for ep in eps:
            await ep.calls.end_session()


async def test_page_moves_to_the_new_room_after_a_janus_restart(tmp_path, janus):
    async with asyncio.timeout(85), web_group_call(tmp_path, janus) as call:
        eps, page, page_errors = call.eps, call.page, call.page_errors
        session = new_session_id()
        for ep in eps:
            await ep.join(session)
        await page.evaluate(_JOIN, session)

        async def page_media(room_not: int | None = None) -> dict[str, Any] | None:
            stats = await page.evaluate("() => window.kioskCalls.getSessionStats()")
            ok = (
                stats["mediaMode"] == "sfu"
                and stats["room"] != room_not
                and all(stats["participants"].get(uid, {}).get("videoFramesDecoded", 0) > 5 for uid in KIOSKS)
            )
            return stats if ok else None

        before = await _poll("the four kiosks in the page", page_media, 25)
        janus.restart()  # rooms and sessions gone: the session gets a new room (sfu.lost)
        after = await _poll(
            "the four kiosks in the page through the new room", lambda: page_media(before["room"]), 30
        )
        assert after["room"] == eps[0].calls.session.sfu_room["room"]
        # A subscription to the page's new feed that brings nothing is made again after 3, then 6, then
        # 12 s (kiosk/calls/sfu_media.py, start_allowance): on a loaded machine the third comes at 21 s.
        for ep in eps:
            await wait_until(
                lambda e=ep: _grew(video_frames(e, "visitor"), 5), 30, f"page video at {ep.uid} again"
            )
        assert page_errors == []
        for ep in eps:
            await ep.calls.end_session()
