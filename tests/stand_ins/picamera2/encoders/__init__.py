"""Stand-in picamera2.encoders: Encoder and H264Encoder (libx264 through PyAV, on its own thread, as
the Pi's V4L2 encoder delivers from its poll thread)."""

from __future__ import annotations

import queue
import threading
from enum import Enum
from fractions import Fraction
from typing import Any

import av
import numpy as np

from picamera2.outputs import Output
from picamera2.request import MappedArray

NAL_SPS, NAL_PPS = 7, 8
DEFAULT_IPERIOD = 60  # the stand-in's idea of the firmware default when iperiod is None
_X264_PROFILES = {"baseline": "baseline", "constrained baseline": "baseline", "main": "main", "high": "high"}


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class Encoder:
    def __init__(self) -> None:
        self.width = 0
        self.height = 0
        self.stride = 0
        self.format: str | None = None
        self.name: str | None = None
        self._output: list[Output] = []
        self._running = False
        self._lock = threading.Lock()
        self.firsttimestamp: int | None = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, Output) for v in values):
            raise RuntimeError("Must pass Output")
        self._output = values

    def encode(self, stream: Any, request: Any) -> None:
        with self._lock:
            self._encode(stream, request)

    def _encode(self, stream: Any, request: Any) -> None:
        raise NotImplementedError

    def start(self, quality: Any = None) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self._setup(quality)
            self._running = True
            for out in self._output:
                out.start()
            self._start()

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
        self._stop()
        for out in self._output:
            out.stop()

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None) -> None:
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, None, False)

    def _setup(self, quality: Any) -> None:
        pass

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _timestamp(self, request: Any) -> int:
        ts = request.get_metadata()["SensorTimestamp"] // 1000
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        return ts - self.firsttimestamp

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__}


class H264Encoder(Encoder):
    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._force_keyframe = False
        self._headers_sent = False

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "bitrate": self.bitrate,
            "repeat": self.repeat,
            "iperiod": self.iperiod,
            "profile": self.profile,
        }

    def _setup(self, quality: Any) -> None:
        if self.bitrate is None and self.qp is None:
            # Scaled from a 1080p30 reference of 6 Mbps, as picamera2 does for Quality.MEDIUM.
            rate = self.framerate or 30
            self.bitrate = int(6_000_000 * self.width * self.height * rate / (1920 * 1080 * 30))

    def _start(self) -> None:
        profile = _X264_PROFILES.get((self.profile or "high").lower())
        if profile is None:
            raise RuntimeError(f"Profile {self.profile} not recognised")
        context = av.CodecContext.create("libx264", "w")
        context.width, context.height, context.pix_fmt = self.width, self.height, "yuv420p"
        context.time_base = Fraction(1, 1_000_000)  # timestamps in microseconds, as picamera2's
        # x264's rate control spreads the bitrate over this rate, not over the time base.
        context.framerate = Fraction(round(self.framerate or 30))
        context.bit_rate = self.bitrate or 1_000_000
        period = self.iperiod or DEFAULT_IPERIOD
        context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": profile,
            "forced-idr": "1",
            "x264-params": f"keyint={period}:min-keyint={period}:scenecut=0",
        }
        context.open()  # now, not on the first frame: opening x264 holds the GIL for a while
        self._context = context
        self._headers_sent = False
        self._thread = threading.Thread(target=self._poll, name="stand-in-h264", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        while not self._queue.empty():
            item = self._queue.get()
            if item is not None:
                item[0].release()

    def _encode(self, stream: Any, request: Any) -> None:
        if not self._running:
            return
        request.acquire()  # held until encoded, as the V4L2 encoder holds the camera buffer
        self._queue.put((request, self._timestamp(request)))

    def force_key_frame(self) -> None:
        self._force_keyframe = True

    def _poll(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, timestamp = item
            try:
                frame = self._frame_of(request)
            finally:
                request.release()  # the camera buffer goes back once read
            frame.pts = timestamp
            if self._force_keyframe:
                self._force_keyframe = False
                frame.pict_type = av.video.frame.PictureType.I
            for packet in self._context.encode(frame):
                data = bytes(packet)
                if packet.is_keyframe:
                    if self._headers_sent and not self.repeat:
                        data = _without_parameter_sets(data)
                    self._headers_sent = True
                self.outputframe(data, packet.is_keyframe, timestamp)

    def _frame_of(self, request: Any) -> av.VideoFrame:
        # The encoder reads the camera buffer in place (the Pi's encoder takes it as a dmabuf).
        with MappedArray(request, self.name, reshape=False) as mapped:
            flat = mapped.array
            assert flat is not None
            frame = av.VideoFrame(self.width, self.height, "yuv420p")
            half_w, half_h, half_s = self.width // 2, self.height // 2, self.stride // 2
            offset = 0
            for index, (w, h, s) in enumerate(
                [(self.width, self.height, self.stride), (half_w, half_h, half_s), (half_w, half_h, half_s)]
            ):
                plane = frame.planes[index]
                target = np.frombuffer(plane, dtype=np.uint8).reshape(h, plane.line_size)
                target[:, :w] = flat[offset : offset + s * h].reshape(h, s)[:, :w]
                offset += s * h
        return frame


def _nal_units(data: bytes) -> list[bytes]:
    units, i = [], data.find(b"\x00\x00\x01")
    while i != -1:
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
        end = len(data) if i == -1 else (i - 1 if data[i - 1] == 0 else i)
        units.append(data[start:end])
    return units


def _without_parameter_sets(data: bytes) -> bytes:
    kept = [u for u in _nal_units(data) if u and u[0] & 0x1F not in (NAL_SPS, NAL_PPS)]
    return b"".join(b"\x00\x00\x00\x01" + u for u in kept)


__all__ = ["Encoder", "H264Encoder", "Quality"]
