"""USB and other V4L2 cameras through PyAV's v4l2 demuxer.

`V4l2Camera(section)` opens `section.device` with the section's size and frame rate, demuxes and
decodes it on its own thread and hands the newest frame to the loop. Frames become yuv420p only
when the camera delivers something else (YUYV, or MJPEG decoded to yuvj422p/yuvj420p): the
conversion runs once, here, off the loop, instead of in every peer's encoder.

Which pixel format to ask for: raw YUYV costs no decoding but needs 2 bytes per pixel over USB, so
it is asked for first only when it fits a USB 2 camera's bandwidth (640x480 at 30 fps does,
1280x720 at 30 does not); otherwise MJPEG first. If the camera refuses one, the next is tried, and
finally whatever the driver offers.

The demuxer is a parameter so tests can feed the same thread, handoff and conversion code from
PyAV's `lavfi` (e.g. `testsrc2=...,format=yuyv422,realtime`) on a machine with no camera.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import av

from kiosk.config import CameraSection
from kiosk.media.cameras import LatestHandoff, ThreadedCamera, default_stall_timeout, v4l2_label
from kiosk.media.devices import DeviceError, MediaDeviceInfo

log = logging.getLogger(__name__)

# Bytes per second a USB 2 camera can move isochronously (3 x 1024 bytes per 125 us microframe).
USB2_RAW_BUDGET = 24_000_000


def v4l2_open_options(section: CameraSection) -> list[dict[str, str]]:
    """The option sets to try, in order, when opening the section's device with the v4l2 demuxer."""
    base = {"video_size": f"{section.width}x{section.height}", "framerate": str(section.fps)}
    raw_rate = section.width * section.height * 2 * section.fps
    order = ["yuyv422", "mjpeg"] if raw_rate <= USB2_RAW_BUDGET else ["mjpeg", "yuyv422"]
    return [{**base, "input_format": fmt} for fmt in order] + [base]


class V4l2Camera(ThreadedCamera):
    """A V4L2 camera read through PyAV; `next_frame()` returns yuv420p frames, the newest first."""

    def __init__(
        self,
        section: CameraSection,
        device: MediaDeviceInfo | None = None,
        *,
        demuxer: str = "v4l2",
        url: str | None = None,
        options: dict[str, str] | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self.section = section
        self.url = url or section.device
        self.demuxer = demuxer
        if demuxer == "v4l2" and (not self.url or not os.path.exists(self.url)):
            raise DeviceError(
                section.id, f"{self.url or 'no device'} does not exist (is the camera plugged in?)"
            )
        if options is not None:
            self._attempts = [options]
        else:
            self._attempts = v4l2_open_options(section) if demuxer == "v4l2" else [{}]
        device = device or MediaDeviceInfo(
            section.id,
            section.label or f"{v4l2_label(self.url) or 'USB camera'} ({self.url})",
            "videoinput",
            facing=section.facing or None,
        )
        super().__init__(
            device,
            LatestHandoff(asyncio.get_running_loop()),
            stall_timeout or default_stall_timeout(section.fps),
        )
        self.opened_with: dict[str, str] | None = None  # the option set the device accepted
        self.source_format: str | None = None  # the decoded pixel format, before any conversion
        self.frames_read = 0
        self.conversions = 0
        self._start()

    def describe(self) -> str:
        return self.url

    def _open(self) -> av.container.InputContainer:
        error: Exception | None = None
        for options in self._attempts:
            try:
                container = av.open(self.url, format=self.demuxer, options=dict(options))
            except (OSError, av.FFmpegError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise DeviceError(self.device.device_id, f"{self.url} does not exist") from None
                if isinstance(exc, PermissionError):
                    raise DeviceError(
                        self.device.device_id, f"{self.url}: permission denied (is the user in group video?)"
                    ) from None
                if getattr(exc, "errno", None) == errno.EBUSY:
                    raise DeviceError(self.device.device_id, f"{self.url} is busy") from None
                log.debug("%s refused %s: %s", self.url, options, exc)
                error = exc
                continue
            self.opened_with = dict(options)
            return container
        raise DeviceError(self.device.device_id, f"cannot open {self.url}: {error}")

    def _run(self) -> None:
        container = self._open()
        try:
            if not container.streams.video:
                raise DeviceError(self.device.device_id, f"{self.url} has no video")
            stream = container.streams.video[0]
            try:
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        self._deliver(frame)
                    if self._stopping.is_set():
                        return
            except (OSError, av.FFmpegError) as exc:
                if self._stopping.is_set():
                    return
                raise DeviceError(
                    self.device.device_id, f"{self.url}: read failed ({exc}); unplugged?"
                ) from None
        finally:
            container.close()

    def _deliver(self, frame: av.VideoFrame) -> None:
        self.frames_read += 1
        self.source_format = frame.format.name
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
            self.conversions += 1
        self._handoff.put(frame)
