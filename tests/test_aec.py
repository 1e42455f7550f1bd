"""Echo cancellation with WebRTC's real audio processing module (livekit's build), in simulated rooms.

The rooms, signals and measures are bench/echo.py's (so the benchmark and these tests measure the same
thing): a speech-like far end played through a delay plus sparse exponentially decaying reflections,
attenuated, with a -70 dBFS noise floor; 20 ms microphone frames; the speaker's periods (1024 samples)
reported as the reference ahead of each microphone frame, as a playback thread would.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

from kiosk.media.aec import (
    AudioProcessor,
    EchoCancelledMicrophone,
    ReferenceMixer,
    connect_reference,
)
from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    DeviceError,
    MediaDeviceInfo,
    SpeakerSink,
)
from kiosk.media.emulated import EmulatedDevices

ROOT = Path(__file__).resolve().parents[1]
ERLE_REQUIRED_DB = 20.0
NEAR_END_TOLERANCE_DB = 6.0


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is not an installed package: it is imported from the checkout, as `python -m bench` does.
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.echo")


def _frame(samples: np.ndarray, layout: str = "mono") -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = AUDIO_SAMPLE_RATE
    return frame


# ----------------------------------------------------------------------------- echo removed


@pytest.mark.parametrize(
    "room_args",
    [
        {"delay_ms": 12.0, "gain_db": -4.0, "decay_ms": 25.0, "reflections": 40, "seed": 1},
        {"delay_ms": 35.0, "gain_db": -8.0, "decay_ms": 50.0, "reflections": 80, "seed": 2},
        # A device with deep playback buffering: the delay is found by AEC3 itself, no hint given.
        {"delay_ms": 120.0, "gain_db": -6.0, "decay_ms": 40.0, "reflections": 60, "seed": 3},
    ],
    ids=["near-12ms", "reverberant-35ms", "buffered-120ms"],
)
def test_echo_is_reduced_by_20_db_once_converged(sim: ModuleType, room_args: dict[str, float]) -> None:
    # Gain control off: it multiplies everything, echo left and talker alike, by its own gain (up to
    # +15 dB before it has heard anyone), which is not echo; the next test covers it in a call.
    scene = sim.make_scene(sim.Room(**room_args), 8.0, seed=int(room_args["seed"]))
    sim.run_scene(AudioProcessor(auto_gain_control=False), scene)
    erle = sim.erle_db(scene)  # after the first 3 s
    print(f"ERLE {erle:.1f} dB")
    assert erle >= ERLE_REQUIRED_DB


def test_full_processing_in_a_call_keeps_echo_20_db_down(sim: ModuleType) -> None:
    """Everything on (the configuration's default): the near end says something first, then the far end
    talks alone; echo must be 20 dB down once converged, gain control included."""
    scene = sim.conversation_scene(sim.Room(delay_ms=25.0, gain_db=-6.0, seed=4), 10.0, seed=4)
    sim.run_scene(AudioProcessor(), scene)
    erle = sim.erle_db(scene, after_s=5.0)  # far end alone from 2 s; converged 3 s later
    print(f"ERLE {erle:.1f} dB")
    assert erle >= ERLE_REQUIRED_DB


def test_without_echo_cancellation_the_echo_stays(sim: ModuleType) -> None:
    """The control: with only noise suppression, the same room's echo comes through (so the 20 dB
    above is the canceller's doing, and the flag really turns it off)."""
    scene = sim.make_scene(sim.Room(delay_ms=12.0, gain_db=-4.0, seed=1), 6.0, seed=1)
    sim.run_scene(AudioProcessor(echo_cancellation=False, auto_gain_control=False), scene)
    erle = sim.erle_db(scene)
    print(f"ERLE without AEC {erle:.1f} dB")
    assert erle < 6.0


# ----------------------------------------------------------------------------- double talk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_double_talk_keeps_the_near_end_within_6_db(sim: ModuleType, seed: int) -> None:
    """The far end talks alone for 3 s (the canceller converges), then a near-end talker at the echo's
    level (0 dB signal-to-echo) joins and both talk; measured from 3 s after the near end joined.

    Measure: the near end is independent of the far end, so the near-end part of the output is found
    by projecting the output on the near-end input in short time-frequency tiles (least squares; echo
    left over is uncorrelated and only adds a small bias). Its power over the frames where the near
    end talks is compared with the near end's input power. Gain control is off so that its gain cannot
    make up for an attenuation.
    """
    room = sim.Room(delay_ms=20.0 + 5 * seed, gain_db=-6.0, seed=seed)
    scene = sim.double_talk_scene(room, seed=seed)
    sim.run_scene(AudioProcessor(auto_gain_control=False), scene)
    after = sim.DOUBLE_TALK_MEASURED_AFTER_S
    kept = sim.near_end_gain_db(scene, sim.talking_mask(scene, after))
    # Only the frames where both talk at that very moment: AEC3's suppressor is harder on those.
    both = sim.near_end_gain_db(scene, sim.talking_mask(scene, after, both=True))
    print(f"near end kept {kept:.1f} dB (frames with both talking: {both:.1f} dB)")
    assert -NEAR_END_TOLERANCE_DB <= kept <= NEAR_END_TOLERANCE_DB
    # Not half duplex (which would cut the near end by 12 dB or more where both talk).
    assert both > -12.0


def test_near_end_measure_is_sound(sim: ModuleType) -> None:
    """The projection measure itself: 0 dB when nothing is processed (even with the full echo left in),
    and the true loss when a known time-varying gain and a delay are applied."""
    scene = sim.make_scene(sim.Room(seed=5), 6.0, ser_db=0.0, seed=5)
    mask = sim.talking_mask(scene)
    scene.out = scene.mic.copy()
    assert abs(sim.near_end_gain_db(scene, mask)) < 1.5
    n = len(scene.mic)
    gain = np.repeat(np.random.default_rng(0).uniform(0.1, 1.0, n // 192 + 1), 192)[:n]  # per 4 ms
    processed = (0.1 * scene.echo + scene.near) * gain
    scene.out = np.concatenate([np.zeros(400), processed[:-400]])
    selected = np.repeat(mask, 480)[:n]
    truth = 10 * np.log10(np.sum((gain * scene.near)[selected] ** 2) / np.sum(scene.near[selected] ** 2))
    assert abs(sim.near_end_gain_db(scene, mask) - truth) < 1.0


# ----------------------------------------------------------------------------- pass-through and plumbing


def test_disabled_processing_passes_audio_through_unchanged(sim: ModuleType) -> None:
    processor = AudioProcessor(echo_cancellation=False, noise_suppression=False, auto_gain_control=False)
    scene = sim.make_scene(sim.Room(seed=1), 2.0, ser_db=0.0, seed=1)
    sim.run_scene(processor, scene)
    mic = np.clip(np.round(scene.mic), -32768, 32767)[: len(scene.out)]
    np.testing.assert_array_equal(scene.out, mic)


def test_capture_frames_keep_their_shape_and_timing() -> None:
    processor = AudioProcessor()
    frame = _frame(np.zeros(AUDIO_FRAME_SAMPLES))
    frame.pts = 4800
    out = processor.process_capture(frame)
    assert (out.samples, out.format.name, out.layout.name, out.sample_rate) == (960, "s16", "mono", 48000)
    assert out.pts == 4800
    assert processor.capture_chunks == 2  # one 20 ms frame is two 10 ms chunks for the APM
    with pytest.raises(ValueError):
        processor.process_capture(_frame(np.zeros(2 * AUDIO_FRAME_SAMPLES), layout="stereo"))
    with pytest.raises(ValueError):
        processor.process_capture(_frame(np.zeros(1000)))


def test_reference_is_buffered_to_10_ms_chunks() -> None:
    processor = AudioProcessor()
    for _ in range(5):
        processor.process_reference(np.zeros(1024, dtype=np.int16))  # 5120 samples: 10 chunks + 320
    assert processor.reference_chunks == 10
    processor.process_reference(np.zeros(160, dtype=np.int16))
    assert processor.reference_chunks == 11
    with pytest.raises(TypeError):
        processor.process_reference(np.zeros(480, dtype=np.float32))


def test_delay_hint_is_accepted() -> None:
    processor = AudioProcessor()
    processor.set_delay_ms(60)
    processor.process_reference(np.zeros(960, dtype=np.int16))
    processor.process_capture(_frame(np.zeros(AUDIO_FRAME_SAMPLES)))
    processor.set_delay_ms(None)
    processor.process_capture(_frame(np.zeros(AUDIO_FRAME_SAMPLES)))


def test_reference_and_capture_from_two_threads() -> None:
    processor = AudioProcessor()
    rng = np.random.default_rng(0)
    played = (rng.standard_normal(1024 * 100) * 1000).astype(np.int16)

    def playback() -> None:
        for i in range(100):
            processor.process_reference(played[i * 1024 : (i + 1) * 1024])

    thread = threading.Thread(target=playback)
    thread.start()
    for _ in range(100):
        processor.process_capture(_frame(rng.standard_normal(AUDIO_FRAME_SAMPLES) * 1000))
    thread.join()
    assert processor.reference_chunks == 1024 * 100 // 480
    assert processor.capture_chunks == 200


async def test_echo_cancelled_emulated_microphone_gives_20_ms_mono_frames() -> None:
    devices = EmulatedDevices()
    inner = devices.open_microphone("emulated-mic")
    processor = AudioProcessor()
    microphone = EchoCancelledMicrophone(inner, processor)
    assert microphone.device == inner.device
    for _ in range(5):
        frame = await asyncio.wait_for(microphone.next_frame(), 1.0)
        assert (frame.samples, frame.format.name, frame.layout.name) == (AUDIO_FRAME_SAMPLES, "s16", "mono")
        assert frame.sample_rate == AUDIO_SAMPLE_RATE
    assert processor.capture_chunks == 10
    microphone.close()
    with pytest.raises(DeviceError):
        await microphone.next_frame()  # the inner source is closed


def test_emulated_speaker_reports_what_it_plays_to_the_processor() -> None:
    speaker = EmulatedDevices().open_speaker("emulated-speaker")
    processor = AudioProcessor()
    assert connect_reference(speaker, processor)
    stereo = np.full(2 * AUDIO_FRAME_SAMPLES, 1000, dtype=np.int16)  # aiortc decodes Opus to s16 stereo
    for _ in range(3):
        speaker.write("alice", _frame(stereo, layout="stereo"))
        speaker.write("bob", _frame(stereo, layout="stereo"))
    assert processor.reference_chunks == 3 * AUDIO_FRAME_SAMPLES // 480  # mixed: once, not per participant
    assert not connect_reference(speaker, AudioProcessor(echo_cancellation=False))


def test_connect_reference_without_a_tap_says_so() -> None:
    class PlainSpeaker(SpeakerSink):
        device = MediaDeviceInfo("plain", "Plain", "audiooutput")

        def write(self, participant_uid: str, frame: av.AudioFrame) -> None: ...

        def close(self) -> None: ...

    assert not connect_reference(PlainSpeaker(), AudioProcessor())


def test_reference_mixer_mixes_participants_and_skips_one_that_stopped() -> None:
    got: list[np.ndarray] = []
    mixer = ReferenceMixer(got.append, max_lag_samples=3 * AUDIO_FRAME_SAMPLES)
    mixer.add("alice", _frame(np.full(AUDIO_FRAME_SAMPLES, 100)))
    assert len(got) == 1 and np.all(got[0] == 100)  # alone: passed on at once
    mixer.add("bob", _frame(np.full(AUDIO_FRAME_SAMPLES, 20)))  # joins from now on
    mixer.add("alice", _frame(np.full(AUDIO_FRAME_SAMPLES, 100)))
    assert len(got) == 2 and np.all(got[1] == 120)  # both covered that period: mixed
    for _ in range(4):  # bob goes quiet: after 3 periods of lag he no longer holds alice back
        mixer.add("alice", _frame(np.full(AUDIO_FRAME_SAMPLES, 100)))
    mixed = np.concatenate(got)
    assert len(mixed) == 6 * AUDIO_FRAME_SAMPLES
    assert np.all(mixed[2 * AUDIO_FRAME_SAMPLES :] == 100)
