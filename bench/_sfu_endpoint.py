"""The measured process of bench.sfu_group: a Calls endpoint with emulated 640x480@30 VP8 video and a tone.

Run as `python -m bench._sfu_endpoint --server URL --auth-token TOKEN --ice-address ADDR`. ICE offers
only ADDR (Janus cannot use loopback; tests/janus_server.py). It logs in, says {"ready": true}, then
obeys the harness's commands (one JSON object per stdin line):

  {"cmd": "measure", "session": ID, "peers": [uid, ...], "warmup": S, "window": S}
      join, wait until video and audio from every listed peer are decoded, let the call run S
      seconds, then read over the window: this process's CPU (all threads, /proc/self/stat), the
      CPU of each thread by name (/proc/self/task), frames captured, the encoders with their sinks
      and frames encoded, frames decoded from each peer; answer with those, then leave.
  {"cmd": "quit"}   close and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench._memory_common import command, emit, run_child, wait_for
from kiosk.calls import Calls, CallSettingsBuilder, SessionInfo
from kiosk.media.emulated import EmulatedDevices

WIDTH, HEIGHT, FPS = 640, 480, 30
MEDIA_TIMEOUT = 30.0
TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float:
    text = Path(path).read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may contain spaces
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _thread_group(name: str) -> str:
    """A thread's name without its serial number, so that e.g. five decoder threads add up."""
    if name == "MainThread":
        return "loop (MainThread)"
    return re.sub(r"[-_ ]?\d+$", "", name) or name


def _threads_cpu() -> dict[int, tuple[str, float]]:
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            cpu = _stat_cpu(f"{task}/stat")
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        tid = int(task.name)
        out[tid] = (_thread_group(names.get(tid, "unnamed (native)")), cpu)
    return out


async def _snapshot(session: SessionInfo, peers: list[str]) -> dict[str, Any]:
    stats = {uid: await p.collect_stats() for uid in peers if (p := session.peers.get(uid)) is not None}
    figures = session.capture_figures()
    return {
        "wall": time.monotonic(),
        "cpu": _stat_cpu("/proc/self/stat"),
        "threads": _threads_cpu(),
        "captured": figures.frames_captured,
        "audio_captured": figures.audio_frames_captured,
        "encoders": [(e.kind, e.mime, e.sinks, e.frames_encoded, e.bitrate) for e in figures.encoders],
        "decoded": {
            uid: (
                p.video_frames_decoded,
                p.audio_frames_decoded,
                p.video_packets_received + p.audio_packets_received,
            )
            for uid, p in stats.items()
        },
    }


def _window(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    wall = b["wall"] - a["wall"]
    by_thread: dict[str, float] = {}
    for tid, (name, cpu) in b["threads"].items():
        start = a["threads"].get(tid, (name, 0.0))[1]  # a thread born in the window counts from zero
        by_thread[name] = by_thread.get(name, 0.0) + (cpu - start) / wall
    cpu = (b["cpu"] - a["cpu"]) / wall
    by_thread["(rest: threads ended in the window, tick rounding)"] = cpu - sum(by_thread.values())
    before = {(kind, mime): encoded for kind, mime, _, encoded, _ in a["encoders"]}
    return {
        "wall_s": wall,
        "cpu_per_s": cpu,
        "cpu_per_s_by_thread": {k: round(v, 4) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])},
        "video_frames_captured": b["captured"] - a["captured"],
        "audio_frames_captured": b["audio_captured"] - a["audio_captured"],
        "encoders": [
            {
                "kind": kind,
                "codec": mime,
                "sinks": sinks,
                "frames_encoded": encoded - before.get((kind, mime), 0),
                "bitrate": bitrate,
            }
            for kind, mime, sinks, encoded, bitrate in b["encoders"]
        ],
        "video_fps_decoded": _rates(a, b, 0, wall),
        "audio_fps_decoded": _rates(a, b, 1, wall),
        "packets_per_s_received": sum(_rates(a, b, 2, wall).values()),
    }


def _rates(a: dict[str, Any], b: dict[str, Any], index: int, wall: float) -> dict[str, float]:
    """Per peer, a counter of `decoded` (0 video frames, 1 audio frames, 2 packets) per second."""
    return {
        uid: (b["decoded"][uid][index] - a["decoded"][uid][index]) / wall
        for uid in b["decoded"]
        if uid in a["decoded"]
    }


async def _measure(calls: Calls, message: dict[str, Any]) -> dict[str, Any]:
    peers = [str(uid) for uid in message["peers"]]
    started = time.monotonic()
    token = await calls.generate_token(str(message["session"]))
    session = await calls.start_session(token, CallSettingsBuilder().build())
    assert session is not None

    def receiving_all() -> bool:
        return all(
            (p := session.peers.get(uid)) is not None
            and p.stats.video_frames_decoded > 0
            and p.stats.audio_frames_decoded > 0
            for uid in peers
        )

    try:
        await wait_for(receiving_all, MEDIA_TIMEOUT, f"video and audio from {peers}")
        media_s = time.monotonic() - started
        await asyncio.sleep(float(message["warmup"]))
        first = await _snapshot(session, peers)
        await asyncio.sleep(float(message["window"]))
        result = _window(first, await _snapshot(session, peers))
        result.update(media_mode=session.media_mode, to_all_media_s=round(media_s, 2))
        return result
    finally:
        await calls.end_session()


async def serve(server: str, auth_token: str, ice_address: str) -> None:
    calls = Calls(
        server,
        auth_token=auth_token,
        devices=EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=440),
        video_codec="VP8",
        ice_host_addresses=[ice_address],
    )
    try:
        await calls.login()
        emit({"ready": True})
        while True:
            message = await command()
            kind = message.get("cmd")
            if kind == "quit":
                return
            if kind != "measure":
                raise ValueError(f"unknown command {message!r}")
            emit({"measured": await _measure(calls, message)})
    finally:
        await calls.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._sfu_endpoint")
    parser.add_argument("--server", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--ice-address", required=True)
    args = parser.parse_args()
    return run_child(serve(args.server, args.auth_token, args.ice_address))


if __name__ == "__main__":
    sys.exit(main())
