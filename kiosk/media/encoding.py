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
import logging
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import av
from aiortc.codecs import h264, vpx

from kiosk.media.devices import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE
from kiosk.media.opus import OpusEncoder, has_fec

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)
OPUS_BITRATE = 48000  # mono voice; aiortc sends 96 kbps stereo for the same microphone
# Restarting the encoder is the only way to change its bitrate (PyAV's libvpx and libx264 wrappers
# ignore a new bit_rate once open) and each restart costs a keyframe, so small or frequent changes of
# the estimate are not followed. Falls are followed at once: they mean congestion.
BITRATE_STEP = 0.2
BITRATE_RAISE_INTERVAL = 2.0
# Below what a picture size can carry, fewer pixels, then fewer frames: (the least bitrate for the
# step, the scale of each side, 1 frame in how many). A 640x480 VP8 picture at 30 fps wants about
# 450 kbit/s; a quarter of the pixels about a third of that; then half the frames.
PICTURE_LADDER: tuple[tuple[int, float, int], ...] = (
    (450_000, 1.0, 1),
    (250_000, 0.75, 1),
    (140_000, 0.5, 1),
    (0, 0.5, 2),
)
# Up a step once the bitrate has reached the better step's least for this long; down at once when it
# falls 10 % under the current step's least (the margin keeps an estimate that wavers around a step
# from switching the picture every second). The way up cannot ask for more than the least: the
# receiver's estimate (REMB) never exceeds 1.5x what it receives, and a smaller picture sends less
# than its target, so a higher bar could never be met.
LADDER_UP_HOLD = 3.0
LADDER_REFERENCE = 640 * 480 * 30  # the pixels a second the ladder's bitrates are for
LADDER_DOWN_MARGIN = 0.9
# Sustained loss (the receivers' reports of the share of the video packets they missed, about one a
# second, averaged over LOSS_SMOOTHING_SECONDS): a lost packet is repaired by a retransmission a round
# trip later, and a frame waiting for one is a stall the viewer sees when frames come every 33 ms.
# Smaller frames are hit less often (one or two packets each instead of four or five), so from
# LOSS_LADDER_FROM the picture goes at least down to LOSS_LADDER_STEP, at the bitrate that step is for,
# whatever the bandwidth estimate says; under LOSS_LADDER_UNTIL it climbs back a step at a time. (An
# average, not Opus FEC's held maximum: the picture is costly to change, and 1 % random loss, which
# NACK repairs in time, now and then reports 3 % for a second.)
LOSS_LADDER_FROM = 0.03
LOSS_LADDER_UNTIL = 0.015
LOSS_LADDER_STEP = 3
LOSS_SMOOTHING_SECONDS = 4.0
# A blackout is not loss that smaller frames would help with: the first report to arrive after a gap
# in the reports covers it (it is not counted), and one second of a higher loss than this counts as
# this much (a blackout shorter than a report's interval).
LOSS_REPORT_GAP_SECONDS = 2.0
LOSS_REPORT_MOST = 0.10
LOSS_MEMORY_SECONDS = 10.0  # Opus FEC: a reported loss fades with this time constant
# The estimate alone cannot say a picture is too big for it: a receiver's estimate never exceeds 1.5x
# what it receives, and a still scene (a door camera's empty corridor) sends little, so the estimate
# sinks below the ladder's bitrates on a link with room to spare, and the visitor who walks up would
# be sent at 320x240. What says the encoder is starved is its quantizer: the picture goes down only
# while the mean quantizer of its recent frames is over the codec's high mark, and also comes up when
# it is under the low mark (the picture fits its bitrate with room to spare), as WebRTC's quality
# scaler does. A step found starved is not tried again on the quantizer alone, until the bitrate has
# grown by CEILING_MARGIN or CEILING_SECONDS have passed (the scene may have changed).
QUANTIZER_WINDOW = 10  # delta frames (keyframes are coded coarser)
# A restarted encoder's rate control starts from its coarsest quantizer and comes down about one step
# a frame (libvpx: 56 to 39 over 40 frames at 180 kbit/s): those frames say nothing of the picture.
QUANTIZER_SETTLE_FRAMES = 45
CEILING_MARGIN = 1.25
CEILING_SECONDS = 20.0
FF_QP2LAMBDA = 118  # FFmpeg reports the quantizer in lambda units


def loss_bitrate(load: float) -> int:
    """The most a video stream gets while its loss is sustained: a little under the least of the
    ladder's step above LOSS_LADDER_STEP, so that the ladder stays on that step. `load`: the source's
    pixels a second over 640x480 at 30."""
    return int(PICTURE_LADDER[LOSS_LADDER_STEP - 1][0] * load * LADDER_DOWN_MARGIN) - 1


class VideoLoss:
    """The video loss each receiver reports (RTCP receiver reports, about one a second), averaged
    over LOSS_SMOOTHING_SECONDS, and whether the worst of them is sustained: from LOSS_LADDER_FROM
    until it falls under LOSS_LADDER_UNTIL. Not thread-safe: one thread reports and reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reports: dict[object, tuple[float, float]] = {}  # key -> (average, last report)
        self.sustained = False

    def report(self, key: object, fraction: float) -> bool:
        """A receiver's report of the share of the video it lost since its last report (before any
        retransmission). True if that changed `sustained`."""
        now = self._clock()
        fraction = min(fraction, LOSS_REPORT_MOST)
        if key in self._reports:
            average, at = self._reports[key]
            if now - at > LOSS_REPORT_GAP_SECONDS:
                self._reports[key] = (average, now)  # it covers a blackout: not counted
            else:
                weight = 1.0 - math.exp(-max(0.0, now - at) / LOSS_SMOOTHING_SECONDS)
                self._reports[key] = (average + (fraction - average) * weight, now)
        else:  # the first: averaged with none before it (a call's first report can be odd)
            self._reports[key] = (fraction * (1.0 - math.exp(-1.0 / LOSS_SMOOTHING_SECONDS)), now)
        return self._decide()

    def remove(self, key: object) -> bool:
        self._reports.pop(key, None)
        return self._decide()

    @property
    def loss(self) -> float:
        """The worst receiver's loss, averaged over its recent reports."""
        return max((average for average, _ in self._reports.values()), default=0.0)

    def _decide(self) -> bool:
        loss = self.loss
        sustained = loss >= LOSS_LADDER_FROM or (self.sustained and loss >= LOSS_LADDER_UNTIL)
        changed, self.sustained = sustained != self.sustained, sustained
        return changed


# The least bitrate the shared encoders run at. aiortc's own encoders stop at 250 kbit/s (VP8) and
# 500 kbit/s (H.264), more than a thin uplink carries: sent anyway, it fills the bottleneck's queue
# and every packet behind it, audio too, waits. Below the ladder's last step a small picture at half
# the frame rate still looks like video at this rate.
VIDEO_FLOOR_BITRATE = 60_000

# mime type -> (bitrate range and default of the shared encoder for it); the ceiling and the start
# are aiortc's
_VIDEO_CODECS = {
    "video/vp8": (VIDEO_FLOOR_BITRATE, vpx.MAX_BITRATE, vpx.DEFAULT_BITRATE),
    "video/h264": (VIDEO_FLOOR_BITRATE, h264.MAX_BITRATE, h264.DEFAULT_BITRATE),
}
# mime type -> (low, high) marks of the mean quantizer, on the scale FFmpeg reports (libvpx's 0-63,
# x264's 0-51): WebRTC's quality scaler's marks for these codecs (VP8's 29 and 95 are on libvpx's
# internal 0-127 scale)
QUANTIZER_MARKS = {
    "video/vp8": (15.0, 47.0),
    "video/h264": (24.0, 37.0),
}


def packet_quantizer(packet: av.Packet) -> float | None:
    """The quantizer the encoder used for this packet's frame, if it says."""
    if not packet.has_sidedata("quality_stats"):
        return None
    return int.from_bytes(bytes(packet.get_sidedata("quality_stats"))[:4], "little") / FF_QP2LAMBDA


class PictureQuality:
    """The mean quantizer of an encoder's last QUANTIZER_WINDOW delta frames: whether the picture is
    starved at its bitrate (over the high mark) or has room (under the low mark). Started again
    whenever the encoder or the picture changes."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self._recent: list[float] = []
        self._settling = 0  # frames still to pass over

    def add(self, quantizer: float) -> None:
        if self._settling > 0:
            self._settling -= 1
            return
        self._recent.append(quantizer)
        del self._recent[:-QUANTIZER_WINDOW]

    def clear(self, settle: int = 0) -> None:
        """Forget the frames so far, and pass over the next `settle` ones."""
        self._recent.clear()
        self._settling = settle

    @property
    def mean(self) -> float | None:
        """None until a full window of frames has been coded."""
        recent = list(self._recent)  # one copy: the loop reads while the encoder thread adds
        if len(recent) < QUANTIZER_WINDOW:
            return None
        return sum(recent) / len(recent)

    @property
    def starved(self) -> bool:
        mean = self.mean
        return mean is not None and mean >= self.high

    @property
    def roomy(self) -> bool:
        mean = self.mean
        return mean is not None and mean <= self.low


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

    def __init__(
        self,
        mime_type: str,
        loop: asyncio.AbstractEventLoop,
        fps: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mime = mime_type.lower()
        self.low, self.high, default = _VIDEO_CODECS[self.mime]
        self._loop = loop
        self._fps = fps
        self._sinks: dict[PacketSink, int] = {}  # sink -> its peer's bitrate estimate
        self._losses = VideoLoss(clock)
        self._clock = clock
        self._lossy = False  # whether the picture is held down for loss (read by the encoder thread)
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
        self.frames_skipped = 0  # left out on purpose: the ladder's lower frame rate
        self.restarts = 0
        self.step = 0  # where on PICTURE_LADDER the picture is now
        self.step_changes = 0
        self.sent_size: tuple[int, int] | None = None  # the picture size sent now
        self._better_since: float | None = None  # when the bitrate first allowed a better step
        self._quality = PictureQuality(*QUANTIZER_MARKS.get(self.mime, (0.0, math.inf)))
        # FFmpeg's libvpx and libx264 report their quantizer; a build whose packets do not is found out
        # at its first packet, and then the estimate alone decides.
        self._quantizer_known = self.mime in QUANTIZER_MARKS
        self._ceiling: tuple[int, int, float] | None = None  # (step, bitrate, when) last found starved
        self._frame_count = 0
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
        self._losses.remove(sink)
        self._update_bitrate()

    def set_estimate(self, sink: PacketSink, bitrate: int) -> None:
        """A peer's receiver estimate (REMB), in bits per second."""
        if sink in self._sinks:
            self._sinks[sink] = bitrate
            self._update_bitrate()

    def set_loss(self, sink: PacketSink, fraction: float) -> None:
        """A receiver's report of the share of our video packets it lost since its last report (before
        any retransmission: aiortc and browsers count retransmissions on their own stream)."""
        if sink in self._sinks:
            if self._losses.report(sink, fraction):
                log.info(
                    "%s: %.1f %% of the video lost: %s",
                    self.mime,
                    self.loss * 100,
                    "smaller" if self._losses.sustained else "back up",
                )
            self._update_bitrate()

    @property
    def loss(self) -> float:
        """The worst receiver's loss, averaged over its recent reports."""
        return self._losses.loss

    @property
    def quantizer(self) -> float | None:
        """The mean quantizer of the last frames, once a window of them has been coded since the
        encoder or the picture last changed (read from the loop: a snapshot, not a lock)."""
        return self._quality.mean

    @property
    def lossy(self) -> bool:
        """Whether the picture is held down the ladder for loss."""
        return self._losses.sustained

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
            self._lossy = self._losses.sustained  # the encoder thread's copy

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
                wanted, lossy = self._wanted, self._lossy
            try:
                packets = self._encode(frame, keyframe, wanted, lossy)
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

    def _choose_step(
        self,
        wanted: int,
        now: float,
        load: float = 1.0,
        quality: PictureQuality | None = None,
        floor: int = 0,
    ) -> int:
        """The ladder's step for `wanted`: down at once, up only once it has lasted. `load`: the
        source's pixels a second over 640x480 at 30 (a smaller picture needs less at every step).
        `quality`: the encoder's quantizer, where it reports one; then the picture goes down only when
        it is starved, and also comes up when it has room. `floor`: the least step allowed (loss)."""
        least = [bitrate * load for bitrate, _, _ in PICTURE_LADDER]
        if self.step < floor:
            self._better_since = None
            return floor
        if wanted < least[self.step] * LADDER_DOWN_MARGIN and (quality is None or quality.starved):
            self._better_since = None
            if quality is not None:
                self._ceiling = (self.step, wanted, now)
            return next(i for i, bitrate in enumerate(least) if wanted >= bitrate)
        if self.step <= floor:
            self._better_since = None
            return self.step
        better = self.step - 1
        if wanted < least[better]:
            if quality is not None and quality.mean is None:
                return self.step  # a restarted encoder settling: neither room nor none
            if quality is None or not quality.roomy or self._below_ceiling(better, wanted, now):
                self._better_since = None
                return self.step
        if self._better_since is None:
            self._better_since = now
        return better if now - self._better_since >= LADDER_UP_HOLD else self.step

    def _below_ceiling(self, step: int, wanted: int, now: float) -> bool:
        """Whether `step` was found starved lately at about this bitrate (not to be tried again)."""
        if self._ceiling is None:
            return False
        starved_step, bitrate, at = self._ceiling
        return step <= starved_step and wanted < bitrate * CEILING_MARGIN and now - at < CEILING_SECONDS

    def _encode(
        self, frame: av.VideoFrame, keyframe: bool, wanted: int, lossy: bool = False
    ) -> list[av.Packet]:
        now = self._clock()
        load = frame.width * frame.height * self._fps / LADDER_REFERENCE
        if lossy:
            wanted = max(self.low, min(wanted, loss_bitrate(load)))
        quality = self._quality if self._quantizer_known else None
        step = self._choose_step(wanted, now, load, quality, LOSS_LADDER_STEP if lossy else 0)
        if step != self.step:
            log.info(
                "%s: %d bit/s, quantizer %s: picture step %d %s",
                self.mime,
                wanted,
                "unknown" if quality is None or quality.mean is None else f"{quality.mean:.0f}",
                step,
                PICTURE_LADDER[step][1:],
            )
            # Every step changes the size or the frame rate, so the encoder restarts below, and the
            # quantizer window starts again there.
            self.step, self.step_changes, self._better_since = step, self.step_changes + 1, None
        _, scale, divisor = PICTURE_LADDER[self.step]
        self._frame_count += 1
        if divisor > 1 and self._frame_count % divisor:
            self.frames_skipped += 1
            return []  # fewer frames: this one is not sent
        width, height = frame.width, frame.height
        if scale < 1.0:
            width, height = max(16, round(width * scale / 2) * 2), max(16, round(height * scale / 2) * 2)
        if frame.format.name != "yuv420p" or (width, height) != (frame.width, frame.height):
            pts, time_base = frame.pts, frame.time_base
            frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts = pts
            if time_base is not None:
                frame.time_base = time_base
        self.sent_size = (width, height)
        ctx = self._ctx
        fps = max(1, self._fps // divisor)
        if ctx is not None and (
            (frame.width, frame.height) != (ctx.width, ctx.height) or ctx.framerate != fps
        ):
            ctx = None
        elif ctx is not None and abs(wanted - self._bitrate) > self._bitrate * BITRATE_STEP:
            if wanted < self._bitrate or now - self._changed_at >= BITRATE_RAISE_INTERVAL:
                ctx = None
        if ctx is None:
            if self._ctx is not None:
                self.restarts += 1
            self._bitrate, self._changed_at = wanted, now
            ctx = self._ctx = _video_context(self.mime, frame.width, frame.height, wanted, fps)
            keyframe = True
            self._quality.clear(QUANTIZER_SETTLE_FRAMES)  # a new rate control finds its own quantizer
        pts, time_base = frame.pts, frame.time_base
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        packets = ctx.encode(frame)
        self.frames_encoded += 1
        for packet in packets:
            quantizer = packet_quantizer(packet)
            if quantizer is None:
                self._quantizer_known = False
            elif not packet.is_keyframe:
                self._quality.add(quantizer)
            # aiortc's pack() turns pts into the RTP timestamp: keep the capture's clock.
            packet.pts = pts
            if time_base is not None:  # the capture gives every frame its clock
                packet.time_base = time_base
        return packets


FEC_FROM_LOSS = 0.005  # Opus in-band FEC on while the held loss is at least this


class SharedAudioEncoder:
    """Opus for every track that sends it, encoded on the loop as each microphone frame arrives.

    libopus directly (kiosk.media.opus), so that in-band FEC follows the loss the receivers report:
    the worst of their reports (RTCP receiver reports' fraction lost) sets how much loss the encoder
    protects against, and none turns FEC off again. A lost packet can then be rebuilt from the next
    one at the receiver (kiosk.calls.playout, or any WebRTC endpoint)."""

    mime = "audio/opus"

    def __init__(self, bitrate: int = OPUS_BITRATE, clock: Callable[[], float] = time.monotonic) -> None:
        # sink -> (the loss its receiver reported, held and decaying; when it was last updated)
        self._sinks: dict[PacketSink, tuple[float, float]] = {}
        self._clock = clock
        self._bitrate = bitrate
        self._encoder: OpusEncoder | None = None
        self.frames_encoded = 0
        self.fec_packets = 0  # packets that carried FEC for the one before

    @property
    def sinks(self) -> int:
        return len(self._sinks)

    @property
    def bitrate(self) -> int:
        """What the encoder runs at now, bits per second."""
        return self._bitrate

    @property
    def packet_loss(self) -> int:
        """The loss, in percent, the encoder protects against now (0: no FEC)."""
        return self._encoder.packet_loss if self._encoder is not None else 0

    def add(self, sink: PacketSink) -> None:
        self._sinks[sink] = (0.0, self._clock())

    def remove(self, sink: PacketSink) -> None:
        self._sinks.pop(sink, None)
        self._apply_loss()

    def set_estimate(self, sink: PacketSink, bitrate: int) -> None:
        pass  # voice at a fixed bitrate

    def set_loss(self, sink: PacketSink, fraction: float) -> None:
        """A receiver's report of the share of our packets it lost since its last report.

        A report covers about a second, 50 packets: at 1 % loss most say 0 and some 2 %. Followed
        as they come, FEC would be off most of the time and rarely on when the next loss comes. So
        a report's loss is held and decays (LOSS_MEMORY_SECONDS), and a higher report replaces it."""
        if sink in self._sinks:
            held, at = self._sinks[sink]
            now = self._clock()
            decayed = held * math.exp(-max(0.0, now - at) / LOSS_MEMORY_SECONDS)
            self._sinks[sink] = (max(fraction, decayed), now)
            self._apply_loss()

    def _apply_loss(self) -> None:
        worst = max((held for held, _ in self._sinks.values()), default=0.0)
        # Protect against a little more than is lost (the loss comes in bursts); below 0.5 %, none.
        wanted = 0 if worst < FEC_FROM_LOSS else min(30, round(worst * 100) + 5)
        if (
            self._encoder is not None
            and abs(wanted - self._encoder.packet_loss) >= 3
            or (self._encoder is not None and (wanted == 0) != (self._encoder.packet_loss == 0))
        ):
            self._encoder.set_packet_loss(wanted)

    def request_keyframe(self) -> None:
        pass

    def close(self) -> None:
        self._sinks.clear()
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None

    def submit(self, frame: av.AudioFrame) -> None:
        if not self._sinks:
            return
        if frame.samples != AUDIO_FRAME_SAMPLES or frame.format.name != "s16" or frame.layout.name != "mono":
            # The capture always publishes 20 ms of mono s16; anything else is a bug upstream.
            log.warning("dropping a %d-sample %s frame for Opus", frame.samples, frame.layout.name)
            return
        if self._encoder is None:
            self._encoder = OpusEncoder(channels=1, bitrate=self._bitrate)
            self._apply_loss()
        data = self._encoder.encode(frame.to_ndarray().reshape(-1))
        self.frames_encoded += 1
        if self._encoder.packet_loss and has_fec(data):
            self.fec_packets += 1
        packet = av.Packet(data)
        packet.pts = frame.pts if frame.pts is not None else self.frames_encoded * AUDIO_FRAME_SAMPLES
        packet.time_base = AUDIO_TIME_BASE
        for sink in list(self._sinks):
            sink._offer_packet(packet)


Encoder = SharedVideoEncoder | SharedAudioEncoder
EncoderFactory = Callable[[str], Encoder]
