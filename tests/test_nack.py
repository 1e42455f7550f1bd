"""Asking again for a lost video packet (kiosk.calls.nack), on a fake clock, as aiortc's receiver
drives its NACK generator: `add(packet)` for every packet in, a NACK listing `missing` when it says so.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from kiosk.calls.jitter import GIVE_UP_SECONDS
from kiosk.calls.nack import (
    FIRST_REPEAT_SECONDS,
    LEAST_REPEAT_SECONDS,
    MAX_REQUESTS,
    RepeatingNackGenerator,
    repeat_nacks,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _packet(seq: int) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=seq * 3000)


def test_a_retransmission_that_does_not_come_is_asked_for_again() -> None:
    clock = Clock()
    nacks = RepeatingNackGenerator(clock)
    assert not nacks.add(_packet(1)) and not nacks.add(_packet(2))
    assert nacks.add(_packet(4))  # 3 is missing: the first NACK
    assert nacks.missing == {3}
    clock.now += FIRST_REPEAT_SECONDS / 2
    assert not nacks.add(_packet(5))  # not overdue yet: aiortc alone would never ask again
    clock.now += FIRST_REPEAT_SECONDS / 2 + 0.001
    assert nacks.add(_packet(6))  # overdue: asked again
    assert nacks.missing == {3} and nacks.repeats == 1
    clock.now += 0.01
    assert not nacks.add(_packet(7))  # just asked: not again at once
    assert not nacks.add(_packet(3))  # the retransmission: repaired
    assert nacks.missing == set()
    clock.now += 1.0
    assert not nacks.add(_packet(8))  # nothing missing: nothing to ask


def test_the_wait_follows_the_measured_repair_time() -> None:
    clock = Clock()
    nacks = RepeatingNackGenerator(clock)
    nacks.add(_packet(0))
    seq = 1
    for _ in range(9):  # repairs that take 100 ms each
        nacks.add(_packet(seq + 1))  # seq lost
        clock.now += 0.1
        nacks.add(_packet(seq))
        seq += 2
    assert abs(nacks.repeat_after - 0.15) < 1e-9  # 1.5 x the median repair
    # Packets that were only reordered (back within a few ms) cannot pull it under the least.
    for _ in range(30):
        nacks.add(_packet(seq + 1))
        clock.now += 0.002
        nacks.add(_packet(seq))
        seq += 2
    assert nacks.repeat_after == LEAST_REPEAT_SECONDS


def test_a_packet_is_asked_for_a_few_times_then_forgotten() -> None:
    clock = Clock()
    nacks = RepeatingNackGenerator(clock)
    nacks.add(_packet(10))
    assert nacks.add(_packet(12))  # 11 lost for good
    seq, requests = 13, 1
    while 11 in nacks.missing:
        clock.now += FIRST_REPEAT_SECONDS + 0.001
        if nacks.add(_packet(seq)) and 11 in nacks.missing:
            requests += 1
        seq += 1
        assert clock.now < 100.0 + GIVE_UP_SECONDS + 1
    assert requests == MAX_REQUESTS and nacks.abandoned == 1
    # Forgotten: later NACKs (for a new loss) do not list it.
    assert nacks.add(_packet(seq + 1))
    assert nacks.missing == {seq}


def test_a_packet_older_than_the_video_buffer_s_give_up_is_not_asked_for() -> None:
    clock = Clock()
    nacks = RepeatingNackGenerator(clock)
    nacks.add(_packet(1))
    nacks.add(_packet(3))
    clock.now += GIVE_UP_SECONDS  # no packets for a second (a blackout)
    assert not nacks.add(_packet(4))  # 2 is dropped, not asked for
    assert nacks.missing == set() and nacks.abandoned == 1


def test_a_video_receiver_gets_it_an_audio_one_does_not() -> None:
    class Transport:
        state = "new"
        transport = None

    video = RTCRtpReceiver("video", Transport())  # type: ignore[arg-type]
    audio = RTCRtpReceiver("audio", Transport())  # type: ignore[arg-type]
    assert isinstance(repeat_nacks(video), RepeatingNackGenerator)
    assert repeat_nacks(audio) is None


def test_what_was_sent_during_a_blackout_is_not_asked_for() -> None:
    clock = Clock()
    nacks = RepeatingNackGenerator(clock)
    assert not nacks.add(_packet(1))
    clock.now += 2.0
    # 60 packets (2 s of media at 30 frames a second) lost to a blackout: stale, not asked for.
    assert not nacks.add(_packet(62))
    assert nacks.missing == set() and nacks.blackouts == 1
    # An ordinary loss after it is.
    assert nacks.add(_packet(64))
    assert nacks.missing == {63}
