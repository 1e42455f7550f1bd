"""Echo cancellation, noise suppression and gain control for the microphone.

A kiosk's speaker sits next to its microphone, so without echo cancellation the far end hears itself.
WebRTC's audio processing module (AEC3, its noise suppressor and AGC2), as packaged by the `livekit`
wheel, does the work. It needs two streams, both in 10 ms chunks:

- the reference: what the speaker plays, fed by the playback side (`process_reference`, from the
  speaker's thread, through `set_reference_tap`, see `connect_reference`);
- the capture: what the microphone hears, cleaned chunk by chunk (`process_capture`, or wrap the
  microphone in `EchoCancelledMicrophone`).

AEC3 finds the echo delay itself (simulated rooms of 10-300 ms converged alike; a delay hint made no
difference), so the caller need not align the streams: the reference must only reach the processor
no later than its echo reaches the microphone, which a tap called as periods are played ensures.

Measured (bench/echo.py, tests/test_aec.py): echo 30-60 dB down once converged (gain control off);
a near-end talker at the echo's level loses about 4 dB while both talk; the capture path adds about 10 ms of latency
(16 ms with noise suppression); about 0.25 ms of CPU per 20 ms frame, reference included, on x86. Gain control (AGC2)
applies one gain to everything, echo left over included: +15 dB until it has heard the near end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import av
import numpy as np

from kiosk.media.devices import AUDIO_SAMPLE_RATE, MicrophoneSource
from kiosk.media.mixer import frame_to_mono

if TYPE_CHECKING:
    from livekit import rtc

    from kiosk.config import AudioSection
    from kiosk.media.devices import SpeakerSink

log = logging.getLogger(__name__)

CHUNK_SAMPLES = AUDIO_SAMPLE_RATE // 100  # the APM takes exactly 10 ms at a time

ReferenceCallback = Callable[[np.ndarray], None]


@runtime_checkable
class ReferenceTapSpeaker(Protocol):
    """A speaker that reports what it plays: `callback(samples)` per period, int16 mono 48 kHz,
    called as the period is played; `None` removes the tap."""

    def set_reference_tap(self, callback: ReferenceCallback | None) -> None: ...


class AudioProcessor:
    """WebRTC's audio processing module for one microphone and the speaker next to it.

    Thread-safe: `process_reference` may run on a playback thread while `process_capture` runs on the
    event loop or a capture thread. With everything disabled, frames pass through untouched and the
    module is never created. `high_pass_filter` defaults to on whenever anything else is.
    """

    def __init__(
        self,
        echo_cancellation: bool = True,
        noise_suppression: bool = True,
        auto_gain_control: bool = True,
        *,
        high_pass_filter: bool | None = None,
    ) -> None:
        self.echo_cancellation = echo_cancellation
        self.noise_suppression = noise_suppression
        self.auto_gain_control = auto_gain_control
        # WebRTC's own pipeline always high-passes: a cheap microphone's DC offset and rumble would
        # otherwise take part of the echo canceller's adaptation. Off only when nothing else is on.
        if high_pass_filter is None:
            high_pass_filter = echo_cancellation or noise_suppression or auto_gain_control
        self.high_pass_filter = high_pass_filter
        self.enabled = echo_cancellation or noise_suppression or auto_gain_control or high_pass_filter
        self.reference_chunks = 0
        self.capture_chunks = 0
        self._lock = threading.Lock()
        self._delay_ms: int | None = None
        self._apm: rtc.AudioProcessingModule | None = None
        self._ref_pending = np.zeros(0, dtype=np.int16)
        if not self.enabled:
            return
        # Imported here: loading livekit's native library costs about 0.15 s, needless when disabled.
        from livekit import rtc

        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=auto_gain_control,
        )
        # One buffer per direction, reused: the APM works in place on the frame's bytearray, and a
        # numpy view of the same memory moves samples in and out without a new frame per chunk.
        self._ref_buf = bytearray(CHUNK_SAMPLES * 2)
        self._ref_view = np.frombuffer(self._ref_buf, dtype=np.int16)
        self._ref_frame = rtc.AudioFrame(self._ref_buf, AUDIO_SAMPLE_RATE, 1, CHUNK_SAMPLES)
        self._cap_buf = bytearray(CHUNK_SAMPLES * 2)
        self._cap_view = np.frombuffer(self._cap_buf, dtype=np.int16)
        self._cap_frame = rtc.AudioFrame(self._cap_buf, AUDIO_SAMPLE_RATE, 1, CHUNK_SAMPLES)

    @classmethod
    def from_config(cls, audio: AudioSection) -> AudioProcessor:
        return cls(
            echo_cancellation=audio.echo_cancellation,
            noise_suppression=audio.noise_suppression,
            auto_gain_control=audio.auto_gain_control,
        )

    def set_delay_ms(self, delay_ms: int | None) -> None:
        """A hint of the echo delay (playback buffer plus capture buffer), or None for none.

        AEC3 estimates the delay itself and did as well without a hint in every room measured; the
        hint is passed on for builds that use it.
        """
        with self._lock:
            self._delay_ms = None if delay_ms is None else max(0, int(delay_ms))

    def process_reference(self, samples: np.ndarray) -> None:
        """Far-end audio as it is played: int16 mono 48 kHz, any length (kept to whole 10 ms)."""
        if self._apm is None or not self.echo_cancellation:
            return  # only the echo canceller uses the reference
        samples = np.asarray(samples)
        if samples.dtype != np.int16:
            raise TypeError(f"reference samples must be int16, not {samples.dtype}")
        samples = samples.reshape(-1)
        with self._lock:
            if len(self._ref_pending):
                samples = np.concatenate([self._ref_pending, samples])
            whole = len(samples) - len(samples) % CHUNK_SAMPLES
            for start in range(0, whole, CHUNK_SAMPLES):
                self._ref_view[:] = samples[start : start + CHUNK_SAMPLES]
                self._apm.process_reverse_stream(self._ref_frame)
            self.reference_chunks += whole // CHUNK_SAMPLES
            self._ref_pending = samples[whole:].copy()

    def process_capture(self, frame: av.AudioFrame) -> av.AudioFrame:
        """One microphone frame (s16 mono 48 kHz, a whole number of 10 ms) cleaned; a new frame with
        the same pts. Returned unchanged when all processing is disabled."""
        if self._apm is None:
            return frame
        if (
            frame.format.name != "s16"
            or frame.layout.nb_channels != 1
            or frame.sample_rate != AUDIO_SAMPLE_RATE
        ):
            raise ValueError(
                f"capture frames must be s16 mono {AUDIO_SAMPLE_RATE} Hz, not {frame.format.name} "
                f"{frame.layout.name} {frame.sample_rate} Hz"
            )
        if frame.samples % CHUNK_SAMPLES:
            raise ValueError(
                f"capture frames must be a multiple of {CHUNK_SAMPLES} samples, not {frame.samples}"
            )
        samples = frame.to_ndarray().reshape(-1)
        out = np.empty_like(samples)
        with self._lock:
            for start in range(0, len(samples), CHUNK_SAMPLES):
                self._cap_view[:] = samples[start : start + CHUNK_SAMPLES]
                if self._delay_ms is not None and self.echo_cancellation:
                    # WebRTC forgets the delay after each chunk: it is set before every one.
                    self._apm.set_stream_delay_ms(self._delay_ms)
                self._apm.process_stream(self._cap_frame)
                out[start : start + CHUNK_SAMPLES] = self._cap_view
            self.capture_chunks += len(samples) // CHUNK_SAMPLES
        cleaned = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        cleaned.sample_rate = AUDIO_SAMPLE_RATE
        cleaned.pts = frame.pts
        if frame.time_base is not None:
            cleaned.time_base = frame.time_base
        return cleaned


class EchoCancelledMicrophone(MicrophoneSource):
    """A microphone whose frames go through an AudioProcessor. Closing it closes the inner source,
    not the processor, which outlives microphone switches (the speaker keeps feeding it)."""

    def __init__(self, inner: MicrophoneSource, processor: AudioProcessor) -> None:
        self.inner = inner
        self.processor = processor
        self.device = inner.device

    async def next_frame(self) -> av.AudioFrame:
        # About 0.15 ms of CPU per 20 ms frame on x86: cheap enough to run on the event loop.
        return self.processor.process_capture(await self.inner.next_frame())

    def close(self) -> None:
        self.inner.close()


def connect_reference(speaker: SpeakerSink, processor: AudioProcessor) -> bool:
    """Feed what `speaker` plays to `processor` as the echo reference.

    Returns whether it did: False when echo cancellation is off, or (logged) when the speaker cannot
    report what it plays, in which case echo is not cancelled.
    """
    if not processor.echo_cancellation:
        return False  # nothing would use the reference
    if not isinstance(speaker, ReferenceTapSpeaker):
        log.warning("%s offers no reference tap: echo will not be cancelled", speaker.device.device_id)
        return False
    speaker.set_reference_tap(processor.process_reference)
    return True


class ReferenceMixer:
    """Mixes the frames a speaker is given, one stream per participant, into one mono stream for a
    reference tap, for speakers with no playback clock of their own (the emulated one).

    Each participant has a write position; samples are passed on once every participant has covered
    them. A participant more than `max_lag_samples` behind the most advanced one counts as gone
    (silent), so one that stops sending never holds the others back.
    """

    def __init__(self, callback: ReferenceCallback, max_lag_samples: int = 5 * 960) -> None:
        self._callback = callback
        self._max_lag = max_lag_samples
        self._mix = np.zeros(0, dtype=np.int32)  # mixed, not yet passed on
        self._positions: dict[str, int] = {}  # each participant's end, from the start of _mix

    def add(self, participant_uid: str, frame: av.AudioFrame) -> None:
        samples = frame_to_mono(frame)
        if samples is None:
            return  # aiortc's decoder and the devices give s16 at 48 kHz; anything else is not mixed
        start = self._positions.get(participant_uid, 0)
        end = start + len(samples)
        if end > len(self._mix):
            self._mix = np.concatenate([self._mix, np.zeros(end - len(self._mix), dtype=np.int32)])
        self._mix[start:end] += samples
        self._positions[participant_uid] = end
        furthest = max(self._positions.values())
        for uid, position in list(self._positions.items()):
            if furthest - position > self._max_lag:
                del self._positions[uid]
        ready = min(self._positions.values())
        if ready == 0:
            return
        out = np.clip(self._mix[:ready], -32768, 32767).astype(np.int16)
        self._mix = self._mix[ready:]
        self._positions = {uid: position - ready for uid, position in self._positions.items()}
        self._callback(out)
