"""Mixing the decoded audio of remote participants for one playback device.

Each participant has its own queue of mono samples, bounded so that a sender whose clock runs a little
fast (or a burst after a network hiccup) cannot build up latency: when the queue is full the oldest
samples go. The playback thread takes one period from every queue and sums them with clipping.
"""

from __future__ import annotations

import threading

import av
import numpy as np

from kiosk.media.devices import AUDIO_SAMPLE_RATE


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray | None:
    """A 48 kHz s16 (packed or planar) frame as int16 mono; None if it needs resampling first."""
    if frame.sample_rate != AUDIO_SAMPLE_RATE or frame.format.name not in ("s16", "s16p"):
        return None
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    # Packed frames come as one row of interleaved samples, planar ones as one row per channel.
    planes = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if channels == 1:
        return planes[0].astype(np.int16, copy=True)
    # Averaging (not summing) the channels keeps a voice sent as identical L/R at its level.
    return (planes.astype(np.int32).sum(axis=0) // channels).astype(np.int16)


class ParticipantMixer:
    """Per-participant bounded queues; `push` from any thread, `mix` from the playback thread."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.dropped_samples = 0
        self._lock = threading.Lock()
        self._queues: dict[str, np.ndarray] = {}
        self._resamplers: dict[str, av.AudioResampler] = {}

    def push(self, participant_uid: str, frame: av.AudioFrame) -> None:
        mono = frame_to_mono(frame)
        if mono is None:
            mono = self._resample(participant_uid, frame)
        if not len(mono):
            return
        with self._lock:
            queued = self._queues.get(participant_uid)
            joined = mono if queued is None else np.concatenate((queued, mono))
            if len(joined) > self.max_samples:
                self.dropped_samples += len(joined) - self.max_samples
                joined = joined[-self.max_samples :]
            self._queues[participant_uid] = joined

    def _resample(self, participant_uid: str, frame: av.AudioFrame) -> np.ndarray:
        # Rare (aiortc decodes Opus to s16 at 48 kHz); one resampler per participant keeps its state.
        resampler = self._resamplers.get(participant_uid)
        if resampler is None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE)
            self._resamplers[participant_uid] = resampler
        parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)

    def queued(self, participant_uid: str) -> int:
        with self._lock:
            queued = self._queues.get(participant_uid)
            return 0 if queued is None else len(queued)

    def mix(self, samples: int) -> np.ndarray:
        """The next `samples` of everyone summed, clipped to int16; silence where nobody has audio."""
        total = np.zeros(samples, dtype=np.int32)
        with self._lock:
            for uid, queued in list(self._queues.items()):
                taken = queued[:samples]
                total[: len(taken)] += taken
                rest = queued[samples:]
                if len(rest):
                    self._queues[uid] = rest
                else:
                    del self._queues[uid]  # a participant who left leaves nothing behind
        return np.clip(total, -32768, 32767).astype(np.int16)
