"""Local capture shared by every peer connection of a session.

One camera and one microphone feed any number of outgoing tracks (one per remote participant, plus a
local preview). Each outgoing track holds at most the newest video frame and two audio frames, so a
slow consumer drops frames instead of building latency. Mute and pause act here, at the source, so
they take effect for every peer at once and really stop what leaves the device.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    CameraSource,
    DeviceError,
    MediaDevices,
    MicrophoneSource,
)

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)
DEVICE_RETRY_SECONDS = 1.0

ErrorCallback = Callable[[Exception], None]


class OutgoingTrack(MediaStreamTrack):
    """A track fed by a capture; aiortc's sender (or a preview) reads it with `recv()`."""

    def __init__(self, kind: str, capture: _Capture, depth: int) -> None:
        super().__init__()
        self.kind = kind
        self._capture = capture
        self._frames: collections.deque[av.frame.Frame] = collections.deque(maxlen=depth)
        self._ready = asyncio.Event()

    def _offer(self, frame: av.frame.Frame) -> None:
        self._frames.append(frame)  # the deque's maxlen drops the oldest
        self._ready.set()

    async def recv(self) -> av.frame.Frame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self._capture.unsubscribe(self)
            self._ready.set()


class _Capture:
    """Common plumbing: subscribers, and a pump task that runs only while someone listens."""

    kind = ""
    depth = 1

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        self.devices = devices
        self.device_id = device_id
        self._on_error = on_error
        self._subscribers: set[OutgoingTrack] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.frames_captured = 0

    def subscribe(self) -> OutgoingTrack:
        track = OutgoingTrack(self.kind, self, self.depth)
        self._subscribers.add(track)
        self._ensure_pump()
        return track

    def unsubscribe(self, track: OutgoingTrack) -> None:
        self._subscribers.discard(track)

    def _ensure_pump(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._pump_forever(), name=f"{self.kind}-capture"
            )
        self._wake.set()

    def _publish(self, frame: av.frame.Frame) -> None:
        self.frames_captured += 1
        for track in list(self._subscribers):
            track._offer(frame)

    async def _pump_forever(self) -> None:
        try:
            await self._pump()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a backend must not silently kill capture
            log.exception("%s capture stopped", self.kind)
            self._on_error(exc)

    async def _pump(self) -> None:
        raise NotImplementedError

    def _report(self, exc: Exception) -> None:
        try:
            self._on_error(exc)
        except Exception:
            log.exception("error callback failed")

    async def close(self) -> None:
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close_source()

    def _close_source(self) -> None:
        raise NotImplementedError


class VideoCapture(_Capture):
    """The camera (or the screen, while sharing) feeding every outgoing video track.

    Frames flow only while video is enabled (not audio-only), not paused, and someone subscribes.
    A camera that fails is reported once and reopened every second; the call carries on without
    video meanwhile.
    """

    kind = "video"
    depth = 1

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        super().__init__(devices, device_id, on_error)
        self.enabled = False
        self.paused = False
        self.sharing_screen = False
        self._source: CameraSource | None = None
        self.on_restored: Callable[[], None] | None = None

    @property
    def flowing(self) -> bool:
        return self.enabled and not self.paused and bool(self._subscribers) and not self._closed

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self._wake.set()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._wake.set()

    def select(self, device_id: str) -> None:
        """Switch camera: the next frame comes from `device_id`, on the same tracks (no renegotiation)."""
        self.devices.find(device_id, "videoinput")
        self.device_id = device_id
        if not self.sharing_screen:
            self._close_source()
        self._wake.set()

    def share_screen(self, sharing: bool) -> None:
        if sharing:
            screen = self.devices.open_screen()  # raises DeviceError when the device has none
            self._close_source()
            self._source = screen
        else:
            self._close_source()
        self.sharing_screen = sharing
        self._wake.set()

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    async def _pump(self) -> None:
        failed_device: str | None = None
        while not self._closed:
            if not self.flowing:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._source is None:
                try:
                    if self.device_id is None:
                        raise DeviceError("camera", "no camera present")
                    self._source = self.devices.open_camera(self.device_id)
                except DeviceError as exc:
                    if failed_device != self.device_id:
                        failed_device = self.device_id
                        self._report(exc)
                    await self._sleep_or_wake(DEVICE_RETRY_SECONDS)
                    continue
            source = self._source
            try:
                frame = await source.next_frame()
            except DeviceError as exc:
                if source is not self._source:
                    continue  # closed on purpose (camera switched or screen share toggled)
                self._close_source()
                if failed_device != self.device_id:
                    failed_device = self.device_id
                    self._report(exc)
                continue
            if failed_device is not None:
                failed_device = None
                if self.on_restored is not None:
                    self.on_restored()
            if self.flowing:
                frame.pts = int(time.monotonic() * 90000)
                frame.time_base = VIDEO_TIME_BASE
                self._publish(frame)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


class AudioCapture(_Capture):
    """The microphone feeding every outgoing audio track. Muted, it sends digital silence."""

    kind = "audio"
    depth = 2

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        super().__init__(devices, device_id, on_error)
        self.muted = False
        self._source: MicrophoneSource | None = None
        self._samples = 0
        self._silence = np.zeros((1, AUDIO_FRAME_SAMPLES), dtype=np.int16)

    def set_muted(self, muted: bool) -> None:
        self.muted = muted

    def select(self, device_id: str) -> None:
        self.devices.find(device_id, "audioinput")
        self.device_id = device_id
        self._close_source()

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def _silent_frame(self) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(self._silence, format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        return frame

    async def _pump(self) -> None:
        failed_device: str | None = None
        started = time.monotonic()
        while not self._closed:
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame: av.AudioFrame | None = None
            if self._source is None:
                try:
                    if self.device_id is None:
                        raise DeviceError("microphone", "no microphone present")
                    self._source = self.devices.open_microphone(self.device_id)
                except DeviceError as exc:
                    if failed_device != self.device_id:
                        failed_device = self.device_id
                        self._report(exc)
            source = self._source
            if source is not None:
                try:
                    frame = await source.next_frame()
                    failed_device = None
                except DeviceError as exc:
                    if source is self._source:  # not closed on purpose by select()
                        self._close_source()
                        if failed_device != self.device_id:
                            failed_device = self.device_id
                            self._report(exc)
            if frame is None:
                # No microphone: keep the stream alive with silence, paced by the clock.
                due = started + (self._samples + AUDIO_FRAME_SAMPLES) / AUDIO_SAMPLE_RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if frame is None or self.muted:
                frame = self._silent_frame()
            frame.pts = self._samples
            frame.time_base = AUDIO_TIME_BASE
            self._samples += frame.samples
            self._publish(frame)
