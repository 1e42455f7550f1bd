"""cpu_per_call_second_{vp8,h264}: CPU one endpoint spends per second of a 1:1 video call.

Subject: the measured endpoint runs as its own process (`kiosk endpoint --session ... --codec ...
--loopback`, emulated 640x480 @ 30 fps camera and synthetic-voice microphone), in a call through an embedded
call server with a Calls endpoint in the harness process. Once its video arrives and a warm-up has
passed, its CPU time (user + system, all threads, from /proc/<pid>/stat) is read over a fixed
window of wall time. The figure is CPU seconds per wall second (1.0 = one core busy).

Baseline: PyAV encoding and decoding the same frames the call carries, at the call's pace, in this
process with nothing else running: the emulated video frames (kiosk.media.pattern.TestPattern,
640x480) with the SDK's encoder settings (those of aiortc) at the bitrate the measured endpoint
actually sent in that run, each when due at 30 fps, and the microphone's 20 ms frames in Opus with
the SDK's settings, each when due at 50 fps. The same coding done back to back (cheaper per frame:
warm caches) is in the notes, with what the endpoint pays for and the baseline does not (drawing
the emulated picture) and a bare aiortc endpoint's cost for reference.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import RTCPeerConnection
from aiortc.codecs import h264, vpx

from bench.bare import BarePair
from bench.common import (
    BenchServer,
    bench_server,
    finish_process,
    loopback_only,
    new_session_id,
    start_endpoint,
    tail,
    wait_until,
)
from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import Calls, CallSettingsBuilder
from kiosk.media.devices import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE
from kiosk.media.emulated import EmulatedDevices, speech_like_voice
from kiosk.media.encoding import AUDIO_TIME_BASE, opus_context
from kiosk.media.pattern import TestPattern

WIDTH, HEIGHT, FPS = 640, 480, 30
HOST, MEASURED = "bench-host", "bench-measured"
VIDEO_TIME_BASE = Fraction(1, 90000)
MEDIA_TIMEOUT = 30.0


@dataclass(frozen=True)
class Timing:
    warmup: float  # seconds after the first frame before the window opens (bitrate ramp, encoder resets)
    window: float  # seconds of wall time over which CPU is read


def _timing(settings: RunSettings) -> Timing:
    return Timing(warmup=1.0, window=2.0) if settings.quick else Timing(warmup=3.0, window=6.0)


# ----------------------------------------------------------------------------- reading the subject


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


async def _sent_video(pc: RTCPeerConnection) -> tuple[int, float] | None:
    """(payload bytes, sender clock seconds) of the remote side's video, from its last RTCP SR."""
    for item in (await pc.getStats()).values():
        if item.type == "remote-outbound-rtp" and item.kind == "video":
            return int(item.bytesSent), item.remoteTimestamp.timestamp()
    return None


async def _next_report(pc: RTCPeerConnection, after: tuple[int, float] | None) -> tuple[int, float] | None:
    """The sender's newest report, once it is newer than `after` (up to 3 s of waiting)."""
    if after is None:
        return None
    deadline = time.monotonic() + 3.0
    while True:
        report = await _sent_video(pc)
        if report is not None and report[1] > after[1]:
            return report
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.1)


def _negotiated_video_codec(sdp: str) -> str | None:
    """The first codec of the video m-section: the one aiortc sends with."""
    lines = sdp.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("m=video"):
            first_pt = line.split()[3]
            for attr in lines[i + 1 :]:
                if attr.startswith("m="):
                    break
                if attr.startswith(f"a=rtpmap:{first_pt} "):
                    return attr.split()[1].split("/")[0]
    return None


@dataclass
class CallReading:
    cpu_per_second: float
    fps_sent: float
    kbps_sent: float | None


async def _measure_call(env: BenchServer, codec: str, timing: Timing) -> CallReading:
    session_id = new_session_id()
    host = Calls(
        env.url,
        auth_token=env.tokens[HOST],
        devices=EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=660),
        video_codec=codec,
        ice_host_addresses=["127.0.0.1"],
        recording_dir=env.tmp / "recordings",
    )
    log_path = env.tmp / f"endpoint-{session_id}.log"
    process: asyncio.subprocess.Process | None = None
    try:
        await host.start_session(await host.generate_token(session_id), CallSettingsBuilder().build())
        process = await start_endpoint(
            env,
            MEASURED,
            session_id,
            log_path,
            MEDIA_TIMEOUT + timing.warmup + timing.window + 10,
            "--codec",
            codec,
        )
        proc = process

        def media_arrived() -> bool:
            if proc.returncode is not None:
                raise RuntimeError(f"endpoint exited early ({proc.returncode}): {tail(log_path)}")
            session = host.session
            peer = session.peers.get(MEASURED) if session is not None else None
            return peer is not None and peer.stats.video_frames_decoded > 0

        await wait_until(media_arrived, MEDIA_TIMEOUT, "video from the measured endpoint")
        assert host.session is not None
        peer = host.session.peers[MEASURED]
        negotiated = _negotiated_video_codec(peer.pc.localDescription.sdp)
        if negotiated is None or negotiated.upper() != codec:
            raise RuntimeError(f"asked for {codec}, the call negotiated {negotiated}")
        await asyncio.sleep(timing.warmup)
        # The sender's RTCP reports (about one a second) give its video bitrate between two of them.
        sent0 = await _sent_video(peer.pc)

        cpu0, wall0, frames0 = (
            process_cpu_seconds(proc.pid),
            time.monotonic(),
            peer.stats.video_frames_decoded,
        )
        await asyncio.sleep(timing.window)
        cpu1, wall1, frames1 = (
            process_cpu_seconds(proc.pid),
            time.monotonic(),
            peer.stats.video_frames_decoded,
        )
        if proc.returncode is not None:
            raise RuntimeError(f"endpoint left during the window: {tail(log_path)}")
        sent1 = await _next_report(peer.pc, sent0)  # after the window: waiting costs no accuracy

        kbps = None
        if sent0 is not None and sent1 is not None:
            kbps = (sent1[0] - sent0[0]) * 8 / (sent1[1] - sent0[1]) / 1000
        wall = wall1 - wall0
        return CallReading((cpu1 - cpu0) / wall, (frames1 - frames0) / wall, kbps)
    finally:
        await host.close()  # ends the session, and with it the 1:1 call of the measured endpoint
        await finish_process(process)


# ----------------------------------------------------------------------------- the baseline


def _encoder(codec: str, bitrate: int) -> av.VideoCodecContext:
    """A PyAV encoder configured as aiortc 1.16 configures its own, so only SDK overhead differs."""
    if codec == "VP8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {
            "deadline": "realtime",
            "cpu-used": "-6",
            "lag-in-frames": "0",
            "minrate": str(bitrate),  # minrate = maxrate = bit_rate: constant bitrate
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "noise-sensitivity": "4",
            "overshoot-pct": "15",
            "undershoot-pct": "100",
            "static-thresh": "1",
            "partitions": "0",
        }
        ctx.gop_size, ctx.qmin, ctx.qmax = 3000, 2, 56
        ctx.thread_count = 1  # what aiortc picks for 640x480
    else:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.options = {"level": "31", "tune": "zerolatency"}
        ctx.profile = "Baseline"
        ctx.framerate, ctx.time_base = Fraction(FPS, 1), Fraction(1, FPS)
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt, ctx.bit_rate = WIDTH, HEIGHT, "yuv420p", bitrate
    return ctx


def _bitrate_range(codec: str) -> tuple[int, int]:
    module = vpx if codec == "VP8" else h264
    return module.MIN_BITRATE, module.MAX_BITRATE


@dataclass
class CodecReading:
    cpu_per_second: float
    encode_ms: float
    decode_ms: float
    kbps: float


def codec_baseline(codec: str, bitrate: int, frames: list[av.VideoFrame]) -> CodecReading:
    """Encode then decode `frames` (as fast as possible); CPU of the whole process, all threads."""
    encoder = _encoder(codec, bitrate)
    packets: list[av.Packet] = []
    started = time.process_time()
    for i, frame in enumerate(frames):
        frame.pts, frame.time_base = i * (90000 // FPS), VIDEO_TIME_BASE
        packets += encoder.encode(frame)
    encode_cpu = time.process_time() - started

    decoder = av.CodecContext.create("libvpx" if codec == "VP8" else "h264", "r")
    decoded = 0
    started = time.process_time()
    for packet in packets:
        decoded += len(decoder.decode(packet))
    decode_cpu = time.process_time() - started
    if decoded == 0:
        raise RuntimeError(f"{codec} baseline decoded nothing")
    encode_s, decode_s = encode_cpu / len(frames), decode_cpu / decoded
    kbps = sum(p.size for p in packets) * 8 / (len(frames) / FPS) / 1000
    return CodecReading((encode_s + decode_s) * FPS, encode_s * 1000, decode_s * 1000, kbps)


def _microphone_frames(count: int) -> list[av.AudioFrame]:
    """`count` 20 ms frames of the emulated microphone's synthetic voice (what the measured endpoint
    sends), on the capture clock."""
    voice = speech_like_voice()
    per_loop = len(voice) // AUDIO_FRAME_SAMPLES
    frames = []
    for i in range(count):
        start = (i % per_loop) * AUDIO_FRAME_SAMPLES
        chunk = voice[start : start + AUDIO_FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = (
            AUDIO_SAMPLE_RATE,
            i * AUDIO_FRAME_SAMPLES,
            AUDIO_TIME_BASE,
        )
        frames.append(frame)
    return frames


def opus_baseline(seconds: float) -> float:
    """CPU per second of Opus encode + decode of the emulated microphone's voice, back to back, with
    the SDK's encoder settings (kiosk.media.encoding.opus_context) and PyAV's libopus decoder."""
    encoder, decoder = opus_context(), av.CodecContext.create("libopus", "r")
    frames = _microphone_frames(int(seconds * AUDIO_SAMPLE_RATE / AUDIO_FRAME_SAMPLES))
    started = time.process_time()
    for frame in frames:
        for packet in encoder.encode(frame):
            decoder.decode(packet)
    return (time.process_time() - started) / seconds


def paced_baseline(codec: str, bitrate: int, frames: list[av.VideoFrame], seconds: float) -> float:
    """CPU per second of coding the call's media at the call's pace: each video frame encoded and
    decoded when it is due at 30 fps, each 20 ms microphone frame when it is due at 50 fps, asleep in
    between, nothing else running. Coding in real time costs more per frame than back to back (about
    40 % for VP8 here: the codec's memory is cold again each time), and the call codes in real time."""
    video_encoder = _encoder(codec, bitrate)
    video_decoder = av.CodecContext.create("libvpx" if codec == "VP8" else "h264", "r")
    audio_encoder, audio_decoder = opus_context(), av.CodecContext.create("libopus", "r")
    audio_interval = AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE
    audio = _microphone_frames(int(seconds / audio_interval))
    due: list[tuple[float, int, int]] = [(i / FPS, 0, i) for i in range(int(seconds * FPS))]
    due += [(i * audio_interval, 1, i) for i in range(len(audio))]
    due.sort()
    started_cpu, started = time.process_time(), time.monotonic()
    for at, kind, i in due:
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == 0:
            frame = frames[i % len(frames)]
            frame.pts, frame.time_base = i * (90000 // FPS), VIDEO_TIME_BASE
            for packet in video_encoder.encode(frame):
                video_decoder.decode(packet)
        else:
            for packet in audio_encoder.encode(audio[i]):
                audio_decoder.decode(packet)
    return (time.process_time() - started_cpu) / (time.monotonic() - started)


def side_costs(frame_count: int) -> dict[str, float]:
    """CPU per call second of the emulated camera's drawing (not in the baseline: a real camera's
    frames arrive drawn), for reading the ratio."""
    pattern = TestPattern(WIDTH, HEIGHT)
    started = time.process_time()
    for i in range(frame_count):
        pattern.draw(i)
    return {"emulated_camera_draw_cpu_per_s": (time.process_time() - started) / frame_count * FPS}


async def bare_aiortc_cpu(codec: str, timing: Timing) -> float:
    """CPU per second of one bare aiortc endpoint: two peers in this process, total halved.

    A reference for reading the ratio (how much of the endpoint's cost aiortc itself brings), not
    the baseline. Runs when no call is active, so this process does nothing else meanwhile.
    """
    decoded = [0]

    def count(sender: str, frame: av.VideoFrame) -> None:
        decoded[0] += 1

    devices = tuple(EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=hz) for hz in (440, 660))
    pair = BarePair((devices[0], devices[1]), on_video=count, codec=codec)
    try:
        await pair.negotiate()
        negotiated = _negotiated_video_codec(pair.pcs[1].localDescription.sdp)
        if negotiated is None or negotiated.upper() != codec:
            raise RuntimeError(f"bare pair asked for {codec}, negotiated {negotiated}")
        await wait_until(lambda: decoded[0] > 0, MEDIA_TIMEOUT, "video between the bare peers")
        await asyncio.sleep(timing.warmup)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(timing.window)
        return (time.process_time() - cpu0) / (time.monotonic() - wall0) / 2
    finally:
        await pair.close()


# ----------------------------------------------------------------------------- the benchmark


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


async def run_codec(codec: str, settings: RunSettings) -> Samples:
    loopback_only()
    timing = _timing(settings)
    runs = settings.repeats(full=5, quick=1)
    pattern = TestPattern(WIDTH, HEIGHT)
    frames = [pattern.draw(i) for i in range(int(FPS * timing.window))]
    low, high = _bitrate_range(codec)
    values: list[float] = []
    baseline: list[float] = []
    notes: dict[str, list[Any]] = {
        k: []
        for k in (
            "fps_sent",
            "kbps_sent",
            "baseline_kbps",
            "baseline_encode_ms",
            "baseline_decode_ms",
            "back_to_back_codec_cpu_per_s",
            "bare_aiortc_endpoint_cpu_per_s",
        )
    }
    async with bench_server(HOST, MEASURED) as env:
        for _ in range(runs):
            call = await _measure_call(env, codec, timing)
            # Same bitrate as the call, kept within the range aiortc allows its encoder.
            target = int(min(max((call.kbps_sent or 0) * 1000, low), high))
            # Runs with no call active, blocking the loop, so nothing else in this process uses CPU.
            codec_cost = codec_baseline(codec, target, frames)
            audio_cost = opus_baseline(timing.window)
            values.append(call.cpu_per_second)
            baseline.append(paced_baseline(codec, target, frames, timing.window))
            notes["back_to_back_codec_cpu_per_s"].append(codec_cost.cpu_per_second + audio_cost)
            notes["fps_sent"].append(call.fps_sent)
            notes["kbps_sent"].append(call.kbps_sent)
            notes["baseline_kbps"].append(codec_cost.kbps)
            notes["baseline_encode_ms"].append(codec_cost.encode_ms)
            notes["baseline_decode_ms"].append(codec_cost.decode_ms)
            notes["bare_aiortc_endpoint_cpu_per_s"].append(await bare_aiortc_cpu(codec, timing))
    summary: dict[str, Any] = {f"{k}_median": _median(v) for k, v in notes.items()}
    summary.update(side_costs(len(frames)))
    summary.update(
        {
            "warmup_s": timing.warmup,
            "window_s": timing.window,
            "resolution": f"{WIDTH}x{HEIGHT}@{FPS}",
            "baseline_bitrate_rule": "kbps_sent clamped to aiortc's encoder range "
            f"{low // 1000}-{high // 1000} kbps",
        }
    )
    return Samples(values, baseline, summary)


def _benchmark(codec: str) -> Benchmark:
    async def run(settings: RunSettings) -> Samples:
        return await run_codec(codec, settings)

    return Benchmark(
        name=f"cpu_per_call_second_{codec.lower()}",
        unit="cpu-s/s",
        target_ratio=1.3,
        measures=(
            f"CPU time over wall time of one `kiosk endpoint` process in a 1:1 {codec} video call "
            "(emulated 640x480@30 video + synthetic voice both ways, loopback, other endpoint in the harness "
            "process), read from /proc over a window after warm-up"
        ),
        baseline_measures=(
            f"PyAV {codec} encode + decode of the same 640x480 test-pattern frames with the SDK's (aiortc's) "
            "encoder settings at the bitrate the endpoint sent, each when due at 30 fps, and PyAV Opus "
            "encode + decode of the same 20 ms microphone frames when due at 50 fps; process CPU over "
            "wall time"
        ),
        run=run,
    )


BENCHMARKS = [_benchmark("VP8"), _benchmark("H264")]
