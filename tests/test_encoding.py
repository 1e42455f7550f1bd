"""Encode once for every peer (the shared encoders alone, and in a real three-party session); decode
as soon as a frame is complete (the marker-aware jitter buffer)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc.rtp import RtpPacket
from calls_support import endpoints, new_session_id, running_server, video_frames, wait_until

from kiosk.calls.jitter import MarkerJitterBuffer, release_frames_on_marker
from kiosk.media.encoding import SharedAudioEncoder, SharedVideoEncoder, shareable
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
        before = encoder.frames_encoded
        encoder.submit(frame)
        await wait_until(lambda b=before: encoder.frames_encoded > b, 5, "the encoder")
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
