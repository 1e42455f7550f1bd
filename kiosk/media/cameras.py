"""Cameras from the configuration: which are present, and opening them with the right backend.

`CameraSet(config.cameras)` lists the configured cameras that are present now (as MediaDeviceInfo,
device_id = the section's id) and opens them by id: `emulated` draws the test pattern, `picamera2`
reads a Raspberry Pi camera (kiosk.media.picamera), `v4l2` reads a USB/V4L2 camera through PyAV
(kiosk.media.v4l2). It covers video only; the SDK composes it with an audio backend.

This module also holds the plumbing both hardware backends share: a camera read on its own thread
(`ThreadedCamera`) that hands pictures to the asyncio loop through a one-slot holder where the newest
wins (`LatestHandoff`), or, for encoded H.264, through a short queue that drops up to the next
keyframe when it overflows (`PacketHandoff`), since dropping a single inter frame would corrupt the
picture until the next keyframe anyway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import av

from kiosk.config import CameraSection
from kiosk.media.devices import CameraSource, DeviceError, MediaDeviceInfo

log = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------- thread -> loop handoff


class LatestHandoff(Generic[T]):
    """Hands items from a capture thread to the asyncio loop, holding at most one: the newest wins.

    The thread calls `put()`; the loop awaits `get()`. At most one wake-up callback is queued on the
    loop at a time, so a busy loop never accumulates callbacks (or the frames they would reference).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._wake_pending = False
        self._error: DeviceError | None = None
        self._item: T | None = None
        self._put_at = 0.0
        self.delivered = 0  # items returned by get()
        self.dropped = 0  # items replaced (or discarded) before the loop took them
        self.wakeups = 0  # wake-up callbacks scheduled on the loop
        self.last_latency = 0.0  # seconds from put() to the get() that returned the item

    # -- either side

    def fail(self, error: DeviceError) -> None:
        """Make every later `get()` raise `error` once what is held has been taken (first error wins)."""
        with self._lock:
            if self._error is None:
                self._error = error
            schedule = self._claim_wakeup()
        if schedule:
            self._schedule_wake()

    @property
    def failed(self) -> bool:
        return self._error is not None

    # -- thread side

    def put(self, item: T) -> None:
        with self._lock:
            if self._error is not None:
                return
            if not self._store(item):
                return
            self._put_at = time.monotonic()
            schedule = self._claim_wakeup()
        if schedule:
            self._schedule_wake()

    def _store(self, item: T) -> bool:
        """Keep `item` (the lock is held); False if it was discarded and nobody needs waking."""
        if self._item is not None:
            self.dropped += 1
        self._item = item
        return True

    def _take(self) -> T | None:
        item, self._item = self._item, None
        return item

    def _claim_wakeup(self) -> bool:
        if self._wake_pending:
            return False
        self._wake_pending = True
        self.wakeups += 1
        return True

    def _schedule_wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # -- loop side

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._event.set()

    async def get(self, timeout: float) -> T:
        """The next item; raises the failure once nothing is held, or TimeoutError."""
        deadline = self._loop.time() + timeout
        while True:
            with self._lock:
                item = self._take()
                if item is not None:
                    self.delivered += 1
                    self.last_latency = time.monotonic() - self._put_at
                    return item
                if self._error is not None:
                    raise self._error
            # Cleared on the loop thread, where _wake() also runs: no wake-up can slip in between.
            self._event.clear()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._event.wait(), remaining)


class PacketHandoff(LatestHandoff[av.Packet]):
    """Encoded frames from a thread to the loop: in order, at most `max_pending` waiting.

    Every packet depends on the one before it, so the newest cannot simply win. On overflow the
    backlog is dropped and so is everything up to the next keyframe; `on_gap` is then called (on the
    producing thread) so the encoder can be asked for a keyframe at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_pending: int,
        on_gap: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(loop)
        self.max_pending = max(1, max_pending)
        self._queue: collections.deque[av.Packet] = collections.deque()
        self._need_keyframe = True  # a receiver can start only at a keyframe
        self._on_gap = on_gap
        self.gaps = 0

    def put(self, item: av.Packet) -> None:
        gap = False
        with self._lock:
            if len(self._queue) >= self.max_pending and self._error is None:
                self.dropped += len(self._queue)
                self._queue.clear()
                self._need_keyframe = True
                self.gaps += 1
                gap = True
        if gap and self._on_gap is not None:
            self._on_gap()
        super().put(item)

    def _store(self, item: av.Packet) -> bool:
        if self._need_keyframe:
            if not item.is_keyframe:
                self.dropped += 1
                return False
            self._need_keyframe = False
        self._queue.append(item)
        return True

    def _take(self) -> av.Packet | None:
        return self._queue.popleft() if self._queue else None


# ----------------------------------------------------------------------------- a camera on a thread


class ThreadedCamera(CameraSource):
    """A camera whose blocking I/O runs on its own thread; `next_frame()` awaits what it hands over.

    Opening, reading and closing the device all happen on that thread, so a slow open (a Pi camera
    takes a few hundred ms) never blocks the event loop. Construct it inside the running loop.
    A failure on the thread, or no picture for `stall_timeout` seconds, raises DeviceError naming
    the camera; `close()` makes a pending `next_frame()` raise at once, so a device switch is not
    held up by the old camera.
    """

    # Seconds to wait for the first picture: the device is opened and started on the thread first.
    first_frame_timeout = 5.0

    def __init__(self, device: MediaDeviceInfo, handoff: LatestHandoff, stall_timeout: float) -> None:
        self.device = device
        self._handoff = handoff
        self.stall_timeout = stall_timeout
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started_reading = False
        self._closed = False
        self._thread = threading.Thread(
            target=self._thread_main, name=f"camera-{device.device_id}", daemon=True
        )

    @property
    def handoff(self) -> LatestHandoff:
        return self._handoff

    def _start(self) -> None:
        self._thread.start()

    def _thread_main(self) -> None:
        try:
            self._run()
            if not self._stopping.is_set():
                self._fail("stopped delivering pictures")
        except DeviceError as exc:
            self._handoff.fail(exc)
        except Exception as exc:
            log.debug("camera %s failed", self.device.device_id, exc_info=True)
            self._fail(f"failed: {exc}")
        finally:
            self._stopped.set()

    @abstractmethod
    def _run(self) -> None:
        """Open, read until `self._stopping` is set (calling `self._handoff.put`), then release."""

    def _fail(self, message: str) -> None:
        self._handoff.fail(DeviceError(self.device.device_id, message))

    def describe(self) -> str:
        """The camera in words, for error messages (the device id is prefixed anyway)."""
        return self.device.label

    async def next_frame(self) -> av.VideoFrame:
        if self._closed:
            raise DeviceError(self.device.device_id, "camera closed")
        if self._started_reading:
            # A margin over the stall timeout: a thread that notices the stall itself reports it
            # first, with a better reason; this catches a thread stuck in a blocking read.
            timeout = self.stall_timeout + max(0.25, self.stall_timeout / 2)
        else:
            timeout = self.first_frame_timeout
        try:
            item = await self._handoff.get(timeout)
        except TimeoutError:
            raise DeviceError(
                self.device.device_id,
                f"{self.describe()} sent no picture for {timeout:.1f} s (stalled or disconnected)",
            ) from None
        self._started_reading = True
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._handoff.fail(DeviceError(self.device.device_id, "camera closed"))

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the thread has released the device (tests, shutdown)."""
        if not self._thread.is_alive() and not self._thread.ident:
            return True
        return self._stopped.wait(timeout)


def default_stall_timeout(fps: float) -> float:
    """No picture for this long means the camera is gone: five frame times, at least one second."""
    return max(1.0, 5.0 / max(fps, 1.0))


# ----------------------------------------------------------------------------- the configured cameras


def v4l2_label(device: str) -> str | None:
    """The driver's name for a V4L2 node (`/sys/class/video4linux/videoN/name`), if it has one."""
    try:
        node = os.path.basename(os.path.realpath(device))
        return Path("/sys/class/video4linux", node, "name").read_text().strip() or None
    except OSError:
        return None


class CameraSet:
    """The cameras of the configuration: what is present now, and opening them by id."""

    def __init__(self, sections: Sequence[CameraSection]) -> None:
        self.sections = list(sections)
        self._by_id = {s.id: s for s in self.sections}
        if len(self._by_id) != len(self.sections):
            raise ValueError("camera ids must be unique")

    def section(self, device_id: str) -> CameraSection:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise DeviceError(device_id, "no such camera in the configuration") from None

    def list_devices(self) -> list[MediaDeviceInfo]:
        """The configured cameras that are present now, in configuration order."""
        from kiosk.media.picamera import picamera_cameras  # optional: picamera2 only exists on a Pi

        pi_cameras = None
        devices = []
        for section in self.sections:
            if section.backend == "picamera2":
                if pi_cameras is None:
                    pi_cameras = picamera_cameras()
                if not 0 <= section.camera_num < len(pi_cameras):
                    continue
                label = section.label or f"Raspberry Pi camera ({pi_cameras[section.camera_num].model})"
            elif section.backend == "v4l2":
                if not section.device or not os.path.exists(section.device):
                    continue
                label = section.label or f"{v4l2_label(section.device) or 'USB camera'} ({section.device})"
            else:
                label = section.label or f"Emulated camera ({section.id})"
            devices.append(_info(section, label))
        return devices

    def video_inputs(self) -> list[MediaDeviceInfo]:
        return self.list_devices()

    def find(self, device_id: str) -> MediaDeviceInfo:
        self.section(device_id)  # a clearer message for an id that is not configured at all
        for device in self.list_devices():
            if device.device_id == device_id:
                return device
        raise DeviceError(device_id, "camera not present")

    def open_camera(self, device_id: str) -> CameraSource:
        section = self.section(device_id)
        device = self.find(device_id)
        if section.backend == "picamera2":
            from kiosk.media.picamera import PiCamera

            return PiCamera(section, device)
        if section.backend == "v4l2":
            from kiosk.media.v4l2 import V4l2Camera

            return V4l2Camera(section, device)
        return _open_emulated(section, device)


def _info(section: CameraSection, label: str) -> MediaDeviceInfo:
    return MediaDeviceInfo(section.id, label, "videoinput", facing=section.facing or None)


def _open_emulated(section: CameraSection, device: MediaDeviceInfo) -> CameraSource:
    from kiosk.media.emulated import EmulatedDevices

    # An emulated device set of one camera, at this section's size and rate; the pattern's hue
    # follows the facing, as in EmulatedDevices, so two emulated cameras look different.
    owner = EmulatedDevices(width=section.width, height=section.height, fps=float(section.fps))
    owner.plug(device)
    return owner.open_camera(device.device_id)
