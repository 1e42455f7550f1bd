"""Ask again for a lost video packet whose retransmission did not come.

aiortc's receiver sends a NACK when it sees a gap, and again for every packet still missing only when
a new gap appears. On a lossy Wi-Fi link the retransmission is itself lost now and then (5 % of the
time on the `bad-wifi` profile, more in a burst); the frame then waits for the video buffer to give up
(kiosk.calls.jitter, a second), is dropped, and the picture stays frozen until a keyframe comes. A
browser asks again once a round trip has passed without the packet, a few times. This generator does
the same: it measures how long repairs take (from the first request to the packet's arrival), asks again
for a packet not back within REPEAT_AFTER_REPAIRS times that, at most MAX_REQUESTS times, and forgets a
packet the video buffer has given up on, so that later NACKs do not keep asking for it.
"""

from __future__ import annotations

import collections
import logging
import statistics
import time
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from kiosk.calls.jitter import GIVE_UP_SECONDS, is_blackout

log = logging.getLogger(__name__)

MAX_REQUESTS = 4  # the first NACK and three more
REPEAT_AFTER_REPAIRS = 1.5  # ask again after this many times the median repair time
FIRST_REPEAT_SECONDS = 0.2  # before any repair was measured
# Bounds of the wait before asking again: under the least, a packet that was only reordered would be
# asked for twice; over the most, the video buffer's give-up comes first.
LEAST_REPEAT_SECONDS = 0.06
MOST_REPEAT_SECONDS = GIVE_UP_SECONDS / 3
REPAIR_SAMPLES = 31


class RepeatingNackGenerator(NackGenerator):
    """aiortc's NackGenerator (its receiver NACKs `missing` whenever `add` returns True) that also
    returns True when a missing packet's last request is overdue."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        # sequence number -> (first requested, last requested, requests so far)
        self._asked: dict[int, tuple[float, float, int]] = {}
        self._repairs: collections.deque[float] = collections.deque(maxlen=REPAIR_SAMPLES)
        # How long a request waits for its packet before it is sent again, seconds: from the median
        # repair, worked out when a repair is measured (not for every packet).
        self.repeat_after = FIRST_REPEAT_SECONDS
        self._highest_timestamp = 0  # the RTP timestamp of the newest packet (max_seq)
        self.repeats = 0  # NACKs sent only to ask again
        self.blackouts = 0  # gaps not asked for: a blackout's (kiosk.calls.jitter.is_blackout)
        self.abandoned = 0  # packets asked for MAX_REQUESTS times, or past the give-up, and forgotten

    def _repaired(self, seconds: float) -> None:
        self._repairs.append(seconds)
        wait = REPEAT_AFTER_REPAIRS * statistics.median(self._repairs)
        self.repeat_after = min(MOST_REPEAT_SECONDS, max(LEAST_REPEAT_SECONDS, wait))

    def add(self, packet: RtpPacket) -> bool:
        now = self._clock()
        asked = self._asked.pop(packet.sequence_number, None)
        if asked is not None and packet.sequence_number in self.missing:
            self._repaired(now - asked[0])
        before, highest_timestamp = self.max_seq, self._highest_timestamp
        missed = super().add(packet)
        if self.max_seq == packet.sequence_number and self.max_seq != before:
            self._highest_timestamp = packet.timestamp
            if missed and before is not None and is_blackout(highest_timestamp, packet.timestamp):
                # What was sent during a blackout is stale: not asked for (the video buffer asks for a
                # keyframe instead).
                gap = {s for s in self.missing if s not in self._asked}
                self.missing -= gap
                self.blackouts += 1
                missed = False
        for seq, (first, _, requests) in list(self._asked.items()):
            if seq not in self.missing:  # aiortc truncated its history
                del self._asked[seq]
            elif requests >= MAX_REQUESTS or now - first >= GIVE_UP_SECONDS:
                del self._asked[seq]
                self.missing.discard(seq)
                self.abandoned += 1
        wait = self.repeat_after
        due = any(now - last >= wait for _, last, _ in self._asked.values())
        if not (missed or due):
            return False
        if due and not missed:
            self.repeats += 1
        # The NACK that follows lists every missing packet.
        for seq in self.missing:
            first, _, requests = self._asked.get(seq, (now, now, 0))
            self._asked[seq] = (first, now, requests + 1)
        return bool(self.missing)


def repeat_nacks(receiver: RTCRtpReceiver) -> RepeatingNackGenerator | None:
    """Give a video receiver the repeating generator; None if this aiortc keeps its NACK generator
    elsewhere (or sends none: audio)."""
    attribute = "_RTCRtpReceiver__nack_generator"
    current = getattr(receiver, attribute, None)
    if type(current) is not NackGenerator:
        if current is not None and not isinstance(current, RepeatingNackGenerator):
            log.warning("this aiortc has no NACK generator where expected: lost packets are asked for once")
        return current if isinstance(current, RepeatingNackGenerator) else None
    generator = RepeatingNackGenerator()
    setattr(receiver, attribute, generator)
    return generator
