"""The simulated cameras behind the stand-in (not part of picamera2's API): tests plug, unplug, fail
and restore them, and read what they did."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# libcamera's properties::Location values.
LOCATION_FRONT = 0
LOCATION_BACK = 1
LOCATION_EXTERNAL = 2


@dataclass
class Stats:
    frames: int = 0  # frames the sensor delivered
    starved: int = 0  # frames lost because every buffer was still held by someone
    max_held: int = 0  # most buffers out of the pool at once
    copies: int = 0  # whole-buffer copies made for callers (make_buffer / make_array)
    opens: int = 0


@dataclass
class SimulatedCamera:
    model: str
    id: str
    location: int = LOCATION_EXTERNAL
    rotation: int = 0
    hue: int = 0
    attached: bool = True
    delivering: bool = True  # False: the sensor produces nothing (a dislodged cable, a crash)
    owner: Any = None  # the open Picamera2, if any
    stats: Stats = field(default_factory=Stats)
    configs: list[dict[str, Any]] = field(default_factory=list)
    encoders: list[dict[str, Any]] = field(default_factory=list)  # arguments of started encoders
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


def reset() -> None:
    """Forget every camera and stop any stand-in camera still running."""
    for camera in list(_instances):
        try:
            camera.close()
        except Exception:
            pass
    _instances.clear()
    _cameras.clear()


def add_camera(model: str = "imx708", *, hue: int = 0, location: int = LOCATION_EXTERNAL) -> SimulatedCamera:
    camera = SimulatedCamera(model=model, id=f"/base/soc/i2c0mux/i2c@{len(_cameras)}/{model}@1a", hue=hue)
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
