"""A ringing caller's stills: while a call this endpoint made rings, the camera's picture goes to the
server a couple of times a second (`PUT /v1/calls/{id}/picture`), so the callee sees who is calling
before answering (no audio, and no video call, until it answers), and the last still stays with the
call: a missed call's picture (docs/protocol.md, "Caller pictures").

The camera is opened for the ring and closed before the call's session opens it: a Pi camera can be
open once at a time, so `stop()` is awaited before the session starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from fractions import Fraction

import av

from kiosk.calls.errors import CallsError
from kiosk.media.devices import CameraSource, DeviceError, MediaDevices
from kiosk.protocol import MAX_PICTURE_BYTES

log = logging.getLogger(__name__)

PICTURE_WIDTH = 320  # enough to see a face on the callee's screen; 10-25 KB a JPEG
PICTURE_INTERVAL = 0.5  # seconds between two stills

Upload = Callable[[bytes], Awaitable[None]]


def jpeg_of(frame: av.VideoFrame, width: int = PICTURE_WIDTH, quality: int = 8) -> bytes:
    """The frame, scaled to `width` (aspect kept), as a baseline JPEG (`quality` is mjpeg's qscale,
    2 best to 31 worst)."""
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    scaled = frame.reformat(width=width, height=height, format="yuvj420p")
    scaled.pts = 0
    packets = [*codec.encode(scaled), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


class RingPreview:
    """The stills of one ringing call."""

    def __init__(self, devices: MediaDevices, upload: Upload, interval: float = PICTURE_INTERVAL) -> None:
        self._devices = devices
        self._upload = upload
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ring-preview")

    async def stop(self) -> None:
        """Stop sending and close the camera (returns once it is closed)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        cameras = self._devices.video_inputs()
        if not cameras:
            return
        loop = asyncio.get_running_loop()
        camera: CameraSource | None = None
        try:
            opening = loop.run_in_executor(None, self._devices.open_camera, cameras[0].device_id)
            try:
                camera = await asyncio.shield(opening)
            except asyncio.CancelledError:
                # Stopped while the camera was opening on its thread: the open goes on there, and what
                # it opens must be closed, or the call that follows finds the camera in use.
                with contextlib.suppress(Exception):
                    late = await opening
                    await loop.run_in_executor(None, late.close)
                raise
            while True:
                frame = await camera.next_frame()
                if isinstance(frame, av.VideoFrame):  # a camera's own H.264 packets are not shown
                    jpeg = await loop.run_in_executor(None, jpeg_of, frame)
                    if len(jpeg) <= MAX_PICTURE_BYTES:
                        await self._upload(jpeg)
                        self.sent += 1
                await asyncio.sleep(self._interval)
        except (DeviceError, CallsError) as exc:
            # No picture is no reason to stop the ring: the callee sees the caller's avatar instead.
            log.info("no caller picture for this ring: %s", exc)
        finally:
            if camera is not None:
                # Shielded: a cancelled stop() must still leave the camera closed for the session.
                await asyncio.shield(loop.run_in_executor(None, camera.close))
