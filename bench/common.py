"""Pieces the benchmarks share: an embedded call server with users, and loopback-only ICE."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kiosk.calls import ice
from kiosk.server.app import RunningServer, start_server
from kiosk.server.config import ServerConfig
from kiosk.server.limits import LIMITS, RateLimits

LOOPBACK = ["127.0.0.1"]
BENCH_LIMITS = RateLimits(
    ws_burst=100_000, ws_rate=100_000.0, ws_burst_bytes=1 << 30, ws_rate_bytes=float(1 << 30)
)


def loopback_only() -> None:
    """Host candidates on 127.0.0.1 only, for the SDK and the bare baselines alike (process-wide)."""
    ice.restrict_host_addresses(LOOPBACK)


@dataclass(frozen=True)
class BenchServer:
    server: RunningServer
    tmp: Path
    tokens: dict[str, str]  # uid -> auth token

    @property
    def url(self) -> str:
        return self.server.url


@asynccontextmanager
async def bench_server(*uids: str, **config_options: Any) -> AsyncIterator[BenchServer]:
    """An embedded call server on 127.0.0.1 (port 0) in a temp dir, with these users created;
    `config_options` are further ServerConfig fields (e.g. janus_url)."""
    admin_key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=Path(tmp) / "server",
            admin_key=admin_key,
            **{"max_pending_websockets_per_address": 0, **config_options},  # every client is 127.0.0.1
        )
        server = await start_server(config)
        # The benchmarks drive single connections far harder than a kiosk does (1,000 join/leave
        # cycles at a dozen a second); the per-connection rate limit guards a real server against
        # floods and is not what is measured here.
        server.app[LIMITS].limits = BENCH_LIMITS
        try:
            tokens = {}
            async with aiohttp.ClientSession() as http:
                for uid in uids:
                    async with http.post(
                        f"{server.url}/v1/users",
                        json={"uid": uid, "name": uid},
                        headers={"X-Admin-Key": admin_key},
                    ) as response:
                        body = await response.json()
                        if response.status != 201:
                            raise RuntimeError(f"creating user {uid}: {body}")
                        tokens[uid] = str(body["authToken"])
            yield BenchServer(server, Path(tmp), tokens)
        finally:
            await server.close()


def new_session_id() -> str:
    return "bench-" + uuid.uuid4().hex[:12]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)


async def start_endpoint(
    env: BenchServer, uid: str, session_id: str, log_path: Path, duration: float, *options: str
) -> asyncio.subprocess.Process:
    """`kiosk endpoint` as `uid` in its own process, joining `session_id` on loopback; its output goes
    to `log_path`. `duration` is a safety net only: the benchmark ends the call itself."""
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiosk.cli", "endpoint", "--server", env.url,
            "--auth-token", env.tokens[uid], "--session", session_id, "--loopback",
            "--duration", str(duration), *options,
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def finish_process(process: asyncio.subprocess.Process | None, terminate: bool = False) -> None:
    """Wait for a child to exit (after SIGTERM if `terminate`), killing it after 10 s."""
    if process is None or process.returncode is not None:
        return
    if terminate:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a child's log, on one line, for an error message."""
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
