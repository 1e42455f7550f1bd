"""The kiosk's ALSA backend on the emulated sound card (tests/alsa_card): a card that opens once at a
time, consumes in real time, underruns when starved, and has a volume control (or none), through
real alsa-lib and real pyalsaaudio.

- A busy card is refused at once, even where alsa-lib's configuration makes opens wait
  (`defaults.pcm.nonblock 0`): pyalsaaudio would wait holding the GIL, and the whole process with it.
- Two audio modes on one card switch in a call: the card is freed before the other mode opens it.
- The volume goes to the card's mixer element where it has one, and into the playback path where not.
- After an underrun the echo canceller's reference is what the card played (pyalsaaudio's write()
  drops the period it was given and returns -EPIPE).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from alsa_card_support import EmulatedCard
from alsa_support import AlsaConfig, audio_frame, audio_section, rms, tone
from calls_support import endpoints, new_session_id, running_server, wait_until

from kiosk.device import KioskDevices
from kiosk.media.alsa import AlsaAudio, AlsaSpeaker
from kiosk.media.devices import AUDIO_FRAME_SAMPLES, DeviceBusyError
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.volume import OutputVolume, VolumeLevels, level_to_gain

HERE = Path(__file__).resolve().parent


@pytest.fixture
def alsa_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaConfig:
    config = AlsaConfig(tmp_path / "asound.conf")
    monkeypatch.setenv("ALSA_CONFIG_PATH", config.env_value)
    return config


def add_microphone(alsa_config: AlsaConfig, tmp_path: Path) -> None:
    (tmp_path / "mic.raw").write_bytes(tone(300, 5.0).astype("<i2").tobytes())
    alsa_config.add_capture("mic", tmp_path / "mic.raw")


def test_a_busy_card_is_refused_at_once_where_opens_would_wait(
    alsa_config: AlsaConfig, tmp_path: Path
) -> None:
    EmulatedCard.in_dir(tmp_path, "spk", nonblock_open=False).add_to(alsa_config)
    alsa_config.write()
    # In a child: on the old code the second open waited on our own held card with the GIL held, for
    # ever; the parent sees that as a timeout instead of hanging the suite.
    script = f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
from alsa_support import audio_section
from kiosk.media.alsa import AlsaAudio
from kiosk.media.devices import DeviceBusyError
audio = AlsaAudio(audio_section({{"SPEAKER": ("spk", "")}}))
held = audio.open_speaker("alsa-out:SPEAKER")
print("busy" if audio.output_busy("alsa-out:SPEAKER") else "free", flush=True)
try:
    audio.open_speaker("alsa-out:SPEAKER")
    print("opened twice", flush=True)
except DeviceBusyError as exc:
    print("refused:", exc, flush=True)
held.close()
again = audio.open_speaker("alsa-out:SPEAKER")
again.close()
print("reopened", flush=True)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, cwd=HERE.parent
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "busy" and lines[1].startswith("refused:") and "busy" in lines[1].lower(), result
    assert lines[2] == "reopened", result


async def test_two_modes_on_one_card_switch_in_a_call(alsa_config: AlsaConfig, tmp_path: Path) -> None:
    # A USB headset whose one playback substream serves two modes under two names: the switch must
    # free the card before opening it again, never open it twice, and never reopen the mode in use.
    card = EmulatedCard.in_dir(tmp_path, "headset", mixer=False).add_to(alsa_config)
    alsa_config.pcms["headset_hp"] = 'type plug\nslave.pcm "headset"'  # the same card by another name
    add_microphone(alsa_config, tmp_path)
    alsa_config.write()
    alsa = AlsaAudio(audio_section({"SPEAKER": ("headset", ""), "HEADPHONES": ("headset_hp", "")}))
    devices = KioskDevices(EmulatedDevices(width=160, height=120, fps=10), alsa, ["SPEAKER", "HEADPHONES"])
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=devices) as (door,),  # type: ignore[arg-type]
        endpoints(server.url, tmp_path, "desk") as (desk,),
    ):
        session = new_session_id()
        await door.join(session)
        await desk.join(session)
        info = door.calls.session
        assert info is not None
        await info.audio_output_settled()
        first = door.calls.session.speaker
        assert isinstance(first, AlsaSpeaker) and first.pcm_name == "headset"
        door.calls.set_audio_mode("SPEAKER")  # again: kept as it is
        await info.audio_output_settled()
        assert door.calls.session.speaker is first
        door.calls.set_audio_mode("HEADPHONES")
        await info.audio_output_settled()
        second = door.calls.session.speaker
        assert isinstance(second, AlsaSpeaker) and second.pcm_name == "headset_hp"
        assert not door.events.of("on_error")
        played = len(card.played_frames(2))
        await wait_until(lambda: rms(card.played_frames(2)[played:, 0][-4800:]) > 1000, 10, "the desk heard")


@pytest.mark.parametrize("mixer", [True, False], ids=["card-mixer", "software-gain"])
def test_the_volume_is_played_at_the_same_loudness_with_or_without_a_mixer(
    alsa_config: AlsaConfig, tmp_path: Path, mixer: bool
) -> None:
    card = EmulatedCard.in_dir(tmp_path, "spk", mixer=mixer).add_to(alsa_config)
    alsa_config.write()
    section = audio_section({"SPEAKER": ("spk", "")})
    speaker_mode = dataclasses.replace(section.modes["SPEAKER"], mixer_device="spk")  # the card's ctl
    alsa = AlsaAudio(dataclasses.replace(section, modes={"SPEAKER": speaker_mode}))
    control = alsa.hardware_volume("alsa-out:SPEAKER")
    assert (control is not None) == mixer
    volume = OutputVolume(alsa, VolumeLevels(tmp_path / "volume.json", 50))
    devices = KioskDevices(EmulatedDevices(), alsa, ["SPEAKER"], volume=volume)
    speaker = devices.open_speaker("alsa-out:SPEAKER")
    assert isinstance(speaker, AlsaSpeaker)
    signal = tone(440, 1.0)
    try:
        for start in range(0, len(signal), AUDIO_FRAME_SAMPLES):
            speaker.write("desk", audio_frame(signal[start : start + AUDIO_FRAME_SAMPLES], stereo=True))
            time.sleep(AUDIO_FRAME_SAMPLES / 48000)
        time.sleep(0.2)
    finally:
        speaker.close()
    played = card.played_frames(speaker.channels)[:, 0]
    loud = played[np.abs(played) > 0]
    assert len(loud) > 24000
    middle = loud[len(loud) // 4 : 3 * len(loud) // 4]
    assert rms(middle) / rms(signal) == pytest.approx(level_to_gain(50), rel=0.15)
    if mixer:
        state = card.mixer_values()
        assert state is not None and state.volume[0] < state.maximum // 4  # set on the card, not in code
        assert speaker.gain == 1.0
    else:
        assert speaker.gain == pytest.approx(level_to_gain(50))


def test_the_echo_reference_is_what_the_card_played_through_an_underrun(
    alsa_config: AlsaConfig, tmp_path: Path
) -> None:
    card = EmulatedCard.in_dir(tmp_path, "spk", mixer=False).add_to(alsa_config)
    alsa_config.write()
    speaker = AlsaAudio(audio_section({"SPEAKER": ("spk", "")})).open_speaker("alsa-out:SPEAKER")
    reference: list[np.ndarray] = []
    stalled = threading.Event()

    def tap(samples: np.ndarray) -> None:
        reference.append(samples.copy())
        if len(reference) == 15 and not stalled.is_set():
            stalled.set()
            time.sleep(0.3)  # the playback thread is late: the card runs dry and underruns

    speaker.set_reference_tap(tap)
    # Each 20 ms frame a level of its own, so each period can be told apart in both streams.
    try:
        for k in range(60):
            frame = np.full(AUDIO_FRAME_SAMPLES, 200 + 50 * k, dtype=np.int16)
            speaker.write("desk", audio_frame(frame, stereo=True))
            time.sleep(AUDIO_FRAME_SAMPLES / 48000)
        time.sleep(0.2)
    finally:
        speaker.close()
    assert speaker.underruns >= 1
    played = card.played_frames(speaker.channels)[:, 0]
    heard = np.concatenate(reference)

    def levels(samples: np.ndarray) -> list[int]:
        values = samples[samples != 0]
        return [int(v) for i, v in enumerate(values) if i == 0 or v != values[i - 1]]

    # The same periods in the same order: none that the card dropped is in the reference.
    assert levels(heard) == levels(played)

    # And the silence of the underrun is in the reference too, about as long as the card's.
    def longest_silence(samples: np.ndarray) -> int:
        silent = np.concatenate(([0], (samples == 0).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(silent))
        return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0

    gap_played, gap_heard = longest_silence(played), longest_silence(heard)
    assert gap_played > 4800  # the card really ran dry
    assert abs(gap_heard - gap_played) < 3 * AUDIO_FRAME_SAMPLES, (gap_heard, gap_played)


def test_a_held_card_is_busy_to_the_session_and_free_after(alsa_config: AlsaConfig, tmp_path: Path) -> None:
    EmulatedCard.in_dir(tmp_path, "spk", mixer=False).add_to(alsa_config)
    alsa_config.write()
    alsa = AlsaAudio(audio_section({"SPEAKER": ("spk", "")}))
    assert not alsa.output_busy("alsa-out:SPEAKER")
    held = alsa.open_speaker("alsa-out:SPEAKER")
    try:
        assert alsa.output_busy("alsa-out:SPEAKER")
        with pytest.raises(DeviceBusyError):
            alsa.open_speaker("alsa-out:SPEAKER")
    finally:
        held.close()
    assert not alsa.output_busy("alsa-out:SPEAKER")
