"""The browser SDK's own API, called as a page's script would (window.kioskCalls), in real Chromium against
a kiosk endpoint: the ringing methods, the in-call methods, the device methods, the settings that hide
buttons or start muted, and the listener methods. The page's app (kiosk/web/app.js) is loaded too, as
an outsider's page would load its own code beside the SDK; these calls go to the SDK directly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_support import chromium
from calls_support import endpoints, make_user, running_server, wait_until
from test_web import _open_app

pytestmark = pytest.mark.timeout(120)

# A ringing listener and a session listener that keep what they hear in window.heard as [name, arg].
_LISTEN = """
() => {
  const Calls = window.kioskCalls;
  window.heard = [];
  const keep = (name) => (arg) => window.heard.push([name, arg?.sessionId ?? arg?.uid ?? (Array.isArray(arg) ? arg.length : arg ?? null)]);
  const ringing = ["onIncomingCallReceived", "onOutgoingCallAccepted", "onOutgoingCallRejected", "onIncomingCallCancelled",
                   "onCallEndedMessageReceived"];
  Calls.addCallListener("api-test", Object.fromEntries(ringing.map((n) => [n, keep(n)])));
  const session = ["onUserJoined", "onUserLeft", "onCallEnded", "onCallSwitchedToVideo", "onCallEndButtonPressed",
                   "onMediaDeviceListUpdated", "onError"];
  window.sessionListener = new Calls.OngoingCallListener(Object.fromEntries(session.map((n) => [n, keep(n)])));
  Calls.addCallEventListener("api-test", window.sessionListener);
}
"""

_START = """
async ([sessionId]) => {
  const Calls = window.kioskCalls;
  const settings = new Calls.CallSettingsBuilder()
    .setIsAudioOnlyCall(true)
    .setMode(Calls.CALL_MODE.SPOTLIGHT)
    .startWithAudioMuted(true)
    .startWithVideoMuted(true)
    .showMuteAudioButton(false)
    .showPauseVideoButton(false)
    .showModeButton(false)
    .showScreenShareButton(false)
    .showSwitchToVideoCallButton(false)
    .showEndCallButton(true)
    .build();
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""


async def _heard(page: Any, name: str) -> list[Any]:
    return [arg for event, arg in await page.evaluate("() => window.heard") if event == name]


async def _after(page: Any, script: str, endpoint: Any, event: str) -> Any:
    """Run `script` in the page; the first argument of the next `event` the endpoint hears after it."""
    heard = len(endpoint.events.of(event))
    await _js(page, script)
    return (await endpoint.events.wait_for(event, count=heard + 1))[0]


async def _js(page: Any, body: str, *args: Any) -> Any:
    return await page.evaluate(f"async (args) => {{ const Calls = window.kioskCalls; {body} }}", list(args))


async def test_the_browser_sdk_rings_controls_a_call_and_its_devices(tmp_path):
    async with (
        asyncio.timeout(110),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "ann") as (ann,),
        chromium() as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        await page.evaluate(_LISTEN)

        # initiateCall, getActiveCall; the kiosk rejects: onOutgoingCallRejected, no active call left.
        call = await _js(page, "return await Calls.initiateCall('ann', 'video');")
        assert call["status"] == "initiated"
        assert await _js(page, "return Calls.getActiveCall()?.sessionId;") == call["sessionId"]
        rung = (await ann.events.wait_for("on_incoming_call_received"))[0]
        await ann.calls.reject_call(rung.session_id)
        await wait_until(lambda: _heard(page, "onOutgoingCallRejected"), 10, "the rejection, in the page")
        assert await _js(page, "return Calls.getActiveCall() ?? null;") is None

        # The kiosk rings the page: onIncomingCallReceived; acceptCall; clearActiveCall forgets it.
        rung = await ann.calls.initiate_call("visitor", "video")
        await wait_until(lambda: _heard(page, "onIncomingCallReceived"), 10, "the ring, in the page")
        assert (await _heard(page, "onIncomingCallReceived"))[-1] == rung.session_id
        accepted = await _js(page, "return await Calls.acceptCall(args[0]);", rung.session_id)
        assert accepted["status"] == "ongoing"
        await ann.events.wait_for("on_outgoing_call_accepted")
        assert await _js(page, "return Calls.getActiveCall()?.sessionId;") == rung.session_id
        await _js(page, "Calls.clearActiveCall(); return null;")
        assert await _js(page, "return Calls.getActiveCall() ?? null;") is None

        # startSession with settings: audio only, muted, only the end button.
        await page.evaluate(_START, [rung.session_id])
        await ann.join(rung.session_id)  # after the page: the page hears onUserJoined
        await wait_until(lambda: _heard(page, "onUserJoined"), 10, "ann's join, in the page")
        assert await _heard(page, "onUserJoined") == ["ann"]
        muted = (await ann.events.wait_for("on_user_muted", timeout=15))[0]
        assert muted.uid == "visitor" and muted.audio_muted and muted.video_muted
        assert await _js(page, "return [Calls.isAudioMuted(), Calls.isVideoPaused()];") == [True, True]
        assert await _js(
            page,
            "return [...document.querySelectorAll('.calls-controls button')].map((b) => b.dataset.action);",
        ) == ["end"]
        count = await _js(
            page, "return await Calls.getCallParticipantCount(args[0], 'default');", rung.session_id
        )
        assert count == 2

        # In-call methods, seen from the kiosk.
        unmuted = await _after(page, "Calls.muteAudio(false);", ann, "on_user_muted")
        assert unmuted.uid == "visitor" and not unmuted.audio_muted
        switched = await _after(page, "Calls.switchToVideoCall();", ann, "on_call_switched_to_video")
        assert switched.session_id == rung.session_id
        shown = await _after(page, "Calls.pauseVideo(false);", ann, "on_user_muted")
        assert shown.uid == "visitor" and not shown.video_muted
        ann.calls.switch_to_video_call()  # already video on the kiosk: nothing to tell
        mode = "return document.querySelector('.calls-layout').dataset.mode;"
        assert await _js(page, mode) == "SPOTLIGHT"  # the settings' mode
        await _js(page, "Calls.setMode(Calls.CALL_MODE.DEFAULT); return null;")
        assert await _js(page, mode) == "DEFAULT"
        refused = await _js(
            page, "try { Calls.setMode('SIDEWAYS'); return null; } catch (e) { return e.code; }"
        )
        assert refused == "INVALID_MODE"

        # Devices: Chromium's fake devices; choosing another microphone and camera keeps the call sending.
        kinds = await _js(
            page,
            "return [await Calls.getAudioInputDevices(), await Calls.getVideoInputDevices(),"
            " await Calls.getAudioOutputDevices()].map((list) => [...new Set(list.map((d) => d.kind))]);",
        )
        assert kinds[0] == ["audioinput"] and kinds[1] == ["videoinput"] and kinds[2] in ([], ["audiooutput"])
        chosen = await _js(
            page,
            "const mics = await Calls.getAudioInputDevices(), cams = await Calls.getVideoInputDevices();"
            "await Calls.setAudioInputDevice(mics.at(-1).deviceId); await Calls.setVideoInputDevice(cams.at(-1).deviceId);"
            "const outs = await Calls.getAudioOutputDevices();"
            "if (outs.length) await Calls.setAudioOutputDevice(outs.at(-1).deviceId);"
            "return [mics.at(-1).deviceId, cams.at(-1).deviceId];",
        )
        assert all(chosen)
        settings_now = await _js(
            page,
            "const tracks = document.querySelector('.calls-local video').srcObject.getTracks();"
            "return tracks.map((t) => [t.kind, t.getSettings().deviceId, t.readyState]);",
        )
        assert ["audio", chosen[0], "live"] in [list(t) for t in settings_now]
        assert ["video", chosen[1], "live"] in [list(t) for t in settings_now]

        # The browser says its devices changed (a USB camera plugged in): the list reaches the listener.
        await _js(page, "navigator.mediaDevices.dispatchEvent(new Event('devicechange')); return null;")
        await wait_until(lambda: _heard(page, "onMediaDeviceListUpdated"), 5, "the device list, in the page")
        assert (await _heard(page, "onMediaDeviceListUpdated"))[-1] >= 2  # a microphone and a camera at least

        # The end button with a listener that wants it: onCallEndButtonPressed, and the call goes on.
        await page.click(".calls-controls .calls-end")
        await wait_until(lambda: _heard(page, "onCallEndButtonPressed"), 5, "the end button's event")
        assert await _js(page, "return Calls.inSession();")
        # removeCallEventListener: that listener hears nothing more.
        await _js(page, "Calls.removeCallEventListener('api-test'); return null;")
        before = len(await page.evaluate("() => window.heard"))
        ann.calls.mute_audio(True)
        await asyncio.sleep(0.5)

        # endCall: over for both; the page's ringing listener hears the call ended.
        ended = await _js(page, "return await Calls.endCall(args[0]);", rung.session_id)
        assert ended["status"] == "ended"
        await ann.events.wait_for("on_call_ended", timeout=10)
        await wait_until(lambda: _js(page, "return !Calls.inSession();"), 10, "the page's session to end")
        # Only the ringing listener (still added) heard anything after the removal.
        after = [name for name, _ in (await page.evaluate("() => window.heard"))[before:]]
        assert after == ["onCallEndedMessageReceived"], after
