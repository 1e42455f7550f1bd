"""Raspberry Pi cameras through picamera2 (libcamera).

`PiCamera(section)` configures the camera's main stream as YUV420 at the section's size, with the
frame duration pinned to its fps, and reads it on its own thread. The sensor mode is chosen here,
not left to picamera2, whose choice for small pictures is often a cropped mode (a Camera Module 2 at
640x480 would see 39 % of its sensor's width): the kiosk takes a binned mode that reads the whole
sensor (`choose_sensor_mode`). Two ways to read it:

- Pictures (default): each completed request is copied out once (`request.make_array`, which copies
  the whole buffer, stride padding included, so the request goes straight back to the camera) and
  wrapped as a yuv420p `av.VideoFrame` without another copy or any colour conversion: the frame's
  line sizes are the camera's stride, so the padding rides along and encoders skip it.
- `h264_passthrough`, on a Pi 4 or older only: picamera2's H264Encoder (the hardware encoder)
  encodes the main stream, with SPS/PPS repeated on every keyframe and a keyframe every
  `keyframe_interval` frames, at the configured frame rate and at a bitrate that follows the lowest
  of the peers' estimates (REMB); `next_frame()` returns `av.Packet`s (Annex B, pts in 90 kHz) that
  aiortc sends without re-encoding (its H.264 encoder's `pack()` path). Such a track must negotiate
  H.264. A Pi 5 has no hardware H.264 encoder (picamera2 would encode in software, and its forced
  keyframes fail with PyAV 14 and later), so there the camera gives pictures and the kiosk encodes.

picamera2 only imports on a Raspberry Pi (it needs libcamera's bindings), so it is imported when a
camera is opened or listed, never at module import; without it no Pi camera is present. For
`kiosk doctor` and the installer: `picamera2_version()` (and `MIN_PICAMERA2_VERSION`) and
`picamera_passthrough_status()` / `picamera_passthrough_available()`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc.codecs import h264 as aiortc_h264

from kiosk.config import CameraSection
from kiosk.media.cameras import (
    LatestHandoff,
    PacketHandoff,
    ThreadedCamera,
    default_stall_timeout,
)
from kiosk.media.devices import DeviceError, MediaDeviceInfo
from kiosk.media.encoding import (
    BITRATE_RAISE_INTERVAL,
    BITRATE_STEP,
    LADDER_REFERENCE,
    VideoLoss,
    loss_bitrate,
)

log = logging.getLogger(__name__)

H264_TIME_BASE = Fraction(1, 90000)
# Wait at most this long for the previous user of the same camera (a camera switch back and forth,
# or a reopen after a failure) to release it; libcamera refuses a second open meanwhile.
_RELEASE_WAIT_SECONDS = 3.0
# Seconds of encoded video allowed to wait for the loop before dropping to the next keyframe.
_MAX_PACKET_BACKLOG_SECONDS = 0.25

# capture_request(wait=<seconds>) and cancel_all_and_flush arrived together in picamera2 0.3.20;
# with an older one a camera that stops delivering blocks the camera thread for good.
MIN_PICAMERA2_VERSION = "0.3.20"
# force_key_frame arrived in 0.3.32; before it, a new peer waits for the next periodic keyframe.
FORCE_KEY_FRAME_VERSION = "0.3.32"

# The Pi 4's hardware encoder (bcm2835-codec) takes 25 kbit/s to 25 Mbit/s.
HARDWARE_BITRATE_RANGE = (25_000, 25_000_000)
# Where passthrough starts before any peer's estimate: where the kiosk's own H.264 encoder starts.
DEFAULT_PASSTHROUGH_BITRATE = aiortc_h264.DEFAULT_BITRATE
# A sensor mode whose top frame rate falls this little short of the configured one still counts.
_FPS_TOLERANCE = 0.99

_warned: set[str] = set()  # passthrough refusals already logged (once per process each)


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


# ----------------------------------------------------------------------------- version and platform


def _version_key(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: "0.3.19" -> (0, 3, 19); Debian's "0.3.36-1" -> (0, 3, 36)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def picamera2_version() -> tuple[str | None, str | None]:
    """The installed picamera2 as package metadata has it, and what is wrong with it, if anything:
    (version or None, problem or None). For `kiosk doctor` and the installer."""
    try:
        version = importlib.metadata.version("picamera2")
    except importlib.metadata.PackageNotFoundError:
        return None, "picamera2 is not installed (apt install python3-picamera2)"
    if _version_key(version) < _version_key(MIN_PICAMERA2_VERSION):
        return version, (
            f"picamera2 {version} is too old: the kiosk needs {MIN_PICAMERA2_VERSION} or newer "
            "(with an older one a camera that stops delivering blocks it for good)"
        )
    return version, None


def _require_version(device_id: str, module: Any) -> None:
    version, problem = picamera2_version()
    if version is None:
        # Importable without package metadata (a source checkout): judge by what it has.
        if not hasattr(module.Picamera2, "cancel_all_and_flush"):
            raise DeviceError(
                device_id,
                f"picamera2 (version unknown) is too old: the kiosk needs {MIN_PICAMERA2_VERSION} or newer",
            )
        return
    if problem is not None:
        raise DeviceError(
            device_id, f"picamera2 {version} is installed; the kiosk needs {MIN_PICAMERA2_VERSION} or newer"
        )


def _platform_name(module: Any) -> str | None:
    """The platform as picamera2 detected it: "VC4" (Pi 4 and older) or "PISP" (Pi 5); None for a
    picamera2 from before the Pi 5 existed."""
    try:
        platform = importlib.import_module(f"{module.__name__}.platform")
    except ImportError:
        return None
    return str(platform.get_platform().name)


def _passthrough_status(module: Any) -> tuple[bool, str]:
    platform = _platform_name(module)
    if platform == "PISP":
        return False, (
            "a Raspberry Pi 5 has no hardware H.264 encoder: picamera2 would encode in software "
            "(LibavH264Encoder), and its forced keyframes fail with PyAV 14 and later; the kiosk "
            "encodes the camera's pictures itself"
        )
    version, problem = picamera2_version()
    if version is not None and problem is not None:
        return False, problem
    reason = "the hardware H.264 encoder (bcm2835-codec)"
    if platform is None:
        reason += "; this picamera2 predates the Pi 5, so a Pi 4 or older is assumed"
    if version is not None and _version_key(version) < _version_key(FORCE_KEY_FRAME_VERSION):
        reason += (
            f"; picamera2 {version} cannot force keyframes (that needs {FORCE_KEY_FRAME_VERSION}): "
            "a new peer waits for the next periodic keyframe"
        )
    return True, reason


def picamera_passthrough_status() -> tuple[bool | None, str]:
    """Whether a Pi camera can send its own H.264 here (`h264_passthrough`), and why: True on a
    Pi 4 or older, False on a Pi 5 (no hardware encoder) or with a picamera2 too old, None where
    picamera2 is not available (not a Pi). For `kiosk doctor` and the installer."""
    try:
        module = importlib.import_module("picamera2")
    except Exception as exc:  # ImportError off a Pi; libcamera's bindings may fail otherwise
        return None, f"picamera2 is not available ({exc})"
    return _passthrough_status(module)


def picamera_passthrough_available() -> bool | None:
    """`picamera_passthrough_status()` without the reason."""
    return picamera_passthrough_status()[0]


# ----------------------------------------------------------------------------- sensor modes


def _field(mode: Mapping[str, Any]) -> int:
    _, _, width, height = mode["crop_limits"]
    return int(width) * int(height)


def _area(mode: Mapping[str, Any]) -> int:
    width, height = mode["size"]
    return int(width) * int(height)


def choose_sensor_mode(
    modes: Sequence[Mapping[str, Any]], size: tuple[int, int], fps: float
) -> Mapping[str, Any] | None:
    """The sensor mode (an entry of picamera2's `sensor_modes`) for pictures of `size` at `fps`, or
    None to leave the choice to picamera2.

    Among the modes that read the whole sensor (the largest crop), the smallest at least as large as
    the picture that reaches the frame rate (on a tie, the deeper bit depth); failing that, among the
    modes that reach the frame rate, the one that sees the most of the sensor; failing that, None.
    """
    usable = [m for m in modes if all(key in m for key in ("size", "bit_depth", "fps", "crop_limits"))]
    fast = [m for m in usable if float(m["fps"]) >= fps * _FPS_TOLERANCE]
    if not fast:
        return None

    def covers(mode: Mapping[str, Any]) -> bool:
        return mode["size"][0] >= size[0] and mode["size"][1] >= size[1]

    whole = max(_field(m) for m in usable)
    full = [m for m in fast if _field(m) >= whole and covers(m)]
    if full:
        return min(full, key=lambda m: (_area(m), -int(m["bit_depth"])))
    widest = max(_field(m) for m in fast)
    # The widest view; the smallest mode that covers the picture, else the largest that does not.
    return min(
        (m for m in fast if _field(m) == widest),
        key=lambda m: (not covers(m), _area(m) if covers(m) else -_area(m), -int(m["bit_depth"])),
    )


def _describe_mode(mode: Mapping[str, Any], modes: Sequence[Mapping[str, Any]]) -> str:
    sensor_w = max(int(m["crop_limits"][2]) for m in modes if "crop_limits" in m)
    sensor_h = max(int(m["crop_limits"][3]) for m in modes if "crop_limits" in m)
    _, _, crop_w, crop_h = mode["crop_limits"]
    width, height = mode["size"]
    return (
        f"{width}x{height} {mode['bit_depth']}-bit, {100 * crop_w / sensor_w:.0f}% x "
        f"{100 * crop_h / sensor_h:.0f}% of the sensor, up to {float(mode['fps']):.2f} fps"
    )


# ----------------------------------------------------------------------------- bitrate


class _BitrateFollower:
    """The bitrate for a camera's own encoder: the lowest of the peers' estimates (REMB), within the
    encoder's limits, followed as the kiosk's shared encoders follow theirs (kiosk.media.encoding):
    each change restarts the encoder (a keyframe), so changes of less than BITRATE_STEP are ignored,
    falls are followed at once and rises at most every BITRATE_RAISE_INTERVAL seconds.

    Under sustained loss (kiosk.media.encoding.VideoLoss) the bitrate is held at what the shared
    encoders' loss step gets (`loss_bitrate`): the camera's encoder cannot shrink its picture or
    halve its frame rate without the camera being configured again, but fewer bytes a frame are
    fewer packets a frame, and fewer frames wait for a repair. `load`: the camera's pixels a second
    over 640x480 at 30."""

    def __init__(self, low: int, high: int, default: int, load: float = 1.0) -> None:
        self.low, self.high = low, high
        self.default = self._clamp(default)
        self._estimates: dict[Hashable, int] = {}
        self._loss = VideoLoss()
        self._load = load
        self._lock = threading.Lock()
        self.bitrate = self.default  # what the encoder runs at
        self.changed_at = time.monotonic()

    def _clamp(self, bitrate: int) -> int:
        return max(self.low, min(int(bitrate), self.high))

    def set(self, key: Hashable, bitrate: int) -> None:
        with self._lock:
            self._estimates[key] = int(bitrate)

    def remove(self, key: Hashable) -> None:
        with self._lock:
            self._estimates.pop(key, None)
            self._loss.remove(key)

    def set_loss(self, key: Hashable, fraction: float) -> bool:
        """A peer's video loss report; True if whether the loss is sustained changed."""
        with self._lock:
            return self._loss.report(key, fraction)

    @property
    def lossy(self) -> bool:
        return self._loss.sustained

    def wanted(self) -> int:
        with self._lock:
            estimates = list(self._estimates.values())
            lossy = self._loss.sustained
        wanted = self._clamp(min(estimates)) if estimates else self.default
        return self._clamp(min(wanted, loss_bitrate(self._load))) if lossy else wanted

    def decide(self, now: float) -> tuple[int | None, float | None]:
        """(the bitrate to change to now, or None; seconds until a held-back rise is due, or None)."""
        wanted = self.wanted()
        if abs(wanted - self.bitrate) <= self.bitrate * BITRATE_STEP:
            return None, None
        if wanted < self.bitrate:
            return wanted, None
        due_in = self.changed_at + BITRATE_RAISE_INTERVAL - now
        return (wanted, None) if due_in <= 0 else (None, due_in)

    def changed(self, bitrate: int, now: float) -> None:
        self.bitrate, self.changed_at = bitrate, now


# ----------------------------------------------------------------------------- the camera

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
        target = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane_h, plane.line_size)
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
        _require_version(section.id, picamera2)
        cameras = picamera_cameras()
        if not 0 <= section.camera_num < len(cameras):
            raise DeviceError(section.id, f"Raspberry Pi camera {section.camera_num} is not connected")
        self.section = section
        self.info = cameras[section.camera_num]
        self.passthrough = False
        if section.h264_passthrough:
            self.passthrough, reason = _passthrough_status(picamera2)
            if not self.passthrough and reason not in _warned:
                _warned.add(reason)
                log.warning("camera %s: h264_passthrough is off: %s", section.id, reason)
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
        self._encoder_class: Any = None  # picamera2's H264Encoder, found on the camera thread
        self.stream_config: dict[str, Any] = {}  # the main stream as configured: size, stride, format
        self.sensor_mode: Mapping[str, Any] | None = None  # the sensor mode asked for, if any
        self.keyframes_requested = 0  # requests passed on to the encoder
        self.keyframe_requests_merged = 0  # requests made while one was still outstanding
        self._keyframe_lock = threading.Lock()
        self._keyframe_pending = False  # asked for, not yet seen
        self._bitrates = _BitrateFollower(
            *HARDWARE_BITRATE_RANGE,
            DEFAULT_PASSTHROUGH_BITRATE,
            load=section.width * section.height * section.fps / LADDER_REFERENCE,
        )
        self._rate_changed = threading.Event()
        self.encoder_restarts = 0
        self._next_pts = 0  # 90 kHz: where a restarted encoder's packets carry on
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
            options: dict[str, Any] = {}
            sensor = self._sensor_config(camera)
            if sensor is not None:
                options["sensor"] = sensor
            config = camera.create_video_configuration(
                main={"size": (section.width, section.height), "format": "YUV420"},
                # Both limits equal: the sensor runs at exactly this rate, so frames pace themselves.
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                # No completed request kept back: each capture waits for a fresh frame, not an old one.
                queue=False,
                **options,
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

    def _sensor_config(self, camera: Any) -> dict[str, Any] | None:
        """The full-field sensor mode for this section, as picamera2's `sensor=` configuration.
        Reading `sensor_modes` reconfigures the camera once per mode (slow), so it is done once per
        open, here on the camera thread, before the camera is configured."""
        section = self.section
        try:
            modes = list(camera.sensor_modes)
        except Exception as exc:
            log.warning("%s: cannot list its sensor modes (%s); picamera2 chooses one", self.describe(), exc)
            return None
        mode = choose_sensor_mode(modes, (section.width, section.height), section.fps)
        if mode is None:
            log.warning(
                "%s: no sensor mode reaches %d fps; picamera2 chooses one", self.describe(), section.fps
            )
            return None
        self.sensor_mode = mode
        log.info(
            "%s: sensor mode %s, for %dx%d at %d fps",
            self.describe(),
            _describe_mode(mode, modes),
            section.width,
            section.height,
            section.fps,
        )
        return {"output_size": tuple(mode["size"]), "bit_depth": int(mode["bit_depth"])}

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
        self._encoder_class = importlib.import_module(f"{self._module.__name__}.encoders").H264Encoder
        self._start_encoder(camera, self._bitrates.bitrate)
        camera.start()
        # The encoder's own thread delivers packets; this thread holds the camera open and restarts
        # the encoder when the bitrate should change (picamera2 sets the bitrate only at start).
        while True:
            self._rate_changed.clear()
            if self._stopping.is_set():
                return
            bitrate, due_in = self._bitrates.decide(time.monotonic())
            if bitrate is not None:
                self._restart_encoder(camera, bitrate)
                continue
            self._rate_changed.wait(due_in)

    def _start_encoder(self, camera: Any, bitrate: int) -> None:
        section = self.section
        encoder_args: dict[str, Any] = {
            "bitrate": bitrate,
            "repeat": True,
            "iperiod": section.keyframe_interval,
            # Not picamera2's default (the sensor mode's top rate, at most 30): the rate it runs at.
            "framerate": section.fps,
        }
        try:
            # Baseline matches the profile aiortc (and browsers) offer for H.264.
            encoder = self._encoder_class(profile="baseline", **encoder_args)
        except TypeError:  # picamera2 before "profile" existed
            encoder = self._encoder_class(**encoder_args)
        base = self._next_pts

        def deliver(data: Any, keyframe: bool, timestamp_us: int | None) -> None:
            self._on_encoded(data, keyframe, timestamp_us, base)

        camera.start_encoder(encoder, _packet_output(self._module, deliver))
        self._encoder = encoder
        self._bitrates.changed(bitrate, time.monotonic())

    def _restart_encoder(self, camera: Any, bitrate: int) -> None:
        log.info(
            "%s: H.264 at %d kbit/s (was %d), for the peers' estimates",
            self.describe(),
            bitrate // 1000,
            self._bitrates.bitrate // 1000,
        )
        camera.stop_encoder(self._encoder)  # the camera keeps running; the new encoder starts at an IDR
        self._start_encoder(camera, bitrate)
        self.encoder_restarts += 1

    def _on_encoded(self, data: Any, keyframe: bool, timestamp_us: int | None, base: int) -> None:
        # PyAV wraps bytes without copying; anything else may be a reused encoder buffer.
        packet = av.Packet(data if isinstance(data, bytes) else bytes(data))
        # The sensor's timestamp (microseconds from the encoder's first frame) in 90 kHz, carried on
        # from the previous encoder's; the capture restamps it anyway.
        if timestamp_us is not None:
            packet.pts = base + timestamp_us * 9 // 100
        else:
            packet.pts = int(time.monotonic() * 90000)
        packet.dts = packet.pts
        packet.time_base = H264_TIME_BASE
        packet.is_keyframe = bool(keyframe)
        self._next_pts = packet.pts + 90000 // max(1, self.section.fps)
        if keyframe:
            with self._keyframe_lock:
                self._keyframe_pending = False
        self._handoff.put(packet)

    def _release(self, camera: Any) -> None:
        _quietly(camera.stop)
        if self._encoder is not None:
            _quietly(camera.stop_encoder)
            self._encoder = None
        _quietly(camera.close)

    # -- loop side (next_frame() comes from ThreadedCamera; it returns av.Packet in passthrough)

    def request_keyframe(self) -> bool:
        """Ask the H.264 encoder for a keyframe now (new receiver, lost packets); False if it cannot.

        picamera2's encoder counts requests and forces one keyframe per request on successive
        frames, while a new peer asks several times; so one request is passed on and the rest wait
        until a keyframe has come out."""
        encoder = self._encoder
        force = getattr(encoder, "force_key_frame", None)
        if force is None:
            return False
        with self._keyframe_lock:
            if self._keyframe_pending:
                self.keyframe_requests_merged += 1
                return True
            self._keyframe_pending = True
        self.keyframes_requested += 1
        try:
            force()
        except Exception:
            log.debug("%s: force_key_frame failed", self.describe(), exc_info=True)
            with self._keyframe_lock:
                self._keyframe_pending = False
            return False
        return True

    def set_bitrate_estimate(self, key: Hashable, bitrate: int) -> None:
        """A peer's receiver estimate (REMB) in bits per second, per track (`key`): the camera's own
        encoder follows the lowest. Ignored unless the camera encodes (passthrough)."""
        if self.passthrough:
            self._bitrates.set(key, bitrate)
            self._rate_changed.set()

    def set_loss_estimate(self, key: Hashable, fraction: float) -> None:
        """A peer's report of the share of the video it lost (RTCP receiver reports), per track: under
        sustained loss the camera's encoder runs at less. Ignored unless the camera encodes."""
        if self.passthrough and self._bitrates.set_loss(key, fraction):
            log.info("%s: video loss %s", self.describe(), "sustained" if self._bitrates.lossy else "over")
            self._rate_changed.set()

    def remove_bitrate_estimate(self, key: Hashable) -> None:
        """That track is gone: its estimate no longer counts."""
        if self.passthrough:
            self._bitrates.remove(key)
            self._rate_changed.set()

    @property
    def bitrate(self) -> int | None:
        """What the camera's encoder runs at (passthrough), in bits per second."""
        return self._bitrates.bitrate if self.passthrough else None

    def close(self) -> None:
        super().close()
        self._rate_changed.set()


def _packet_output(picamera2: Any, deliver: Callable[[Any, bool, int | None], None]) -> Any:
    """An instance of a picamera2 Output subclass that passes each encoded frame to `deliver`."""
    outputs = importlib.import_module(f"{picamera2.__name__}.outputs")
    output_class: Any = outputs.Output  # imported at run time: picamera2 exists only on a Pi

    class PacketOutput(output_class):
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
