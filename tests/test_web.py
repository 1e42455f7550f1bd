"""The browser client (kiosk/web) against real headless Chromium: serving, and a call to a Python kiosk."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_support import chromium
from calls_support import audio_frames, endpoints, make_user, running_server, video_frames, wait_until
from gpiozero.pins.mock import MockFactory

from kiosk.config import ButtonSection, ButtonsSection, CallButtonSection, EndButtonSection
from kiosk.controller import KioskController, Phase
from kiosk.hardware import ButtonPanel

pytestmark = pytest.mark.timeout(60)


async def test_app_is_served(tmp_path, monkeypatch):
    async with running_server(tmp_path / "server") as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/app/") as response:
            assert response.status == 200
            assert '<script type="module" src="app.js">' in await response.text()
        for name, kind in (("calls.js", "javascript"), ("app.js", "javascript"), ("style.css", "css")):
            async with http.get(f"{server.url}/app/{name}") as response:
                assert response.status == 200 and kind in response.content_type
        async with http.get(f"{server.url}/app?token=x&codec=H264", allow_redirects=False) as response:
            # an old link's token moves to the fragment
            assert response.status == 302 and response.headers["Location"] == "/app/?codec=H264#token=x"


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
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, visitor_token):
        page = await browser.new_page()
        page.set_default_timeout(15_000)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        csp_errors: list[str] = []
        page.on(
            "console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None
        )
        # The sign-in link's token is in the fragment (never sent to the server), and is dropped from
        # the address bar once read.
        await page.goto(f"{server.url}/app/#token={visitor_token}")
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
        assert csp_errors == []  # the client works under its Content-Security-Policy


@asynccontextmanager
async def web_call(
    tmp_path: Path, *uids: str, **options: Any
) -> AsyncIterator[tuple[Any, list[Any], Any, str]]:
    """A real server, Python kiosk endpoints, headless Chromium and the visitor's auth token, all
    within one 50 s limit: what every browser test starts from."""
    async with (
        asyncio.timeout(50),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, *uids, **options) as made,
        chromium() as browser,
    ):
        yield server, made, browser, await make_user(server.url, "visitor", "Visitor")


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
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
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
    async with web_call(tmp_path, "kiosk", "other") as (server, (kiosk, other), browser, token):
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
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
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


MUTE_PIN, END_PIN, CALL_PIN = 17, 27, 23


async def test_kiosk_button_calls_browser_which_rings_answers_and_hangs_up(tmp_path, monkeypatch):
    factory = MockFactory()
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
        page = await _open_app(browser, server.url, token)
        controller = KioskController(kiosk.calls)
        buttons = ButtonsSection(
            pin_factory="mock",
            mute=ButtonSection(MUTE_PIN),
            end=EndButtonSection(END_PIN),
            call=CallButtonSection(CALL_PIN, contact="visitor"),
        )
        panel = ButtonPanel(buttons, controller, asyncio.get_running_loop(), pin_factory=factory)
        try:

            def press(name: str) -> None:
                pin = panel.buttons[name].pin
                pin.drive_low()
                pin.drive_high()

            # the kiosk's call button rings the browser: the page shows the call and plays its ringtone
            press("call")
            await page.locator("#incoming-name").filter(has_text="Kiosk").wait_for()
            await page.locator("body[data-ringtone=on]").wait_for()
            sounding = "() => [window.kioskRingtone.context.state, window.kioskRingtone.oscillators.size]"
            state, oscillators = await page.evaluate(sounding)
            assert state == "running" and oscillators > 0
            await page.locator("#accept").click()
            await page.locator("body:not([data-ringtone])").wait_for()
            assert await page.evaluate(sounding) == ["running", 0]
            await wait_until(lambda: controller.state.phase == Phase.IN_CALL, 15, "the kiosk in the call")
            await page.locator('.calls-tile[data-uid="kiosk"]').wait_for()

            # the kiosk's mute button: the page shows the kiosk muted
            press("mute")
            await (
                page.locator('.calls-tile[data-uid="kiosk"] .calls-badge').filter(has_text="MUTED").wait_for()
            )

            # the page hangs up: the kiosk's session ends
            await page.locator(".calls-controls button[data-action=end]").click()
            await kiosk.events.wait_for("on_call_ended", 15)
            await page.locator("#lobby").wait_for()
        finally:
            panel.close()
            factory.reset()


async def test_browser_rejects_and_is_busy(tmp_path, monkeypatch):
    async with web_call(tmp_path, "kiosk", "other") as (server, (kiosk, other), browser, token):
        page = await _open_app(browser, server.url, token)

        # the page rejects: the kiosk hears the call was rejected, and the ringtone stops
        await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("body[data-ringtone=on]").wait_for()
        await page.locator("#reject").click()
        rejected = (await kiosk.events.wait_for("on_outgoing_call_rejected"))[0]
        assert str(getattr(rejected.status, "value", rejected.status)) == "rejected"
        await page.locator("body:not([data-ringtone])").wait_for()

        # the page in a call with the kiosk: another kiosk calling it gets busy
        call = await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("#accept").click()
        await kiosk.events.wait_for("on_outgoing_call_accepted")
        await kiosk.join(call.session_id)
        await page.locator('.calls-tile[data-uid="kiosk"]').wait_for()
        second = await other.calls.initiate_call("visitor", "video")
        status = str(getattr(second.status, "value", second.status))
        if status != "busy":
            busy = (await other.events.wait_for("on_outgoing_call_rejected"))[0]
            status = str(getattr(busy.status, "value", busy.status))
        assert status == "busy"
        assert await page.locator("#call").is_visible()
        await kiosk.calls.end_call(call.session_id)
        await page.locator("#call").wait_for(state="hidden")
        await kiosk.calls.end_session()


async def _audio_call_from_page(page: Any, kiosk: Any) -> str:
    """The page rings the kiosk for an audio-only call; the kiosk answers and joins. Returns the session id."""
    rung = len(kiosk.events.of("on_incoming_call_received"))
    await page.locator("#audio-only").check()
    await page.locator('#users li.online[data-uid="kiosk"] button.call').click()
    incoming = (await kiosk.events.wait_for("on_incoming_call_received", count=rung + 1))[0]
    assert incoming.type == "audio"
    await kiosk.calls.accept_call(incoming.session_id)
    await kiosk.join(incoming.session_id)
    await wait_until(lambda: audio_frames(kiosk, "visitor"), 20, "browser audio at the kiosk")
    return str(incoming.session_id)


async def test_audio_call_switched_to_video_from_either_side(tmp_path, monkeypatch):
    async with (
        asyncio.timeout(55),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "kiosk") as (kiosk,),
        chromium() as browser,
    ):
        token = await make_user(server.url, "visitor", "Visitor")
        page = await _open_app(browser, server.url, token)

        async def frames_in_browser() -> int:
            return (await _browser_stats(page, "kiosk")).get("videoFramesDecoded", 0)

        # the page's button: the kiosk hears of the switch and decodes the browser's video
        await _audio_call_from_page(page, kiosk)
        assert await video_frames(kiosk, "visitor") == 0
        switch = page.locator(".calls-controls button[data-action=switch]")
        await switch.click()
        await kiosk.events.wait_for("on_call_switched_to_video", 10)
        await wait_until(lambda: video_frames(kiosk, "visitor"), 20, "browser video at the kiosk")
        await switch.wait_for(state="hidden")
        await page.locator(".calls-controls button[data-action=end]").click()
        await kiosk.events.wait_for("on_call_ended")
        await page.locator("#lobby").wait_for()

        # the kiosk switches: the page shows the kiosk's video (frames decoded in getStats)
        await _audio_call_from_page(page, kiosk)
        assert await frames_in_browser() == 0
        await page.evaluate(
            """() => { window.switched = []; const Calls = window.kioskCalls;
                Calls.addCallEventListener("switch-probe", new Calls.OngoingCallListener({
                  onCallSwitchedToVideo: (info) => window.switched.push(info.sessionId) })); }"""
        )
        kiosk.calls.switch_to_video_call()
        await _poll("kiosk video in the browser", lambda: _more_than(frames_in_browser, 5), 20)
        assert await page.evaluate("() => window.switched") == [kiosk.calls.session.session_id]
        await switch.wait_for(state="hidden")
        await page.locator(".calls-controls button[data-action=end]").click()
        await kiosk.events.wait_for("on_call_ended", count=2)


async def _more_than(count: Any, floor: int) -> bool:
    return (await count()) > floor


# The kiosk set to H.264 too, or left to its default: the page's preference alone must give H.264.
@pytest.mark.parametrize("kiosk_codec", ["H264", None])
async def test_h264_both_ways(tmp_path, monkeypatch, kiosk_codec):
    async with web_call(tmp_path, "kiosk", video_codec=kiosk_codec) as (server, (kiosk,), browser, token):
        page = await browser.new_page()
        page.set_default_timeout(15_000)
        await page.goto(f"{server.url}/app/?token={token}&codec=H264")
        await page.locator("#lobby").wait_for()

        # the page offers (it calls), then answers (the kiosk calls): H.264 in both directions each time
        for page_offers in (True, False):
            if page_offers:
                await page.locator('#users li.online[data-uid="kiosk"] button.call').click()
                call = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
                await kiosk.calls.accept_call(call.session_id)
            else:
                call = await kiosk.calls.initiate_call("visitor", "video")
                await page.locator("#accept").click()
            await kiosk.join(call.session_id)

            async def h264_in_browser() -> dict[str, Any] | None:
                s = await _browser_stats(page, "kiosk")
                ok = s.get("videoFramesDecoded", 0) > 5 and s.get("videoFramesEncoded", 0) > 5
                return s if ok else None

            stats = await _poll("H.264 video in the browser", h264_in_browser, 20)
            assert stats["videoCodecReceived"] == "video/H264"
            assert stats["videoCodecSent"] == "video/H264"
            await wait_until(lambda: video_frames(kiosk, "visitor"), 20, "browser video at the kiosk")
            assert any(
                line.startswith("a=rtpmap:") and "H264" in line for line in stats["localSdp"].splitlines()
            )
            await page.locator(".calls-controls button[data-action=end]").click()
            await kiosk.events.wait_for("on_call_ended", count=1 if page_offers else 2)
            await page.locator("#lobby").wait_for()


async def test_devices_and_recording_in_the_call_screen(tmp_path, monkeypatch):
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
        page = await _open_app(browser, server.url, token)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        call = await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("#accept").click()
        await kiosk.join(call.session_id)
        await wait_until(lambda: audio_frames(kiosk, "visitor"), 20, "browser audio at the kiosk")
        assert await page.locator("#call-recording").is_hidden()

        # Chromium's fake devices are listed; choosing another microphone and camera keeps media flowing
        for select in ("#device-mic", "#device-camera"):
            await page.locator(f"{select} option").first.wait_for(state="attached")
        mics = await page.locator("#device-mic option").evaluate_all("os => os.map(o => o.value)")
        cameras = await page.locator("#device-camera option").evaluate_all("os => os.map(o => o.value)")
        assert mics and cameras
        await page.locator("#device-mic").select_option(mics[-1])
        await page.locator("#device-camera").select_option(cameras[-1])
        heard = await audio_frames(kiosk, "visitor")
        seen = await video_frames(kiosk, "visitor")
        await wait_until(
            lambda: _grew(kiosk, heard, seen), 15, "browser media at the kiosk after the device change"
        )
        if await page.evaluate("() => 'setSinkId' in HTMLMediaElement.prototype"):
            assert await page.locator("#speaker-choice").is_visible()

        # the kiosk records: the page shows it, and stops showing it when the recording stops
        kiosk.calls.start_recording()
        await page.locator("#call-recording").filter(has_text="Recording").wait_for()
        kiosk.calls.stop_recording()
        await page.locator("#call-recording").wait_for(state="hidden")
        await kiosk.calls.end_call(call.session_id)
        await page.locator("#call").wait_for(state="hidden")
        await kiosk.calls.end_session()
        assert page_errors == []


async def _grew(kiosk: Any, audio_before: int, video_before: int) -> bool:
    return (
        await audio_frames(kiosk, "visitor") > audio_before + 10
        and await video_frames(kiosk, "visitor") > video_before + 5
    )


SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


async def test_join_notice_clears_itself_whoever_joins_first(tmp_path, monkeypatch):
    """The kiosk joins after the page is in the session: the page says so, then the notice goes
    (it used to stay over the call for good when the page happened to join first)."""
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
        page = await browser.new_page()
        page.set_default_timeout(15_000)
        await page.goto(f"{server.url}/app/?token={token}")
        await page.locator("#lobby").wait_for()
        call = await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("#accept").click()
        await page.locator("#call").wait_for()
        await page.locator("#message").wait_for(state="hidden")  # "Connecting…" done: the page is in
        await kiosk.join(call.session_id)
        message = page.locator("#message")
        await message.wait_for(state="visible")
        assert await message.text_content() == "Kiosk joined."
        await message.wait_for(state="hidden", timeout=8_000)
        await kiosk.calls.end_call(call.session_id)
        await kiosk.calls.end_session()


async def test_screenshot_of_a_call(tmp_path, monkeypatch):
    """The call screen at 800x600, in tmp_path; KIOSK_UPDATE_SCREENSHOTS=1 writes docs/screenshots/ too."""
    async with web_call(tmp_path, "kiosk") as (server, (kiosk,), browser, token):
        page = await browser.new_page(viewport={"width": 800, "height": 600})
        page.set_default_timeout(15_000)
        await page.goto(f"{server.url}/app/?token={token}")
        await page.locator("#lobby").wait_for()
        call = await kiosk.calls.initiate_call("visitor", "video")
        await page.locator("#accept").click()
        await kiosk.join(call.session_id)

        async def playing() -> bool:
            return (await _browser_stats(page, "kiosk")).get("videoFramesDecoded", 0) > 10

        # both in the session first: a page joining after the recording started is not told of it
        await _poll("kiosk video in the browser", playing, 20)
        kiosk.calls.start_recording()
        await page.locator("#call-recording").wait_for()
        await page.locator("#message").wait_for(state="hidden")
        path = tmp_path / "web_call.png"
        await page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        if os.environ.get("KIOSK_UPDATE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / "web_call.png").write_bytes(path.read_bytes())
        await kiosk.calls.end_call(call.session_id)
        await kiosk.calls.end_session()


async def test_a_page_whose_token_is_revoked_is_signed_out(tmp_path, monkeypatch):
    from calls_support import ADMIN_KEY

    async with web_call(tmp_path) as (server, _, browser, token):
        page = await _open_app(browser, server.url, token)
        async with (
            aiohttp.ClientSession() as http,
            http.delete(f"{server.url}/v1/users/visitor/tokens", headers={"X-Admin-Key": ADMIN_KEY}) as r,
        ):
            assert r.status == 204
        await page.locator("#signin").wait_for()
        await page.locator("#message.error").filter(has_text="signed out").wait_for()


async def test_a_page_opens_the_door_of_the_kiosk_it_is_talking_to(tmp_path, monkeypatch):
    from calls_support import ADMIN_KEY
    from gpiozero.pins.mock import MockFactory

    from kiosk.config import DoorSection
    from kiosk.hardware import DoorRelay

    relay = DoorRelay(DoorSection(pin=5, pulse_s=0.2), asyncio.get_running_loop(), MockFactory())
    async with web_call(tmp_path, "kiosk", door=relay) as (server, (kiosk,), browser, token):
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{server.url}/v1/users/visitor/permissions",
                json={"openDoors": True},
                headers={"X-Admin-Key": ADMIN_KEY},
            ) as r,
        ):
            assert r.status == 200
        page = await _open_app(browser, server.url, token)
        await page.locator('#users li.online[data-uid="kiosk"] button.call').click()
        incoming = (await kiosk.events.wait_for("on_incoming_call_received"))[0]
        await kiosk.calls.accept_call(incoming.session_id)
        await kiosk.join(incoming.session_id)
        await page.locator("#open-door").click()
        await page.locator("#message").filter(has_text="released").wait_for()
        assert relay.released_by == ["visitor"]
        (result,) = await kiosk.events.wait_for("on_door_opened")
        assert result.opened and result.opened_by.uid == "visitor"
    relay.close()


async def test_a_page_in_a_ring_group_stops_ringing_when_another_member_answers(tmp_path, monkeypatch):
    from calls_support import ADMIN_KEY

    async with web_call(tmp_path, "door", "desk") as (server, (door, desk), browser, token):
        admin = {"X-Admin-Key": ADMIN_KEY}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.url}/v1/groups", json={"uid": "reception", "name": "Reception"}, headers=admin
            ) as r:
                assert r.status == 201
            for member in ("visitor", "desk"):
                async with http.put(f"{server.url}/v1/groups/reception/members/{member}", headers=admin) as r:
                    assert r.status == 204
        page = await _open_app(browser, server.url, token)
        call = await door.calls.initiate_call("reception", "audio")
        await page.locator("#incoming").wait_for()
        await desk.events.wait_for("on_incoming_call_received")
        await desk.calls.accept_call(call.session_id)
        await page.locator("#message").filter(has_text="answered by Desk").wait_for()
        assert await page.locator("#incoming").is_hidden()


async def test_a_page_sees_who_is_calling_before_answering_and_a_missed_callers_picture(
    tmp_path, monkeypatch
):
    async with web_call(tmp_path, "door") as (server, (door,), browser, token):
        page = await _open_app(browser, server.url, token)
        await door.calls.initiate_call("visitor", "video")
        await page.locator("#incoming").wait_for()
        # Shown once the first still came, decoded at the stills' size.
        await page.wait_for_function("() => document.getElementById('incoming-picture').naturalWidth === 320")
        await door.calls.end_call(door.calls.get_active_call().session_id)  # the visitor at the door gave up
        await page.wait_for_function(
            "() => { const img = document.getElementById('missed-picture'); return !img.hidden && img.naturalWidth === 320; }"
        )
