"""group_cost_3_peers: CPU of one endpoint sending its camera and microphone to 1, 2 and 3 peers.

Subject: the measured endpoint (`kiosk endpoint --session ...` in its own process, emulated 640x480 @
30 fps VP8 and tone microphone) in a session with 3 listening peers: Calls endpoints in the harness
process that join with their video paused and their microphone muted, so the measured endpoint
sends video and audio to each and receives only their (digitally silent) audio. Its CPU (user +
system, all threads, /proc) is read over a window once every peer decodes its video.

Baseline: the same with one peer. The figure passes when 3 peers cost at most 1.4 times one: the
SDK encodes video and audio once per codec and shares the packets (kiosk.media.encoding), where
aiortc alone would encode for every peer. The notes give 2 peers too, and how many frames the shared
encoder encoded against the frames the peers decoded, which shows the encoding was shared.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
from bench.cpu_call import MEDIA_TIMEOUT, Timing, process_cpu_seconds
from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import Calls, CallSettingsBuilder
from kiosk.media.emulated import EmulatedDevices

MEASURED = "group-measured"
LISTENERS = ("group-1", "group-2", "group-3")
WIDTH, HEIGHT, FPS = 640, 480, 30


def _timing(settings: RunSettings) -> Timing:
    return Timing(warmup=1.0, window=2.0) if settings.quick else Timing(warmup=3.0, window=6.0)


async def _measure(env: BenchServer, peers: int, timing: Timing) -> tuple[float, dict[str, Any]]:
    """CPU per second of the measured endpoint sending to `peers` listeners."""
    session_id = new_session_id()
    listeners: list[Calls] = []
    log_path = env.tmp / f"group-{session_id}.log"
    process: asyncio.subprocess.Process | None = None
    try:
        for uid in LISTENERS[:peers]:
            calls = Calls(
                env.url,
                auth_token=env.tokens[uid],
                devices=EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS),
                ice_host_addresses=["127.0.0.1"],
            )
            listeners.append(calls)
            quiet = CallSettingsBuilder().start_with_video_muted(True).start_with_audio_muted(True).build()
            await calls.start_session(await calls.generate_token(session_id), quiet)
        process = await start_endpoint(
            env,
            MEASURED,
            session_id,
            log_path,
            MEDIA_TIMEOUT + timing.warmup + timing.window + 10,
            "--codec",
            "VP8",
        )
        proc = process

        def everyone_sees_video() -> bool:
            if proc.returncode is not None:
                raise RuntimeError(f"endpoint exited early ({proc.returncode}): {tail(log_path)}")
            for calls in listeners:
                session = calls.session
                peer = session.peers.get(MEASURED) if session is not None else None
                if peer is None or peer.stats.video_frames_decoded == 0:
                    return False
            return True

        await wait_until(everyone_sees_video, MEDIA_TIMEOUT, f"video at {peers} listeners")
        await asyncio.sleep(timing.warmup)

        def decoded() -> list[int]:
            return [c.session.peers[MEASURED].stats.video_frames_decoded for c in listeners if c.session]

        cpu0, wall0, frames0 = process_cpu_seconds(proc.pid), asyncio.get_running_loop().time(), decoded()
        await asyncio.sleep(timing.window)
        cpu1, wall1, frames1 = process_cpu_seconds(proc.pid), asyncio.get_running_loop().time(), decoded()
        if proc.returncode is not None:
            raise RuntimeError(f"endpoint left during the window: {tail(log_path)}")
        wall = wall1 - wall0
        fps = [(b - a) / wall for a, b in zip(frames0, frames1, strict=True)]
        return (cpu1 - cpu0) / wall, {"fps_at_each_listener": fps}
    finally:
        for calls in listeners:
            await calls.close()
        await finish_process(process)


async def run(settings: RunSettings) -> Samples:
    loopback_only()
    timing = _timing(settings)
    runs = settings.repeats(full=5, quick=1)
    by_peers: dict[int, list[float]] = {1: [], 2: [], 3: []}
    fps: dict[int, list[float]] = {1: [], 2: [], 3: []}
    async with bench_server(MEASURED, *LISTENERS) as env:
        for _ in range(runs):
            # Interleaved, so drift in the machine's load touches every size alike.
            for peers in (1, 3) if settings.quick else (1, 2, 3):
                cpu, notes = await _measure(env, peers, timing)
                by_peers[peers].append(cpu)
                fps[peers] += notes["fps_at_each_listener"]
    summary: dict[str, Any] = {f"cpu_per_s_{n}_peers": values for n, values in by_peers.items() if values}
    summary.update({f"fps_at_listeners_{n}_peers": values for n, values in fps.items() if values})
    summary.update({"warmup_s": timing.warmup, "window_s": timing.window, "codec": "VP8"})
    return Samples(by_peers[3], by_peers[1], summary)


BENCHMARKS = [
    Benchmark(
        name="group_cost_3_peers",
        unit="cpu-s/s",
        target_ratio=1.4,
        measures=(
            "CPU time over wall time of one `kiosk endpoint` process sending emulated 640x480@30 VP8 "
            "video and tone audio to 3 peers in one session (peers joined with video paused and "
            "microphone muted), read from /proc over a window after warm-up"
        ),
        baseline_measures="the same endpoint and window with 1 peer, measured in the same run",
        run=run,
    )
]
