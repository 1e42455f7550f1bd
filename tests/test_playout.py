"""The adaptive audio playout buffer (kiosk/calls/playout.py), packet by packet on a clock the test moves,
with real Opus packets (libopus through kiosk/media/opus.py), against aiortc's own audio buffer."""

from __future__ import annotations

import numpy as np
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from kiosk.calls.playout import FRAME_SECONDS, MIN_DELAY, AudioPlayout, FrameKind
from kiosk.media.opus import FRAME_SAMPLES, OpusEncoder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def voice(count: int, fec_loss: int = 0) -> list[bytes]:
    """`count` Opus packets of a speech-like signal (an amplitude-modulated tone)."""
    encoder = OpusEncoder(channels=1)
    if fec_loss:
        encoder.set_packet_loss(fec_loss)
    t = np.arange(count * FRAME_SAMPLES) / 48000
    signal = 9000 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    pcm = signal.astype(np.int16)
    return [encoder.encode(pcm[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES]) for n in range(count)]


def play(
    packets: list[bytes], arrivals: list[float | None], ticks: int, clock: Clock, start: float = 100.0
) -> tuple[AudioPlayout, list[FrameKind]]:
    """Packets n arrive at arrivals[n] (None: lost); the playout ticks every 20 ms from `start`."""
    playout = AudioPlayout(clock)
    order = sorted((a, n) for n, a in enumerate(arrivals) if a is not None)
    kinds: list[FrameKind] = []
    i = 0
    for k in range(ticks):
        clock.now = start + k * FRAME_SECONDS
        while i < len(order) and order[i][0] <= clock.now:
            n = order[i][1]
            playout.push(n * FRAME_SAMPLES, packets[n], order[i][0])
            i += 1
        kinds.append(playout.tick()[1])
    return playout, kinds


def test_a_steady_stream_plays_every_frame_after_one_frame_of_delay() -> None:
    clock = Clock()
    packets = voice(100)
    playout, kinds = play(packets, [100.0 + n * FRAME_SECONDS for n in range(100)], 100, clock)
    assert kinds[0] == FrameKind.SILENT  # the first packet waits its frame
    assert set(kinds[2:99]) == {FrameKind.NORMAL}
    assert playout.stats.target_delay == MIN_DELAY and playout.stats.concealed_share == 0


def test_a_lost_packet_costs_one_concealed_frame_never_a_stall() -> None:
    clock = Clock()
    packets = voice(100)
    arrivals: list[float | None] = [100.0 + n * FRAME_SECONDS for n in range(100)]
    arrivals[40] = None
    playout, kinds = play(packets, arrivals, 100, clock)
    # When the lost packet is due, nothing after it has come yet: it may only be late, so it is
    # waited for one frame (expanded); when the next one comes, the gap is concealed and play goes on.
    assert kinds.count(FrameKind.CONCEALED) == 1 and kinds.count(FrameKind.EXPANDED) <= 1
    lost_at = kinds.index(FrameKind.CONCEALED)
    assert set(kinds[lost_at + 1 : 99]) == {FrameKind.NORMAL}
    assert playout.stats.concealed_share < 0.03


def test_with_in_band_fec_a_lost_packet_is_rebuilt_from_the_next_one() -> None:
    clock = Clock()
    packets = voice(100, fec_loss=10)
    arrivals: list[float | None] = [100.0 + n * FRAME_SECONDS for n in range(100)]
    for lost in (30, 50, 70):
        arrivals[lost] = None
    # Held a frame more than needed, so the next packet is there when the lost one is due.
    playout, kinds = play(packets, arrivals, 100, clock, start=100.0 - FRAME_SECONDS)
    assert kinds.count(FrameKind.RECOVERED) >= 2, kinds
    assert kinds.count(FrameKind.RECOVERED) + kinds.count(FrameKind.CONCEALED) == 3


def test_aiortc_s_own_buffer_stalls_for_a_lost_packet() -> None:
    """The baseline this buffer replaces: one loss, and aiortc gives nothing until 16 packets piled up."""
    buffer = JitterBuffer(capacity=16, prefetch=4)
    out: list[int] = []
    for n in range(60):
        if n == 20:
            continue  # lost
        packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=n * FRAME_SAMPLES)
        packet._data = b"x"  # type: ignore[attr-defined]
        _, frame = buffer.add(packet)
        out.append(1 if frame is not None else 0)
    stall = max(len(run) for run in "".join(map(str, out)).split("1"))
    assert stall >= 12  # about a quarter of a second with nothing to play


def test_late_packets_grow_the_buffer_and_are_played_not_lost() -> None:
    clock = Clock()
    packets = voice(300)
    # Every 10th packet comes 70 ms late (its followers wait behind it: a queue, not a loss).
    arrivals: list[float | None] = []
    for n in range(300):
        base = 100.0 + n * FRAME_SECONDS
        arrivals.append(base + (0.07 if n % 10 == 5 else 0.0))
    playout, kinds = play(packets, arrivals, 300, clock)
    assert playout.stats.target_delay > 0.07
    # Only the first late ones, before the buffer had grown, came after their time.
    assert kinds.count(FrameKind.CONCEALED) <= 2 and playout.stats.late <= 2
    assert kinds[-100:].count(FrameKind.NORMAL) == 100  # then every packet in its turn


def test_the_target_falls_back_slowly_when_the_jitter_is_gone() -> None:
    clock = Clock()
    packets = voice(500)
    arrivals: list[float | None] = []
    for n in range(500):
        base = 100.0 + n * FRAME_SECONDS
        arrivals.append(base + (0.1 if n < 100 and n % 10 == 5 else 0.0))
    playout, _ = play(packets, arrivals, 500, clock)
    assert playout.stats.max_target_delay > 0.1
    assert playout.stats.target_delay < playout.stats.max_target_delay  # it came down...
    assert playout.stats.accelerated > 0  # ... and the buffer shrank with it


def test_after_a_blackout_playout_starts_over_from_the_newest() -> None:
    clock = Clock()
    packets = voice(400)
    # Packets 100-199 never come (2 s blackout); then the stream goes on.
    arrivals: list[float | None] = [None if 100 <= n < 200 else 100.0 + n * FRAME_SECONDS for n in range(400)]
    playout, kinds = play(packets, arrivals, 400, clock)
    assert playout.stats.resets == 1
    assert kinds.count(FrameKind.EXPANDED) >= 90  # the blackout is concealment, then fades
    assert kinds[-100:].count(FrameKind.NORMAL) >= 98  # back to normal, no backlog


def test_duplicates_and_packets_past_their_time_are_dropped() -> None:
    clock = Clock()
    packets = voice(10)
    playout = AudioPlayout(clock)
    playout.push(0, packets[0], 100.0)
    playout.push(0, packets[0], 100.0)
    clock.now = 100.05
    playout.tick()
    playout.tick()
    playout.push(0, packets[0], 100.06)
    assert playout.stats.duplicates == 1 and playout.stats.late == 1


def test_a_closed_decoder_refuses_instead_of_crashing_the_process() -> None:
    import pytest

    from kiosk.media.opus import OpusDecoder, OpusError

    decoder = OpusDecoder(1)
    decoder.close()
    with pytest.raises(OpusError):
        decoder.conceal()


async def test_a_packet_after_the_track_ended_starts_no_clock() -> None:
    from kiosk.calls.playout import ParticipantAudio

    played: list[str] = []
    audio = ParticipantAudio("door", lambda uid, frame: played.append(uid))
    audio.close()
    audio.push(0, voice(1)[0])
    assert audio._task is None


def test_a_rebuilt_connection_s_new_timestamps_are_played_whichever_way_they_jump() -> None:
    """A connection rebuilt after a network loss starts its RTP timestamps from a new random base,
    behind or ahead of the old one; the participant's playout is the same across connections."""
    for jump in (-5_000_000, +5_000_000):
        clock = Clock()
        packets = voice(300)
        playout = AudioPlayout(clock)
        kinds: list[FrameKind] = []
        for k in range(300):
            clock.now = 100.0 + k * FRAME_SECONDS
            base = 0 if k < 100 else (1_000_000 + jump) % (1 << 32)  # the new connection from frame 100
            playout.push((base + k * FRAME_SAMPLES) % (1 << 32), packets[k], clock.now)
            kinds.append(playout.tick()[1])
        assert kinds[-150:].count(FrameKind.NORMAL) >= 145, (jump, kinds[100:140])
        assert playout.stats.target_delay < 0.1, (jump, playout.stats.target_delay)


def test_a_stretched_frame_keeps_the_pitch_and_has_no_click() -> None:
    from kiosk.calls.playout import stretch

    for hz in (110.0, 180.0, 330.0):  # low and high voices' pitches
        t = np.arange(FRAME_SAMPLES) / 48000
        tone = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
        stereo = np.repeat(tone, 2)
        long = stretch(stereo, 2).reshape(-1, 2)[:, 0].astype(np.float64)
        assert long.size == 2 * FRAME_SAMPLES
        step = np.abs(np.diff(tone.astype(np.float64))).max()
        assert np.abs(np.diff(long)).max() <= 2 * step, hz  # no jump (a click) where periods join
        crossings = np.count_nonzero(np.diff(np.signbit(long)))
        assert abs(crossings - 2 * hz * 0.040) <= 3, (hz, crossings)  # the same pitch, twice as long


def test_under_jitter_the_buffer_grows_by_stretching_received_audio_not_by_concealing() -> None:
    clock = Clock()
    packets = voice(500)
    rng = np.random.default_rng(5)
    delay, arrivals, last = 0.0, [], 0.0
    for n in range(500):
        delay = 0.9 * delay + 0.1 * rng.normal(0.0, 0.08)  # a slowly wandering queueing delay
        last = max(last, 100.0 + n * FRAME_SECONDS + abs(delay))
        arrivals.append(last)
    playout, kinds = play(packets, arrivals, 500, clock)
    assert playout.stats.stretched > 0
    assert playout.stats.concealed == 0 and playout.stats.expanded <= 3, playout.stats


def test_when_packets_stop_the_concealment_turns_to_silence_not_a_lasting_hiss() -> None:
    clock = Clock()
    packets = voice(100)
    arrivals: list[float | None] = [100.0 + n * FRAME_SECONDS if n < 50 else None for n in range(100)]
    playout = AudioPlayout(clock)
    levels = []
    for k in range(100):
        clock.now = 100.0 + k * FRAME_SECONDS
        if arrivals[k] is not None:
            playout.push(k * FRAME_SAMPLES, packets[k], arrivals[k])
        frame, _ = playout.tick()
        samples = frame.to_ndarray().astype(np.float64)
        levels.append(float(np.sqrt((samples * samples).mean())))
    assert levels[52] > 0  # just after the last packet: concealment, for a packet that may be late
    assert max(levels[70:]) == 0.0  # long after: silence
