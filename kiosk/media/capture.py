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
from kiosk.media.encoding import Encoder, SharedAudioEncoder, SharedVideoEncoder, shareable

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)
DEVICE_RETRY_SECONDS = 1.0
# Encoded video (a camera's own H.264) cannot drop arbitrary packets: a reader that falls this far
# behind skips to the next keyframe instead, and the camera is asked for one.
PACKET_DEPTH = 8

ErrorCallback = Callable[[Exception], None]


class OutgoingTrack(MediaStreamTrack):
    """A track fed by a capture; aiortc's sender (or a preview) reads it with `recv()`.

    A track given `send_codec` (a peer connection's sender) finds out on its first `recv()` which codec
    its peer negotiated; if the capture can encode that codec once for everyone, the track carries
    that shared encoder's packets from then on instead of raw frames.
    """

    def __init__(self, kind: str, capture: _Capture, depth: int) -> None:
        super().__init__()
        self.kind = kind
        self._capture = capture
        self._frames: collections.deque[av.frame.Frame] = collections.deque(maxlen=depth)
        self._packets: collections.deque[av.Packet] = collections.deque()
        self._need_keyframe = kind == "video"  # a new reader of encoded video starts at a keyframe
        self._ready = asyncio.Event()
        self._codec_probe: Callable[[], str | None] | None = None
        self.encoder: Encoder | None = None
        self.loss_reported = 0.0  # the peer's last report of the share of our packets it lost
        self.nacks_received = 0  # retransmission requests (NACK) the peer sent for this track

    def send_codec(self, probe: Callable[[], str | None]) -> None:
        """`probe()` names the negotiated codec (a mime type) once the peer connection sends."""
        self._codec_probe = probe

    def set_loss_estimate(self, fraction: float) -> None:
        """The share of this track's packets the peer reported lost (RTCP receiver reports)."""
        self.loss_reported = fraction
        if self.encoder is not None:
            self.encoder.set_loss(self, fraction)  # Opus FEC; the picture ladder
        elif self.kind == "video":
            self._capture.set_loss_estimate(self, fraction)  # a camera that encodes by itself

    def set_bitrate_estimate(self, bitrate: int) -> None:
        """The peer's receiver estimate (REMB) for what this track sends."""
        if self.encoder is not None:
            self.encoder.set_estimate(self, bitrate)
        self._capture.set_bitrate_estimate(self, bitrate)  # a camera that encodes by itself

    def _bind(self) -> None:
        probe, self._codec_probe = self._codec_probe, None
        assert probe is not None
        mime = probe()
        if mime is None:
            self._codec_probe = probe  # not negotiated yet: ask again on the next frame
            return
        self.encoder = self._capture.attach(self, mime)
        if self.encoder is not None:
            self._frames.clear()  # raw frames would be encoded by aiortc: the packets follow

    def _offer(self, frame: av.frame.Frame | av.Packet) -> None:
        if isinstance(frame, av.Packet):
            self._offer_packet(frame)
        else:
            self._frames.append(frame)  # the deque's maxlen drops the oldest
        self._ready.set()

    def _offer_packet(self, packet: av.Packet) -> None:
        if self.kind == "audio":
            if len(self._packets) >= PACKET_DEPTH:
                self._packets.popleft()  # audio frames stand alone: drop the oldest
            self._packets.append(packet)
            self._ready.set()
            return
        if len(self._packets) >= PACKET_DEPTH:
            self._packets.clear()
            self._need_keyframe = True
        if self._need_keyframe:
            if not packet.is_keyframe:
                self._request_keyframe()
                return
            self._need_keyframe = False
        self._packets.append(packet)
        self._ready.set()

    def _request_keyframe(self) -> None:
        self._capture.request_keyframe()  # the shared encoders, or a camera that encodes by itself

    async def recv(self) -> av.frame.Frame | av.Packet:
        if self._codec_probe is not None:
            self._bind()
        while not self._frames and not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._packets.popleft() if self._packets else self._frames.popleft()

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self._capture.unsubscribe(self)
            self._ready.set()


class _Capture:
    """Common plumbing: subscribers, the open source and its failures, and a pump task that runs only
    while someone listens."""

    kind = ""
    what = ""  # "camera" or "microphone", for messages
    depth = 1
    # Open and close the source on a worker thread: a sound card's open can wait on a busy substream
    # and its close drains or joins a thread. (Cameras open their device on their own thread already.)
    off_loop = False

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        self.devices = devices
        self.device_id = device_id
        self._on_error = on_error
        self._subscribers: set[OutgoingTrack] = set()
        self._estimates: dict[OutgoingTrack, int] = {}  # each track's peer estimate, for the source
        self._encoders: dict[str, Encoder] = {}  # mime type -> the encoder shared by its tracks
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._source: CameraSource | MicrophoneSource | None = None
        self._closing: set[asyncio.Future[None]] = set()  # sources being closed on a worker thread
        self._failed_device: str | None = None  # reported once per device until it works again
        self._retry_at = 0.0
        self.frames_captured = 0
        # What encoders already closed (their last peer gone) did, so that a session's figures at its
        # end do not depend on whether the other side hung up first.
        self.retired_fec_packets = 0
        self.retired_picture_changes = 0
        self.on_restored: Callable[[], None] | None = None
        # Called with every published frame (the call recorder listens to the local microphone here);
        # not with the packets of a camera that encodes by itself.
        self.taps: list[Callable[[av.frame.Frame], None]] = []

    def subscribe(self) -> OutgoingTrack:
        track = OutgoingTrack(self.kind, self, self.depth)
        self._subscribers.add(track)
        self._ensure_pump()
        self.request_keyframe()  # a new peer of an encoding camera should not wait a whole interval
        return track

    def unsubscribe(self, track: OutgoingTrack) -> None:
        self._subscribers.discard(track)
        self._estimates.pop(track, None)
        forget = getattr(self._source, "remove_bitrate_estimate", None)  # its estimate and loss
        if forget is not None:
            forget(track)
        encoder = track.encoder
        if encoder is not None:
            encoder.remove(track)
            if not encoder.sinks:
                if isinstance(encoder, SharedAudioEncoder):
                    self.retired_fec_packets += encoder.fec_packets
                else:
                    self.retired_picture_changes += encoder.step_changes
                encoder.close()
                self._encoders = {m: e for m, e in self._encoders.items() if e is not encoder}

    def attach(self, track: OutgoingTrack, mime_type: str) -> Encoder | None:
        """Feed `track` from the shared encoder of `mime_type`; None if it must take raw frames."""
        mime = mime_type.lower()
        if not shareable(mime) or track not in self._subscribers:
            return None
        # A camera that encodes by itself publishes packets, which reach every track as they are.
        encoder = self._encoders.get(mime)
        if encoder is None:
            encoder = self._encoders[mime] = self._new_encoder(mime)
        encoder.add(track)
        return encoder

    def _new_encoder(self, mime: str) -> Encoder:
        raise NotImplementedError

    @property
    def encoders(self) -> list[Encoder]:
        return list(self._encoders.values())

    @property
    def fec_packets(self) -> int:
        """Opus packets sent with in-band FEC since the capture opened, by every encoder it had."""
        live = sum(e.fec_packets for e in self._encoders.values() if isinstance(e, SharedAudioEncoder))
        return self.retired_fec_packets + live

    @property
    def picture_changes(self) -> int:
        """Steps of the picture ladder taken since the capture opened, by every encoder it had."""
        live = sum(e.step_changes for e in self._encoders.values() if isinstance(e, SharedVideoEncoder))
        return self.retired_picture_changes + live

    def request_keyframe(self) -> None:
        """A keyframe soon, from the shared encoders or from a source that encodes by itself (a
        camera's own H.264)."""
        for encoder in self._encoders.values():
            encoder.request_keyframe()
        request = getattr(self._source, "request_keyframe", None)
        if request is not None:
            request()

    def set_bitrate_estimate(self, track: OutgoingTrack, bitrate: int) -> None:
        """A peer's estimate for `track`, passed on to a source that encodes by itself (a camera's
        own H.264 follows the lowest, as the shared encoders do) and to the next one opened."""
        if track not in self._subscribers:
            return
        self._estimates[track] = bitrate
        follow = getattr(self._source, "set_bitrate_estimate", None)
        if follow is not None:
            follow(track, bitrate)

    def set_loss_estimate(self, track: OutgoingTrack, fraction: float) -> None:
        """A peer's video loss report for `track`, passed on to a source that encodes by itself."""
        follow = getattr(self._source, "set_loss_estimate", None)
        if track in self._subscribers and follow is not None:
            follow(track, fraction)

    def _ensure_pump(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._pump_forever(), name=f"{self.kind}-capture"
            )
        self._wake.set()

    def _publish(self, frame: av.frame.Frame | av.Packet) -> None:
        self.frames_captured += 1
        if isinstance(frame, av.Packet):  # the camera's own encoding: every reader takes it as it is
            for track in list(self._subscribers):
                track._offer(frame)
            return
        for track in list(self._subscribers):
            if track.encoder is None:
                track._offer(frame)
        for encoder in list(self._encoders.values()):
            # A capture's encoders are of its kind (video frames to SharedVideoEncoder, audio to
            # SharedAudioEncoder), which `Encoder`, the union of both, does not say.
            encoder.submit(frame)  # type: ignore[arg-type]
        for tap in list(self.taps):
            try:
                tap(frame)
            except Exception:
                log.exception("capture tap failed")

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

    def _open(self, device_id: str) -> CameraSource | MicrophoneSource:
        raise NotImplementedError

    async def _ensure_source(self) -> bool:
        """Open the selected device if it is not open; at most one attempt per retry interval."""
        if self._source is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        device_id = self.device_id
        try:
            if device_id is None:
                raise DeviceError(self.what, f"no {self.what} present")
            if not self.off_loop:
                self._source = self._open(device_id)
                return True
            if self._closing:  # the device being closed may be the one we open (same substream)
                await asyncio.gather(*self._closing, return_exceptions=True)
            source = await asyncio.get_running_loop().run_in_executor(None, self._open, device_id)
        except DeviceError as exc:
            self._failed(exc)
            return False
        if self._closed or device_id != self.device_id or self._source is not None:
            self._close_off_loop(source)  # another device was selected (or we closed) meanwhile
            return self._source is not None
        self._source = source
        return True

    async def _read(self) -> av.frame.Frame | None:
        """The next frame of the open source, or None if it failed (reported) or was swapped."""
        source = self._source
        assert source is not None
        try:
            frame = await source.next_frame()
        except DeviceError as exc:
            if source is self._source:  # not closed on purpose by a device switch
                self._close_source()
                self._failed(exc)
            return None
        if self._failed_device is not None:
            self._failed_device = None
            if self.on_restored is not None:
                self.on_restored()
        return frame

    def _failed(self, exc: DeviceError) -> None:
        self._retry_at = time.monotonic() + DEVICE_RETRY_SECONDS
        if self._failed_device != self.device_id:
            self._failed_device = self.device_id
            try:
                self._on_error(exc)
            except Exception:
                log.exception("error callback failed")

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        if self.off_loop:
            self._close_off_loop(source)
        else:
            source.close()

    def _close_off_loop(self, source: CameraSource | MicrophoneSource) -> None:
        try:
            future = asyncio.get_running_loop().run_in_executor(None, _close_quietly, source)
        except RuntimeError:  # no running loop (the process is ending)
            _close_quietly(source)
            return
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    def select(self, device_id: str) -> None:
        """Use `device_id` from the next frame on, on the same tracks (no renegotiation)."""
        self.devices.find(device_id, "videoinput" if self.kind == "video" else "audioinput")
        self.device_id = device_id
        self._retry_at = 0.0
        self._close_source()
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close_source()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class VideoCapture(_Capture):
    """The camera (or the screen, while sharing) feeding every outgoing video track.

    Frames flow only while video is enabled (not audio-only), not paused, and someone subscribes.
    A camera that fails is reported once and reopened every second; the call carries on without
    video meanwhile.
    """

    kind = "video"
    what = "camera"
    depth = 1

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        super().__init__(devices, device_id, on_error)
        self.enabled = False
        self.paused = False
        self.sharing_screen = False

    @property
    def flowing(self) -> bool:
        return self.enabled and not self.paused and bool(self._subscribers) and not self._closed

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self._wake.set()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._wake.set()

    def _open(self, device_id: str) -> CameraSource:
        camera = self.devices.open_camera(device_id)
        follow = getattr(camera, "set_bitrate_estimate", None)
        if follow is not None:  # the peers' latest estimates, for a camera that encodes by itself
            for track, bitrate in self._estimates.items():
                follow(track, bitrate)
        return camera

    def _new_encoder(self, mime: str) -> Encoder:
        return SharedVideoEncoder(mime, asyncio.get_running_loop())

    def select(self, device_id: str) -> None:
        if self.sharing_screen:
            # Sharing goes on; the chosen camera takes over when it stops.
            self.devices.find(device_id, "videoinput")
            self.device_id = device_id
            return
        super().select(device_id)

    def share_screen(self, sharing: bool) -> None:
        if sharing:
            screen = self.devices.open_screen()  # raises DeviceError when the device has none
            self._close_source()
            self._source = screen
        else:
            self._close_source()
        self.sharing_screen = sharing
        self._wake.set()

    async def _pump(self) -> None:
        while not self._closed:
            if not self.flowing:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not await self._ensure_source():
                await self._sleep_or_wake(max(0.0, self._retry_at - time.monotonic()))
                continue
            frame = await self._read()
            if frame is not None and self.flowing:
                frame.pts = int(time.monotonic() * 90000)
                frame.time_base = VIDEO_TIME_BASE
                self._publish(frame)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


class AudioCapture(_Capture):
    """The microphone feeding every outgoing audio track. Muted, or with no microphone, it sends
    digital silence, paced by the clock, so the stream never stalls."""

    kind = "audio"
    what = "microphone"
    depth = 2
    off_loop = True

    def __init__(self, devices: MediaDevices, device_id: str | None, on_error: ErrorCallback) -> None:
        super().__init__(devices, device_id, on_error)
        self.muted = False
        self._samples = 0
        self._silence = np.zeros((1, AUDIO_FRAME_SAMPLES), dtype=np.int16)

    def set_muted(self, muted: bool) -> None:
        self.muted = muted

    def _open(self, device_id: str) -> MicrophoneSource:
        return self.devices.open_microphone(device_id)

    def _new_encoder(self, mime: str) -> Encoder:
        return SharedAudioEncoder()

    def _silent_frame(self) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(self._silence, format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        return frame

    async def _pump(self) -> None:
        started = time.monotonic()
        while not self._closed:
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = await self._read() if await self._ensure_source() else None
            if frame is None:
                due = started + (self._samples + AUDIO_FRAME_SAMPLES) / AUDIO_SAMPLE_RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not isinstance(frame, av.AudioFrame) or self.muted:  # a microphone gives audio frames
                frame = self._silent_frame()
            frame.pts = self._samples
            frame.time_base = AUDIO_TIME_BASE
            self._samples += frame.samples
            self._publish(frame)


def _close_quietly(source: CameraSource | MicrophoneSource) -> None:
    try:
        source.close()
    except Exception:
        log.exception("closing %s failed", source.device.device_id)
