"""Two and three endpoints in real sessions through a real call server, with real aiortc media."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import av
import numpy as np
import pytest
from calls_support import (
    audio_level,
    endpoints,
    new_session_id,
    running_server,
    tone_for,
    video_frames,
    wait_until,
)

from kiosk.calls import (
    CallsError,
    CallSettingsBuilder,
    Mode,
    NotSupportedError,
    RTCMutedUser,
    SessionNotActiveError,
)
from kiosk.calls.peer import SILENCE_RMS


async def test_two_endpoints_media_both_ways_and_events(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)

        joined = await a.events.wait_for("on_user_joined")
        assert joined[0].uid == "bob" and joined[0].name == "Bob"
        users = a.events.of("on_user_list_changed")[-1][0]
        assert [u.uid for u in users] == ["alice", "bob"], "all current participants, this endpoint first"
        # bob learns of alice from the joined reply, as a list change
        assert [u.uid for u in b.events.of("on_user_list_changed")[-1][0]] == ["bob", "alice"]

        for receiver, sender in ((a, "bob"), (b, "alice")):
            await wait_until(lambda r=receiver, s=sender: video_frames(r, s), 15, f"video at {receiver.uid}")
            # The tone reaches the other side at a clear level (the decoder's first 20 ms ramps up).
            await wait_until(
                lambda r=receiver, s=sender: _clear(audio_level(r, s)), 15, f"clear audio at {receiver.uid}"
            )
        stats = await a.calls.get_session_stats()
        bob = stats.participants["bob"]
        assert bob.audio_level > 0.05
        assert bob.bytes_received > 0 and bob.first_frame_ms is not None
        assert stats.first_remote_frame_ms is not None and stats.first_remote_frame_ms < 10_000
        assert bob.latency_ms_p50 is not None and 0 <= bob.latency_ms_p50 < 2000

        await b.calls.end_session()
        assert b.events.of("on_call_ended"), "the side that leaves its one other participant: call ended"
        assert b.calls.session is None
        # A session joined by id is not a rung 1:1 call: alice stays, alone, under the idle rule.
        left = await a.events.wait_for("on_user_left")
        assert left[0].uid == "bob" and not a.events.of("on_call_ended")
        assert a.calls.session is not None
        await a.calls.end_session()
        # the final figures still report bob, who left before the end
        assert a.calls.last_session_stats is not None
        assert a.calls.last_session_stats.participants["bob"].bytes_received > 0


async def test_mute_and_pause_reach_the_other_side(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        await wait_until(lambda: audio_level(b, "alice"), 15, "alice's audio at bob")
        await wait_until(lambda: video_frames(b, "alice"), 15, "alice's video at bob")

        a.calls.mute_audio(True)
        muted = (await b.events.wait_for("on_user_muted"))[0]
        assert muted == RTCMutedUser("alice", "Alice", audio_muted=True, video_muted=False)
        # silence really reaches bob: the level over the last 200 ms falls to the floor
        await wait_until(lambda: _level_below(b, "alice", SILENCE_RMS), 5, "silence at bob")

        a.calls.pause_video(True)
        paused = (await b.events.wait_for("on_user_muted", count=2))[0]
        assert paused.audio_muted and paused.video_muted
        await asyncio.sleep(0.5)  # let frames in flight arrive
        before = await video_frames(b, "alice")
        await asyncio.sleep(1.0)
        assert await video_frames(b, "alice") - before <= 1, "no new picture while paused"
        # bob's video to alice keeps flowing: the pause is alice's alone
        before_bob = await video_frames(a, "bob")
        await asyncio.sleep(0.5)
        assert await video_frames(a, "bob") > before_bob

        a.calls.mute_audio(False)
        a.calls.pause_video(False)
        await wait_until(lambda: audio_level(b, "alice"), 5, "sound back at bob")
        resumed = await video_frames(b, "alice")
        await wait_until(lambda: _more_frames(b, "alice", resumed + 5), 5, "picture back at bob")
        last = b.events.of("on_user_muted")[-1][0]
        assert not last.audio_muted and not last.video_muted


async def _level_below(endpoint, uid: str, level: float) -> bool:
    return await audio_level(endpoint, uid) < level


async def _more_frames(endpoint, uid: str, count: int) -> bool:
    return await video_frames(endpoint, uid) >= count


async def test_three_endpoints_all_see_each_other(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob", "carol") as eps,
    ):
        session = new_session_id()
        for ep in eps:
            await ep.join(session)
        for ep in eps:
            others = [o.uid for o in eps if o is not ep]
            for other in others:
                await wait_until(lambda e=ep, o=other: video_frames(e, o), 20, f"{other} at {ep.uid}")
            listed = [u.uid for u in ep.calls.session.user_list()]
            assert listed[0] == ep.uid and set(listed[1:]) == set(others)
        assert await eps[0].calls.get_call_participant_count(session, "direct") == 3

        # carol leaves a group call: the others see her go, nobody gets on_call_ended
        await eps[2].calls.end_session()
        left = (await eps[0].events.wait_for("on_user_left"))[0]
        assert left.uid == "carol"
        await eps[1].events.wait_for("on_user_left")
        assert not eps[0].events.of("on_call_ended") and not eps[2].events.of("on_call_ended")
        assert [u.uid for u in eps[0].events.of("on_user_list_changed")[-1][0]] == ["alice", "bob"]


async def test_start_muted_and_audio_only_then_switch_to_video(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        audio_only = CallSettingsBuilder().set_is_audio_only_call(True).start_with_audio_muted(True).build()
        await a.join(session, audio_only)
        await b.join(session, CallSettingsBuilder().set_is_audio_only_call(True).build())
        # bob hears that alice joined muted
        muted = (await b.events.wait_for("on_user_muted"))[0]
        assert muted.uid == "alice" and muted.audio_muted
        await wait_until(lambda: audio_level(a, "bob"), 15, "bob's audio at alice")
        await asyncio.sleep(1.0)
        assert await video_frames(a, "bob") == 0 and await video_frames(b, "alice") == 0
        assert await audio_level(b, "alice") < SILENCE_RMS

        b.calls.switch_to_video_call()
        info = (await a.events.wait_for("on_call_switched_to_video"))[0]
        assert info.requested_by.uid == "bob"
        # both sides now send video, with no renegotiation
        await wait_until(lambda: video_frames(a, "bob"), 10, "bob's video at alice")
        await wait_until(lambda: video_frames(b, "alice"), 10, "alice's video at bob")


async def test_idle_timeout_warns_then_ends(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice") as (a,),
    ):
        settings = CallSettingsBuilder().set_idle_timeout_period(2).build()
        await a.join(new_session_id(), settings)
        warning = await a.events.wait_for("on_session_timeout_warning", timeout=3)
        assert warning[0] == 2  # a period under 60 s warns at once with the whole period left
        assert not a.events.of("on_session_timeout")
        await a.events.wait_for("on_session_timeout", timeout=5)
        assert a.calls.session is None


async def test_idle_timer_stops_when_someone_joins(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        await a.join(session, CallSettingsBuilder().set_idle_timeout_period(2).build())
        await b.join(session)
        await asyncio.sleep(2.5)
        assert not a.events.of("on_session_timeout") and a.calls.session is not None


async def test_a_group_that_shrinks_to_one_ends_by_the_idle_timeout_not_at_once(tmp_path):
    # The documents: a session ends by itself when its user has been alone for the idle period (with
    # the warning first); on_call_ended is for a 1:1 call only. Three join by id, two leave: the last
    # one stays, is warned, can stay(), and is timed out.
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob", "carol") as (a, b, c),
    ):
        session = new_session_id()
        await a.join(session, CallSettingsBuilder().set_idle_timeout_period(3).build())
        await b.join(session)
        await c.join(session)
        await wait_until(lambda: len(a.calls.session.participants) == 2, 10, "three in the session")
        await c.calls.end_session()
        await b.calls.end_session()
        await wait_until(lambda: not a.calls.session.participants, 10, "alice alone")
        assert a.calls.session is not None and a.calls.session.active
        assert not a.events.of("on_call_ended") and not a.events.of("on_session_timeout")

        await a.events.wait_for("on_session_timeout_warning", timeout=3)
        await asyncio.sleep(2.0)
        a.calls.session.stay()  # 1 s before the end: a new full period from now
        await asyncio.sleep(1.5)
        assert not a.events.of("on_session_timeout") and a.calls.session is not None
        await a.events.wait_for("on_session_timeout", timeout=5)
        assert a.calls.session is None and not a.events.of("on_call_ended")


async def test_in_call_methods_need_an_active_session(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice") as (a,),
    ):
        for method, args in [
            ("mute_audio", (True,)),
            ("pause_video", (True,)),
            ("switch_camera", ()),
            ("set_audio_mode", ("SPEAKER",)),
            ("switch_to_video_call", ()),
            ("start_recording", ()),
            ("set_mode", ("SPOTLIGHT",)),
            ("enter_pip_mode", ()),
            ("get_video_input_devices", ()),
            ("start_screen_share", ()),
        ]:
            with pytest.raises(SessionNotActiveError, match="only be called when a call session is active"):
                getattr(a.calls, method)(*args)
        with pytest.raises(SessionNotActiveError):
            await a.calls.get_session_stats()

        await a.join(new_session_id())
        with pytest.raises(NotSupportedError, match="no screen source"):
            a.calls.start_screen_share()
        with pytest.raises(CallsError) as bad_mode:
            a.calls.set_mode("CAROUSEL")
        assert bad_mode.value.code == "INVALID_MODE"
        a.calls.set_mode("spotlight")
        assert a.calls.session.mode == Mode.SPOTLIGHT
        with pytest.raises(CallsError) as second:
            await a.join(new_session_id())
        assert second.value.code == "SESSION_ALREADY_ACTIVE"


async def test_devices_switch_camera_audio_modes_and_hotplug(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        await wait_until(lambda: video_frames(b, "alice"), 15, "alice's video at bob")

        cameras = a.calls.get_video_input_devices()
        assert [c.facing for c in cameras] == ["front", "back"]
        assert a.calls.session.camera_id == cameras[0].device_id
        a.calls.switch_camera()
        assert a.calls.session.camera_id == cameras[1].device_id
        count = await video_frames(b, "alice")
        await wait_until(lambda: _more_frames(b, "alice", count + 10), 5, "video continues after switch")

        modes = a.calls.get_audio_output_modes()
        assert [m.mode for m in modes] == ["SPEAKER", "EARPIECE", "HEADPHONES"]
        assert [m.mode for m in modes if m.selected] == ["SPEAKER"]
        a.calls.set_audio_mode("HEADPHONES")
        assert a.calls.session.audio_mode == "HEADPHONES"
        with pytest.raises(CallsError) as missing:
            a.calls.set_audio_mode("BLUETOOTH")
        assert missing.value.code == "AUDIO_MODE_UNAVAILABLE"

        # the headphones are pulled out: device list event, fallback to the speaker
        a.devices.unplug("emulated-headphones")
        await a.events.wait_for("on_media_device_list_updated", timeout=3)
        await wait_until(lambda: a.calls.session.audio_mode == "SPEAKER", 3, "fallback to speaker")
        changed = a.events.of("on_audio_mode_changed")[-1][0]
        assert [m.mode for m in changed] == ["SPEAKER", "EARPIECE"]

        with pytest.raises(CallsError) as unknown:
            a.calls.set_video_input_device("no-such-camera")
        assert unknown.value.code == "DEVICE_NOT_FOUND"

        # the camera in use is unplugged: on_error, the call goes on with audio
        a.devices.unplug(cameras[1].device_id)
        error = (await a.events.wait_for("on_error", timeout=5))[0]
        assert error.code == "DEVICE_ERROR" and cameras[1].device_id in error.message
        await asyncio.sleep(0.3)
        assert await audio_level(b, "alice") > 0.05, "audio goes on without the camera"
        stalled = await video_frames(b, "alice")
        a.calls.set_video_input_device(cameras[0].device_id)  # the app picks the other camera
        await wait_until(lambda: _more_frames(b, "alice", stalled + 10), 5, "video from the other camera")


async def test_a_listener_that_raises_breaks_nothing(tmp_path):
    class Broken:
        def on_user_joined(self, user):
            raise RuntimeError("listener bug")

    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        a.calls.add_call_event_listener("broken", Broken())
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        await a.events.wait_for("on_user_joined")
        await wait_until(lambda: video_frames(a, "bob"), 15, "media despite the broken listener")
        # the same id replaces; removal stops delivery
        a.calls.add_call_event_listener("test", a.events)
        a.calls.remove_call_event_listener("broken")
        assert len(a.calls.listeners.listeners()) == 1


def _dominant_tones(samples: np.ndarray, count: int) -> set[int]:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    hz_per_bin = 48000 / len(samples)
    peaks = np.argsort(spectrum)[-count * 3 :]
    return {int(round(p * hz_per_bin / 10.0) * 10) for p in peaks}


async def test_recording_mixes_everyone_into_one_playable_file_and_the_log_says_so(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        call = await a.calls.initiate_call("bob", "video")
        await b.events.wait_for("on_incoming_call_received")
        await b.calls.accept_call(call.session_id)
        await a.join(call.session_id)
        await b.join(call.session_id)
        await wait_until(lambda: video_frames(a, "bob"), 15, "media")
        a.calls.start_recording()
        remote = (await b.events.wait_for("on_recording_toggled"))[0]
        assert remote.recording_started and remote.user.uid == "alice"
        mine = a.events.of("on_recording_toggled")[0][0]
        assert mine.recording_started and mine.file.endswith(".mkv")
        await asyncio.sleep(2.5)
        a.calls.stop_recording()
        stopped = (await b.events.wait_for("on_recording_toggled", count=2))[0]
        assert not stopped.recording_started
        await wait_until(lambda: not a.calls.session.recording_file_open, 10, "recording closed")
        files = list((tmp_path / "recordings" / "alice").glob("*.mkv"))
        assert [f.name for f in files] == [Path(mine.file).name]
        with av.open(str(files[0])) as container:
            assert {s.type for s in container.streams} == {"audio", "video"}
            decoded = sum(1 for _ in container.decode(video=0))
        with av.open(str(files[0])) as container:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        assert decoded >= 20, f"only {decoded} frames recorded"
        assert len(audio) >= 48000 * 2
        # both voices are in the mix: alice's own microphone and bob's, heard through the call
        middle = audio[48000 // 2 : 48000 // 2 + 48000]
        assert {tone_for("alice"), tone_for("bob")} <= _dominant_tones(middle, 2)

        # leaving while recording: both sides hear that it stopped
        a.calls.start_recording()
        await b.events.wait_for("on_recording_toggled", count=3)
        await a.calls.end_call(call.session_id)
        await a.calls.end_session()
        assert not a.events.of("on_recording_toggled")[-1][0].recording_started
        entry = (await b.calls.get_call_logs()).calls[0]
        assert entry.session_id == call.session_id and entry.has_recording
        assert (await b.calls.get_call_logs(has_recording=True)).total == 1


async def test_who_joins_while_another_records_is_told_it_is_recording(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob", "carol") as (a, b, c),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        a.calls.start_recording()
        started = (await b.events.wait_for("on_recording_toggled"))[0]
        await c.join(session)
        told = (await c.events.wait_for("on_recording_toggled"))[0]
        assert told.recording_started and told.user.uid == "alice"
        assert told.at_ms == started.at_ms  # when it started, not when carol came
        a.calls.stop_recording()
        stopped = (await c.events.wait_for("on_recording_toggled", count=2))[0]
        assert not stopped.recording_started


async def test_screen_share_when_the_device_has_a_screen(tmp_path):
    from kiosk.media.emulated import EmulatedDevices

    async with (
        running_server(tmp_path / "server") as server,
        endpoints(
            server.url, tmp_path, "alice", devices=EmulatedDevices(width=320, height=240, fps=15, screen=True)
        ) as (a,),
    ):
        await a.join(new_session_id())
        a.calls.start_screen_share()
        await a.events.wait_for("on_screen_share_started")
        assert a.calls.session.sharing_screen
        a.calls.stop_screen_share()
        await a.events.wait_for("on_screen_share_stopped")


async def test_default_audio_mode_and_output_device_selection(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice") as (a,),
    ):
        settings = CallSettingsBuilder().set_default_audio_mode("BLUETOOTH").build()
        await a.join(new_session_id(), settings)
        # no Bluetooth device: the call starts on the first present mode, and says so
        error = (await a.events.wait_for("on_error"))[0]
        assert error.code == "AUDIO_MODE_UNAVAILABLE" and "BLUETOOTH" in error.message
        assert a.calls.session.audio_mode == "SPEAKER"
        outputs = {d.audio_mode: d.device_id for d in a.calls.get_audio_output_devices()}
        a.calls.set_audio_output_device(outputs["EARPIECE"])
        assert a.calls.session.audio_mode == "EARPIECE"
        microphones = a.calls.get_audio_input_devices()
        assert microphones and {d.kind for d in microphones} == {"audioinput"}
        a.calls.set_audio_input_device(microphones[-1].device_id)
        with pytest.raises(CallsError) as refused:
            a.calls.set_audio_input_device("no-such-microphone")
        assert refused.value.code == "DEVICE_NOT_FOUND"
        modes = a.events.of("on_audio_mode_changed")[-1][0]
        assert [m.mode for m in modes if m.selected] == ["EARPIECE"]
        # a headset appears: the mode list grows and it can be chosen
        from kiosk.media.devices import MediaDeviceInfo

        a.devices.plug(MediaDeviceInfo("bt-1", "Headset", "audiooutput", audio_mode="BLUETOOTH"))
        await wait_until(
            lambda: any(m.mode == "BLUETOOTH" for m in a.events.of("on_audio_mode_changed")[-1][0]), 3, "BT"
        )
        a.calls.set_audio_mode("AUDIO_MODE_BLUETOOTH")
        assert a.calls.session.audio_mode == "BLUETOOTH"


async def test_an_output_that_fails_in_use_falls_back_and_is_not_reopened(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        await wait_until(lambda: audio_level(a, "bob"), 15, "bob's audio at alice")
        assert a.calls.session.audio_mode == "SPEAKER"
        a.devices.break_device("emulated-speaker")  # still listed, but every write fails
        error = (await a.events.wait_for("on_error"))[0]
        assert error.code == "DEVICE_ERROR" and "emulated-speaker" in error.message
        await wait_until(lambda: a.calls.session.audio_mode == "EARPIECE", 3, "fallback to the next mode")
        await asyncio.sleep(0.5)
        speakers = [s.device.device_id for s in a.devices.opened_speakers]
        assert speakers.count("emulated-speaker") == 1, speakers  # not reopened in a loop
        assert a.devices.opened_speakers[-1].frames_written > 10, "bob is heard on the earpiece"


async def _clear(level: Awaitable[float]) -> bool:
    return await level > 0.05
