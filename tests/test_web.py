"""The browser client (kiosk/web) against real headless Chromium: serving, and a call to a Python kiosk."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from browser_support import chromium
from calls_support import audio_frames, endpoints, make_user, running_server, video_frames, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_app_is_served(tmp_path, monkeypatch):
    async with running_server(tmp_path / "server") as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/app/") as response:
            assert response.status == 200
            assert '<script type="module" src="app.js">' in await response.text()
        for name, kind in (("calls.js", "javascript"), ("app.js", "javascript"), ("style.css", "css")):
            async with http.get(f"{server.url}/app/{name}") as response:
                assert response.status == 200 and kind in response.content_type
        async with http.get(f"{server.url}/app?token=x", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/app/?token=x"


async def _browser_stats(page: Any, uid: str) -> dict[str, Any]:
    stats = await page.evaluate("() => window.kioskCalls.getSessionStats()")
    return ((stats or {}).get("participants") or {}).get(uid) or {}


async def _poll(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")


async def test_browser_calls_a_kiosk_and_media_flows_both_ways(tmp_path, monkeypatch):
    async with (
        asyncio.timeout(50),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk") as (kiosk,),
        chromium() as browser,
    ):
        visitor_token = await make_user(server.url, "visitor", "Visitor")
        page = await browser.new_page()
        page.set_default_timeout(15_000)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        await page.goto(f"{server.url}/app/?token={visitor_token}")
        # the link's token is dropped from the address bar once read
        await page.locator("#me").filter(has_text="Visitor").wait_for()
        assert "token=" not in page.url
        await page.locator('#users li.online[data-uid="kiosk"] button.call').click()
        await page.locator("#outgoing").wait_for()

        # the kiosk answers through the Python SDK
        incoming = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
        assert incoming.initiator.uid == "visitor"
        await kiosk.calls.accept_call(incoming.session_id)
        await kiosk.join(incoming.session_id)

        # browser side: the kiosk's tile, and decoded video and audible audio in getStats()
        await page.locator('.calls-tile[data-uid="kiosk"] .calls-name').filter(has_text="Kiosk").wait_for()

        async def browser_media() -> dict[str, Any] | None:
            s = await _browser_stats(page, "kiosk")
            ok = s.get("videoFramesDecoded", 0) > 5 and (
                s.get("audioEnergy", 0) > 0 or s.get("audioLevel", 0) > 0
            )
            return s if ok else None

        media = await _poll("media from the kiosk in the browser", browser_media, 20)
        # shown with -s: which addresses ICE picked (the kiosk only offers 127.0.0.1)
        print("browser ICE pair:", media.get("localCandidate"), "->", media.get("remoteCandidate"))

        # kiosk side: video and audio frames decoded from the browser
        await wait_until(lambda: video_frames(kiosk, "visitor"), 20, "browser video at the kiosk")
        await wait_until(lambda: audio_frames(kiosk, "visitor"), 20, "browser audio at the kiosk")

        # mute in the browser: the kiosk hears of it, and the browser tile shows the indicator
        await page.locator(".calls-controls button[data-action=mute]").click()
        await kiosk.events.wait_for("on_user_muted")
        await page.locator('.calls-tile[data-uid="visitor"] .calls-badge').filter(has_text="MUTED").wait_for()
        kiosk.calls.pause_video(True)
        await (
            page.locator('.calls-tile[data-uid="kiosk"] .calls-badge').filter(has_text="VIDEO OFF").wait_for()
        )

        # end from the browser: the kiosk's session ends, the page goes back to the lobby
        await page.locator(".calls-controls button[data-action=end]").click()
        await kiosk.events.wait_for("on_call_ended")
        await page.locator("#lobby").wait_for()
        assert page_errors == []


async def _open_app(browser: Any, server_url: str, token: str, init_script: str | None = None) -> Any:
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    if init_script:
        await page.add_init_script(init_script)
    await page.goto(f"{server_url}/app/?token={token}")
    await page.locator("#lobby").wait_for()
    return page


# What a browser does when the user refuses camera and microphone.
_REFUSE_MEDIA = """
navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
"""


async def test_kiosk_calls_browser_which_refused_its_camera(tmp_path, monkeypatch):
    async with (
        asyncio.timeout(50),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk") as (kiosk,),
        chromium() as browser,
    ):
        token = await make_user(server.url, "visitor", "Visitor")
        page = await _open_app(browser, server.url, token, _REFUSE_MEDIA)

        call = await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("#incoming-name").filter(has_text="Kiosk").wait_for()
        await page.locator("#accept").click()
        await kiosk.events.wait_for("on_outgoing_call_accepted")
        await kiosk.join(call.session_id)

        # a clear message, and the call goes on receive-only: the kiosk's video still plays here
        await page.locator("#call-warning").filter(has_text="refused").wait_for()

        async def video_in_browser() -> bool:
            return (await _browser_stats(page, "kiosk")).get("videoFramesDecoded", 0) > 5

        await _poll("kiosk video in the browser", video_in_browser, 20)

        # the kiosk hangs up: the page says so and is back in the lobby
        await kiosk.calls.end_call(call.session_id)
        await page.locator("#message").filter(has_text="ended").wait_for()
        await page.locator("#call").wait_for(state="hidden")
        await kiosk.calls.end_session()


async def test_browser_hears_rejected_and_busy(tmp_path, monkeypatch):
    async with (
        asyncio.timeout(50),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk", "other") as (kiosk, other),
        chromium() as browser,
    ):
        token = await make_user(server.url, "visitor", "Visitor")
        page = await _open_app(browser, server.url, token)
        call_button = page.locator('#users li.online[data-uid="kiosk"] button.call')

        await call_button.click()
        incoming = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
        await kiosk.calls.reject_call(incoming.session_id, "rejected")
        await page.locator("#message.error").filter(has_text="Kiosk declined the call").wait_for()

        # the kiosk is ringing for someone else: the server answers busy at once
        await other.calls.initiate_call("kiosk", "video")
        await kiosk.events.wait_for("on_incoming_call_received", count=2)
        await call_button.click()
        await page.locator("#message.error").filter(has_text="Kiosk is busy").wait_for()


async def test_audio_only_call_keeps_a_sendrecv_video_line(tmp_path, monkeypatch):
    async with (
        asyncio.timeout(50),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk") as (kiosk,),
        chromium() as browser,
    ):
        token = await make_user(server.url, "visitor", "Visitor")
        page = await _open_app(browser, server.url, token)
        await page.locator("#audio-only").check()
        await page.locator('#users li.online[data-uid="kiosk"] button.call').click()
        incoming = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
        assert incoming.type == "audio"
        await kiosk.calls.accept_call(incoming.session_id)
        await kiosk.join(incoming.session_id)

        await wait_until(lambda: audio_frames(kiosk, "visitor"), 20, "browser audio at the kiosk")

        async def sdp() -> str | None:
            return (await _browser_stats(page, "kiosk")).get("localSdp")

        lines = (await _poll("the browser's SDP", sdp, 10)).splitlines()
        kinds = [line.split()[0] for line in lines if line.startswith("m=")]
        assert kinds == ["m=audio", "m=video"]
        assert lines.count("a=sendrecv") == 2
        await (
            page.locator('.calls-tile[data-uid="visitor"] .calls-badge')
            .filter(has_text="VIDEO OFF")
            .wait_for()
        )
        assert await video_frames(kiosk, "visitor") == 0
        await page.locator(".calls-controls button[data-action=end]").click()
        await kiosk.events.wait_for("on_call_ended")
