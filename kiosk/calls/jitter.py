"""Video frames leave the jitter buffer as soon as they are complete; audio packets go to the SDK's own
adaptive playout (kiosk.calls.playout) instead of aiortc's fixed buffer.

Video:

aiortc's JitterBuffer hands a video frame to the decoder only when the first packet of the *next*
frame arrives (that is how it knows the frame has ended), so every frame waits one frame interval
(33 ms at 30 fps) before it is decoded. RTP already says where a video frame ends: the marker bit is
set on its last packet (RFC 3550; the VP8 and H.264 payload formats use it so). This buffer releases
a frame as soon as its packets are in, from the first to the one carrying the marker, with none
missing; otherwise it behaves as aiortc's (the next frame's start still completes it).

aiortc's buffer also waits, for a packet that never comes, until 512 packets have piled up behind it:
seconds of frozen picture on Wi-Fi (its receiver asks for a lost packet again only when another is
lost, so a lost retransmission is waited for that long). This one waits GIVE_UP_SECONDS for a
retransmission to fill a gap, then drops the frame with the hole, goes on with the frames after it
and asks for a keyframe (PLI), as a browser's does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

log = logging.getLogger(__name__)

# aiortc 1.16's video buffer size (RTCRtpReceiver.__init__).
VIDEO_CAPACITY = 512
# Long enough for a NACK and its retransmission over a slow Wi-Fi round trip, or through an SFU that
# retransmits from its own buffer on a loaded machine; short enough that a lost retransmission is a
# short freeze (aiortc's own wait is 512 packets: seconds).
GIVE_UP_SECONDS = 1.0
# A gap in the sequence numbers across more than this much media time (the RTP timestamps on either
# side of it, at video's 90 kHz) is a blackout, not a loss: the link was down (a Wi-Fi handover) and
# what was sent meanwhile is stale. Nothing is asked for again, the frames behind the gap are not held
# for a repair, and a keyframe is asked for at once, as a browser does when its NACK list overflows.
BLACKOUT_SECONDS = 0.5
VIDEO_CLOCK_RATE = 90_000


def is_blackout(before: int, after: int) -> bool:
    """Whether packets stamped `before` and then `after` (RTP timestamps) had a blackout between them."""
    forward = (after - before) & 0xFFFFFFFF
    return BLACKOUT_SECONDS * VIDEO_CLOCK_RATE < forward < 0x80000000


class MarkerJitterBuffer(JitterBuffer):
    def __init__(self, capacity: int = VIDEO_CAPACITY, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self._clock = clock
        self._highest: int | None = None  # the newest sequence number in
        self._highest_timestamp = 0  # and its RTP timestamp
        self._blocked_since: float | None = None  # since when a hole holds the frames behind it
        self._blackout = False  # the hole is a blackout's: not waited for
        self.frames_given_up = 0
        self.blackouts = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._highest is None or uint16_gt(packet.sequence_number, self._highest):
            if (
                self._highest is not None
                and packet.sequence_number != uint16_add(self._highest, 1)
                and is_blackout(self._highest_timestamp, packet.timestamp)
            ):
                self._blackout = True
                self.blackouts += 1
            self._highest, self._highest_timestamp = packet.sequence_number, packet.timestamp
        pli, frame = super().add(packet)
        if self._origin is not None and self._highest is not None and uint16_gt(self._origin, self._highest):
            self._highest = uint16_add(self._origin, -1)  # aiortc started over (a reset or an overflow)
        if frame is not None:
            self._blocked_since = None
            return pli, frame
        hole = self._first_hole()
        if hole is None:
            self._blocked_since, self._blackout = None, False
            return pli, None
        now = self._clock()
        if not self._blackout:
            if self._blocked_since is None:
                self._blocked_since = now
                return pli, None
            if now - self._blocked_since < GIVE_UP_SECONDS:
                return pli, None
        # The retransmission did not come, or none will (a blackout): drop up to the hole and the
        # rest of its frame, and ask for a keyframe.
        self._blocked_since, self._blackout = None, False
        self.frames_given_up += 1
        self.smart_remove(hole + 1)
        assert self._highest is not None
        return True, self._remove_frame(self._highest)

    def _first_hole(self) -> int | None:
        """How far past the origin the first missing packet is, when packets after it are in."""
        if self._origin is None or self._highest is None:
            return None
        span = uint16_add(self._highest, -self._origin)
        if span >= self.capacity:
            return None
        for count in range(span):
            if self._packets[(self._origin + count) % self._capacity] is None:
                return count
        return None

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        frame = super()._remove_frame(sequence_number)
        if frame is not None or self._origin is None:
            return frame
        # The frame at the origin: complete once a contiguous run of its packets ends on the marker.
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(
                    # `_data`: the depayloaded payload aiortc's receiver sets, undeclared (its own buffer
                    # reads it so too).
                    data=b"".join(p._data for p in packets),  # type: ignore[attr-defined]
                    timestamp=packet.timestamp,
                )
        return None


def release_frames_on_marker(receiver: RTCRtpReceiver) -> bool:
    """Give a video receiver the marker-aware buffer; False (and aiortc's own buffer) if this aiortc
    keeps its buffer elsewhere."""
    attribute = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, attribute, None)
    if not isinstance(current, JitterBuffer):
        log.warning("this aiortc has no jitter buffer where expected: video frames wait for the next one")
        return False
    if not current._is_video:
        return False  # audio: aiortc's buffer, which holds a few frames against network jitter
    setattr(receiver, attribute, MarkerJitterBuffer(current.capacity))
    return True


class AudioDiverter(JitterBuffer):
    """Stands in for an audio receiver's buffer: each RTP packet goes to `on_packet(timestamp,
    payload, arrival)` (the SDK's adaptive playout, kiosk.calls.playout) instead of aiortc's fixed
    buffer and decoder, which never get a frame."""

    def __init__(self, capacity: int, on_packet: Callable[[int, bytes], None]) -> None:
        super().__init__(capacity=capacity, is_video=False)
        self._on_packet = on_packet

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self._on_packet(packet.timestamp, bytes(packet.payload))
        return False, None


def divert_audio(receiver: RTCRtpReceiver, on_packet: Callable[[int, bytes], None]) -> bool:
    """Send an audio receiver's packets to `on_packet` instead of aiortc's buffer; False if this
    aiortc keeps its buffer elsewhere (then aiortc's own audio path is used)."""
    attribute = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, attribute, None)
    if not isinstance(current, JitterBuffer) or current._is_video:
        log.warning("this aiortc has no audio jitter buffer where expected: its own audio path is used")
        return False
    setattr(receiver, attribute, AudioDiverter(current.capacity, on_packet))
    return True
