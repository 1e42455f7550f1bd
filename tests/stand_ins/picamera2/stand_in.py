"""The simulated machine behind the stand-in (not part of picamera2's API): tests choose the platform,
plug, unplug, fail and restore cameras, and read what they did.

Sensor modes are the published ones (picamera2 issues #683, #1184 and #301; the frame rates vary with
the kernel driver, the crops do not). picamera2 detects the platform once, when it is imported, and
the stand-in reads its own version from package metadata at import as well: `set_platform()` and
`reimport()` make the next `import picamera2` a fresh one, as a new process on other hardware would be.
"""

from __future__ import annotations

import collections
import importlib.metadata
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# libcamera's properties::Location values.
LOCATION_FRONT = 0
LOCATION_BACK = 1
LOCATION_EXTERNAL = 2


@dataclass(frozen=True)
class SensorMode:
    """One mode of a sensor as libcamera offers it."""

    format: str  # the packed raw format, e.g. "SRGGB10_CSI2P"
    size: tuple[int, int]  # what the sensor sends (binned and/or cropped)
    fps: float  # the mode's fastest frame rate
    crop: tuple[int, int, int, int]  # the part of the pixel array it reads (ScalerCrop's maximum)

    @property
    def min_frame_duration_us(self) -> int:
        return round(1_000_000 / self.fps)


@dataclass(frozen=True)
class Sensor:
    pixel_array: tuple[int, int]  # PixelArraySize
    modes: tuple[SensorMode, ...]  # in the order libcamera lists them
    exposure_limits: tuple[int, int]  # (min, max) in microseconds


def _both_depths(
    modes: list[tuple[tuple[int, int], float, tuple[int, int, int, int]]],
) -> tuple[SensorMode, ...]:
    # The imx219 offers every size in 10 and 8 bits, listed format by format.
    return tuple(
        SensorMode(fmt, size, fps, crop) for fmt in ("SRGGB10_CSI2P", "SRGGB8") for size, fps, crop in modes
    )


SENSORS: dict[str, Sensor] = {
    # Camera Module 2. picamera2 #683 (a CM4 in 2023); newer kernels run 640x480 at about 206 fps.
    "imx219": Sensor(
        (3280, 2464),
        _both_depths(
            [
                ((640, 480), 103.33, (1000, 752, 1280, 960)),
                ((1640, 1232), 41.85, (0, 0, 3280, 2464)),
                ((1920, 1080), 47.57, (680, 692, 1920, 1080)),
                ((3280, 2464), 21.19, (0, 0, 3280, 2464)),
            ]
        ),
        (75, 11766829),
    ),
    # Camera Module 3, picamera2 #1184 (a Pi 5). Its exposure limits are the stand-in's guess.
    "imx708": Sensor(
        (4608, 2592),
        (
            SensorMode("SRGGB10_CSI2P", (1536, 864), 120.13, (768, 432, 3072, 1728)),
            SensorMode("SRGGB10_CSI2P", (2304, 1296), 56.03, (0, 0, 4608, 2592)),
            SensorMode("SRGGB10_CSI2P", (4608, 2592), 14.35, (0, 0, 4608, 2592)),
        ),
        (26, 112015443),
    ),
    # HQ camera, picamera2 #301. Its exposure limits are the stand-in's guess.
    "imx477": Sensor(
        (4056, 3040),
        (
            SensorMode("SRGGB10_CSI2P", (1332, 990), 120.05, (696, 528, 2664, 1980)),
            SensorMode("SRGGB12_CSI2P", (2028, 1080), 50.03, (0, 440, 4056, 2160)),
            SensorMode("SRGGB12_CSI2P", (2028, 1520), 40.01, (0, 0, 4056, 3040)),
            SensorMode("SRGGB12_CSI2P", (4056, 3040), 10.0, (0, 0, 4056, 3040)),
        ),
        (31, 667234896),
    ),
}


@dataclass
class Stats:
    frames: int = 0  # frames the sensor delivered
    starved: int = 0  # frames lost because every buffer was still held by someone
    max_held: int = 0  # most buffers out of the pool at once
    copies: int = 0  # whole-buffer copies made for callers (make_buffer / make_array)
    opens: int = 0
    mode_probes: int = 0  # reconfigurations made to list sensor_modes (one per mode, as picamera2)
    encoders_running_at_close: int = 0  # picamera2's close() leaves them running; the stand-in stops them


@dataclass
class SimulatedCamera:
    model: str
    id: str
    sensor: Sensor
    location: int = LOCATION_EXTERNAL
    rotation: int = 0
    hue: int = 0
    attached: bool = True
    delivering: bool = True  # False: the sensor produces nothing (a dislodged cable, a crash)
    owner: Any = None  # the open Picamera2, if any
    stats: Stats = field(default_factory=Stats)
    configs: list[dict[str, Any]] = field(default_factory=list)  # each configure(), as completed
    # Per started encoder: its arguments as started (bitrate and framerate after picamera2's defaults),
    # updated with "key_frames_forced" and "stopped" while it runs.
    encoders: list[dict[str, Any]] = field(default_factory=list)
    sensor_mode: SensorMode | None = None  # the mode the last configure() chose
    field_of_view: tuple[float, float] | None = None  # that mode's crop over the pixel array (w, h)
    frame_duration_us: int | None = None  # what the sensor runs at: the controls clamped to the mode
    mode_reads: list[int] = field(default_factory=list)  # the thread ident of each sensor_modes listing
    loop_error: BaseException | None = None  # what killed the event loop (frames stop), if anything
    # stamp_ms -> (monotonic seconds when drawn, the expected yuv420p picture, shape (h * 3 // 2, w))
    drawn: collections.OrderedDict[int, tuple[float, np.ndarray]] = field(
        default_factory=collections.OrderedDict
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, stamp_ms: int, at: float, picture: np.ndarray) -> None:
        with self.lock:
            self.drawn[stamp_ms] = (at, picture)
            while len(self.drawn) > 64:
                self.drawn.popitem(last=False)

    def lookup(self, stamp_ms: int) -> tuple[float, np.ndarray] | None:
        with self.lock:
            return self.drawn.get(stamp_ms)


_cameras: list[SimulatedCamera] = []
_instances: list[Any] = []  # every Picamera2 created, so reset() can stop stragglers
_hung: list[threading.Event] = []  # threads blocked for good (see hang()), released by reset()

# ----------------------------------------------------------------------------- the platform

Platform = Literal["VC4", "PISP"]

# What picamera2's detection finds when it queries /dev/video0..63 (VIDIOC_QUERYCAP's card name).
_NODES: dict[str, dict[str, str]] = {
    # Pi 4 and older: unicam, the bcm2835-codec (video11 encodes H.264) and the ISP.
    "VC4": {
        "/dev/video0": "unicam",
        "/dev/video10": "bcm2835-codec-decode",
        "/dev/video11": "bcm2835-codec-encode",
        "/dev/video12": "bcm2835-codec-isp",
        "/dev/video13": "bcm2835-isp",
    },
    # Pi 5: the RP1 front end, the HEVC decoder and the PiSP back end; no H.264 encoder at all.
    "PISP": {"/dev/video0": "rp1-cfe", "/dev/video19": "rpi-hevc-dec", "/dev/video20": "pispbe"},
}
_platform: Platform = "VC4"


def video_nodes() -> dict[str, str]:
    """The simulated /dev/video* nodes and their card names."""
    return dict(_NODES[_platform])


def set_platform(platform: Platform) -> None:
    """Make the simulated machine a Pi 4 or older ("VC4") or a Pi 5 ("PISP"). picamera2 detects the
    platform when imported, so this also makes the next `import picamera2` a fresh one."""
    global _platform
    if platform not in _NODES:
        raise ValueError(f"no such platform {platform!r}")
    _platform = platform
    reimport()


def reimport() -> None:
    """Forget every imported picamera2 module but this one, as a new process would: the next import
    detects the platform and reads the installed version again. Cameras must be closed first."""
    if any(camera.is_open for camera in _instances):
        raise RuntimeError("close the stand-in cameras before reimporting picamera2")
    for name in [
        m for m in sys.modules if (m == "picamera2" or m.startswith("picamera2.")) and m != __name__
    ]:
        del sys.modules[name]


# ----------------------------------------------------------------------------- the version


def installed_version() -> str:
    """picamera2's version as package metadata reports it (the stand-in ships picamera2-0.3.36.dist-info;
    a test presents another by putting a dist-info directory earlier on sys.path)."""
    return importlib.metadata.version("picamera2")


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "0.3.19" -> (0, 3, 19)."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group().split(".")) if numbers else ()


# ----------------------------------------------------------------------------- cameras


def reset() -> None:
    """Forget every camera and stop any stand-in camera still running (threads stuck for good in a
    call picamera2 never returns from are let go first, as the end of the process would)."""
    for event in list(_hung):
        event.set()
    _hung.clear()
    for camera in list(_instances):
        try:
            camera.close()
        except Exception:
            pass
    _instances.clear()
    _cameras.clear()


def hang() -> None:
    """Block the calling thread until reset(): a picamera2 call that, in this state, never returns."""
    event = threading.Event()
    _hung.append(event)
    event.wait()


def add_camera(
    model: str = "imx708",
    *,
    hue: int = 0,
    location: int = LOCATION_EXTERNAL,
    sensor: Sensor | None = None,
) -> SimulatedCamera:
    """Plug in a camera; its sensor modes are the published ones for `model` unless `sensor` is given."""
    if sensor is None:
        if model not in SENSORS:
            raise ValueError(f"no published modes for {model!r}: pass sensor=Sensor(...)")
        sensor = SENSORS[model]
    camera = SimulatedCamera(
        model=model, id=f"/base/soc/i2c0mux/i2c@{len(_cameras)}/{model}@1a", sensor=sensor, hue=hue
    )
    camera.location = location
    _cameras.append(camera)
    return camera


def attached() -> list[SimulatedCamera]:
    """What libcamera would enumerate now, in picamera2's order (the index is camera_num)."""
    return [c for c in _cameras if c.attached]


def unplug(camera: SimulatedCamera) -> None:
    camera.attached = False
    camera.delivering = False


def plug(camera: SimulatedCamera) -> None:
    camera.attached = True
    camera.delivering = True


def fail(camera: SimulatedCamera) -> None:
    """The sensor stops delivering frames; the camera stays listed."""
    camera.delivering = False


def restore(camera: SimulatedCamera) -> None:
    camera.delivering = True
