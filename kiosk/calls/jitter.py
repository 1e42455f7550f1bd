"""Video frames leave the jitter buffer as soon as they are complete.

aiortc's JitterBuffer hands a video frame to the decoder only when the first packet of the *next*
frame arrives (that is how it knows the frame has ended), so every frame waits one frame interval
(33 ms at 30 fps) before it is decoded. RTP already says where a video frame ends: the marker bit is
set on its last packet (RFC 3550; the VP8 and H.264 payload formats use it so). This buffer releases
a frame as soon as its packets are in, from the first to the one carrying the marker, with none
missing; otherwise it behaves exactly as aiortc's (the next frame's start still completes it).
"""

from __future__ import annotations

import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

# aiortc 1.16's video buffer size (RTCRtpReceiver.__init__).
VIDEO_CAPACITY = 512


class MarkerJitterBuffer(JitterBuffer):
    def __init__(self, capacity: int = VIDEO_CAPACITY) -> None:
        super().__init__(capacity=capacity, is_video=True)

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
