"""An objective speech-quality score for what a call played: wide-band PESQ (ITU-T P.862.2, MOS-LQO from
about 1.0 to 4.64) of the looping synthetic voice against the same stretch of the voice as it was sent.

What a receiver played is cut into segments; each is placed in the loop by the cross-correlation of
its first second (`mouth_to_ear.locate`), the reference is the loop from there, both go to 16 kHz, and
PESQ (the `pesq` package, which wraps the ITU reference code; in the test extra) scores the pair. PESQ
aligns each utterance itself, so a playout that stretches or shrinks its buffer is followed. The score
is the median of the segments'; segments whose start is not the voice (concealment, silence) are
left out.
"""

from __future__ import annotations

import math
import statistics
import wave
from pathlib import Path

import numpy as np

from kiosk.media.emulated import speech_like_voice
from kiosk.netlab.mouth_to_ear import MIN_MATCH, locate
from kiosk.netlab.quality import PairQuality

PESQ_RATE = 16000
SEGMENT_SECONDS = 8.0


class PesqUnavailable(RuntimeError):
    """The `pesq` package is not installed (pip install pesq; it is in the test extra)."""


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """`samples` at `rate` (a multiple of 16 kHz) resampled to 16 kHz: a windowed-sinc low-pass at
    7.6 kHz, then every n-th sample."""
    if rate % PESQ_RATE:
        raise ValueError(f"PESQ needs a rate that is a multiple of {PESQ_RATE} Hz, not {rate}")
    step = rate // PESQ_RATE
    signal = samples.astype(np.float64)
    if step == 1:
        return signal
    taps = 8 * step * 8 + 1
    n = np.arange(taps) - taps // 2
    cutoff = 0.95 / (2 * step)  # of the input rate
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    kernel /= kernel.sum()
    return np.convolve(signal, kernel, mode="same")[::step]


def segment_scores(played: np.ndarray, rate: int, loop: np.ndarray) -> list[float]:
    """The wide-band PESQ of each well-placed SEGMENT_SECONDS of `played` (mono, int16, at `rate`,
    the loop's rate)."""
    try:
        from pesq import pesq  # type: ignore[import-untyped]
    except ImportError:
        raise PesqUnavailable("the speech-quality score needs the pesq package (pip install pesq)") from None

    size = int(SEGMENT_SECONDS * rate)
    probe = rate  # a second to place the segment in the loop
    scores: list[float] = []
    for start in range(0, len(played) - size + 1, size):
        segment = played[start : start + size]
        offset, match = locate(segment[:probe], loop)
        if match < MIN_MATCH:
            continue
        reference = np.tile(np.roll(loop, -offset), math.ceil(size / len(loop)) + 1)[:size]
        try:
            score = pesq(PESQ_RATE, to_16k(reference, rate), to_16k(segment, rate), "wb")
        except Exception:  # pesq raises its own errors for a segment it finds no speech in
            continue
        scores.append(float(score))
    return scores


def speech_quality(played: np.ndarray, rate: int, loop: np.ndarray) -> float | None:
    """The median segment score (`segment_scores`), or None when no segment could be scored."""
    scores = segment_scores(played, rate, loop)
    return statistics.median(scores) if scores else None


def file_speech_quality(
    path: Path, skip_seconds: float = 0.0, loop: np.ndarray | None = None
) -> float | None:
    """`speech_quality` of a WAV of what was played (its first channel; the first `skip_seconds` left
    out), against the voice the talker looped (`loop`, speech_like_voice() unless given); None if
    the file is missing or nothing scored."""
    if not path.exists():
        return None
    with wave.open(str(path)) as recorded:
        channels, rate = recorded.getnchannels(), recorded.getframerate()
        samples = np.frombuffer(recorded.readframes(recorded.getnframes()), np.int16)
    played = samples.reshape(-1, channels)[:, 0][int(skip_seconds * rate) :]
    return speech_quality(played, rate, speech_like_voice() if loop is None else loop)


def add_speech_quality(
    quality: PairQuality, played: Path | None, skip_seconds: float, loop: np.ndarray | None = None
) -> None:
    """A pair's `pesq_wb` figure from what its receiver played, or a note saying why there is none."""
    if played is None:
        quality.note += "; speech quality: nothing played was recorded"
        return
    try:
        score = file_speech_quality(played, skip_seconds, loop)
    except PesqUnavailable as exc:
        quality.note += f"; speech quality: {exc}"
        return
    if score is None:
        quality.note += "; speech quality: no segment of the played audio could be scored"
    else:
        quality.figures["pesq_wb"] = score
