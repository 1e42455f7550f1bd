"""The speech-quality score (kiosk/netlab/speech_quality.py): wide-band PESQ of the played voice."""

from __future__ import annotations

import numpy as np
import pytest

from kiosk.media.emulated import speech_like_voice
from kiosk.netlab.speech_quality import segment_scores, speech_quality, to_16k

RATE = 48000


def played_from(position: int, seconds: float) -> np.ndarray:
    voice = speech_like_voice()
    return np.tile(voice, int(seconds // 4) + 2)[position : position + int(seconds * RATE)].copy()


def test_resampling_keeps_speech_frequencies_and_removes_what_16_khz_cannot_hold():
    t = np.arange(RATE) / RATE
    kept = to_16k(10000 * np.sin(2 * np.pi * 1000 * t), RATE)
    removed = to_16k(10000 * np.sin(2 * np.pi * 10000 * t), RATE)
    assert len(kept) == 16000
    assert np.sqrt(np.mean(kept[100:-100] ** 2)) == pytest.approx(10000 / np.sqrt(2), rel=0.02)
    assert np.sqrt(np.mean(removed[100:-100] ** 2)) < 100


def test_the_voice_played_intact_from_anywhere_in_the_loop_scores_near_the_top():
    voice = speech_like_voice()
    scores = segment_scores(played_from(54321, 16), RATE, voice)
    assert len(scores) == 2 and min(scores) > 4.4


def test_losses_and_noise_score_lower_and_silence_is_left_out():
    voice = speech_like_voice()
    rng = np.random.default_rng(3)
    clean = played_from(1000, 16)
    lossy = clean.copy()
    for start in range(0, len(lossy), 960):  # 10 % of 20 ms frames lost, not concealed
        if rng.random() < 0.1:
            lossy[start : start + 960] = 0
    noisy = (clean + rng.normal(0, 2000, len(clean))).clip(-32768, 32767).astype(np.int16)
    intact = speech_quality(clean, RATE, voice)
    assert intact is not None
    for degraded in (lossy, noisy):
        score = speech_quality(degraded, RATE, voice)
        assert score is not None and score < intact - 1.0
    assert speech_quality(np.zeros(16 * RATE, np.int16), RATE, voice) is None
