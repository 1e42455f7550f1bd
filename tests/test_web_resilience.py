"""The browser client (kiosk/web) keeps its call when the call server goes away, as the Python SDK does:
a headless-Chromium page in a 1:1 call with a Python kiosk, and the server stopped mid-call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from browser_support import chromium
from calls_support import ADMIN_KEY, Endpoint, endpoints, make_user, video_frames, wait_until

from kiosk.server.app import RunningServer, start_server
from kiosk.server.config import ServerConfig

pytestmark = pytest.mark.timeout(60)

# What the page's listeners hear, for the test to read (window.testEvents).
_RECORD_EVENTS = """() => {
  window.testEvents = [];
  const record = (name) => (arg) =>
    window.testEvents.push({ name, uid: arg?.uid ?? null, code: arg?.code ?? null, audioMuted: arg?.audioMuted });
  const session = ["onUserJoined", "onUserLeft", "onUserMuted", "onCallEnded", "onError"];
  window.kioskCalls.addCallEventListener("test", Object.fromEntries(session.map((n) => [n, record(n)])));
  window.kioskCalls.addCallListener("test", {
    onConnectionLost: record("onConnectionLost"),
    onReconnected: record("onReconnected"),
  });
}"""


def _config(data_dir: Any, port: int = 0, **options: Any) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=port, data_dir=data_dir, admin_key=ADMIN_KEY, **options)


async def _events(page: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in await page.evaluate("() => window.testEvents") if e["name"] == name]


async def _stats_of(page: Any, uid: str) -> dict[str, Any]:
    stats = await page.evaluate("() => window.kioskCalls.getSessionStats()")
    return ((stats or {}).get("participants") or {}).get(uid) or {}


async def _frames_from_kiosk(page: Any, uid: str = "kiosk") -> int:
    return int((await _stats_of(page, uid)).get("videoFramesDecoded", 0))


async def _tiles(page: Any) -> list[str]:
    return list(await page.eval_on_selector_all(".calls-tile", "nodes => nodes.map((n) => n.dataset.uid)"))


@asynccontextmanager
async def _kiosk_and_page(
    server: RunningServer, tmp_path: Path, uid: str
) -> AsyncIterator[tuple[Endpoint, Any]]:
    """A kiosk endpoint `uid` and a headless-Chromium page in a 1:1 call, within 50 s."""
    async with (
        asyncio.timeout(50),
        endpoints(server.url, tmp_path, uid) as (kiosk,),
        chromium() as browser,
        _page_in_call(server, kiosk, browser) as page,
    ):
        yield kiosk, page


@asynccontextmanager
async def _page_in_call(server: RunningServer, kiosk: Endpoint, browser: Any) -> AsyncIterator[Any]:
    """The visitor's page calls the kiosk, which answers; yields the page once media flows both ways."""
    token = await make_user(server.url, "visitor", "Visitor")
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{server.url}/app/?token={token}")
    await page.locator("#lobby").wait_for()
    await page.evaluate(_RECORD_EVENTS)
    await page.locator(f'#users li.online[data-uid="{kiosk.uid}"] button.call').click()
    incoming = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
    await kiosk.calls.accept_call(incoming.session_id)
    await kiosk.join(incoming.session_id)
    await wait_until(lambda: _frames_from_kiosk(page, kiosk.uid), 20, "the kiosk's video in the page")
    await wait_until(lambda: video_frames(kiosk, "visitor"), 20, "the page's video at the kiosk")
    yield page
    assert errors == []


async def _media_flows_while_down(page: Any, kiosk: Endpoint) -> None:
    """Media is peer to peer: with the server gone, the page keeps decoding the kiosk's video."""
    lost = await _events(page, "onError")
    assert [e["code"] for e in lost] == ["CONNECTION_LOST"], lost
    before = await _frames_from_kiosk(page)
    await asyncio.sleep(1.0)
    assert await _frames_from_kiosk(page) > before + 5
    assert await page.locator("#call").is_visible() and await page.locator("#connection").is_visible()
    assert not await _events(page, "onCallEnded") and kiosk.calls.session is not None


async def test_a_server_restart_mid_call_keeps_the_pages_call(tmp_path):
    data_dir = tmp_path / "server"
    server = await start_server(_config(data_dir))
    port = int(server.url.rsplit(":", 1)[1])
    try:
        async with _kiosk_and_page(server, tmp_path, "kiosk") as (kiosk, page):
            page_joins = len(await _events(page, "onUserJoined"))
            kiosk_joins = len(kiosk.events.of("on_user_joined"))
            sdp = (await _stats_of(page, "kiosk"))["localSdp"]

            await server.close()
            await wait_until(lambda: _events(page, "onError"), 5, "CONNECTION_LOST in the page")
            await _media_flows_while_down(page, kiosk)

            server = await start_server(_config(data_dir, port))
            restarted = time.monotonic()
            await wait_until(lambda: _events(page, "onReconnected"), 10, "the page to reconnect")
            print(f"page reconnected {time.monotonic() - restarted:.2f} s after the restart")
            await page.locator("#connection").wait_for(state="hidden", timeout=5_000)
            await wait_until(lambda: kiosk.calls.session.rejoined_since_loss, 10, "the kiosk to rejoin")
            # Both sides list the two of them once; nobody joined twice or left.
            assert await _tiles(page) == ["visitor", "kiosk"]
            assert [u.uid for u in kiosk.calls.session.user_list()] == ["kiosk", "visitor"]
            assert len(await _events(page, "onUserJoined")) == page_joins and not await _events(
                page, "onUserLeft"
            )
            assert len(kiosk.events.of("on_user_joined")) == kiosk_joins
            assert not kiosk.events.of("on_user_left")
            assert len(await _events(page, "onError")) == 1  # CONNECTION_LOST once
            # The page is in the server's session again: the kiosk's mute reaches it.
            kiosk.calls.mute_audio(True)

            async def muted() -> bool:
                return any(
                    e["uid"] == "kiosk" and e["audioMuted"] for e in await _events(page, "onUserMuted")
                )

            await wait_until(muted, 10, "the kiosk's mute in the page")
            before = await _frames_from_kiosk(page)
            await wait_until(lambda: _more(page, before), 5, "media after the restart")
            assert (await _stats_of(page, "kiosk"))["localSdp"] == sdp  # the media never stopped: no rebuild
            await page.locator(".calls-controls button[data-action=end]").click()
            await kiosk.events.wait_for("on_call_ended", timeout=10)
            await page.locator("#lobby").wait_for()
    finally:
        await server.close()


async def _more(page: Any, than: int) -> bool:
    return await _frames_from_kiosk(page) > than


async def test_a_server_down_longer_than_the_grace_ends_the_pages_call(tmp_path):
    server = await start_server(_config(tmp_path / "server", rejoin_grace=3.0))
    try:
        async with _kiosk_and_page(server, tmp_path, "kiosk") as (kiosk, page):
            await server.close()
            stopped = time.monotonic()
            await wait_until(lambda: _events(page, "onError"), 5, "CONNECTION_LOST in the page")
            await _media_flows_while_down(page, kiosk)
            # Not back within the server's grace (3 s): the call is over for the page, which goes
            # back to its lobby (and goes on trying to reach the server).
            await wait_until(lambda: _events(page, "onCallEnded"), 10, "the page's call to end")
            assert time.monotonic() - stopped > 2.5
            await page.locator("#lobby").wait_for(timeout=5_000)
            assert not await page.locator("#call").is_visible()
            assert await page.locator("#connection").is_visible()
            await kiosk.events.wait_for("on_call_ended", timeout=10)
    finally:
        await server.close()


async def test_the_page_rebuilds_a_connection_whose_media_stopped_when_its_uid_is_smaller(tmp_path):
    # "visitor" < "zkiosk": the page is the one that rebuilds (docs/protocol.md, "Coming back").
    server = await start_server(_config(tmp_path / "server"))
    try:
        async with _kiosk_and_page(server, tmp_path, "zkiosk") as (kiosk, page):
            first_sdp = (await _stats_of(page, "zkiosk"))["localSdp"]
            offers = kiosk.calls.session.offers_received.get("visitor", 0)
            await kiosk.calls.session.peers["visitor"].close()  # its media to the page stops

            async def rebuilt() -> bool:
                stats = await _stats_of(page, "zkiosk")
                return stats.get("localSdp") != first_sdp and stats.get("videoFramesDecoded", 0) > 5

            await wait_until(rebuilt, 15, "the page to rebuild the connection and media to flow again")
            assert kiosk.calls.session.offers_received.get("visitor", 0) == offers + 1  # the page offered
            await wait_until(
                lambda: video_frames(kiosk, "visitor"), 10, "the page's video at the kiosk again"
            )
            assert [e["code"] for e in await _events(page, "onError")] == []
    finally:
        await server.close()


# The page's next ping goes nowhere, as on a connection whose network died without a word.
_SWALLOW_A_PING = """() => {
  window.pingsToSwallow = 1;
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (window.pingsToSwallow > 0 && JSON.parse(data).type === "ping") {
      window.pingsToSwallow--;
      return;
    }
    return send.call(this, data);
  };
}"""


async def test_the_page_renews_a_signaling_connection_whose_pong_does_not_come(tmp_path):
    server = await start_server(_config(tmp_path / "server"))
    try:
        async with _kiosk_and_page(server, tmp_path, "kiosk") as (kiosk, page):
            await page.evaluate(_SWALLOW_A_PING)
            swallowed = time.monotonic()
            await wait_until(lambda: _events(page, "onReconnected"), 10, "the page to renew its connection")
            # A ping every 2 s, its pong awaited 2 s: renewed within about 4 s, and rejoined.
            assert time.monotonic() - swallowed < 6
            assert not await _events(page, "onError") and not await _events(page, "onConnectionLost")
            kiosk.calls.mute_audio(True)

            async def muted() -> bool:
                return any(
                    e["uid"] == "kiosk" and e["audioMuted"] for e in await _events(page, "onUserMuted")
                )

            await wait_until(muted, 10, "the kiosk's mute in the page, over the new connection")
            assert not kiosk.events.of("on_user_left") and not await _events(page, "onCallEnded")
    finally:
        await server.close()
