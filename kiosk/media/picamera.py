"""Raspberry Pi cameras through picamera2 (libcamera).

`PiCamera(section)` configures the camera's main stream as YUV420 at the section's size, with the
frame duration pinned to its fps, and reads it on its own thread. Two modes:

- Pictures (default): each completed request is copied out once (`request.make_array`, which copies
  the whole buffer, stride padding included, so the request goes straight back to the camera) and
  wrapped as a yuv420p `av.VideoFrame` without another copy or any colour conversion: the frame's
  line sizes are the camera's stride, so the padding rides along and encoders skip it.
- `h264_passthrough`: picamera2's H264Encoder (hardware on Pi 4 and older) encodes the main stream,
  with SPS/PPS repeated on every keyframe and a keyframe every `keyframe_interval` frames, and
  `next_frame()` returns `av.Packet`s (Annex B, pts in 90 kHz) that aiortc sends without
  re-encoding (its H.264 encoder's `pack()` path). Such a track must negotiate H.264.

picamera2 only imports on a Raspberry Pi (it needs libcamera's bindings), so it is imported when a
camera is opened or listed, never at module import; without it no Pi camera is present.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from kiosk.config import CameraSection
from kiosk.media.cameras import (
    LatestHandoff,
    PacketHandoff,
    ThreadedCamera,
    default_stall_timeout,
)
from kiosk.media.devices import DeviceError, MediaDeviceInfo

log = logging.getLogger(__name__)

H264_TIME_BASE = Fraction(1, 90000)
# Wait at most this long for the previous user of the same camera (a camera switch back and forth,
# or a reopen after a failure) to release it; libcamera refuses a second open meanwhile.
_RELEASE_WAIT_SECONDS = 3.0
# Seconds of encoded video allowed to wait for the loop before dropping to the next keyframe.
_MAX_PACKET_BACKLOG_SECONDS = 0.25


@dataclass(frozen=True)
class PiCameraInfo:
    """One camera as picamera2 lists it; `index` is the `camera_num` that opens it."""

    index: int
    model: str
    id: str
    location: int | None = None
    rotation: int | None = None


def _picamera2(device_id: str) -> Any:
    try:
        return importlib.import_module("picamera2")
    except ImportError as exc:
        raise DeviceError(device_id, f"picamera2 is not available ({exc}); is this a Raspberry Pi?") from None


def picamera_cameras() -> list[PiCameraInfo]:
    """The cameras libcamera sees now, in picamera2's order; empty where picamera2 is unavailable."""
    try:
        picamera2 = importlib.import_module("picamera2")
        infos = picamera2.Picamera2.global_camera_info()
    except Exception as exc:  # ImportError off a Pi; anything libcamera raises means "none usable"
        log.debug("no picamera2 cameras: %s", exc)
        return []
    return [
        PiCameraInfo(
            index=i,
            model=str(info.get("Model", "unknown")),
            id=str(info.get("Id", "")),
            location=info.get("Location"),
            rotation=info.get("Rotation"),
        )
        for i, info in enumerate(infos)
    ]


# Per camera_num: set once the last PiCamera that opened it has closed it.
_released: dict[int, threading.Event] = {}
_released_lock = threading.Lock()


def frame_from_yuv420(array: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """Wrap a YUV420 buffer shaped (height * 3 // 2, stride) as picamera2 returns it, uncopied.

    The frame keeps a reference to `array` and uses its stride as line size (chroma: stride / 2).
    PyAV's wrapper derives the height from the row count and gets it wrong unless height is a
    multiple of 4; those sizes take one extra copy into a new frame.
    """
    if height % 4 == 0:
        return av.VideoFrame.from_numpy_buffer(array, format="yuv420p", width=width)
    stride = array.shape[1]
    flat = array.reshape(-1)
    frame = av.VideoFrame(width, height, "yuv420p")
    offset = 0
    for index, (plane_w, plane_h, plane_stride) in enumerate(
        (
            (width, height, stride),
            (width // 2, height // 2, stride // 2),
            (width // 2, height // 2, stride // 2),
        )
    ):
        source = flat[offset : offset + plane_stride * plane_h].reshape(plane_h, plane_stride)
        plane = frame.planes[index]
        target = np.frombuffer(plane, dtype=np.uint8).reshape(plane_h, plane.line_size)
        target[:, :plane_w] = source[:, :plane_w]
        offset += plane_stride * plane_h
    return frame


class PiCamera(ThreadedCamera):
    """One picamera2 camera per the section: YUV420 frames, or its own H.264 as av.Packets."""

    def __init__(
        self,
        section: CameraSection,
        device: MediaDeviceInfo | None = None,
        *,
        stall_timeout: float | None = None,
    ) -> None:
        picamera2 = _picamera2(section.id)
        cameras = picamera_cameras()
        if not 0 <= section.camera_num < len(cameras):
            raise DeviceError(section.id, f"Raspberry Pi camera {section.camera_num} is not connected")
        self.section = section
        self.info = cameras[section.camera_num]
        self.passthrough = section.h264_passthrough
        device = device or MediaDeviceInfo(
            section.id,
            section.label or f"Raspberry Pi camera ({self.info.model})",
            "videoinput",
            facing=section.facing or None,
        )
        loop = asyncio.get_running_loop()
        handoff: LatestHandoff
        if self.passthrough:
            backlog = max(2, round(section.fps * _MAX_PACKET_BACKLOG_SECONDS))
            handoff = PacketHandoff(loop, backlog, on_gap=self.request_keyframe)
        else:
            handoff = LatestHandoff(loop)
        super().__init__(device, handoff, stall_timeout or default_stall_timeout(section.fps))
        self._module = picamera2
        self._encoder: Any = None
        self.stream_config: dict[str, Any] = {}  # the main stream as configured: size, stride, format
        self.keyframes_requested = 0
        self._start()

    # -- the camera thread

    def describe(self) -> str:
        return f"Raspberry Pi camera {self.section.camera_num} ({self.info.model})"

    def _run(self) -> None:
        num = self.section.camera_num
        with _released_lock:
            previous = _released.get(num)
            mine = _released[num] = threading.Event()
        try:
            if previous is not None and not previous.wait(_RELEASE_WAIT_SECONDS):
                raise DeviceError(self.device.device_id, f"{self.describe()} is still in use")
            self._run_camera()
        finally:
            mine.set()

    def _run_camera(self) -> None:
        section = self.section
        try:
            camera = self._module.Picamera2(section.camera_num)
        except (IndexError, RuntimeError, OSError) as exc:
            raise DeviceError(self.device.device_id, f"cannot open {self.describe()}: {exc}") from None
        try:
            frame_us = round(1_000_000 / section.fps)
            config = camera.create_video_configuration(
                main={"size": (section.width, section.height), "format": "YUV420"},
                # Both limits equal: the sensor runs at exactly this rate, so frames pace themselves.
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                # No completed request kept back: each capture waits for a fresh frame, not an old one.
                queue=False,
            )
            camera.configure(config)
            self.stream_config = dict(camera.camera_configuration()["main"])
            if tuple(self.stream_config["size"]) != (section.width, section.height):
                log.warning(
                    "%s: asked for %dx%d, the camera gives %s",
                    self.describe(),
                    section.width,
                    section.height,
                    self.stream_config["size"],
                )
            if self.passthrough:
                self._run_encoder(camera)
            else:
                self._run_frames(camera)
        finally:
            self._release(camera)

    def _run_frames(self, camera: Any) -> None:
        width, height = self.stream_config["size"]
        camera.start()
        while not self._stopping.is_set():
            try:
                request = camera.capture_request(wait=self.stall_timeout)
            except TimeoutError:
                # The timed-out capture is still queued; picamera2 wants it cancelled before the
                # camera can be closed (its advice for a dislodged cable).
                _quietly(camera.cancel_all_and_flush)
                raise DeviceError(
                    self.device.device_id, f"{self.describe()} stopped delivering frames"
                ) from None
            try:
                array = request.make_array("main")  # the one copy: out of the camera's buffer
            finally:
                request.release()  # at once: the camera has only a few buffers
            self._handoff.put(frame_from_yuv420(array, width, height))

    def _run_encoder(self, camera: Any) -> None:
        encoder_class = importlib.import_module(f"{self._module.__name__}.encoders").H264Encoder

        encoder_args: dict[str, Any] = {"repeat": True, "iperiod": self.section.keyframe_interval}
        try:
            # Baseline matches the profile aiortc (and browsers) offer for H.264.
            encoder = encoder_class(profile="baseline", **encoder_args)
        except TypeError:  # picamera2 before "profile" existed
            encoder = encoder_class(**encoder_args)
        self._encoder = encoder
        camera.start_encoder(encoder, _packet_output(self._module, self._on_encoded))
        camera.start()
        # The encoder's own thread delivers packets; this thread only holds the camera open.
        self._stopping.wait()

    def _on_encoded(self, data: Any, keyframe: bool, timestamp_us: int | None) -> None:
        # PyAV wraps bytes without copying; anything else may be a reused encoder buffer.
        packet = av.Packet(data if isinstance(data, bytes) else bytes(data))
        # The sensor's timestamp (microseconds) in 90 kHz; the capture restamps it anyway.
        packet.pts = timestamp_us * 9 // 100 if timestamp_us is not None else int(time.monotonic() * 90000)
        packet.dts = packet.pts
        packet.time_base = H264_TIME_BASE
        packet.is_keyframe = bool(keyframe)
        self._handoff.put(packet)

    def _release(self, camera: Any) -> None:
        _quietly(camera.stop)
        if self._encoder is not None:
            _quietly(camera.stop_encoder)
            self._encoder = None
        _quietly(camera.close)

    # -- loop side (next_frame() comes from ThreadedCamera; it returns av.Packet in passthrough)

    def request_keyframe(self) -> bool:
        """Ask the H.264 encoder for a keyframe now (new receiver, lost packets); False if it cannot."""
        encoder = self._encoder
        force = getattr(encoder, "force_key_frame", None)
        if force is None:
            return False
        self.keyframes_requested += 1
        try:
            force()
        except Exception:
            log.debug("%s: force_key_frame failed", self.describe(), exc_info=True)
            return False
        return True


def _packet_output(picamera2: Any, deliver: Any) -> Any:
    """An instance of a picamera2 Output subclass that passes each encoded frame to `deliver`."""
    outputs = importlib.import_module(f"{picamera2.__name__}.outputs")

    class PacketOutput(outputs.Output):
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            if not audio:
                deliver(frame, keyframe, timestamp)

    return PacketOutput()


def _quietly(call: Any) -> None:
    try:
        call()
    except Exception:
        log.debug("picamera2 cleanup step failed", exc_info=True)
