"""The call's audio output on a device whose sound cards behave as real ones do (issue: re-selecting
the output hung the loop).

The emulated device's outputs and microphone are exclusive per substream (kiosk/media/emulated.py):
a second open of a held one fails at once with DeviceBusyError (alsa-lib's stock configuration), or
waits until it is released (`nonblocking_open=False`, a configuration with `defaults.pcm.nonblock 0`;
`open_wait_timeout` turns a wait that would last for ever into a failure, so the old code fails here
instead of hanging the suite). Opens and closes made on the event loop's thread are recorded.
"""

from __future__ import annotations

import asyncio
import threading
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from alsa_support import audio_frame, rms, tone
from calls_support import Endpoint, endpoints, new_session_id, running_server, wait_until

from kiosk.calls import CallSettingsBuilder
from kiosk.controller import KioskController
from kiosk.media.devices import DeviceBusyError
from kiosk.media.emulated import EmulatedDevices


@asynccontextmanager
async def door_and_desk_in_a_call(tmp_path: Path, devices: EmulatedDevices) -> AsyncIterator[Endpoint]:
    """The door (on `devices`) in a call with the desk, its speaker open; yields the door."""
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),
        endpoints(server.url, tmp_path, "desk") as (desk,),
    ):
        session = new_session_id()
        await door.join(session)
        await desk.join(session)
        await door.calls.session.audio_output_settled()
        yield door


def only_speaker(devices: EmulatedDevices) -> EmulatedDevices:
    devices.unplug("emulated-earpiece")
    devices.unplug("emulated-headphones")
    return devices


async def test_reselecting_the_only_output_keeps_it_playing(tmp_path: Path) -> None:
    # The audio-mode button on a kiosk with one output: the mode it is in, selected again.
    devices = only_speaker(EmulatedDevices(width=160, height=120, fps=10))
    async with door_and_desk_in_a_call(tmp_path, devices) as door:
        (speaker,) = devices.opened_speakers
        controller = KioskController(door.calls)
        controller.cycle_audio_mode()
        door.calls.set_audio_mode("SPEAKER")
        await door.calls.session.audio_output_settled()
        assert devices.opened_speakers == [speaker] and not speaker.closed
        assert door.calls.session.speaker is speaker and devices.busy_refusals == 0
        assert not door.events.of("on_error")
        written = speaker.frames_written
        await wait_until(lambda: speaker.frames_written > written + 20, 5, "the call still plays")


async def test_no_sound_device_is_opened_or_closed_on_the_event_loop(tmp_path: Path) -> None:
    # With a blocking open (defaults.pcm.nonblock 0), two modes on one card: a switch that opened the
    # new output on the loop before closing the old one would block the loop on our own substream.
    devices = EmulatedDevices(
        width=160,
        height=120,
        fps=10,
        nonblocking_open=False,
        shared_substreams={"emulated-earpiece": "emulated-speaker"},
        open_wait_timeout=2.0,
    )
    async with door_and_desk_in_a_call(tmp_path, devices) as door:
        door.calls.set_audio_mode("EARPIECE")
        assert door.calls.session.audio_mode == "EARPIECE"
        await door.calls.session.audio_output_settled()
        speaker, earpiece = devices.opened_speakers
        assert earpiece.device.device_id == "emulated-earpiece" and speaker.closed and not earpiece.closed
        assert door.calls.session.speaker is earpiece
        door.calls.set_audio_mode("EARPIECE")  # again: nothing is reopened
        door.calls.set_audio_mode("SPEAKER")
        await door.calls.session.audio_output_settled()
        assert [s.device.device_id for s in devices.opened_speakers] == [
            "emulated-speaker",
            "emulated-earpiece",
            "emulated-speaker",
        ]
        await wait_until(lambda: devices.opened_speakers[-1].frames_written > 20, 5, "the speaker plays")
        assert devices.busy_refusals == 0 and not door.events.of("on_error")
    assert devices.opened_on_loop == []  # nor the microphone, at the start or at the end


async def test_a_switch_between_two_cards_opens_the_new_one_before_closing_the_old(tmp_path: Path) -> None:
    devices = EmulatedDevices(width=160, height=120, fps=10)
    open_while_old_plays: list[bool] = []
    original = devices.open_speaker

    def watched_open(device_id: str):  # type: ignore[no-untyped-def]
        open_while_old_plays.append(any(not s.closed for s in devices.opened_speakers))
        return original(device_id)

    devices.open_speaker = watched_open  # type: ignore[method-assign]
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),
    ):
        await door.join(new_session_id())
        await door.calls.session.audio_output_settled()
        door.calls.set_audio_mode("HEADPHONES")
        await door.calls.session.audio_output_settled()
        await asyncio.sleep(0.1)  # the old one is closed on a worker thread after the swap
        speaker, headphones = devices.opened_speakers
        assert open_while_old_plays == [False, True]  # no gap: the speaker played while they opened
        assert speaker.closed and not headphones.closed


async def test_an_output_held_for_a_moment_by_someone_else_is_waited_for(tmp_path: Path) -> None:
    # The ringtone still closing its speaker when the answered call opens the same output.
    devices = only_speaker(EmulatedDevices(width=160, height=120, fps=10))
    ringtone = devices.open_speaker("emulated-speaker")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, ringtone.close)
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),
    ):
        await door.join(new_session_id())
        await door.calls.session.audio_output_settled()
        assert door.calls.session.speaker is devices.opened_speakers[-1] is not ringtone
        assert devices.busy_refusals >= 1  # it was busy, and the call waited instead of giving up
        assert not door.events.of("on_error")


async def test_an_output_another_program_keeps_is_reported_and_the_call_goes_on(tmp_path: Path) -> None:
    devices = EmulatedDevices(width=160, height=120, fps=10)
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),
    ):
        await door.join(new_session_id(), CallSettingsBuilder().build())
        await door.calls.session.audio_output_settled()
        other_program = await asyncio.to_thread(devices.open_speaker, "emulated-headphones")
        door.calls.set_audio_mode("HEADPHONES")
        await door.calls.session.audio_output_settled()
        error = door.events.of("on_error")[-1][0]
        assert error.code == "DEVICE_ERROR" and "busy" in error.message
        # The speaker it had goes on playing, and the mode says so.
        assert door.calls.session.audio_mode == "SPEAKER"
        assert door.calls.session.speaker is devices.opened_speakers[0]
        changed = door.events.of("on_audio_mode_changed")[-1][0]
        assert [m.mode for m in changed if m.selected] == ["SPEAKER"]
        await asyncio.to_thread(other_program.close)


def test_the_emulated_card_refuses_a_second_open_as_alsa_does() -> None:
    devices = EmulatedDevices()
    first = devices.open_speaker("emulated-speaker")
    try:
        devices.open_speaker("emulated-speaker")
    except DeviceBusyError as exc:
        assert "busy" in str(exc)
    else:
        raise AssertionError("a held substream opened twice")
    assert devices.output_busy("emulated-speaker") and not devices.output_busy("emulated-earpiece")
    first.close()
    devices.open_speaker("emulated-speaker").close()
    microphone = devices.open_microphone("emulated-mic")
    try:
        devices.open_microphone("emulated-mic")
    except DeviceBusyError:
        pass
    else:
        raise AssertionError("a held microphone opened twice")
    microphone.close()


def test_a_blocking_open_waits_until_the_holder_closes() -> None:
    devices = EmulatedDevices(nonblocking_open=False, open_wait_timeout=5.0)
    first = devices.open_speaker("emulated-speaker")
    opened = []
    waiter = threading.Thread(target=lambda: opened.append(devices.open_speaker("emulated-speaker")))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not opened  # still waiting on the held substream
    first.close()
    waiter.join(5)
    assert len(opened) == 1 and not opened[0].closed
    opened[0].close()


def test_an_emulated_mixer_scales_what_is_played(tmp_path: Path) -> None:
    devices = EmulatedDevices(speaker_dir=tmp_path)
    volume = devices.hardware_volume("emulated-speaker")
    assert volume is not None and devices.hardware_volume("emulated-headphones") is None
    volume.set(50)
    speaker = devices.open_speaker("emulated-speaker")
    speaker.set_gain(0.5)
    signal = tone(440, 0.2)
    for start in range(0, len(signal), 960):
        speaker.write("bob", audio_frame(signal[start : start + 960]))
    speaker.close()
    with wave.open(str(tmp_path / "emulated-speaker" / "bob.wav")) as played:
        samples = np.frombuffer(played.readframes(played.getnframes()), dtype=np.int16)
    assert abs(rms(samples) / rms(signal) - 0.25) < 0.02  # mixer 50 % times gain 0.5


async def test_the_audio_output_on_its_own_chooses_refuses_and_falls_back() -> None:
    from kiosk.calls.audio_output import AudioOutput
    from kiosk.calls.errors import CallsError

    devices = EmulatedDevices(width=128, height=96)
    changes: list[str | None] = []
    errors: list[Exception] = []
    output = AudioOutput(
        devices, on_error=errors.append, on_changed=lambda: changes.append(output.mode), on_microphone=print
    )
    problem = output.choose_initial("BLUETOOTH")
    assert problem == "default audio mode BLUETOOTH has no device now; using SPEAKER"
    await output.settled()
    assert output.speaker is not None and output.speaker.device.device_id == "emulated-speaker"
    for mode, code in (("BLUETOOTH", "AUDIO_MODE_UNAVAILABLE"), ("LOUD", "INVALID_AUDIO_MODE")):
        try:
            output.select_mode(mode)
        except CallsError as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"{mode} was accepted")
    output.select_mode("HEADPHONES")
    await output.settled()
    assert output.speaker.device.device_id == "emulated-headphones" and changes == ["HEADPHONES"]
    assert [m.mode for m in output.modes() if m.selected] == ["HEADPHONES"]
    devices.unplug("emulated-headphones")
    assert output.output_vanished(devices.list_devices())
    await output.settled()
    assert output.mode == "SPEAKER" and output.speaker.device.device_id == "emulated-speaker"
    await output.close()
    assert all(s.closed for s in devices.opened_speakers) and errors == []
