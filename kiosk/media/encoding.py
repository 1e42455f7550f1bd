"""Encode once, send to every peer: the shared video and audio encoders of a capture.

aiortc encodes separately for each peer connection (one encoder per RTCRtpSender), so a kiosk in a
call with three people would encode its camera three times. Here one encoder per codec serves every
outgoing track that sends that codec; the tracks hand aiortc ready `av.Packet`s, which it only
packetizes (its `pack()` path). What each peer asks of the encoder is merged:

- picture loss (PLI/FIR) from any peer, or a new peer, forces the next frame to be a keyframe;
- the bitrate is the lowest of the peers' estimates (REMB), so the slowest link is not flooded.

Video is encoded on a thread of its own with at most one frame waiting: a slow encoder drops frames
instead of building latency. Opus is cheap (about 0.1 ms a frame) and is encoded on the loop, which
also saves aiortc's per-frame executor hop and its pure-Python audio-level loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import av
from aiortc.codecs import h264, vpx

from kiosk.media.devices import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)
OPUS_BITRATE = 48000  # mono voice; aiortc sends 96 kbps stereo for the same microphone
# Restarting the encoder is the only way to change its bitrate (PyAV's libvpx and libx264 wrappers
# ignore a new bit_rate once open) and each restart costs a keyframe, so small or frequent changes of
# the estimate are not followed. Falls are followed at once: they mean congestion.
BITRATE_STEP = 0.2
BITRATE_RAISE_INTERVAL = 2.0

# mime type -> (bitrate range and default of aiortc's encoder for it)
_VIDEO_CODECS = {
    "video/vp8": (vpx.MIN_BITRATE, vpx.MAX_BITRATE, vpx.DEFAULT_BITRATE),
    "video/h264": (h264.MIN_BITRATE, h264.MAX_BITRATE, h264.DEFAULT_BITRATE),
}


class PacketSink(Protocol):
    """What an encoder feeds: an outgoing track."""

    def _offer_packet(self, packet: av.Packet) -> None: ...


def shareable(mime_type: str) -> bool:
    """Whether a negotiated codec can be encoded once for all peers here."""
    mime = mime_type.lower()
    return mime in _VIDEO_CODECS or mime == "audio/opus"


def _video_context(mime: str, width: int, height: int, bitrate: int, fps: int) -> av.VideoCodecContext:
    """An encoder set up as aiortc 1.16 sets up its own, so peers see the stream they would anyway."""
    if mime == "video/vp8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),  # minrate = maxrate = bit_rate: constant bitrate
            "maxrate": str(bitrate),
            "noise-sensitivity": "4",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
        ctx.gop_size, ctx.qmin, ctx.qmax = 3000, 2, 56
        ctx.thread_count = vpx.number_of_threads(width * height, multiprocessing.cpu_count())
    else:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.options = {"level": "31", "tune": "zerolatency"}
        ctx.profile = "Baseline"
    assert isinstance(ctx, av.VideoCodecContext)
    # Frames carry the capture clock at 90 kHz; the encoder's rate control reads time from it.
    ctx.framerate, ctx.time_base = Fraction(fps, 1), VIDEO_TIME_BASE
    ctx.width, ctx.height, ctx.pix_fmt, ctx.bit_rate = width, height, "yuv420p", bitrate
    return ctx


def opus_context(bitrate: int = OPUS_BITRATE) -> av.AudioCodecContext:
    """Opus for 20 ms frames of 48 kHz mono speech."""
    ctx = av.CodecContext.create("libopus", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.format, ctx.layout, ctx.sample_rate = "s16", "mono", AUDIO_SAMPLE_RATE
    ctx.bit_rate, ctx.time_base = bitrate, AUDIO_TIME_BASE
    ctx.options = {"application": "voip"}
    return ctx


class SharedVideoEncoder:
    """One codec's encoder for every track that sends it; frames in on the loop, packets out on it."""

    def __init__(self, mime_type: str, loop: asyncio.AbstractEventLoop, fps: int = 30) -> None:
        self.mime = mime_type.lower()
        self.low, self.high, default = _VIDEO_CODECS[self.mime]
        self._loop = loop
        self._fps = fps
        self._sinks: dict[PacketSink, int] = {}  # sink -> its peer's bitrate estimate
        self._lock = threading.Condition()
        self._pending: av.VideoFrame | None = None
        self._keyframe = True
        self._closed = False
        self._ctx: av.VideoCodecContext | None = None
        self._bitrate = default  # what the encoder runs at
        self._wanted = default  # what the peers ask for
        self._changed_at = 0.0
        self.frames_encoded = 0
        self.frames_dropped = 0  # replaced while waiting: the encoder was busy
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name=f"{self.mime}-encoder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ on the loop

    @property
    def sinks(self) -> int:
        return len(self._sinks)

    @property
    def bitrate(self) -> int:
        """What the encoder runs at now, bits per second."""
        return self._bitrate

    def add(self, sink: PacketSink) -> None:
        self._sinks[sink] = self.high
        self._update_bitrate()
        self.request_keyframe()  # the new peer's decoder needs one to start

    def remove(self, sink: PacketSink) -> None:
        self._sinks.pop(sink, None)
        self._update_bitrate()

    def set_estimate(self, sink: PacketSink, bitrate: int) -> None:
        """A peer's receiver estimate (REMB), in bits per second."""
        if sink in self._sinks:
            self._sinks[sink] = bitrate
            self._update_bitrate()

    def request_keyframe(self) -> None:
        with self._lock:
            self._keyframe = True

    def submit(self, frame: av.VideoFrame) -> None:
        """Encode this frame soon; a frame still waiting is dropped (only the newest matters)."""
        if not self._sinks:
            return
        with self._lock:
            if self._pending is not None:
                self.frames_dropped += 1
            self._pending = frame
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending = None
            self._lock.notify()
        self._sinks.clear()

    def _update_bitrate(self) -> None:
        estimates = list(self._sinks.values())
        wanted = max(self.low, min(min(estimates) if estimates else self.high, self.high))
        with self._lock:
            self._wanted = wanted

    def _deliver(self, packets: list[av.Packet]) -> None:
        for sink in list(self._sinks):
            for packet in packets:
                sink._offer_packet(packet)

    # ------------------------------------------------------------------ on the encoder thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._closed or self._pending is None:  # the wait ends on a frame or on close
                    return
                frame, self._pending = self._pending, None
                keyframe, self._keyframe = self._keyframe, False
                wanted = self._wanted
            try:
                packets = self._encode(frame, keyframe, wanted)
            except Exception:  # a broken frame must not end the stream for every peer
                log.exception("%s encoder failed; restarting it", self.mime)
                self._ctx = None
                self.request_keyframe()
                continue
            if packets:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, packets)
                except RuntimeError:  # the loop is closed: the call is over
                    return

    def _encode(self, frame: av.VideoFrame, keyframe: bool, wanted: int) -> list[av.Packet]:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        ctx = self._ctx
        now = time.monotonic()
        if ctx is not None and (frame.width, frame.height) != (ctx.width, ctx.height):
            ctx = None
        elif ctx is not None and abs(wanted - self._bitrate) > self._bitrate * BITRATE_STEP:
            if wanted < self._bitrate or now - self._changed_at >= BITRATE_RAISE_INTERVAL:
                ctx = None
        if ctx is None:
            if self._ctx is not None:
                self.restarts += 1
            self._bitrate, self._changed_at = wanted, now
            ctx = self._ctx = _video_context(self.mime, frame.width, frame.height, wanted, self._fps)
            keyframe = True
        pts, time_base = frame.pts, frame.time_base
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        packets = ctx.encode(frame)
        self.frames_encoded += 1
        for packet in packets:
            # aiortc's pack() turns pts into the RTP timestamp: keep the capture's clock.
            packet.pts = pts
            if time_base is not None:  # the capture gives every frame its clock
                packet.time_base = time_base
        return packets


class SharedAudioEncoder:
    """Opus for every track that sends it, encoded on the loop as each microphone frame arrives."""

    mime = "audio/opus"

    def __init__(self, bitrate: int = OPUS_BITRATE) -> None:
        self._sinks: set[PacketSink] = set()
        self._bitrate = bitrate
        self._ctx: av.AudioCodecContext | None = None
        self._pts: collections.deque[int | None] = collections.deque()
        self.frames_encoded = 0

    @property
    def sinks(self) -> int:
        return len(self._sinks)

    @property
    def bitrate(self) -> int:
        """What the encoder runs at now, bits per second."""
        return self._bitrate

    def add(self, sink: PacketSink) -> None:
        self._sinks.add(sink)

    def remove(self, sink: PacketSink) -> None:
        self._sinks.discard(sink)

    def set_estimate(self, sink: PacketSink, bitrate: int) -> None:
        pass  # voice at a fixed bitrate

    def request_keyframe(self) -> None:
        pass

    def close(self) -> None:
        self._sinks.clear()
        self._ctx = None

    def submit(self, frame: av.AudioFrame) -> None:
        if not self._sinks:
            return
        if frame.samples != AUDIO_FRAME_SAMPLES or frame.format.name != "s16" or frame.layout.name != "mono":
            # The capture always publishes 20 ms of mono s16; anything else is a bug upstream.
            log.warning("dropping a %d-sample %s frame for Opus", frame.samples, frame.layout.name)
            return
        if self._ctx is None:
            self._ctx = opus_context(self._bitrate)
        # One packet comes out per 20 ms frame, after libopus's look-ahead: they are matched in order
        # with the capture's clock (the frame is shared with other readers, so it is not changed).
        self._pts.append(frame.pts)
        packets = self._ctx.encode(frame)
        self.frames_encoded += 1
        for packet in packets:
            packet.pts = self._pts.popleft() if self._pts else 0
            packet.time_base = AUDIO_TIME_BASE
        for sink in list(self._sinks):
            for packet in packets:
                sink._offer_packet(packet)


Encoder = SharedVideoEncoder | SharedAudioEncoder
EncoderFactory = Callable[[str], Encoder]
