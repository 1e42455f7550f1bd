"""The measured process of bench.memory: a Calls endpoint with emulated 640x480@30 VP8 video and a tone.

Run as `python -m bench._memory_endpoint --server URL --auth-token TOKEN`. It logs in, says
{"ready": ...}, then obeys the harness's commands (one JSON object per stdin line):

  {"cmd": "call", "session": ID, "warmup": S, "readings": N, "interval": S}
      join, wait for the first decoded remote video frame, let the call run S seconds, report N
      VmRSS readings (no collection: the call goes on) as {"in_call_rss_mb": [...]}; stay in the call.
  {"cmd": "cycle", "session": ID, "read": BOOL}
      join, wait for the first decoded remote video frame, leave; if `read`, gc.collect() and read
      VmRSS; answer {"left": n, "rss_mb": value or null, "first_frame_ms": ...}.
  {"cmd": "quit"}   leave any session, close, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench._memory_common import (
    FIRST_FRAME_TIMEOUT,
    FPS,
    HEIGHT,
    WIDTH,
    command,
    emit,
    in_call_readings,
    rss_mb,
    run_child,
    settled_reading,
    wait_for,
)
from kiosk.calls import Calls, CallSettingsBuilder, SessionInfo
from kiosk.media.emulated import EmulatedDevices


async def _join(calls: Calls, session_id: str) -> float:
    """Join and wait for the first decoded remote video frame; milliseconds that took.

    The session is not returned: a reference kept here would keep the last session alive at the
    moment memory is read.
    """
    started = time.monotonic()
    token = await calls.generate_token(session_id)
    session: SessionInfo | None = await calls.start_session(token, CallSettingsBuilder().build())

    def decoded() -> bool:
        return session is not None and session.first_remote_frame_ms is not None

    await wait_for(decoded, FIRST_FRAME_TIMEOUT, "decoded remote video")
    session = None
    return (time.monotonic() - started) * 1000


async def serve(server: str, auth_token: str) -> None:
    calls = Calls(
        server,
        auth_token=auth_token,
        devices=EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=440),
        video_codec="VP8",
        ice_host_addresses=["127.0.0.1"],
    )
    try:
        await calls.login()
        emit({"ready": True, "rss_mb": rss_mb()})
        cycles = 0
        while True:
            message: dict[str, Any] = await command()
            kind = message.get("cmd")
            if kind == "quit":
                return
            if kind == "call":
                await _join(calls, str(message["session"]))
                await asyncio.sleep(float(message["warmup"]))
                readings = await in_call_readings(int(message["readings"]), float(message["interval"]))
                emit({"in_call_rss_mb": readings})
            elif kind == "cycle":
                first_frame_ms = await _join(calls, str(message["session"]))
                await calls.end_session()
                cycles += 1
                reading = settled_reading() if message.get("read") else {}
                emit({"left": cycles, **reading, "first_frame_ms": round(first_frame_ms, 1)})
            else:
                raise ValueError(f"unknown command {message!r}")
    finally:
        await calls.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._memory_endpoint")
    parser.add_argument("--server", required=True)
    parser.add_argument("--auth-token", required=True)
    args = parser.parse_args()
    return run_child(serve(args.server, args.auth_token))


if __name__ == "__main__":
    sys.exit(main())
