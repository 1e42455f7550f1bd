"""The ALSA backend against real alsa-lib, through pyalsaaudio, with `file` and `null` PCMs.

Each test generates its own alsa-lib configuration in tmp_path and points ALSA_CONFIG_PATH at it;
alsa-lib notices the changed path (or a changed file) at the next snd_pcm_open, so tests stay isolated
in one process. Run with -s to see the measured switch gap and capture lag.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import alsaaudio
import av
import numpy as np
import pytest
from alsa_support import (
    AlsaConfig,
    audio_frame,
    audio_section,
    read_raw,
    rms,
    sound,
    spectrum_peaks,
    tone,
)
from calls_support import audio_level, endpoints, new_session_id, running_server, wait_until

from kiosk.device import KioskDevices
from kiosk.media import alsa as alsa_module
from kiosk.media.alsa import AlsaAudio, AlsaMicrophone, AlsaSpeaker
from kiosk.media.devices import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, DeviceError
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.mixer import ParticipantMixer

AUDIBLE = 1000  # rms of a period that carries the test tone (0.3 full scale is about 6950)
FRAME_SECONDS = AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE


@pytest.fixture
def alsa_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaConfig:
    config = AlsaConfig(tmp_path / "asound.conf")
    monkeypatch.setenv("ALSA_CONFIG_PATH", config.env_value)
    return config


class Feeder:
    """Writes a signal to whichever sink is current, one 20 ms frame every 20 ms, as aiortc does."""

    def __init__(
        self, sink: AlsaSpeaker, signal: np.ndarray, uid: str = "alice", stereo: bool = True
    ) -> None:
        self.sink = sink
        self.signal = signal
        self.uid = uid
        self.stereo = stereo
        self.position = 0

    async def run(self, seconds: float) -> None:
        start = time.monotonic()
        for k in range(round(seconds / FRAME_SECONDS)):
            chunk = self.signal[self.position : self.position + AUDIO_FRAME_SAMPLES]
            self.position += AUDIO_FRAME_SAMPLES
            self.sink.write(self.uid, audio_frame(chunk, stereo=self.stereo))
            await asyncio.sleep(max(0.0, start + (k + 1) * FRAME_SECONDS - time.monotonic()))


def tapped(sink: AlsaSpeaker) -> list[tuple[float, np.ndarray]]:
    """Record (time written, samples) of every period the sink writes."""
    periods: list[tuple[float, np.ndarray]] = []
    sink.set_reference_tap(lambda samples: periods.append((time.monotonic(), samples)))
    return periods


# ----------------------------------------------------------------------------- presence


def test_devices_follow_the_alsa_configuration(alsa_config: AlsaConfig, tmp_path: Path, capfd) -> None:
    for name in ("spk", "ear", "hp"):
        alsa_config.add_playback(name, tmp_path / f"{name}.raw")
    for name in ("mic", "hpmic"):
        alsa_config.add_capture(name, tmp_path / "silence.raw")
    (tmp_path / "silence.raw").write_bytes(bytes(9600))
    alsa_config.write()
    section = audio_section(
        {
            "SPEAKER": ("spk", ""),
            "EARPIECE": ("ear", ""),
            "HEADPHONES": ("hp", "hpmic"),
            "BLUETOOTH": ("bt", ""),
        },
        fallback_order=["HEADPHONES", "SPEAKER", "EARPIECE", "BLUETOOTH"],
    )
    audio = AlsaAudio(section)

    # BLUETOOTH is configured but its PCM is not defined: absent. Modes come in fallback order.
    assert audio.audio_modes() == ["HEADPHONES", "SPEAKER", "EARPIECE"]
    assert {d.audio_mode: d.device_id for d in audio.audio_outputs()} == {
        "HEADPHONES": "alsa-out:HEADPHONES",
        "SPEAKER": "alsa-out:SPEAKER",
        "EARPIECE": "alsa-out:EARPIECE",
    }
    assert [d.device_id for d in audio.audio_inputs()] == ["alsa-in:mic", "alsa-in:hpmic"]
    assert audio.input_for_mode("HEADPHONES").device_id == "alsa-in:hpmic"
    assert audio.input_for_mode("SPEAKER").device_id == "alsa-in:mic"
    assert audio.output_for_mode("BLUETOOTH") is None

    # The headset is unplugged: its PCMs leave the configuration and the next look sees it.
    alsa_config.remove("hp")
    alsa_config.remove("hpmic")
    alsa_config.write()
    assert audio.audio_modes() == ["SPEAKER", "EARPIECE"]
    assert [d.device_id for d in audio.audio_inputs()] == ["alsa-in:mic"]
    assert audio.input_for_mode("HEADPHONES").device_id == "alsa-in:mic"

    # A Bluetooth PCM appears.
    alsa_config.add_playback("bt", tmp_path / "bt.raw")
    alsa_config.write()
    assert audio.audio_modes() == ["SPEAKER", "EARPIECE", "BLUETOOTH"]

    # Opening a device whose PCM went: DeviceError naming the PCM with alsa-lib's reason.
    alsa_config.remove("ear")
    alsa_config.write()
    with pytest.raises(DeviceError) as missing:
        audio.open_speaker("alsa-out:EARPIECE")
    assert "'ear'" in str(missing.value) and "No such file or directory" in str(missing.value)
    assert missing.value.device_id == "alsa-out:EARPIECE"
    with pytest.raises(DeviceError):
        audio.open_speaker("alsa-out:NOPE")
    with pytest.raises(DeviceError):
        audio.open_camera("camera")
    # Probing absent PCMs every poll must not print alsa-lib's "Unknown PCM" lines.
    assert "ALSA lib" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- playback


async def test_playback_switches_device_with_the_mode_and_a_short_gap(
    alsa_config: AlsaConfig, tmp_path: Path
) -> None:
    spk = alsa_config.add_playback("spk", tmp_path / "spk.raw")
    ear = alsa_config.add_playback("ear", tmp_path / "ear.raw")
    alsa_config.write()
    audio = AlsaAudio(audio_section({"SPEAKER": ("spk", ""), "EARPIECE": ("ear", "")}))

    speaker = audio.open_speaker(audio.output_for_mode("SPEAKER").device_id)
    assert speaker.channels == 2
    spk_periods = tapped(speaker)
    opened = time.monotonic()
    feeder = Feeder(speaker, tone(440, 3.0))
    await feeder.run(0.6)
    # Probing the open device (the SDK polls) must leave its output alone.
    assert "SPEAKER" in audio.audio_modes()

    # As CallSession._open_speaker does: open the new device, then close the old one.
    earpiece = audio.open_speaker(audio.output_for_mode("EARPIECE").device_id)
    ear_periods = tapped(earpiece)
    feeder.sink = earpiece
    speaker.close()
    spk_seconds = time.monotonic() - opened
    await feeder.run(0.6)
    earpiece.close()

    assert speaker.paced_by_device is False  # the null PCM takes everything at once: we pace
    for path, periods in ((spk, spk_periods), (ear, ear_periods)):
        written = np.fromfile(path, dtype="<i2").reshape(-1, 2)
        assert np.array_equal(written[:, 0], written[:, 1])  # the mono mix on both channels
        # What the file holds is exactly what the reference tap saw (the tap is the AEC's far end),
        # after the silence written before the tap was set.
        seen = np.concatenate([samples for _, samples in periods])
        assert np.array_equal(written[-len(seen) :, 0], seen)
        assert not written[: -len(seen)].any()
        audible = sound(written[:, 0])
        assert len(audible) > 0.4 * AUDIO_SAMPLE_RATE, path
        assert abs(spectrum_peaks(audible, 1)[0] - 440) < 5, path

    # Real-time pace: the speaker wrote about as much audio as it was open.
    written_seconds = len(read_raw(spk, 2)) / AUDIO_SAMPLE_RATE
    assert abs(written_seconds - spk_seconds) < 0.06, (written_seconds, spk_seconds)

    period = speaker.period / AUDIO_SAMPLE_RATE
    last_old = max(t for t, samples in spk_periods if rms(samples) > AUDIBLE) + period
    first_new = min(t for t, samples in ear_periods if rms(samples) > AUDIBLE)
    gap = first_new - last_old
    print(
        f"\nswitch gap: {gap * 1000:.1f} ms (end of the last tone period on the old device to the first on the new)"
    )
    assert gap < 0.1


async def test_playback_mixes_participants(alsa_config: AlsaConfig, tmp_path: Path) -> None:
    out = alsa_config.add_playback("spk", tmp_path / "spk.raw")
    alsa_config.write()
    audio = AlsaAudio(audio_section({"SPEAKER": ("spk", "")}))
    speaker = audio.open_speaker("alsa-out:SPEAKER")
    try:
        await asyncio.gather(
            Feeder(speaker, tone(440, 1.0), "alice", stereo=True).run(0.6),
            Feeder(speaker, tone(1000, 1.0), "bob", stereo=False).run(0.6),
        )
        await asyncio.sleep(0.1)  # nobody sends: the device gets silence, not the last samples again
    finally:
        speaker.close()
    written = read_raw(out, speaker.channels)
    assert not written[: speaker.period].any()  # the period that starts the stream is silence
    assert not written[-speaker.period :].any()
    mixed = sound(written)
    assert sorted(round(p) for p in spectrum_peaks(mixed, 2)) == pytest.approx([440, 1000], abs=5)
    # Both at full strength: the rms of two 0.3 tones summed is 0.3 full scale.
    assert rms(mixed) > 0.25 * 32767


def test_mixer_clips_and_bounds_each_participant() -> None:
    mixer = ParticipantMixer(max_samples=2 * AUDIO_FRAME_SAMPLES)
    loud = np.full(AUDIO_FRAME_SAMPLES, 30000, dtype=np.int16)
    mixer.push("a", audio_frame(loud))
    mixer.push("b", audio_frame(loud, stereo=True))
    assert (mixer.mix(AUDIO_FRAME_SAMPLES) == 32767).all()  # clipped, not wrapped around
    mixer.push("a", audio_frame(-loud))
    mixer.push("b", audio_frame(-loud))
    assert (mixer.mix(AUDIO_FRAME_SAMPLES) == -32768).all()

    # A burst of five frames keeps only the newest two.
    for value in range(1, 6):
        mixer.push("a", audio_frame(np.full(AUDIO_FRAME_SAMPLES, value, dtype=np.int16)))
    assert mixer.queued("a") == 2 * AUDIO_FRAME_SAMPLES and mixer.dropped_samples == 3 * AUDIO_FRAME_SAMPLES
    played = mixer.mix(3 * AUDIO_FRAME_SAMPLES)
    assert list(np.unique(played[:AUDIO_FRAME_SAMPLES])) == [4]
    assert list(np.unique(played[AUDIO_FRAME_SAMPLES : 2 * AUDIO_FRAME_SAMPLES])) == [5]
    assert not played[2 * AUDIO_FRAME_SAMPLES :].any()  # then silence

    # Stereo with different channels is averaged; other rates and formats are resampled.
    stereo = av.AudioFrame.from_ndarray(
        np.tile(np.array([[1000, 3000]], dtype=np.int16), AUDIO_FRAME_SAMPLES).reshape(1, -1),
        format="s16",
        layout="stereo",
    )
    stereo.sample_rate = AUDIO_SAMPLE_RATE
    mixer.push("c", stereo)
    assert (mixer.mix(AUDIO_FRAME_SAMPLES) == 2000).all()
    t = np.arange(441) / 44100
    planar = av.AudioFrame.from_ndarray(
        np.vstack([np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32), format="fltp", layout="stereo"
    )
    planar.sample_rate = 44100
    for _ in range(5):
        mixer.push("d", planar)
    assert 0 < mixer.queued("d") <= 2 * AUDIO_FRAME_SAMPLES


async def test_speaker_failure_is_a_device_error(alsa_config: AlsaConfig, capfd) -> None:
    alsa_config.add_playback("full", Path("/dev/full"))  # every write of the file plugin fails
    alsa_config.write()
    speaker = AlsaAudio(audio_section({"SPEAKER": ("full", "")})).open_speaker("alsa-out:SPEAKER")
    frame = audio_frame(tone(440, FRAME_SECONDS))
    try:

        def failed() -> bool:
            try:
                speaker.write("alice", frame)
            except DeviceError as exc:
                assert "ALSA PCM 'full' failed: Input/output error" in str(exc)
                return True
            return False

        await wait_until(failed, 2, "the speaker's failure")
    finally:
        speaker.close()
    assert "ALSA lib" not in capfd.readouterr().err  # alsa-lib's complaint went to the debug log


# ----------------------------------------------------------------------------- capture


@pytest.mark.parametrize("period_ms", [10, 20])
async def test_capture_reads_the_device_in_real_time_without_a_backlog(
    alsa_config: AlsaConfig, tmp_path: Path, period_ms: int
) -> None:
    # A ramp: every sample tells where in the input it came from (modulo 32000).
    ramp = (np.arange(4 * AUDIO_SAMPLE_RATE) % 32000).astype("<i2")
    ramp.tofile(tmp_path / "in.raw")
    alsa_config.add_capture("mic", tmp_path / "in.raw")
    alsa_config.write()
    mic = AlsaAudio(audio_section({}, period_ms=period_ms)).open_microphone("alsa-in:mic")
    assert isinstance(mic, AlsaMicrophone)
    try:
        assert mic.period == period_ms * 48
        started = time.monotonic()
        frames = []
        most_buffered = 0
        for _ in range(25):
            frames.append(await mic.next_frame())
            most_buffered = max(most_buffered, mic.buffered_samples)
        elapsed = time.monotonic() - started
        # The file plugin returns at once; the clock makes it 25 x 20 ms.
        assert 0.45 < elapsed < 0.65, elapsed
        assert mic.paced_by_device is False
        for frame in frames:
            assert (frame.samples, frame.sample_rate, frame.format.name, frame.layout.name) == (
                AUDIO_FRAME_SAMPLES,
                AUDIO_SAMPLE_RATE,
                "s16",
                "mono",
            )
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        assert np.array_equal(got, ramp[: len(got)])  # the known signal, in order, nothing lost
        assert most_buffered <= max(2 * mic.period, AUDIO_FRAME_SAMPLES)

        # A reader that stalls finds the newest audio waiting, not the backlog.
        await asyncio.sleep(0.3)
        assert mic.buffered_samples <= max(2 * mic.period, AUDIO_FRAME_SAMPLES)
        assert mic.dropped_samples > 0
        resumed = await mic.next_frame()
        samples = resumed.to_ndarray().reshape(-1).astype(np.int64)
        source_now = (time.monotonic() - started) * AUDIO_SAMPLE_RATE  # input samples captured so far
        position = samples[0] + 32000 * round((source_now - samples[0]) / 32000)
        lag = (source_now - (position + AUDIO_FRAME_SAMPLES)) / AUDIO_SAMPLE_RATE
        print(f"\ncapture lag after a 300 ms stall ({period_ms} ms periods): {lag * 1000:.1f} ms")
        assert lag < 2 * max(2 * mic.period, AUDIO_FRAME_SAMPLES) / AUDIO_SAMPLE_RATE
        assert np.array_equal(np.diff(samples), np.ones(len(samples) - 1))
    finally:
        mic.close()
    with pytest.raises(DeviceError):
        await mic.next_frame()


async def test_capture_failure_is_a_device_error(
    alsa_config: AlsaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tone(440, 1.0).astype("<i2").tofile(tmp_path / "in.raw")
    alsa_config.add_capture("mic", tmp_path / "in.raw")
    alsa_config.write()
    real_pcm = alsaaudio.PCM

    class VanishingPCM:
        """The real PCM, until a USB microphone is pulled out after a few periods."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            self._pcm = real_pcm(*args, **kwargs)
            self._reads = 0

        def read(self) -> tuple[int, bytes]:
            self._reads += 1
            if self._reads > 3:
                raise alsaaudio.ALSAAudioError("No such device [mic]")
            return self._pcm.read()

        def __getattr__(self, name: str) -> object:
            return getattr(self._pcm, name)

    monkeypatch.setattr(alsa_module.alsaaudio, "PCM", VanishingPCM)
    mic = AlsaAudio(audio_section({})).open_microphone("alsa-in:mic")
    try:
        await mic.next_frame()
        with pytest.raises(DeviceError) as failed:
            for _ in range(5):
                await asyncio.wait_for(mic.next_frame(), 1)
        assert "ALSA PCM 'mic' failed: No such device" in str(failed.value)
    finally:
        mic.close()


async def test_capture_open_error_names_the_pcm(alsa_config: AlsaConfig) -> None:
    alsa_config.write()
    with pytest.raises(DeviceError) as missing:
        AlsaAudio(audio_section({}, capture="nomic")).open_microphone("alsa-in:nomic")
    assert "cannot open ALSA PCM 'nomic' for capture: No such file or directory" in str(missing.value)


# ----------------------------------------------------------------------------- with the SDK


async def test_call_plays_remote_audio_and_falls_back_when_the_speaker_goes(
    alsa_config: AlsaConfig, tmp_path: Path
) -> None:
    spk = alsa_config.add_playback("spk", tmp_path / "spk.raw")
    ear = alsa_config.add_playback("ear", tmp_path / "ear.raw")
    tone(880, 20.0).astype("<i2").tofile(tmp_path / "mic.raw")
    alsa_config.add_capture("mic", tmp_path / "mic.raw")
    alsa_config.write()
    alsa = AlsaAudio(audio_section({"SPEAKER": ("spk", ""), "EARPIECE": ("ear", "")}))
    alice_devices = KioskDevices(
        EmulatedDevices(width=160, height=120, fps=10), alsa, alsa.section.fallback_order
    )
    bob_devices = EmulatedDevices(width=160, height=120, fps=10, tone_hz=660)

    def recent(path: Path) -> np.ndarray:
        return read_raw(path, 2)[-AUDIO_SAMPLE_RATE // 2 :] if path.exists() else np.zeros(0)

    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", devices=alice_devices) as (a,),
        endpoints(server.url, tmp_path, "bob", devices=bob_devices) as (b,),
    ):
        session = new_session_id()
        await a.join(session)
        await b.join(session)
        assert a.calls.session.audio_mode == "SPEAKER"
        await a.calls.session.audio_output_settled()  # the speaker opens off the loop
        assert isinstance(a.calls.session.speaker, AlsaSpeaker)

        # Bob's 660 Hz tone, through Opus, lands in the SPEAKER PCM's file; Bob hears Alice's ALSA microphone.
        await wait_until(lambda: rms(recent(spk)) > AUDIBLE, 15, "bob's tone in spk.raw")
        # (Within 15 Hz: in the half second read, the playout may have stretched or dropped a frame
        # to follow the delay, which spreads the peak by a bin or two.)
        assert abs(spectrum_peaks(recent(spk), 1)[0] - 660) < 15
        await wait_until(lambda: audio_level(b, "alice"), 10, "alice's microphone at bob")
        assert await audio_level(b, "alice") > 0.05

        # The speaker's PCM leaves the configuration: the SDK's poll falls back to the earpiece.
        alsa_config.remove("spk")
        alsa_config.write()
        await wait_until(lambda: a.calls.session.audio_mode == "EARPIECE", 3, "fallback to the earpiece")
        changed = a.events.of("on_audio_mode_changed")[-1][0]
        assert [(m.mode, m.selected) for m in changed] == [("EARPIECE", True)]
        await wait_until(lambda: rms(recent(ear)) > AUDIBLE, 3, "bob's tone in ear.raw")
        # A full half second of it, so that the spectrum's bins are as fine as the speaker's were.
        await wait_until(
            lambda: len(recent(ear)) == AUDIO_SAMPLE_RATE // 2 and rms(recent(ear)) > AUDIBLE,
            3,
            "half a second of bob's tone in ear.raw",
        )
        assert abs(spectrum_peaks(recent(ear), 1)[0] - 660) < 15


def test_a_kiosk_without_its_microphone_or_any_output_starts_and_says_so(
    alsa_config: AlsaConfig, tmp_path: Path
) -> None:
    # A stock Raspberry Pi has no microphone: the kiosk must still start (and show what is missing),
    # not exit and be restarted by systemd every few seconds.
    from kiosk.config import KioskConfig
    from kiosk.device import build_devices

    alsa_config.add_playback("spk", tmp_path / "spk.raw")
    alsa_config.add_capture("mic", tmp_path / "silence.raw")
    (tmp_path / "silence.raw").write_bytes(bytes(9600))
    alsa_config.write()
    devices, choices = build_devices(KioskConfig(audio=audio_section({"SPEAKER": ("spk", "")})))
    assert devices.audio_modes() == ["SPEAKER"] and choices.problems == ()
    devices, choices = build_devices(
        KioskConfig(audio=audio_section({"SPEAKER": ("spk", "")}, capture="usbmic"))
    )
    assert choices.problems == ("No microphone (usbmic is not there)",)
    assert devices.audio_modes() == ["SPEAKER"] and devices.audio_inputs() == []
    devices, choices = build_devices(KioskConfig(audio=audio_section({"SPEAKER": ("spk", "")}, capture="")))
    assert choices.problems == ("No microphone: the other side will not hear you",)
    devices, choices = build_devices(KioskConfig(audio=audio_section({"SPEAKER": ("gone", "")})))
    assert choices.problems == ("No loudspeaker: no playback device is there",)
    assert devices.audio_outputs() == [] and devices.audio_inputs()
