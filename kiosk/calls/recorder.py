"""Local call recording: each remote participant's audio and video to a Matroska file.

Encoding runs on a writer thread fed by a bounded queue, so recording never blocks the event loop;
if the thread falls behind, frames are dropped rather than queued. Matroska is written
incrementally, so a file cut short by a power failure stays playable up to its last cluster.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

QUEUE_LIMIT = 120


class ParticipantRecording:
    """One file: a writer thread that owns the PyAV container."""

    def __init__(self, path: Path, with_video: bool, width: int = 640, height: int = 480) -> None:
        self.path = path
        self._queue: queue.Queue[av.frame.Frame | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._t0 = time.monotonic()
        self.frames_dropped = 0
        self.frames_written = 0
        self._container = av.open(str(path), mode="w", format="matroska")
        self._audio = self._container.add_stream("libopus", rate=48000)
        self._audio.layout = "stereo"
        self._audio_pts = 0
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        self._video = None
        if with_video:
            video = self._container.add_stream("libx264", rate=30)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
            video.time_base = Fraction(1, 90000)
            video.options = {"preset": "ultrafast", "tune": "zerolatency"}
            self._video = video
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.name}", daemon=True)
        self._thread.start()

    def write(self, frame: av.frame.Frame) -> None:
        if isinstance(frame, av.VideoFrame) and self._video is None:
            return
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.frames_dropped += 1

    def _run(self) -> None:
        try:
            while (frame := self._queue.get()) is not None:
                if isinstance(frame, av.VideoFrame):
                    self._encode_video(frame)
                else:
                    self._encode_audio(frame)
                self.frames_written += 1
            self._flush()
        except Exception:
            log.exception("recording %s failed", self.path)
        finally:
            self._container.close()

    def _encode_video(self, frame: av.VideoFrame) -> None:
        assert self._video is not None
        if frame.width != self._video.width or frame.height != self._video.height:
            frame = frame.reformat(width=self._video.width, height=self._video.height, format="yuv420p")
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
        out.pts = int((time.monotonic() - self._t0) * 90000)
        out.time_base = Fraction(1, 90000)
        for packet in self._video.encode(out):
            self._container.mux(packet)

    def _encode_audio(self, frame: av.AudioFrame) -> None:
        frame.pts = None
        for out in self._resampler.resample(frame):
            out.pts = self._audio_pts
            out.time_base = Fraction(1, 48000)
            self._audio_pts += out.samples
            for packet in self._audio.encode(out):
                self._container.mux(packet)

    def _flush(self) -> None:
        for stream in (self._audio, self._video):
            if stream is not None:
                for packet in stream.encode(None):
                    self._container.mux(packet)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


class SessionRecorder:
    """All recordings of one session: one ParticipantRecording per remote participant."""

    def __init__(self, directory: Path, session_id: str, with_video: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.session_id = session_id
        self.with_video = with_video
        self.started_at = time.time()
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        self.recordings: dict[str, ParticipantRecording] = {}

    def _for(self, uid: str) -> ParticipantRecording:
        recording = self.recordings.get(uid)
        if recording is None:
            path = self.directory / f"{self.session_id}_{uid}_{self._stamp}.mkv"
            recording = ParticipantRecording(path, self.with_video)
            self.recordings[uid] = recording
        return recording

    def write(self, uid: str, frame: av.frame.Frame) -> None:
        self._for(uid).write(frame)

    def close(self) -> list[Path]:
        for recording in self.recordings.values():
            recording.close()
        return [r.path for r in self.recordings.values()]
