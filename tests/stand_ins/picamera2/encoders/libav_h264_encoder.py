"""Stand-in picamera2.encoders.libav_h264_encoder: libx264 through PyAV, what picamera2's H264Encoder
is on a Pi 5 (which has no hardware H.264 encoder).

As the real one, it encodes inside the camera's event loop (picamera2's process_requests), keeping
one request back; its defaults are iperiod=30 and framerate=30 (start_encoder leaves a set framerate
alone); the bitrate for a Quality follows a square-root scale; and a forced keyframe is asked for by
assigning the string "I" to the frame's pict_type, which PyAV 14 and later refuse with a TypeError:
the exception leaves process_requests and ends the event loop, so every frame stops. Likewise
repeat=False uses a flag name PyAV 14 and later no longer have.
"""

from __future__ import annotations

import collections
import math
import time
from fractions import Fraction
from typing import Any

import av

from picamera2 import stand_in
from picamera2.encoders.encoder import Encoder, Quality
from picamera2.platform import Platform, get_platform
from picamera2.request import MappedArray

# Suggested bitrates for 1080p30, in Mbit/s, scaled with the square root of pixels per second.
_QUALITY_MBPS = {
    Quality.VERY_LOW: 3,
    Quality.LOW: 4,
    Quality.MEDIUM: 7,
    Quality.HIGH: 10,
    Quality.VERY_HIGH: 14,
}
_INPUT_FORMATS = {
    "YUV420": "yuv420p",
    "BGR888": "rgb24",
    "RGB888": "bgr24",
    "XBGR8888": "rgba",
    "XRGB8888": "bgra",
}


class LibavH264Encoder(Encoder):
    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = 30,
        framerate: float | None = 30,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self._codec = "h264"
        self.repeat = repeat
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        self.preset: str | None = None
        self.drop_final_frames = False
        self.threads = 0  # libav chooses
        self._lasttimestamp: tuple[int, int] | None = None
        self._use_hw = False
        self._request_release_delay = 1
        self._request_release_queue: collections.deque[Any] = collections.deque()
        self._key_frames_requested = 0
        self._key_frames_generated = 0
        self._container: Any = None
        self._stream: Any = None

    @property
    def use_hw(self) -> bool:
        return self._use_hw

    @use_hw.setter
    def use_hw(self, value: bool) -> None:
        if value:
            if get_platform() == Platform.VC4:
                self._use_hw = True
                self._codec = "h264_v4l2m2m"
            else:
                print("Warning: use_hw has no effect on non-VC4 platforms")

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "bitrate": self.bitrate,
            "framerate": self.framerate,
            "repeat": self.repeat,
            "iperiod": self.iperiod,
            "profile": self.profile,
            "qp": self.qp,
        }

    def _setup(self, quality: Any) -> None:
        if quality is None and (self.bitrate is not None or self.qp is not None):
            return
        mbps = _QUALITY_MBPS[Quality.MEDIUM if quality is None else quality]
        share = self.width * self.height * (self.framerate or 30) / (1920 * 1080 * 30)
        self.bitrate = int(mbps * 1_000_000 * math.sqrt(share))

    def _start(self) -> None:
        self._container = av.open("/dev/null", "w", format="null")
        stream = self._stream = self._container.add_stream(self._codec, rate=self.framerate)
        context = stream.codec_context
        context.thread_count = self.threads
        context.thread_type = av.codec.context.ThreadType.FRAME
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        for out in self._output:
            out._add_stream(stream, self._codec, rate=self.framerate, width=self.width, height=self.height)
        preset = "ultrafast"
        if self.profile is not None:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            matches = [p for p in stream.profiles if p.lower() == self.profile.lower()]
            if not matches:
                raise RuntimeError(f"Profile {self.profile} not recognised")
            stream.profile = matches[0]
            if "baseline" not in matches[0].lower():
                preset = "superfast"  # "ultrafast" can only make baseline
        if self.bitrate is not None:
            context.bit_rate = self.bitrate
        context.gop_size = self.iperiod or (1 << 31) - 1  # 0: no keyframes after the first
        context.options["preset"] = self.preset or preset
        context.options["deblock"] = "1"
        if not self.repeat:
            # picamera2 names the flag as PyAV 13 did; PyAV 14 and later raise AttributeError here.
            context.flags |= av.codec.context.Flags.GLOBAL_HEADER
        if self.qp is not None:
            context.qmin = context.qmax = self.qp
        context.time_base = Fraction(1, 1_000_000)
        context.options["tune"] = "zerolatency"
        self._av_input_format = _INPUT_FORMATS[self.format or "YUV420"]
        self._request_release_queue = collections.deque()

    def _stop(self) -> None:
        if not self.drop_final_frames:
            for packet in self._stream.encode():  # what libav still holds
                self._lasttimestamp = (time.monotonic_ns(), packet.pts)
                self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)
        while self._request_release_queue:
            self._request_release_queue.popleft().release()
        self._container.close()

    def _encode(self, stream: Any, request: Any) -> None:
        request.acquire()
        self._request_release_queue.append(request)
        timestamp_us = self._timestamp(request)
        with MappedArray(request, stream) as mapped:
            frame = av.VideoFrame.from_numpy_buffer(
                mapped.array, format=self._av_input_format, width=self.width
            )
            frame.pts = timestamp_us
            if self._key_frames_requested > self._key_frames_generated:
                self._key_frames_generated += 1
                self._count_forced_key_frame()
                frame.pict_type = "I"  # as picamera2 0.3.36 does: a TypeError with PyAV >= 14
            for packet in self._stream.encode(frame):
                self._lasttimestamp = (time.monotonic_ns(), packet.pts)
                self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)
        while len(self._request_release_queue) > self._request_release_delay:
            self._request_release_queue.popleft().release()

    def force_key_frame(self) -> None:
        self._key_frames_requested += 1


if stand_in.version_tuple(stand_in.installed_version()) < (0, 3, 32):
    del LibavH264Encoder.force_key_frame  # added in picamera2 0.3.32


__all__ = ["LibavH264Encoder"]
