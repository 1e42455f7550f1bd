"""Encode once for every peer (the shared encoders alone, and in a real three-party session); decode
as soon as a frame is complete (the marker-aware jitter buffer)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc.rtp import RtpPacket
from calls_support import endpoints, new_session_id, running_server, video_frames, wait_until

from kiosk.calls.jitter import GIVE_UP_SECONDS, MarkerJitterBuffer, release_frames_on_marker
from kiosk.media.capture import AudioCapture
from kiosk.media.emulated import EmulatedDevices, speech_like_voice
from kiosk.media.encoding import (
    CEILING_MARGIN,
    CEILING_SECONDS,
    LADDER_UP_HOLD,
    LOSS_LADDER_STEP,
    LOSS_LADDER_UNTIL,
    PICTURE_LADDER,
    QUANTIZER_MARKS,
    QUANTIZER_SETTLE_FRAMES,
    QUANTIZER_WINDOW,
    PictureQuality,
    SharedAudioEncoder,
    SharedVideoEncoder,
    packet_quantizer,
    shareable,
)
from kiosk.media.pattern import TestPattern, read_stamp

TIME_BASE = Fraction(1, 90000)


class Sink:
    def __init__(self) -> None:
        self.packets: list[av.Packet] = []

    def _offer_packet(self, packet: av.Packet) -> None:
        self.packets.append(packet)


async def _encode(encoder: SharedVideoEncoder, pattern: TestPattern, start: int, count: int) -> None:
    """Submit frames one at a time, each once the previous one came out (none dropped)."""
    for i in range(start, start + count):
        frame = pattern.draw(i, stamp_ms=1000 + i)
        frame.pts, frame.time_base = i * 3000, TIME_BASE
        before = encoder.frames_encoded + encoder.frames_skipped
        encoder.submit(frame)
        await wait_until(
            lambda b=before: encoder.frames_encoded + encoder.frames_skipped > b, 5, "the encoder"
        )
    await asyncio.sleep(0.05)  # the last packets travel back to the loop


async def test_one_encoder_feeds_every_sink_with_keyframes_on_demand():
    assert shareable("video/VP8") and shareable("video/H264") and shareable("audio/opus")
    assert not shareable("audio/PCMU")
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    pattern = TestPattern(320, 240)
    first, second = Sink(), Sink()
    try:
        encoder.add(first)
        await _encode(encoder, pattern, 0, 10)
        encoder.add(second)  # a peer joining mid-stream gets a keyframe to start from
        await _encode(encoder, pattern, 10, 10)
        encoder.request_keyframe()  # picture loss at any peer
        await _encode(encoder, pattern, 20, 5)
    finally:
        encoder.close()

    assert encoder.frames_encoded == 25 and encoder.frames_dropped == 0
    keyframes = [i for i, p in enumerate(first.packets) if p.is_keyframe]
    assert keyframes == [0, 10, 20]
    assert second.packets == first.packets[10:]  # the very same packets: encoded once
    assert [p.pts for p in first.packets] == [i * 3000 for i in range(25)]  # the capture clock

    decoder = av.CodecContext.create("libvpx", "r")
    stamps = [read_stamp(f) for p in second.packets for f in decoder.decode(p)]
    assert stamps == [1000 + i for i in range(10, 25)]


async def test_the_lowest_estimate_wins_and_small_changes_do_not_restart():
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    pattern = TestPattern(320, 240)
    fast, slow = Sink(), Sink()
    try:
        encoder.add(fast)
        encoder.add(slow)
        await _encode(encoder, pattern, 0, 3)
        assert encoder.restarts == 0 and encoder._bitrate == encoder.high  # no estimate yet: the ceiling
        encoder.set_estimate(fast, 1_400_000)  # within 20 %: not worth a keyframe
        await _encode(encoder, pattern, 3, 3)
        assert encoder.restarts == 0
        encoder.set_estimate(slow, 600_000)  # congestion at one peer: followed at once
        await _encode(encoder, pattern, 6, 3)
        assert encoder.restarts == 1 and encoder._bitrate == 600_000
        assert slow.packets[6].is_keyframe
        encoder.set_estimate(slow, 10_000)  # clamped to what the codec allows
        await _encode(encoder, pattern, 9, 2)
        assert encoder._bitrate == encoder.low and encoder.restarts == 2
        encoder.remove(slow)
        encoder.set_estimate(fast, 400_000)
        await _encode(encoder, pattern, 11, 2)
        # A rise waits for the raise interval after the last change, so it is not followed yet.
        assert encoder._bitrate == encoder.low
    finally:
        encoder.close()


def _ladder_walk(encoder: SharedVideoEncoder, estimates: list[tuple[float, int]]) -> list[int]:
    """The ladder step after each (time, bitrate), as the encoder thread would take them."""
    steps = []
    for now, wanted in estimates:
        step = encoder._choose_step(wanted, now)
        if step != encoder.step:
            encoder.step, encoder._better_since = step, None
        steps.append(step)
    return steps


async def test_the_picture_steps_down_at_once_and_up_only_after_a_hold():
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    encoder.close()  # the decision alone: no thread needed
    hold = LADDER_UP_HOLD
    least = [step[0] for step in PICTURE_LADDER]
    walk = [
        (0.0, 1_000_000),  # plenty: the full picture
        (1.0, 300_000),  # under what it carries: smaller at once
        (2.0, 200_000),  # under the smaller picture's: smaller still, then fewer frames
        (3.0, 50_000),
        (4.0, least[1] + 1),  # enough for two steps up, but up is one step at a time, after a hold
        (4.0 + hold / 2, least[1] + 1),
        (4.0 + hold, least[1] + 1),
        (4.0 + 2 * hold, least[1] + 1),
        (4.0 + 3 * hold, least[1] + 1),
        (4.0 + 3 * hold + 0.5, least[1] * 0.95),  # a dip within the margin: kept
        (4.0 + 3 * hold + 1.0, least[0]),  # exactly the least of the full picture: enough, after a hold
        (4.0 + 3 * hold + 1.5, least[1]),  # the hold starts again after a fall back
        (4.0 + 3 * hold + 2.0, least[0]),
        (4.0 + 4 * hold + 2.0, least[0]),
    ]
    assert _ladder_walk(encoder, [(t, int(b)) for t, b in walk]) == [0, 1, 2, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0]


async def test_a_smaller_source_keeps_its_full_picture_on_less_bitrate():
    """The ladder's bitrates are for 640x480 at 30 fps: a 320x240 camera at 15 fps (an eighth of the
    pixels a second) carries its full picture on what would shrink a 640x480 one."""
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    encoder.close()
    small = 320 * 240 * 15 / (640 * 480 * 30)
    assert encoder._choose_step(200_000, 0.0, load=1.0) == 2
    encoder.step = 0
    assert encoder._choose_step(200_000, 0.0, load=small) == 0
    assert encoder._choose_step(30_000, 1.0, load=small) == 2  # and shrinks too, further down


def _quality(mean: float, mime: str = "video/vp8") -> PictureQuality:
    quality = PictureQuality(*QUANTIZER_MARKS[mime])
    for _ in range(QUANTIZER_WINDOW):
        quality.add(mean)
    return quality


async def test_an_estimate_under_the_picture_s_bitrate_shrinks_it_only_when_the_encoder_is_starved():
    """A receiver's estimate never exceeds 1.5x what it receives, so a still scene drags it under the
    ladder's bitrates with the link far from full: the quantizer decides, as WebRTC's quality scaler."""
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    encoder.close()
    low, high = QUANTIZER_MARKS["video/vp8"]
    assert encoder._choose_step(200_000, 0.0, quality=_quality((low + high) / 2)) == 0  # fine as it is
    assert encoder._choose_step(200_000, 0.0, quality=_quality(low)) == 0  # room, and already the best
    assert encoder._choose_step(200_000, 0.0, quality=_quality(high)) == 2  # starved: where 200k fits
    encoder.step = 2
    # Room at 320x240: up a step after the hold, the quantizer alone (the estimate is under 250k) ...
    assert encoder._choose_step(200_000, 1.0, quality=_quality(low)) == 2
    assert encoder._choose_step(200_000, 1.0 + LADDER_UP_HOLD, quality=_quality(low)) == 1
    encoder.step, encoder._better_since = 1, None
    # ... but not back to the size found starved at this bitrate: not until it has grown by a margin,
    for t in (5.0, 5.0 + LADDER_UP_HOLD, 5.0 + 2 * LADDER_UP_HOLD):
        assert encoder._choose_step(200_000, t, quality=_quality(0.0)) == 1
    grown = int(200_000 * CEILING_MARGIN)
    assert encoder._choose_step(grown, 20.0, quality=_quality(0.0)) == 1  # the hold starts
    assert encoder._choose_step(grown, 20.0 + LADDER_UP_HOLD, quality=_quality(0.0)) == 0
    # ... or until a while has passed (the scene may have changed).
    encoder.step, encoder._better_since, encoder._ceiling = 1, None, (0, 200_000, 100.0)
    late = 100.0 + CEILING_SECONDS
    assert encoder._choose_step(200_000, late - 1.0, quality=_quality(0.0)) == 1
    assert encoder._choose_step(200_000, late, quality=_quality(0.0)) == 1
    assert encoder._choose_step(200_000, late + LADDER_UP_HOLD, quality=_quality(0.0)) == 0
    # A restarted encoder settling says nothing: a hold under way is neither confirmed nor ended.
    encoder.step, encoder._better_since, encoder._ceiling = 1, None, None
    settling = PictureQuality(low, high)
    assert encoder._choose_step(200_000, 200.0, quality=_quality(0.0)) == 1
    assert encoder._choose_step(200_000, 200.0 + LADDER_UP_HOLD / 2, quality=settling) == 1
    assert encoder._choose_step(200_000, 200.0 + LADDER_UP_HOLD, quality=_quality(0.0)) == 0
    # No quantizer (a codec that reports none): the estimate alone, as before.
    encoder.step = 0
    assert encoder._choose_step(200_000, 300.0) == 2


def test_the_quantizer_passes_over_a_restart_s_settling_frames_and_averages_a_window():
    quality = PictureQuality(*QUANTIZER_MARKS["video/vp8"])
    quality.clear(settle=3)
    for q in (60.0, 60.0, 60.0):  # a restart's payback for its keyframe: passed over
        quality.add(q)
    assert quality.mean is None
    for _ in range(QUANTIZER_WINDOW - 1):
        quality.add(10.0)
    assert quality.mean is None  # not a full window yet
    quality.add(10.0)
    assert quality.mean == 10.0 and quality.roomy and not quality.starved
    for _ in range(QUANTIZER_WINDOW):
        quality.add(50.0)
    assert quality.mean == 50.0 and quality.starved


async def test_a_still_picture_keeps_its_size_on_an_estimate_it_fits(monkeypatch):
    """The real encoders: the test pattern at 640x480 codes well at 200 kbit/s (VP8) and 90 kbit/s
    (H.264), both under what the ladder's full picture is for, and both report their quantizer."""
    for mime, estimate in (("video/VP8", 200_000), ("video/H264", 90_000)):
        encoder = SharedVideoEncoder(mime, asyncio.get_running_loop())
        pattern = TestPattern(640, 480)
        sink = Sink()
        try:
            encoder.add(sink)
            encoder.set_estimate(sink, estimate)
            await _encode(encoder, pattern, 0, 2 * (1 + QUANTIZER_SETTLE_FRAMES + QUANTIZER_WINDOW))
            assert encoder.bitrate == estimate
            quantizer = encoder._quality.mean
            assert quantizer is not None and 0 <= quantizer < QUANTIZER_MARKS[mime.lower()][1], mime
            assert encoder.sent_size == (640, 480) and encoder.step_changes == 0, (mime, quantizer)
        finally:
            encoder.close()
        assert all(packet_quantizer(packet) is not None for packet in sink.packets), mime


async def test_under_a_thin_uplink_the_picture_shrinks_and_halves_its_frames_then_returns(monkeypatch):
    monkeypatch.setattr("kiosk.media.encoding.LADDER_UP_HOLD", 0.0)
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop())
    pattern = TestPattern(640, 480)
    sink = Sink()
    try:
        encoder.add(sink)
        await _encode(encoder, pattern, 0, 4)
        assert encoder.sent_size == (640, 480)
        encoder.set_estimate(sink, 80_000)  # far below aiortc's 250 kbit/s floor: followed
        # The restarted encoder settles, then its quantizer says the picture is starved: smaller.
        frames = 1 + QUANTIZER_SETTLE_FRAMES + QUANTIZER_WINDOW  # the restart's keyframe is not counted
        await _encode(encoder, pattern, 4, frames)
        assert encoder.bitrate == 80_000 and encoder.sent_size == (640, 480)
        await _encode(encoder, pattern, 4 + frames, 8)
        assert encoder.sent_size == (320, 240)
        assert encoder.frames_skipped == 4  # every other frame: half the frame rate
        small = sink.packets[-1]
        encoder.set_estimate(sink, 1_000_000)
        for start in range(12 + frames, 40 + frames, 4):  # one step per frame (no hold), bitrate every 2 s
            await _encode(encoder, pattern, start, 4)
        assert encoder.sent_size == (640, 480) and encoder.step == 0
        assert encoder.step_changes >= 3
    finally:
        encoder.close()
    decoder = av.CodecContext.create("libvpx", "r")
    sizes = {(f.width, f.height) for p in sink.packets for f in decoder.decode(p)}
    assert sizes == {(640, 480), (480, 360), (320, 240)} or sizes == {(640, 480), (320, 240)}
    assert small.size < sink.packets[0].size


async def test_opus_once_for_every_sink_on_the_capture_clock():
    encoder = SharedAudioEncoder()
    first, second = Sink(), Sink()
    encoder.add(first)
    encoder.add(second)
    tone = (8000 * np.sin(np.arange(960 * 10) * 2 * np.pi * 440 / 48000)).astype(np.int16)
    for i in range(10):
        frame = av.AudioFrame.from_ndarray(tone[i * 960 : (i + 1) * 960].reshape(1, -1), layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, 5000 + i * 960, Fraction(1, 48000)
        encoder.submit(frame)
    wrong = av.AudioFrame.from_ndarray(np.zeros((1, 480), np.int16), layout="mono")  # 10 ms: refused
    wrong.sample_rate = 48000
    encoder.submit(wrong)
    assert encoder.frames_encoded == 10
    assert first.packets == second.packets and len(first.packets) >= 8
    pts = [p.pts for p in first.packets]
    assert pts == [5000 + i * 960 for i in range(len(pts))]
    decoder = av.CodecContext.create("libopus", "r")
    decoded = [f for p in first.packets for f in decoder.decode(p)]
    assert sum(f.samples for f in decoded) == 960 * len(first.packets)


def _voice_frames(count: int, start: int = 0) -> list[av.AudioFrame]:
    """The emulated microphone's synthetic voice, as 20 ms frames."""
    voice = np.tile(speech_like_voice(), 1 + (start + count) * 960 // len(speech_like_voice()))
    frames = []
    for i in range(start, start + count):
        frame = av.AudioFrame.from_ndarray(voice[i * 960 : (i + 1) * 960].reshape(1, -1), layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, Fraction(1, 48000)
        frames.append(frame)
    return frames


def test_opus_fec_follows_reported_loss_held_between_reports_then_off() -> None:
    now = [0.0]
    encoder = SharedAudioEncoder(clock=lambda: now[0])
    sink = Sink()
    encoder.add(sink)
    for frame in _voice_frames(10):
        encoder.submit(frame)
    assert encoder.packet_loss == 0 and encoder.fec_packets == 0  # no loss reported: no FEC
    # At 1 % loss a one-second report says 2 % now and then, 0 % most of the time.
    reports = [0.02, 0.0, 0.0, 0.0, 0.0, 0.02, 0.0, 0.0, 0.0]
    on = []
    for report in reports:
        now[0] += 1.0
        encoder.set_loss(sink, report)
        on.append(encoder.packet_loss > 0)
    assert all(on)  # held between the reports that saw a loss
    # Seconds of voice: Opus codes FEC for the frames its voice detector finds active, most of them
    # (a steady tone it soon takes for background noise, and codes none: see speech_like_voice).
    before = encoder.fec_packets
    for frame in _voice_frames(250, start=10):
        encoder.submit(frame)
    assert encoder.fec_packets - before >= 150
    for _ in range(30):  # then 30 s without a loss: off again
        now[0] += 1.0
        encoder.set_loss(sink, 0.0)
    assert encoder.packet_loss == 0
    encoder.close()


async def test_a_three_party_call_encodes_each_camera_once(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "alice", "bob", "carol") as eps,
    ):
        session = new_session_id()
        for ep in eps:
            await ep.join(session)
        for ep in eps:
            for other in eps:
                if other is not ep:
                    await wait_until(
                        lambda e=ep, o=other.uid: video_frames(e, o), 20, f"{other.uid} at {ep.uid}"
                    )
        alice = eps[0].calls.session
        assert alice is not None
        figures = alice.capture_figures()
        [video] = [e for e in figures.encoders if e.kind == "video"]
        [audio] = [e for e in figures.encoders if e.kind == "audio"]
        assert (video.mime, video.sinks, audio.mime, audio.sinks) == ("video/vp8", 2, "audio/opus", 2)
        await asyncio.sleep(1.0)
        later = alice.capture_figures()
        [video_later] = [e for e in later.encoders if e.kind == "video"]
        captured = later.frames_captured - figures.frames_captured
        encoded = video_later.frames_encoded - video.frames_encoded
        # Each captured frame is encoded at most once, though two peers receive it (aiortc alone would
        # encode it twice); frames the busy encoder skipped are the only difference. (+1: the frame
        # captured just before the window may be encoded in it; the two counters are read apart.)
        assert 0.7 * captured <= encoded <= captured + 1
        bob_saw = await video_frames(eps[1], "alice")
        carol_saw = await video_frames(eps[2], "alice")
        await asyncio.sleep(0.5)
        assert (
            await video_frames(eps[1], "alice") > bob_saw and await video_frames(eps[2], "alice") > carol_saw
        )

        def video_sinks() -> list[int]:
            return [e.sinks for e in alice.capture_figures().encoders if e.kind == "video"]

        # carol leaves: her track leaves the encoder; bob's goes on
        await eps[2].calls.end_session()
        await wait_until(lambda: video_sinks() == [1], 10, "carol's track to leave the encoder")
        await eps[1].calls.end_session()
        await wait_until(lambda: not video_sinks(), 10, "the encoder to close with no peer left")


def _rtp(sequence: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=sequence, timestamp=timestamp, marker=int(marker))
    packet._data = data  # type: ignore[attr-defined]  # what aiortc's receiver puts there: the depayloaded bytes
    return packet


def test_a_video_frame_leaves_the_jitter_buffer_on_its_marker():
    buffer = MarkerJitterBuffer(capacity=64)
    assert buffer.add(_rtp(100, 3000, False, b"a"))[1] is None
    # The frame's last packet is in: out it goes, without waiting for the next frame to start.
    frame = buffer.add(_rtp(101, 3000, True, b"b"))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"ab", 3000)

    # Out of order: the marker packet first; the frame waits for the packet before it.
    assert buffer.add(_rtp(104, 6000, True, b"f"))[1] is None
    assert buffer.add(_rtp(102, 6000, False, b"d"))[1] is None
    frame = buffer.add(_rtp(103, 6000, False, b"e"))[1]
    assert frame is not None and frame.data == b"def"

    # A frame missing a packet never leaves on its marker; aiortc's rule still applies when the next
    # frame starts (the decoder then asks for a keyframe, as before).
    assert buffer.add(_rtp(105, 9000, False, b"g"))[1] is None
    assert buffer.add(_rtp(107, 9000, True, b"i"))[1] is None
    assert buffer.add(_rtp(108, 12000, True, b"j"))[1] is None


def test_a_hole_no_retransmission_fills_is_given_up_after_a_moment_with_a_keyframe_request():
    now = [0.0]
    buffer = MarkerJitterBuffer(capacity=64, clock=lambda: now[0])
    assert buffer.add(_rtp(200, 1000, True, b"a"))[1] is not None
    # Frame 2000 loses its first packet (201); frames 3000 and 4000 come whole behind it.
    for seq, ts, marker in ((202, 2000, True), (203, 3000, False), (204, 3000, True), (205, 4000, True)):
        now[0] += 0.03
        assert buffer.add(_rtp(seq, ts, marker, b"x")) == (False, None)
    # Within GIVE_UP_SECONDS a retransmission would still be used: nothing given up yet.
    now[0] = 0.03 + GIVE_UP_SECONDS / 2
    assert buffer.add(_rtp(206, 5000, True, b"y")) == (False, None) and buffer.frames_given_up == 0
    # Past it: the hole is dropped, the frames behind it flow again and a keyframe is asked for.
    now[0] = 0.03 + GIVE_UP_SECONDS + 0.01
    pli, frame = buffer.add(_rtp(207, 6000, True, b"z"))
    assert pli and buffer.frames_given_up == 1 and frame is not None
    released = [frame.timestamp]
    for seq, ts in ((208, 7000), (209, 8000), (210, 9000), (211, 10000)):
        frame = buffer.add(_rtp(seq, ts, True, b"w"))[1]
        if frame is not None:
            released.append(frame.timestamp)
    assert released[:3] == [2000, 3000, 4000], released  # 2000 without its lost first packet


def test_after_a_blackout_the_frames_behind_the_gap_are_not_held_and_a_keyframe_is_asked_for():
    """A 2 s Wi-Fi handover: the old connection comes back, and the packets sent meanwhile are gone.
    Waiting a second for their repair would add a second of frozen, then late, picture."""
    now = [0.0]
    buffer = MarkerJitterBuffer(capacity=512, clock=lambda: now[0])
    ts = 90_000
    assert buffer.add(_rtp(400, ts, True, b"a"))[1] is not None
    now[0] = 2.0
    gap_ts = ts + 2 * 90_000  # 2 s of media later; 60 packets lost
    pli, frame = buffer.add(_rtp(461, gap_ts, True, b"b"))
    assert pli and buffer.blackouts == 1  # at once, not after GIVE_UP_SECONDS
    assert frame is not None and frame.timestamp == gap_ts
    assert buffer.frames_given_up == 1
    # A short loss after it is waited for as usual.
    assert buffer.add(_rtp(463, gap_ts + 3000, True, b"d")) == (False, None)
    assert buffer.blackouts == 1


def test_a_retransmission_in_time_fills_the_hole_and_nothing_is_given_up():
    now = [0.0]
    buffer = MarkerJitterBuffer(capacity=64, clock=lambda: now[0])
    assert buffer.add(_rtp(300, 1000, False, b"a"))[1] is None
    assert buffer.add(_rtp(302, 1000, True, b"c"))[1] is None
    now[0] = 0.05
    assert buffer.add(_rtp(303, 2000, True, b"d"))[1] is None
    now[0] = 0.1  # the retransmission of 301
    frame = buffer.add(_rtp(301, 1000, False, b"b"))[1]
    assert frame is not None and frame.data == b"abc" and buffer.frames_given_up == 0


async def test_peers_use_the_marker_buffer_for_video_only():
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video")
        audio = pc.addTransceiver("audio")
        assert release_frames_on_marker(video.receiver)
        assert isinstance(video.receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
        assert not release_frames_on_marker(audio.receiver)  # audio keeps aiortc's prefetching buffer
    finally:
        await pc.close()


async def test_a_session_s_fec_count_outlives_the_encoder_of_a_peer_that_left() -> None:
    """The final figures are taken as the session ends; if the other side hung up first its track is
    gone and with it the shared encoder. The FEC it sent still counts (it read 0 in CI otherwise)."""
    capture = AudioCapture(EmulatedDevices(), "emulated-mic", lambda exc: None)
    track = capture.subscribe()
    encoder = track.encoder = capture.attach(track, "audio/opus")  # as the track's first recv() does
    assert isinstance(encoder, SharedAudioEncoder)
    track.set_loss_estimate(0.05)
    for frame in _voice_frames(100):
        capture._publish(frame)
    sent = encoder.fec_packets
    assert sent > 0 and capture.fec_packets == sent
    capture.unsubscribe(track)  # the peer left: its encoder closes
    assert capture.encoders == []
    assert capture.fec_packets == sent
    again = capture.subscribe()  # a new peer: a new encoder, counted on top
    again.encoder = capture.attach(again, "audio/opus")
    assert again.encoder is not None and again.encoder is not encoder
    again.set_loss_estimate(0.05)
    for frame in _voice_frames(100, start=100):
        capture._publish(frame)
    assert capture.fec_packets > sent
    capture.unsubscribe(again)
    await capture.close()


async def test_on_sustained_loss_the_picture_gets_smaller_and_comes_back_as_the_loss_fades(monkeypatch):
    """Plenty of bandwidth but 5 % of the packets lost: fewer, smaller packets (each lost one is a
    repair round trip the viewer may see as a stall); back to the full picture once the loss fades."""
    monkeypatch.setattr("kiosk.media.encoding.LADDER_UP_HOLD", 0.0)
    now = [0.0]
    encoder = SharedVideoEncoder("video/VP8", asyncio.get_running_loop(), clock=lambda: now[0])
    pattern = TestPattern(640, 480)
    sink = Sink()
    _, scale, divisor = PICTURE_LADDER[LOSS_LADDER_STEP]
    try:
        encoder.add(sink)
        encoder.set_estimate(sink, 1_500_000)
        await _encode(encoder, pattern, 0, 4)
        assert encoder.sent_size == (640, 480) and encoder.bitrate == 1_500_000
        encoder.set_loss(sink, 0.10)  # a call's first report, covering its start: not enough alone
        assert not encoder.lossy
        # 1 % random loss, reported once a second: mostly 0-2 %, now and then 3 or 4 %. NACK repairs
        # that in time: the picture stays.
        for report in (0.01, 0.0, 0.02, 0.04, 0.0, 0.01, 0.03, 0.0, 0.0, 0.01):
            now[0] += 1.0
            encoder.set_loss(sink, report)
            assert not encoder.lossy, encoder.loss
        await _encode(encoder, pattern, 4, 4)
        assert encoder.sent_size == (640, 480)
        # A 2 s blackout (a Wi-Fi handover): no report for 3 s, then one that saw most packets lost,
        # and a short outage within one report's second. Fewer packets would not help: kept.
        now[0] += 3.0
        encoder.set_loss(sink, 0.6)
        assert not encoder.lossy
        for report in (0.0, 0.4, 0.0, 0.0):
            now[0] += 1.0
            encoder.set_loss(sink, report)
            assert not encoder.lossy, encoder.loss
        for report in (0.05, 0.08, 0.02, 0.06, 0.04, 0.07, 0.05):  # bursty 5 %, for a few seconds
            now[0] += 1.0
            encoder.set_loss(sink, report)
        assert encoder.lossy
        await _encode(encoder, pattern, 8, 8)
        assert encoder.step == LOSS_LADDER_STEP
        assert encoder.sent_size == (round(640 * scale), round(480 * scale))
        assert encoder.bitrate < PICTURE_LADDER[LOSS_LADDER_STEP - 1][0]  # what that step is for
        # Reports of no loss a second apart: the held loss fades, and the estimate is followed again.
        for start in range(16, 80, 4):
            for _ in range(3):  # past the raise interval each time
                now[0] += 0.85
                encoder.set_loss(sink, 0.0)
            await _encode(encoder, pattern, start, 4)
        assert encoder.loss < LOSS_LADDER_UNTIL and not encoder.lossy
        assert encoder.sent_size == (640, 480) and encoder.step == 0 and encoder.bitrate == 1_500_000
    finally:
        encoder.close()
