"""audio_switch_loop_stall: how long the event loop stops while the call's audio output is switched.

A sound card's output is opened and closed by alsa-lib: the open sets the card up (hw_params) and the
close drains what is queued and joins the playback thread. On a card that plays in real time a drain
takes up to the buffer's length. Everything else in a call (aiortc, signaling, the screen) runs on
the same loop, so a switch made on the loop stops all of it for that long.

Both sides switch between two outputs of the emulated sound card (tests/alsa_card: a real alsa-lib
plugin that plays in real time, one holder at a time), through real alsa-lib and pyalsaaudio, with
remote audio being written to the output meanwhile:
- subject: the SDK's AudioOutput (kiosk/calls/audio_output.py): opens and closes on worker threads;
- baseline: the way the SDK switched before, in the same run: open the new output and close the old
  one on the loop.
A ticker on the loop every 1 ms records the longest gap between its ticks during each switch; the
figure is the median over the switches of that longest stall. Target: under 10 ms (a video frame at
30 fps is 33 ms; aiortc's RTP and the screen must not notice a switch). Notes: the time from the
selection to the new output playing.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls.audio_output import AudioOutput
from kiosk.config import AudioModeDevice, AudioSection
from kiosk.media.devices import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, SpeakerSink

TESTS = Path(__file__).resolve().parents[1] / "tests"
SWITCHES_FULL, SWITCHES_QUICK = 20, 4
TICK_S = 0.001


class LoopWatch:
    """The longest gap between the ticks of a 1 ms ticker on the loop, since the last reset."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.longest = max(self.longest, now - self._last - TICK_S)
            self._last = now

    def reset(self) -> None:
        self.longest, self._last = 0.0, time.monotonic()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _frame() -> av.AudioFrame:
    samples = (3000 * np.sin(np.arange(AUDIO_FRAME_SAMPLES) / 10)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = AUDIO_SAMPLE_RATE
    return frame


async def _feed(write: object, stop: asyncio.Event) -> None:
    frame = _frame()
    while not stop.is_set():
        write("remote", frame)  # type: ignore[operator]
        await asyncio.sleep(AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE)


def _cards(directory: Path) -> AudioSection:
    """Two emulated cards in an alsa-lib configuration of our own; ALSA_CONFIG_PATH points at it."""
    import os

    sys.path.insert(0, str(TESTS))  # the emulated card lives with the tests
    from alsa_card_support import EmulatedCard
    from alsa_support import AlsaConfig

    config = AlsaConfig(directory / "asound.conf")
    for name in ("spk", "hp"):
        EmulatedCard.in_dir(directory, name, mixer=False).add_to(config)
    (directory / "mic.raw").write_bytes(bytes(9600))
    config.add_capture("mic", directory / "mic.raw")
    config.write()
    os.environ["ALSA_CONFIG_PATH"] = config.env_value
    return AudioSection(
        backend="alsa",
        capture="mic",
        modes={"SPEAKER": AudioModeDevice("spk"), "HEADPHONES": AudioModeDevice("hp")},
    )


async def _measure(settings: RunSettings) -> Samples:
    from kiosk.media.alsa import AlsaAudio

    switches = settings.repeats(SWITCHES_FULL, SWITCHES_QUICK)
    with tempfile.TemporaryDirectory(prefix="bench-audio-switch-") as tmp:
        alsa = AlsaAudio(_cards(Path(tmp)))
        outputs = alsa.audio_outputs()
        watch = LoopWatch()
        watch.start()
        stop = asyncio.Event()
        subject, baseline, switch_ms = [], [], []
        try:
            # Subject: the SDK's AudioOutput.
            output = AudioOutput(alsa, on_error=print, on_changed=lambda: None, on_microphone=lambda d: None)
            feeder = asyncio.ensure_future(_feed(output.write, stop))
            output.select(outputs[0])
            await output.settled()
            for k in range(switches):
                await asyncio.sleep(0.15)  # playing for a while: the card's buffer is full
                watch.reset()
                started = time.monotonic()
                output.select(outputs[(k + 1) % 2])
                await output.settled()
                switch_ms.append((time.monotonic() - started) * 1000)
                await asyncio.sleep(0.12)  # the old output's close (a drain) finishes meanwhile
                subject.append(watch.longest * 1000)
            await output.close()
            stop.set()
            await feeder

            # Baseline: open the new output, then close the old one, on the loop.
            stop.clear()
            current: list[SpeakerSink] = [alsa.open_speaker(outputs[0].device_id)]
            feeder = asyncio.ensure_future(_feed(lambda uid, f: current[0].write(uid, f), stop))
            for k in range(switches):
                await asyncio.sleep(0.15)
                watch.reset()
                new = alsa.open_speaker(outputs[(k + 1) % 2].device_id)
                old, current[0] = current[0], new
                old.close()
                await asyncio.sleep(0.12)
                baseline.append(watch.longest * 1000)
            stop.set()
            await feeder
            current[0].close()
        finally:
            stop.set()
            watch.stop()
    return Samples(
        subject,
        baseline,
        notes={
            "switch_ms_p50": round(statistics.median(switch_ms), 1),
            "switch_ms_max": round(max(switch_ms), 1),
            "switches": switches,
        },
    )


BENCHMARKS = [
    Benchmark(
        name="audio_switch_loop_stall",
        unit="ms",
        target_ratio=None,
        target_value=10.0,
        measures="median over switches between two outputs of the emulated real-time sound card (real "
        "alsa-lib, pyalsaaudio) of the longest event-loop stall during the switch, through the SDK's "
        "AudioOutput (opens and closes on worker threads)",
        baseline_measures="the same switches made as before: open the new output and close the old one "
        "on the loop",
        run=_measure,
    ),
]
