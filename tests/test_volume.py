"""The playback volume: per audio mode, kept across restarts, through the output's mixer where it has
one and a software gain where it has not, from the controller, the GPIO buttons (gpiozero's
MockFactory) and the control socket; the other side of a call hears the same whatever it is."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from alsa_support import audio_frame, rms, tone
from calls_support import Endpoint, audio_level, endpoints, new_session_id, running_server, wait_until
from gpiozero.pins.mock import MockFactory

from kiosk.config import ButtonSection, ButtonsSection
from kiosk.controller import KioskController
from kiosk.device import KioskDevices
from kiosk.hardware import ButtonPanel
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.volume import OutputVolume, VolumeLevels, db_to_level, level_to_db, level_to_gain

MODES = ["SPEAKER", "EARPIECE", "HEADPHONES"]


def kiosk_devices(tmp_path: Path, **options: object) -> tuple[KioskDevices, EmulatedDevices, OutputVolume]:
    # A steady tone, so that the level heard at the other side is the same from one second to the next.
    options.setdefault("tone_hz", 440.0)
    emulated = EmulatedDevices(width=160, height=120, fps=10, **options)  # type: ignore[arg-type]
    volume = OutputVolume(emulated, VolumeLevels(tmp_path / "volume.json", 80), step=10)
    return KioskDevices(emulated, emulated, MODES, volume=volume), emulated, volume


def played(path: Path) -> np.ndarray:
    with wave.open(str(path)) as recorded:
        return np.frombuffer(recorded.readframes(recorded.getnframes()), dtype=np.int16)


def test_levels_are_kept_per_mode_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "volume.json"
    levels = VolumeLevels(path, default=70)
    assert levels.get("SPEAKER") == 70
    levels.set("SPEAKER", 40)
    levels.set("HEADPHONES", 130)  # clamped
    again = VolumeLevels(path, default=70)  # the kiosk restarted
    assert (again.get("SPEAKER"), again.get("HEADPHONES"), again.get("EARPIECE")) == (40, 100, 70)
    assert json.loads(path.read_text()) == {"HEADPHONES": 100, "SPEAKER": 40}
    assert [p.name for p in path.parent.iterdir()] == ["volume.json"]  # no temporary file left
    path.write_text("{not json")
    assert VolumeLevels(path, default=70).get("SPEAKER") == 70  # a damaged file is not fatal


def test_the_curve_is_loudness_like() -> None:
    assert level_to_gain(100) == 1.0 and level_to_gain(0) == 0.0
    assert -19 < level_to_db(50, -100) < -17  # half is about -18 dB, not -6 dB
    assert level_to_db(0, -60) == -60 and db_to_level(level_to_db(30, -100)) == 30


def test_a_mixer_where_the_output_has_one_and_software_gain_where_not(tmp_path: Path) -> None:
    devices, emulated, volume = kiosk_devices(tmp_path)
    volume.set_level("SPEAKER", 30)
    volume.set_level("HEADPHONES", 50)
    speaker = devices.open_speaker("emulated-speaker")
    headphones = devices.open_speaker("emulated-headphones")
    assert emulated.mixer_percent["emulated-speaker"] == 30 and speaker.gain == 1.0
    assert headphones.gain == pytest.approx(level_to_gain(50))  # no mixer: in the playback path
    # A change reaches the open output of that mode, and only that one.
    volume.step("HEADPHONES", -2)
    assert (
        headphones.gain == pytest.approx(level_to_gain(30))
        and emulated.mixer_percent["emulated-speaker"] == 30
    )
    speaker.close()
    headphones.close()


def test_software_gain_is_what_is_played_and_what_the_echo_canceller_hears(tmp_path: Path) -> None:
    emulated = EmulatedDevices(speaker_dir=tmp_path / "out", mixer_outputs=())
    volume = OutputVolume(emulated, VolumeLevels(None, 50))
    references: list[np.ndarray] = []
    speaker = emulated.open_speaker("emulated-speaker")
    volume.attach(speaker)
    speaker.set_reference_tap(lambda samples: references.append(samples.copy()))  # type: ignore[attr-defined]
    signal = tone(440, 0.4)
    for start in range(0, len(signal), 960):
        speaker.write("bob", audio_frame(signal[start : start + 960]))
    speaker.close()
    out = played(tmp_path / "out" / "emulated-speaker" / "bob.wav")
    assert rms(out) / rms(signal) == pytest.approx(level_to_gain(50), rel=0.02)
    reference = np.concatenate(references)
    assert rms(reference) / rms(signal) == pytest.approx(level_to_gain(50), rel=0.05)


async def test_buttons_and_the_control_socket_step_the_volume_of_the_mode_in_use(tmp_path: Path) -> None:
    devices, emulated, volume = kiosk_devices(tmp_path)
    factory = MockFactory()
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),  # type: ignore[arg-type]
    ):
        controller = KioskController(door.calls, volume=volume)
        panel = ButtonPanel(
            ButtonsSection(
                pin_factory="mock",
                volume_up=ButtonSection(24, hold_s=0.1),
                volume_down=ButtonSection(25, hold_s=0.1),
            ),
            controller,
            asyncio.get_running_loop(),
            pin_factory=factory,
        )
        try:
            # Outside a call: the mode a call would start in.
            assert controller.state.volume == 80
            up = panel.buttons["volume_up"].pin
            up.drive_low()
            up.drive_high()
            await wait_until(lambda: controller.state.volume == 90, 5, "one step up")
            assert volume.level("SPEAKER") == 90
            await door.join(new_session_id())
            await door.calls.session.audio_output_settled()
            door.calls.set_audio_mode("HEADPHONES")
            await wait_until(lambda: controller.state.volume == 80, 5, "the headphones' own level")
            # Held: one step at the press, then another every hold_s.
            down = panel.buttons["volume_down"].pin
            down.drive_low()
            await wait_until(lambda: controller.state.volume <= 50, 5, "repeats while held")
            down.drive_high()
            await asyncio.sleep(0.3)
            after_release = controller.state.volume
            await asyncio.sleep(0.3)
            assert controller.state.volume == after_release  # no more steps once released
            assert volume.level("HEADPHONES") == after_release and volume.level("SPEAKER") == 90
            await door.calls.session.audio_output_settled()
            assert door.calls.session.speaker is not None
            assert door.calls.session.speaker.gain == pytest.approx(level_to_gain(after_release))
            # The control socket's words, as the keyboard's + and -.
            await controller.dispatch("volume_up")
            assert controller.state.volume == after_release + 10
        finally:
            panel.close()
            factory.reset()
    # What was set survives a restart of the kiosk.
    assert VolumeLevels(tmp_path / "volume.json").get("SPEAKER") == 90


async def test_the_other_side_hears_the_same_whatever_the_volume(tmp_path: Path) -> None:
    devices, emulated, volume = kiosk_devices(tmp_path, speaker_dir=tmp_path / "played")
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),  # type: ignore[arg-type]
        endpoints(server.url, tmp_path, "desk") as (desk,),
    ):
        controller = KioskController(door.calls, volume=volume)
        session = new_session_id()
        await door.join(session)
        await desk.join(session)
        await wait_until(lambda: audio_level(desk, "door"), 15, "the door heard at the desk")
        # The desk's playout builds its buffer in its first moments (frames stretched, a late one
        # concealed), which a loaded machine makes longer: the level is read once it plays steadily.
        await asyncio.sleep(1.0)
        before = await _steady_level(desk, "door")
        for _ in range(7):
            await controller.volume_down()
        assert controller.state.volume == 10 and emulated.mixer_percent["emulated-speaker"] == 10
        await asyncio.sleep(1.0)
        after = await _steady_level(desk, "door")
        assert after == pytest.approx(before, rel=0.25), (before, after)
    # ... while the door played the desk more quietly.
    out = played(tmp_path / "played" / "emulated-speaker" / "desk.wav")
    # Loud while the volume was 80 (the loudest 100 ms of the first half), quiet at the end.
    loud = max(rms(out[i : i + 4800]) for i in range(0, len(out) // 2, 4800))
    assert rms(out[-4800:]) < 0.2 * loud


async def _steady_level(endpoint: Endpoint, uid: str) -> float:
    samples = []
    for _ in range(5):
        samples.append(await audio_level(endpoint, uid))
        await asyncio.sleep(0.1)
    return float(np.median(samples))
