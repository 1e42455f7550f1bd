"""sfu_group_6_party_cpu: CPU of one endpoint in a 6-party session through Janus, against a 1:1 call.

Subject: the measured endpoint (bench._sfu_endpoint in its own process: Calls SDK, emulated 640x480 @
30 fps VP8 and tone microphone) joins a session where five lighter participants already are; the
fifth of them took the session past the mesh limit (4), so its media goes through a Janus VideoRoom
(Debian's janus, started as tests/janus_server.py starts it). The measured endpoint publishes its
camera and microphone once and subscribes to the five others' feeds, decoding five videos and five
audio streams. Its CPU (user + system, all threads, /proc/self/stat) is read over a window once it
decodes video and audio from all five.

The five others are Calls endpoints in the harness process with emulated 320x240 @ 15 fps VP8 and a
tone (lighter than the measured one, so that six endpoints and Janus fit on a small machine); each
publishes video and audio to the room and subscribes to the others.

Baseline: the same endpoint process and window in a 1:1 mesh call with one of those lighter
participants, measured in the same run, interleaved with the subject. Target: at most 2.0 times
the 1:1 call. The encode (the biggest single cost of a 1:1 call) must happen once, as in the 1:1
call; what a group call adds is receiving: four more decoders (five 320x240@15 videos are about 60 %
of the pixels of one 640x480@30 one), four more Opus decoders and their packets. "Near a 1:1 call"
is read as: all that together costs less than the whole 1:1 call did once more.

The notes give, for each size, the encoders of the measured endpoint with their sinks and frames
encoded against frames captured (one video encoder, one sink: it encodes once for the room), the
frame rates it decoded from each peer, its CPU per thread (loop, encoder, decoders), a 4-party
mesh (full mode), and the CPU of Janus and of the harness process (the five others) from the
measured endpoint's join to its leave.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchServer, bench_server, loopback_only, new_session_id
from bench.cpu_call import process_cpu_seconds
from bench.harness import Benchmark, RunSettings, Samples
from bench.memory import Child
from kiosk.calls import Calls, CallSettingsBuilder
from kiosk.media.emulated import EmulatedDevices

ROOT = Path(__file__).resolve().parents[1]
MEASURED = "sfu-measured"
OTHERS = ("sfu-1", "sfu-2", "sfu-3", "sfu-4", "sfu-5")
OTHER_WIDTH, OTHER_HEIGHT, OTHER_FPS = 320, 240, 15
MESH_LIMIT = 4  # the server's default; the fifth participant takes a session to the SFU
MEDIA_TIMEOUT = 45.0  # generous: the move of five endpoints from mesh to the room takes seconds


def _janus_module() -> Any:
    """tests/janus_server.py (JanusServer, running_janus, VIDEOROOM_ADMIN_KEY): the way tests start Janus."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import janus_server

    return janus_server


def _timing(settings: RunSettings) -> tuple[float, float]:
    return (1.0, 2.0) if settings.quick else (3.0, 6.0)  # warm-up, window (s)


async def _measure(
    env: BenchServer, child: Child, others: list[Calls], janus_pid: int, warmup: float, window: float
) -> dict[str, Any]:
    """One session of the measured endpoint with `others` (joined first); what the child read."""
    session_id = new_session_id()
    uids = [OTHERS[i] for i in range(len(others))]
    try:
        for calls in others:
            await calls.start_session(await calls.generate_token(session_id), CallSettingsBuilder().build())
        cpu0 = {"janus": process_cpu_seconds(janus_pid), "harness": time.process_time()}
        wall0 = time.monotonic()
        await child.send(
            {"cmd": "measure", "session": session_id, "peers": uids, "warmup": warmup, "window": window}
        )
        reply = (await child.receive(timeout=MEDIA_TIMEOUT + warmup + window + 15))["measured"]
        wall = time.monotonic() - wall0
        reply["janus_cpu_per_s"] = (process_cpu_seconds(janus_pid) - cpu0["janus"]) / wall
        reply["harness_cpu_per_s"] = (time.process_time() - cpu0["harness"]) / wall
        return dict(reply)
    finally:
        for calls in others:
            await calls.end_session()


def _check(size: int, reading: dict[str, Any]) -> None:
    """The figure means something only if the session took the intended path and encoded once."""
    mode = "sfu" if size > MESH_LIMIT else "mesh"
    if reading["media_mode"] != mode:
        raise RuntimeError(f"{size}-party session went through {reading['media_mode']}, not {mode}")
    video = [e for e in reading["encoders"] if e["kind"] == "video" and e["sinks"]]
    if size > MESH_LIMIT and (len(video) != 1 or video[0]["sinks"] != 1):
        raise RuntimeError(f"the measured endpoint did not encode once for the room: {reading['encoders']}")


async def _run_sizes(
    env: BenchServer,
    address: str,
    janus_pid: int,
    sizes: tuple[int, ...],
    runs: int,
    readings: dict[int, list[dict[str, Any]]],
    warmup: float,
    window: float,
) -> None:
    others: list[Calls] = []
    child: Child | None = None
    try:
        for uid in OTHERS:
            calls = Calls(
                env.url,
                auth_token=env.tokens[uid],
                devices=EmulatedDevices(width=OTHER_WIDTH, height=OTHER_HEIGHT, fps=OTHER_FPS),
                video_codec="VP8",
                ice_host_addresses=[address],  # process-wide; run() restores loopback
            )
            others.append(calls)
            await calls.login()
        child = await Child.start(
            "bench._sfu_endpoint",
            ["--server", env.url, "--auth-token", env.tokens[MEASURED], "--ice-address", address],
            env.tmp / "sfu-measured.log",
            "the measured endpoint",
        )
        await child.receive()  # ready
        for _ in range(runs):
            # Interleaved, so drift in the machine's load touches every size alike.
            for size in sizes:
                reading = await _measure(env, child, others[: size - 1], janus_pid, warmup, window)
                _check(size, reading)
                readings[size].append(reading)
    finally:
        if child is not None:
            await child.stop()
        for calls in others:
            await calls.close()


async def run(settings: RunSettings) -> Samples:
    janus_server = _janus_module()
    warmup, window = _timing(settings)
    runs = settings.repeats(full=5, quick=1)
    sizes = (2, 6) if settings.quick else (2, 4, 6)
    readings: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-janus-") as tmp:
        with janus_server.running_janus(Path(tmp)) as janus:
            assert janus.process is not None
            try:
                async with bench_server(
                    MEASURED,
                    *OTHERS,
                    janus_url=janus.url,
                    janus_admin_key=janus_server.VIDEOROOM_ADMIN_KEY,
                    mesh_limit=MESH_LIMIT,
                ) as env:
                    await _run_sizes(
                        env, janus.ice_address, janus.process.pid, sizes, runs, readings, warmup, window
                    )
            finally:
                loopback_only()  # the others' ICE restriction is process-wide: what other benchmarks expect
    return _samples(readings, warmup, window)


def _median_by_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: round(statistics.median(d.get(k, 0.0) for d in dicts), 4) for k in keys}


def _samples(readings: dict[int, list[dict[str, Any]]], warmup: float, window: float) -> Samples:
    notes: dict[str, Any] = {
        "measured_endpoint": "bench._sfu_endpoint process, Calls SDK, emulated 640x480@30 VP8 + 440 Hz tone",
        "other_participants": (
            f"{len(OTHERS)} Calls endpoints in the harness process, emulated {OTHER_WIDTH}x{OTHER_HEIGHT}"
            f"@{OTHER_FPS} VP8 + tone, each publishing video and audio and subscribing to every other feed"
        ),
        "mesh_limit": MESH_LIMIT,
        "ice": "host candidates on the host's first non-loopback IPv4 address only (Janus and aiortc)",
        "warmup_s": warmup,
        "window_s": window,
    }
    label = {2: "1to1_mesh", 4: "4party_mesh", 6: "6party_sfu"}
    for size, rows in readings.items():
        name = label[size]
        notes[f"cpu_per_s_{name}"] = [round(r["cpu_per_s"], 4) for r in rows]
        notes[f"cpu_per_s_by_thread_{name}"] = _median_by_key([r["cpu_per_s_by_thread"] for r in rows])
        notes[f"video_fps_decoded_per_peer_{name}"] = [
            round(statistics.median(r["video_fps_decoded"].values()), 1) for r in rows
        ]
        notes[f"min_video_fps_decoded_of_any_peer_{name}"] = [
            round(min(r["video_fps_decoded"].values()), 1) for r in rows
        ]
        notes[f"audio_fps_decoded_per_peer_{name}"] = [
            round(statistics.median(r["audio_fps_decoded"].values()), 1) for r in rows
        ]
        notes[f"packets_per_s_received_{name}"] = [round(r["packets_per_s_received"]) for r in rows]
        notes[f"encoders_{name}"] = rows[-1]["encoders"]
        notes[f"video_frames_encoded_vs_captured_{name}"] = [
            [
                sum(e["frames_encoded"] for e in r["encoders"] if e["kind"] == "video"),
                r["video_frames_captured"],
            ]
            for r in rows
        ]
        notes[f"janus_cpu_per_s_join_to_leave_{name}"] = [round(r["janus_cpu_per_s"], 3) for r in rows]
        notes[f"harness_cpu_per_s_join_to_leave_{name}"] = [round(r["harness_cpu_per_s"], 3) for r in rows]
        notes[f"to_all_media_s_{name}"] = [r["to_all_media_s"] for r in rows]
    if 4 in readings:
        notes["ratio_4party_mesh_to_1to1"] = round(
            statistics.median(r["cpu_per_s"] for r in readings[4])
            / statistics.median(r["cpu_per_s"] for r in readings[2]),
            3,
        )
    return Samples(
        [r["cpu_per_s"] for r in readings[6]],
        [r["cpu_per_s"] for r in readings[2]],
        notes,
    )


BENCHMARKS = [
    Benchmark(
        name="sfu_group_6_party_cpu",
        unit="cpu-s/s",
        target_ratio=2.0,
        measures=(
            "CPU time over wall time of one measured endpoint process (Calls SDK, emulated 640x480@30 "
            "VP8 + tone) in a 6-party session through Janus's VideoRoom: it publishes once and decodes "
            "the five others' feeds (320x240@15 VP8 + tone, Calls endpoints in the harness process), "
            "read from /proc over a window after warm-up; target 2.0x is ours (encode once as in 1:1, "
            "plus four more received feeds)"
        ),
        baseline_measures=(
            "the same endpoint process and window in a 1:1 mesh call with one of those lighter "
            "participants, measured in the same run"
        ),
        run=run,
    )
]
