"""Stand-in picamera2.encoders.h264_encoder: the V4L2 H.264 encoder of a Pi 4 and older (the
bcm2835-codec on /dev/video11), played by PyAV's libx264 on a poll thread of its own, as the V4L2
encoder returns encoded buffers from its poll thread.

As the real one: frames are queued from the camera's event loop and encoded in order; each
force_key_frame() call is counted and the next frames queued get one forced IDR each until the
requests are used up; the driver clamps the bitrate to 25 kbit/s..25 Mbit/s in 25 kbit/s steps; with
no iperiod the firmware's default GOP of 60 applies; repeat puts SPS/PPS on every keyframe. On a Pi 5
there is no /dev/video11, so starting it fails.
"""

from __future__ import annotations

import errno
import queue
import threading
from fractions import Fraction
from typing import Any

import av
import numpy as np

from picamera2 import stand_in
from picamera2.encoders.encoder import Encoder, Quality
from picamera2.request import MappedArray

NAL_SPS, NAL_PPS = 7, 8
DEFAULT_IPERIOD = 60  # the bcm2835-codec's GOP when no I-period is set
BITRATE_RANGE = (25_000, 25_000_000)  # the bcm2835-codec's limits and step
BITRATE_STEP = 25_000
ENCODE_NODE = "/dev/video11"
_PROFILES = {"baseline": "baseline", "constrained baseline": "baseline", "main": "main", "high": "high"}
# Suggested bitrates for 1080p30, in Mbit/s, scaled linearly with pixels per second.
_QUALITY_MBPS = {
    Quality.VERY_LOW: 2,
    Quality.LOW: 4,
    Quality.MEDIUM: 6,
    Quality.HIGH: 9,
    Quality.VERY_HIGH: 15,
}


def driver_bitrate(bitrate: int) -> int:
    """What the bcm2835-codec makes of a requested bitrate (V4L2 clamps, and rounds to the step)."""
    low, high = BITRATE_RANGE
    clamped = min(max(bitrate, low), high)
    return low + round((clamped - low) / BITRATE_STEP) * BITRATE_STEP


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
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.profile = profile
        self.framerate = framerate  # start_encoder fills it in when None
        self._enable_framerate = enable_sps_framerate
        self._key_frames_requested = 0
        self._key_frames_generated = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._headers_sent = False
        self._context: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "bitrate": self.bitrate,
            "driver_bitrate": None if self.bitrate is None else driver_bitrate(self.bitrate),
            "framerate": self.framerate,
            "repeat": self.repeat,
            "iperiod": self.iperiod,
            "profile": self.profile,
            "qp": self.qp,
        }

    def _setup(self, quality: Any) -> None:
        # An explicit quality wins; otherwise a bitrate (or qp) given by the caller is kept.
        if quality is None and (self.bitrate is not None or self.qp is not None):
            return
        mbps = _QUALITY_MBPS[Quality.MEDIUM if quality is None else quality]
        share = self.width * self.height * (self.framerate or 30) / (1920 * 1080 * 30)
        self.bitrate = int(mbps * 1_000_000 * share)

    def _start(self) -> None:
        if ENCODE_NODE not in stand_in.video_nodes():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", ENCODE_NODE)
        profile = "high"  # the driver's default
        if self.profile:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            if self.profile.lower() not in _PROFILES:
                raise RuntimeError(f"Profile {self.profile} not recognised")
            profile = _PROFILES[self.profile.lower()]
        for out in self._output:
            out._add_stream("video", "h264", width=self.width, height=self.height)
        context = av.CodecContext.create("libx264", "w")
        context.width, context.height, context.pix_fmt = self.width, self.height, "yuv420p"
        context.time_base = Fraction(1, 1_000_000)  # timestamps in microseconds, as picamera2's
        # x264's rate control spreads the bitrate over this rate, not over the time base.
        context.framerate = Fraction(round(self.framerate or 30))
        context.bit_rate = driver_bitrate(self.bitrate) if self.bitrate is not None else 10_000_000
        period = self.iperiod or DEFAULT_IPERIOD
        options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": profile,
            "forced-idr": "1",  # the firmware never makes an I-frame that is not an IDR
            "x264-params": f"keyint={period}:min-keyint={period}:scenecut=0",
        }
        if self.qp is not None:
            options["qp"] = str(self.qp)
        context.options = options
        context.open()  # now, not on the first frame: opening x264 holds the GIL for a while
        self._context = context
        self._headers_sent = False
        self._thread = threading.Thread(target=self._poll, name="stand-in-v4l2-h264", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        # The poll thread returns every frame already queued before it ends.
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        while not self._queue.empty():
            item = self._queue.get()
            if item is not None:
                item[0].release()

    def _encode(self, stream: Any, request: Any) -> None:
        # As the V4L2 encoder: a pending keyframe request becomes V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME
        # for this frame, one request per frame.
        forced = False
        if self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            forced = True
            self._count_forced_key_frame()
        request.acquire()  # held until encoded, as the V4L2 encoder holds the camera buffer
        self._queue.put((request, self._timestamp(request), forced))

    def force_key_frame(self) -> None:
        self._key_frames_requested += 1

    def _poll(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, timestamp, forced = item
            try:
                frame = self._frame_of(request)
            finally:
                request.release()  # the camera buffer goes back once read
            frame.pts = timestamp
            if forced:
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
        with MappedArray(request, self.name or "main", reshape=False) as mapped:
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


if stand_in.version_tuple(stand_in.installed_version()) < (0, 3, 32):
    del H264Encoder.force_key_frame  # added in picamera2 0.3.32


__all__ = ["H264Encoder"]
