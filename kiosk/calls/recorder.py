"""Call recording: everyone's audio mixed, and the main video, into one Matroska file.

The file is written by one thread with its own 20 ms clock: each tick it mixes one period from every
participant (silence for those with nothing queued) and encodes the newest frame of the main video.
Inputs arrive from the event loop into small bounded buffers, so recording never blocks the loop and
cannot build up latency. The file is written live, a cluster a second, so a power cut or a crash
leaves a file that plays up to its last second.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from kiosk.media.mixer import frame_to_mono

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
PERIOD_SAMPLES = 960  # 20 ms
MAX_QUEUED_PERIODS = 5  # per participant; older audio is dropped rather than delayed
VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
# Matroska written as a live stream, one cluster a second, flushed as it goes.
CONTAINER_OPTIONS = {"live": "1", "cluster_time_limit": "1000", "flush_packets": "1"}


class CallRecorder:
    """One recording file. `write(uid, frame)` from the loop; `close()` (blocking) to finish it."""

    def __init__(self, path: Path, with_video: bool, width: int = 640, height: int = 480) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.main_uid: str | None = None  # whose video is recorded
        self.width, self.height = width, height
        self.audio_periods_written = 0
        self.video_frames_written = 0
        self._lock = threading.Lock()
        self._audio: dict[str, collections.deque[np.ndarray]] = {}
        self._pending: dict[str, np.ndarray] = {}  # leftovers shorter than a period
        self._video: av.VideoFrame | None = None
        self._stop = threading.Event()
        self._container = av.open(str(path), mode="w", format="matroska", options=CONTAINER_OPTIONS)
        self._audio_stream = self._container.add_stream("libopus", rate=SAMPLE_RATE)
        self._audio_stream.layout = "mono"
        self._video_stream = None
        if with_video:
            video = self._container.add_stream("libx264", rate=30)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.time_base = VIDEO_TIME_BASE
            video.options = {"preset": "ultrafast", "tune": "zerolatency"}
            self._video_stream = video
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.name}", daemon=True)
        self._thread.start()

    def write(self, uid: str, frame: av.frame.Frame) -> None:
        if isinstance(frame, av.AudioFrame):
            self._add_audio(uid, frame_to_mono(frame))
        elif isinstance(frame, av.VideoFrame) and self._video_stream is not None:
            if self.main_uid is None:
                self.main_uid = uid
            if uid == self.main_uid:
                with self._lock:
                    self._video = frame  # the newest wins

    def _add_audio(self, uid: str, samples: np.ndarray | None) -> None:
        if samples is None:
            return  # not s16 at 48 kHz: aiortc and the devices always give that, so this is not expected
        with self._lock:
            pending = self._pending.pop(uid, None)
            if pending is not None:
                samples = np.concatenate([pending, samples])
            queue = self._audio.setdefault(uid, collections.deque(maxlen=MAX_QUEUED_PERIODS))
            while len(samples) >= PERIOD_SAMPLES:
                queue.append(samples[:PERIOD_SAMPLES])
                samples = samples[PERIOD_SAMPLES:]
            if len(samples):
                self._pending[uid] = samples

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        try:
            while not self._stop.is_set():
                tick += 1
                delay = started + tick * PERIOD_SAMPLES / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                self._encode_tick(started)
            self._flush()
        except Exception:
            log.exception("recording %s failed", self.path)
        finally:
            self._container.close()

    def _encode_tick(self, started: float) -> None:
        with self._lock:
            periods = [queue.popleft() for queue in self._audio.values() if queue]
            video, self._video = self._video, None
        mixed = np.zeros(PERIOD_SAMPLES, dtype=np.int32)
        for period in periods:
            mixed += period
        frame = av.AudioFrame.from_ndarray(
            np.clip(mixed, -32768, 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.audio_periods_written * PERIOD_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        for packet in self._audio_stream.encode(frame):
            self._container.mux(packet)
        self.audio_periods_written += 1
        if video is not None and self._video_stream is not None:
            if (video.width, video.height, video.format.name) != (self.width, self.height, "yuv420p"):
                video = video.reformat(width=self.width, height=self.height, format="yuv420p")
            out = av.VideoFrame.from_ndarray(video.to_ndarray(), format="yuv420p")
            out.pts = int((time.monotonic() - started) * 90000)
            out.time_base = VIDEO_TIME_BASE
            for packet in self._video_stream.encode(out):
                self._container.mux(packet)
            self.video_frames_written += 1

    def _flush(self) -> None:
        for stream in (self._audio_stream, self._video_stream):
            if stream is not None:
                for packet in stream.encode(None):
                    self._container.mux(packet)

    def close(self) -> Path:
        """Finish the file (blocks briefly: call it off the event loop)."""
        self._stop.set()
        self._thread.join(timeout=10)
        return self.path
