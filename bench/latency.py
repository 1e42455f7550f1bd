"""latency_{decoded,on_screen}_{p50,p95}: glass-to-glass latency of a 640x480@30 VP8 call.

The emulated camera (kiosk.media.pattern.TestPattern) draws its capture time (wall clock, ms) into
every picture; the receiver reads it back from the frame (`read_stamp`) and subtracts it from the
time it reads it (`latency_ms`). Sender and receiver are different processes on the same machine,
so both read the same clock.

Decoded (no UI): the sender is a `kiosk endpoint --session ... --loopback` process (emulated
640x480@30 camera and tone microphone, default codec VP8); the receiver is a Calls endpoint in the
harness process with the same emulated devices, both through the bench's embedded call server on
loopback. Each process encodes one stream and decodes one, as two kiosks do. The stamp is read in
the receiver's `view.render_frame`, which the SDK calls synchronously for every decoded remote frame.

On screen: the receiver is the real kiosk UI (`kiosk run`'s code: `run_kiosk_async` on a generated
kiosk.toml, Kivy offscreen via SDL_VIDEODRIVER=offscreen) in a child process, bench/_ui_probe.py; it
answers by itself a call from a Calls endpoint in the harness process (same emulated devices). The
stamp is read from the frame when a VideoTile uploads it to its texture (the `VideoTile.on_upload`
hook) and the frame counts as on screen at the next buffer swap, once the GPU has finished drawing
it (glFinish in Window.on_flip; notes: ui_uploaded_p50 is the upload moment alone). The same child
also reads the stamps at decode, so the notes show what the UI adds. Offscreen, the GPU is Mesa's
llvmpipe, software on the same CPU cores as the codec; a Pi draws on its V3D.

Each run: a warm-up after the first frame, then p50 and p95 over the frames of a window. In full
mode the decoded runs also measure the same stamps between two bare aiortc peer connections in the
harness process (notes: bare_aiortc_p50/p95), a reference for the latency aiortc alone has: its
video jitter buffer hands a frame to the decoder only when the first packet of the next frame
arrives, one frame interval (33 ms at 30 fps) that no endpoint built on it can avoid.

Baseline: PyAV VP8 encode + decode of one 640x480 test-pattern frame (CPU time per frame over a
short sequence, aiortc's encoder settings, at the bitrate the call received; bench.cpu_call's
codec_baseline). Target: p50 at most the baseline plus one frame interval (33.3 ms); p95 at most
the baseline plus two frame intervals (66.7 ms, our choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc.codecs import vpx

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
from bench.cpu_call import codec_baseline
from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import Call, CallEventListener, Calls, CallSettingsBuilder
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.pattern import TestPattern, latency_ms, read_stamp

WIDTH, HEIGHT, FPS = 640, 480, 30
FRAME_MS = 1000 / FPS
CODEC = "VP8"
SENDER, RECEIVER = "bench-latency-sender", "bench-latency-receiver"
CALLER, KIOSK = "bench-latency-caller", "bench-latency-kiosk"
MEDIA_TIMEOUT = 20.0
UI_START_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "_ui_probe.py"


@dataclass(frozen=True)
class Timing:
    warmup: float  # seconds after the first frame before the window opens
    window: float  # seconds of frames the percentiles are taken over
    baseline_frames: int


def _timing(settings: RunSettings) -> Timing:
    return Timing(1.0, 2.0, 30) if settings.quick else Timing(2.0, 5.0, 90)


def p50(values: list[float]) -> float:
    return float(statistics.median(values))


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[94])


def _in_window(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [lag for at, lag in samples if start <= at <= end]


def _devices(tone_hz: float) -> EmulatedDevices:
    return EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=tone_hz)


def _negotiated_video_codec(calls: Calls, uid: str) -> str | None:
    session = calls.session
    peer = session.peers.get(uid) if session is not None else None
    if peer is None or peer.pc.localDescription is None:
        return None
    lines = peer.pc.localDescription.sdp.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("m=video"):
            first = line.split()[3]
            for attr in lines[i + 1 :]:
                if attr.startswith("m="):
                    break
                if attr.startswith(f"a=rtpmap:{first} "):
                    return attr.split()[1].split("/")[0].upper()
    return None


@dataclass
class Reading:
    values: list[float]  # latencies (ms) of the frames in the window
    kbps: float | None  # what the receiver took in over the window (video + audio + RTCP)
    extra: dict[str, Any] = field(default_factory=dict)


async def _received_kbps(calls: Calls, uid: str) -> tuple[int, float] | None:
    stats = await calls.get_session_stats()
    participant = stats.participants.get(uid)
    if participant is None:
        return None
    return participant.bytes_received, time.monotonic()


def _kbps(before: tuple[int, float] | None, after: tuple[int, float] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) * 8 / (after[1] - before[1]) / 1000


# ----------------------------------------------------------------------------- decoded, no UI


class StampProbe:
    """The receiver's view: reads the capture stamp of every decoded frame of one sender."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.samples: list[tuple[float, float]] = []

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        if uid != self.sender:
            return
        stamp = read_stamp(frame)
        if stamp is not None:
            self.samples.append((time.monotonic(), float(latency_ms(stamp))))


async def _decoded_once(env: BenchServer, timing: Timing) -> Reading:
    session_id = new_session_id()
    probe = StampProbe(SENDER)
    receiver = Calls(
        env.url,
        auth_token=env.tokens[RECEIVER],
        devices=_devices(440),
        ice_host_addresses=["127.0.0.1"],
        recording_dir=env.tmp / "recordings",
    )
    log_path = env.tmp / f"sender-{session_id}.log"
    process: asyncio.subprocess.Process | None = None
    try:
        await receiver.start_session(
            await receiver.generate_token(session_id), CallSettingsBuilder().build(), view=probe
        )
        process = await start_endpoint(
            env, SENDER, session_id, log_path, MEDIA_TIMEOUT + timing.warmup + timing.window + 10
        )
        proc = process

        def arrived() -> bool:
            if proc.returncode is not None:
                raise RuntimeError(f"sender exited early ({proc.returncode}): {tail(log_path, 8)}")
            return bool(probe.samples)

        await wait_until(arrived, MEDIA_TIMEOUT, "stamped video from the sender")
        codec = _negotiated_video_codec(receiver, SENDER)
        if codec != CODEC:
            raise RuntimeError(f"the call negotiated {codec}, not {CODEC}")
        await asyncio.sleep(timing.warmup)
        start, before = time.monotonic(), await _received_kbps(receiver, SENDER)
        await asyncio.sleep(timing.window)
        end, after = time.monotonic(), await _received_kbps(receiver, SENDER)
        values = _in_window(probe.samples, start, end)
        if len(values) < 3:
            raise RuntimeError(f"only {len(values)} stamped frames in {timing.window} s")
        stats = await receiver.get_session_stats()
        sdk = stats.participants[SENDER]
        return Reading(
            values,
            _kbps(before, after),
            {
                "fps": len(values) / (end - start),
                "sdk_latency_p50": sdk.latency_ms_p50,  # the SDK's own figure, whole call
            },
        )
    finally:
        await receiver.close()  # leaving ends the 1:1 session: the sender exits by itself
        await finish_process(process, terminate=True)


async def _bare_once(timing: Timing) -> list[float]:
    """The same stamps between two bare aiortc peer connections in this process (no SDK, no server,
    no capture fan-out): a reference for how much of the latency aiortc itself has."""
    probe = StampProbe("a")  # frames sent by "a", decoded by "b"
    pair = BarePair((_devices(440), _devices(660)), on_video=probe.render_frame, codec=CODEC)
    try:
        await pair.negotiate()
        await wait_until(lambda: bool(probe.samples), MEDIA_TIMEOUT, "video between the bare peers")
        await asyncio.sleep(timing.warmup)
        start = time.monotonic()
        await asyncio.sleep(timing.window)
        return _in_window(probe.samples, start, time.monotonic())
    finally:
        await pair.close()


# ----------------------------------------------------------------------------- on screen, kiosk UI


KIOSK_TOML = """
[server]
url = "{url}"
auth_token = "{token}"
embedded = false

[identity]
uid = "{uid}"
name = "Bench kiosk"

[[cameras]]
id = "camera"
backend = "emulated"
width = {width}
height = {height}
fps = {fps}

[audio]
backend = "emulated"
echo_cancellation = false
noise_suppression = false
auto_gain_control = false
tone_hz = 660.0

[ui]
fullscreen = false
auto_answer_after = 0.05

[recording]
directory = "{tmp}/recordings"

[emulation]
keyboard = false
control_socket = "{tmp}/control.sock"
"""


class Accepted(CallEventListener):
    def __init__(self) -> None:
        super().__init__()
        self.call: asyncio.Future[Call] = asyncio.get_running_loop().create_future()

    def on_outgoing_call_accepted(self, call: Any) -> None:
        if not self.call.done():
            self.call.set_result(call)


async def _kiosk_ready(process: asyncio.subprocess.Process, socket_path: Path, log_path: Path) -> None:
    """The kiosk opens its control socket once it has logged in; a `state` answer says it is up."""
    deadline = time.monotonic() + UI_START_TIMEOUT
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"kiosk UI exited early ({process.returncode}): {tail(log_path, 8)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"kiosk UI not up within {UI_START_TIMEOUT} s: {tail(log_path, 8)}")
        with contextlib.suppress(OSError, TimeoutError):  # no socket yet
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(b"state\n")
                await writer.drain()
                if b'"phase": "idle"' in await asyncio.wait_for(reader.readline(), 5):
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.1)


async def _on_screen_once(env: BenchServer, timing: Timing, run: int) -> Reading:
    tmp = env.tmp / f"ui-{run}"
    tmp.mkdir(parents=True)
    config = tmp / "kiosk.toml"
    config.write_text(
        KIOSK_TOML.format(
            url=env.url, token=env.tokens[KIOSK], uid=KIOSK, width=WIDTH, height=HEIGHT, fps=FPS, tmp=tmp
        )
    )
    samples_path, log_path = tmp / "samples.json", tmp / "kiosk.log"
    child_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SDL_VIDEODRIVER": "offscreen",
        "KIVY_NO_ARGS": "1",
        "KIVY_HOME": str(tmp / "kivy-home"),
    }
    child_env.pop("DISPLAY", None)
    child_env.pop("WAYLAND_DISPLAY", None)
    safety = UI_START_TIMEOUT + MEDIA_TIMEOUT + timing.warmup + timing.window + 10
    caller = Calls(
        env.url,
        auth_token=env.tokens[CALLER],
        devices=_devices(440),
        ice_host_addresses=["127.0.0.1"],
        recording_dir=env.tmp / "recordings",
    )
    accepted = Accepted()
    caller.add_call_event_listener("bench-latency", accepted)
    process: asyncio.subprocess.Process | None = None
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(PROBE),
                str(config),
                str(samples_path),
                str(safety),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=child_env,
                cwd=tmp,
            )
        await _kiosk_ready(process, tmp / "control.sock", log_path)
        await caller.login()
        call = await caller.initiate_call(KIOSK)
        call = await asyncio.wait_for(accepted.call, MEDIA_TIMEOUT)
        await caller.start_session(
            await caller.generate_token(call.session_id), CallSettingsBuilder().build()
        )

        def media_up() -> bool:
            session = caller.session
            peer = session.peers.get(KIOSK) if session is not None else None
            return peer is not None and peer.stats.video_frames_decoded > 0

        try:
            await wait_until(media_up, MEDIA_TIMEOUT, "video from the kiosk")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the kiosk's log: {tail(log_path, 20)}") from None
        codec = _negotiated_video_codec(caller, KIOSK)
        if codec != CODEC:
            raise RuntimeError(f"the call negotiated {codec}, not {CODEC}")
        # The kiosk's tile shows frames from about when ours arrive; the warm-up covers the gap.
        await asyncio.sleep(timing.warmup)
        start, before = time.monotonic(), await _received_kbps(caller, KIOSK)
        await asyncio.sleep(timing.window)
        end, after = time.monotonic(), await _received_kbps(caller, KIOSK)
        with contextlib.suppress(Exception):
            await caller.end_call(call.session_id)
        await caller.end_session()
        await finish_process(process, terminate=True)
        if not samples_path.exists():
            raise RuntimeError(f"the kiosk UI wrote no samples: {tail(log_path, 8)}")
        data = json.loads(samples_path.read_text())
        shown = _in_window([(a, float(b)) for a, b in data["on_screen"]], start, end)
        decoded = _in_window([(a, float(b)) for a, b in data["decoded"]], start, end)
        if len(shown) < 3:
            raise RuntimeError(
                f"only {len(shown)} stamped frames shown in {timing.window} s: {tail(log_path, 8)}"
            )
        return Reading(
            shown,
            _kbps(before, after),  # what the kiosk sent us: the kiosk receives the same kind of stream
            {
                "fps_shown": len(shown) / (end - start),
                "fps_decoded_in_ui": len(decoded) / (end - start),
                "ui_wait_p50": p50(waited)
                if (waited := _in_window(data.get("waited", []), start, end))
                else None,
                "ui_wait_p95": p95(waited) if waited else None,
                "kivy_loop_fps": p50(loop)
                if (loop := _in_window(data.get("loop_fps", []), start, end))
                else None,
                "ui_uploaded_p50": p50(uploaded)
                if (uploaded := _in_window(data.get("uploaded", []), start, end))
                else None,
                "ui_decoded_p50": p50(decoded) if decoded else None,
                "ui_decoded_p95": p95(decoded) if decoded else None,
            },
        )
    finally:
        await caller.close()
        await finish_process(process, terminate=True)


# ----------------------------------------------------------------------------- the benchmark


def _baseline_ms(frames: list[av.VideoFrame], kbps: float | None) -> tuple[float, float, float, int]:
    """(encode + decode ms, encode ms, decode ms, bitrate) of one frame, PyAV VP8, aiortc's settings."""
    bitrate = int(min(max((kbps or vpx.DEFAULT_BITRATE / 1000) * 1000, vpx.MIN_BITRATE), vpx.MAX_BITRATE))
    reading = codec_baseline(CODEC, bitrate, frames)
    return reading.encode_ms + reading.decode_ms, reading.encode_ms, reading.decode_ms, bitrate


@dataclass
class Collected:
    p50: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


_cache: dict[tuple[str, RunSettings], Collected] = {}


async def _collect(kind: str, settings: RunSettings) -> Collected:
    """The runs of one kind ("decoded" or "on_screen"), once per settings: p50 and p95 share them."""
    if (kind, settings) in _cache:
        return _cache[kind, settings]
    loopback_only()
    timing = _timing(settings)
    runs = settings.repeats(full=5, quick=1)
    pattern = TestPattern(WIDTH, HEIGHT)
    frames = [pattern.draw(i) for i in range(timing.baseline_frames)]
    out = Collected()
    notes: dict[str, list[Any]] = {}

    def note(key: str, value: Any) -> None:
        notes.setdefault(key, []).append(value)

    users = (SENDER, RECEIVER) if kind == "decoded" else (CALLER, KIOSK)
    async with bench_server(*users) as env:
        for run in range(runs):
            if kind == "decoded":
                reading = await _decoded_once(env, timing)
            else:
                reading = await _on_screen_once(env, timing, run)
            out.p50.append(p50(reading.values))
            out.p95.append(p95(reading.values))
            # With no call running, so the baseline's CPU time is its own.
            total, encode, decode, bitrate = _baseline_ms(frames, reading.kbps)
            out.baseline.append(total)
            note("frames_in_window", len(reading.values))
            note("received_kbps", reading.kbps)
            note("baseline_bitrate_kbps", bitrate / 1000)
            note("baseline_encode_ms", encode)
            note("baseline_decode_ms", decode)
            for key, value in reading.extra.items():
                note(key, value)
            if kind == "decoded" and not settings.quick:
                bare = await _bare_once(timing)
                note("bare_aiortc_p50", p50(bare) if bare else None)
                note("bare_aiortc_p95", p95(bare) if len(bare) > 1 else None)
    out.notes = {
        **{f"{k}_median": _median(v) for k, v in notes.items()},
        "p50_per_run": out.p50,
        "p95_per_run": out.p95,
        "resolution": f"{WIDTH}x{HEIGHT}@{FPS}",
        "codec": CODEC,
        "warmup_s": timing.warmup,
        "window_s": timing.window,
        "baseline_frames": timing.baseline_frames,
    }
    _cache[kind, settings] = out
    return out


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _runner(kind: str, pick: str) -> Any:
    async def run(settings: RunSettings) -> Samples:
        got = await _collect(kind, settings)
        values: list[float] = getattr(got, pick)
        return Samples(list(values), list(got.baseline), dict(got.notes))

    return run


_DECODED = (
    "stamp in the emulated camera's picture (640x480@30, VP8) to the same stamp read from the decoded "
    "frame at the receiver (view.render_frame): a `kiosk endpoint` process sends, a Calls endpoint in the "
    "harness receives, via the embedded call server on loopback; {p} over the frames of a window after a warm-up, per run"
)
_SHOWN = (
    "stamp in the emulated camera's picture (640x480@30, VP8) to the same stamp read from the frame when "
    "the real kiosk UI (kiosk run's code, Kivy offscreen, child process) has drawn it (the buffer swap "
    "after the tile's texture upload, GPU finished); the caller is a Calls endpoint in the harness; {p} per run"
)
_BASELINE = (
    "PyAV VP8 encode + decode CPU time of one 640x480 test-pattern frame (mean over a short sequence, "
    "aiortc's encoder settings, at the bitrate the call received)"
)
_P95_TARGET = "; p95 target (baseline + two frame intervals, 66.7 ms) is ours"


BENCHMARKS = [
    Benchmark(
        name="latency_decoded_p50",
        unit="ms",
        target_ratio=None,
        target_over_baseline=round(FRAME_MS, 1),
        measures=_DECODED.format(p="p50"),
        baseline_measures=_BASELINE,
        run=_runner("decoded", "p50"),
    ),
    Benchmark(
        name="latency_decoded_p95",
        unit="ms",
        target_ratio=None,
        target_over_baseline=round(2 * FRAME_MS, 1),
        measures=_DECODED.format(p="p95") + _P95_TARGET,
        baseline_measures=_BASELINE,
        run=_runner("decoded", "p95"),
    ),
    Benchmark(
        name="latency_on_screen_p50",
        unit="ms",
        target_ratio=None,
        target_over_baseline=round(FRAME_MS, 1),
        measures=_SHOWN.format(p="p50"),
        baseline_measures=_BASELINE,
        run=_runner("on_screen", "p50"),
    ),
    Benchmark(
        name="latency_on_screen_p95",
        unit="ms",
        target_ratio=None,
        target_over_baseline=round(2 * FRAME_MS, 1),
        measures=_SHOWN.format(p="p95") + _P95_TARGET,
        baseline_measures=_BASELINE,
        run=_runner("on_screen", "p95"),
    ),
]
