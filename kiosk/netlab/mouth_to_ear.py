"""Mouth-to-ear delay, from what the far end played of a known looping voice.

The sender's emulated microphone plays `speech_like_voice()` in a loop and keeps a timeline: when it
produced each stretch of samples (`SampleClock`). The receiver keeps the same for what it played.
For each window of the played audio, a circular cross-correlation against the loop finds where in
the loop that audio was; the sender's timeline says when the microphone produced that part (the
last time before it was played, so delays up to the loop's length are told apart), and the delay is
the difference. Windows that match poorly (silence, concealment) are left out. The namespaces of the
network lab share one monotonic clock, so times from two processes compare.

The delay measured is from the microphone's frame entering the pipeline to the frame handed to the
sound card: a real card adds its own buffer (a period or two) at each end.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kiosk.media.emulated import speech_like_voice
from kiosk.media.sample_clock import SampleClock

WINDOW_SECONDS = 1.0
MIN_MATCH = 0.6  # normalised correlation below this: not the voice (silence, concealment, noise)


def locate(window: np.ndarray, loop: np.ndarray) -> tuple[int, float]:
    """Where in `loop` (circularly) `window` best matches, and how well (normalised, 0..1)."""
    n = len(loop)
    w = window.astype(np.float64) - float(np.mean(window))
    v = loop.astype(np.float64)
    padded = np.zeros(n)
    padded[: len(w)] = w
    correlation = np.fft.irfft(np.conj(np.fft.rfft(padded)) * np.fft.rfft(v), n)
    # The loop's energy under the window at every offset (circular), for normalising.
    squares = np.concatenate((v * v, v[: len(w)] * v[: len(w)]))
    sums = np.cumsum(np.concatenate(([0.0], squares)))
    energy = sums[len(w) : len(w) + n] - sums[:n]
    scale = np.sqrt(np.maximum(energy, 1e-9) * float(w @ w))
    normalised = correlation / np.maximum(scale, 1e-9)
    offset = int(np.argmax(normalised))
    return offset, float(normalised[offset])


def delays(
    played: np.ndarray, played_clock: SampleClock, loop: np.ndarray, mic_clock: SampleClock
) -> list[float]:
    """The mouth-to-ear delay of each well-matched window of `played` (mono, the loop's rate), s."""
    size = int(WINDOW_SECONDS * played_clock.rate)
    found: list[float] = []
    for start in range(0, len(played) - size + 1, size):
        window = played[start : start + size]
        if not np.any(window):
            continue
        offset, match = locate(window, loop)
        if match < MIN_MATCH:
            continue
        heard = played_clock.time_of(start)
        if heard is None:
            continue
        produced = _last_production(offset, len(loop), heard, mic_clock)
        if produced is not None:
            found.append(heard - produced)
    return found


def _last_production(offset: int, loop_length: int, before: float, clock: SampleClock) -> float | None:
    """The latest time, not after `before`, the microphone produced loop position `offset`."""
    if not clock.points:
        return None
    last = clock.points[-1][1] + clock.rate
    best: float | None = None
    sample = offset
    while sample <= last:
        at = clock.time_of(sample)
        if at is not None:
            if at > before:
                break
            best = at
        sample += loop_length
    return best


def production_clock(recorded: np.ndarray, clock: SampleClock, loop: np.ndarray) -> SampleClock:
    """A microphone's production clock, in the loop's numbering (sample n is loop position n mod its
    length), from a recording of what the microphone gave and when (`clock`): for a talker whose
    production times are not known, such as a browser's fake microphone looping a file from wherever
    it was when the page started listening. Each well-matched window says which loop position was
    produced at its time; positions count on from one window to the next, so a loop that wraps or a
    recording with gaps keeps one numbering."""
    size = int(WINDOW_SECONDS * clock.rate)
    length = len(loop)
    out = SampleClock(clock.rate)
    previous: tuple[int, int] | None = None  # (recorded sample, loop numbering) of the last anchor
    for start in range(0, len(recorded) - size + 1, size):
        window = recorded[start : start + size]
        if not np.any(window):
            continue
        offset, match = locate(window, loop)
        at = clock.time_of(start)
        if match < MIN_MATCH or at is None:
            continue
        if previous is None:
            number = offset
        else:
            expected = previous[1] + (start - previous[0])
            number = expected + (offset - expected + length // 2) % length - length // 2
        out.mark(at, number)
        previous = (start, number)
    return out


def percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p95 in milliseconds, or None without values."""
    if not values:
        return None, None
    ordered = np.sort(np.asarray(values)) * 1000
    return float(np.percentile(ordered, 50)), float(np.percentile(ordered, 95))


def delays_between(
    heard_dir: Path,
    talker: str,
    spoken_dir: Path,
    skip_seconds: float = 0.0,
    loop: np.ndarray | None = None,
) -> list[float]:
    """Mouth-to-ear delays of `talker`'s voice at a listener, from the emulated devices' files: the
    listener's speaker_dir (`<device>/<talker>.wav` and its clock) and the talker's (its
    microphone.clock.json). The first `skip_seconds` of what was played are left out. `loop`: what
    the talker's microphone looped (speech_like_voice() unless given)."""
    played_files = sorted(heard_dir.glob(f"*/{talker}.wav"))
    mic_file = spoken_dir / "microphone.clock.json"
    if not played_files or not mic_file.exists():
        return []
    played_file = played_files[0]
    with wave.open(str(played_file)) as recorded:
        channels = recorded.getnchannels()
        played = np.frombuffer(recorded.readframes(recorded.getnframes()), np.int16)
    played = played.reshape(-1, channels)[:, 0]
    clock = SampleClock.load(played_file.with_suffix(".clock.json"))
    skip = int(skip_seconds * clock.rate)
    kept = SampleClock(clock.rate, [(t, n - skip) for t, n in clock.points if n >= skip])
    voice = speech_like_voice() if loop is None else loop
    return delays(played[skip:], kept, voice, SampleClock.load(mic_file))
