"""server_memory_per_connection and server_ringing_latency_p99: call-server capacity.

Subject: `kiosk server` in its own process (127.0.0.1, port 0, a temp --data-dir, an admin key).
Users are written straight into the data directory's database before it starts (what `kiosk users
add` does, on one database connection): about 0.08 ms a user here, against 0.7 ms through
`POST /v1/users` one by one, and the server's memory is not touched before the "before" reading. Two "probe" endpoints live in the harness process; the other N - 2 (N = 2,000 in
full mode, 200 in quick mode) are the load: bench/server_capacity_load.py, a process of its own,
opens their signaling WebSockets with at most 64 handshakes in flight, logs each in with `auth`
exactly as docs/protocol.md says, and keeps them connected and read, with the Calls SDK's 20 s
heartbeat, as idle kiosks are.

server_memory_per_connection: (VmRSS of the server with N endpoints logged in - VmRSS with the two
probes only) / (N - 2), in KB. The "before" reading comes after the probes have rung each other, so
one-time costs (first WebSocket, first call, lazy imports) are not charged to the connections.
Baseline: the same figure for a bare aiohttp WebSocket echo server (same heartbeat and frame limit)
in its own process, with 2 then N connections each having exchanged one message: what aiohttp itself
costs per connection, the floor under any aiohttp signaling server.

server_ringing_latency_p99: with all N endpoints connected, the probes ring each other in turn
(`POST /v1/calls`); the clock runs from just before the request to the moment the receiving probe's
WebSocket delivers `call.incoming`; the caller then hangs up (`end`: the call becomes `cancelled`).
One ring at a time. In full mode the rings start at even intervals over a little more than one 20 s
heartbeat period, so they meet the ping/pong traffic of all N endpoints (which connected within
seconds of each other, as after a server restart) in every phase; in quick mode they follow each
other after a short gap. The figure is the 99th percentile of a run.
Baseline: the same rings on the same server before the load connected (only the two probes; one
after another after a short gap: with two endpoints there is no traffic to meet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import Benchmark, RunSettings, Samples
from bench.server_capacity_load import (
    HEARTBEAT_SECONDS,
    EchoClients,
    Endpoint,
    close_endpoints,
    connect_endpoints,
    raise_open_file_limit,
    ws_client_session,
)
from kiosk.protocol import MAX_MESSAGE_BYTES
from kiosk.server.models import User
from kiosk.server.storage import SqliteDatabase
from kiosk.server.tokens import hash_secret, new_secret

HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 30.0
LOAD_START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
RING_TIMEOUT = 5.0
RING_GAP_SECONDS = 0.01
WARMUP_RINGS = 3
LISTENING = re.compile(r"listening on (http://\S+)")
CONNECTED = re.compile(r"connected (\d+) in ([\d.]+) s")


@dataclass(frozen=True)
class Plan:
    endpoints: int
    rings: int
    runs: int
    settle_seconds: float  # after the last connection, before reading RSS: the server finishes its work
    # Seconds from one loaded ring's start to the next (see the module docstring).
    loaded_ring_period: float


def _plan(settings: RunSettings) -> Plan:
    runs = settings.repeats(full=3, quick=1)
    if settings.quick:
        return Plan(200, 30, runs, 0.5, RING_GAP_SECONDS)
    return Plan(2000, 200, runs, 1.0, HEARTBEAT_SECONDS * 1.05 / 200)


# ----------------------------------------------------------------------------- processes


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a process, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no open-file limit for process {pid}")


async def settled_rss_kb(pid: int, settle_seconds: float) -> int:
    """RSS once the server has had time to finish what the last connections started."""
    await asyncio.sleep(settle_seconds)
    readings = []
    for _ in range(3):
        readings.append(vm_rss_kb(pid))
        await asyncio.sleep(0.1)
    return int(statistics.median(readings))


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _search_log(path: Path, pattern: re.Pattern[str]) -> re.Match[str] | None:
    return pattern.search(path.read_text(errors="replace"))


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the harness dies, so no process outlives a killed run."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Child:
    pid: int
    ready: re.Match[str]  # the line that said it was ready
    log: Path


@asynccontextmanager
async def child_process(
    argv: Sequence[str],
    log_path: Path,
    ready: re.Pattern[str],
    timeout: float,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Child]:
    """Start a process, yield once its output matches `ready`; always stop it (SIGTERM, then kill)."""
    name = " ".join(argv[1:4])
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,  # a file, not a pipe: nobody would read a pipe while the load runs
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while (found := _search_log(log_path, ready)) is None:
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}): {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready within {timeout} s: {_tail(log_path)}")
            await asyncio.sleep(0.02)
        yield Child(proc.pid, found, log_path)
        if proc.returncode is not None:
            raise RuntimeError(f"{name} exited during the run ({proc.returncode}): {_tail(log_path)}")
    finally:
        await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    try:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    finally:
        if proc.returncode is None:  # did not stop in time, or we were cancelled while waiting
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def kiosk_server_argv(data_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kiosk.cli",
        "server",
        "--host",
        HOST,
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        # The load is thousands of kiosks on one loopback address, connecting at once.
        "--max-pending-websockets",
        "0",
    ]


def echo_server_argv() -> list[str]:
    return [sys.executable, "-m", "bench.server_capacity", "echo-server"]


def load_argv(mode: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.server_capacity_load", mode, "--url", url, *extra]


# ----------------------------------------------------------------------------- the baseline server


async def _echo(request: web.Request) -> web.WebSocketResponse:
    # The kiosk server's settings (kiosk/server/signaling.py), so only what it adds differs.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=4 * MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def _serve_echo() -> None:
    app = web.Application()
    app.router.add_get("/ws", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0).start()
        port = int(runner.addresses[0][1])
        print(f"listening on http://{HOST}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------- ringing


async def ring_once(http: aiohttp.ClientSession, url: str, caller: Endpoint, receiver: Endpoint) -> float:
    """Milliseconds from `POST /v1/calls` to the receiver's `call.incoming`; then the caller hangs up."""
    receiver.incoming = asyncio.get_running_loop().create_future()
    try:
        started = time.perf_counter()
        async with http.post(
            f"{url}/v1/calls", json={"receiverUid": receiver.uid, "callType": "video"}, headers=caller.bearer
        ) as response:
            call = await response.json()
        if response.status != 201 or call.get("status") != "initiated":
            raise RuntimeError(f"ringing {receiver.uid} from {caller.uid}: {response.status} {call}")
        arrived, session_id = await asyncio.wait_for(receiver.incoming, RING_TIMEOUT)
    finally:
        receiver.incoming = None
    if session_id != call["sessionId"]:
        raise RuntimeError(f"{receiver.uid} got call.incoming for {session_id}, expected {call['sessionId']}")
    # Hung up before an answer: the call becomes cancelled and both users are free for the next ring.
    async with http.post(f"{url}/v1/calls/{session_id}/end", headers=caller.bearer) as response:
        ended = await response.json()
    if response.status != 200 or ended.get("status") != "cancelled":
        raise RuntimeError(f"hanging up {session_id}: {response.status} {ended}")
    return (arrived - started) * 1000


async def ring_series(
    http: aiohttp.ClientSession,
    url: str,
    pairs: Sequence[tuple[Endpoint, Endpoint]],
    period: float = RING_GAP_SECONDS,
) -> list[float]:
    """One ring at a time, starting every `period` seconds (at least RING_GAP_SECONDS apart)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    latencies = []
    for i, (caller, receiver) in enumerate(pairs):
        latencies.append(await ring_once(http, url, caller, receiver))
        await asyncio.sleep(max(RING_GAP_SECONDS, started + (i + 1) * period - loop.time()))
    return latencies


def percentile(values: Sequence[float], pct: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# ----------------------------------------------------------------------------- one run


def create_users(data_dir: Path, count: int) -> list[Endpoint]:
    """Straight into the database, on one connection (the server is not running yet)."""
    db = SqliteDatabase(data_dir)
    endpoints = []
    try:
        for i in range(count):
            uid, token = f"kiosk-{i:04d}", new_secret()
            db.create_user(User(uid=uid, name=f"Kiosk {i}"), hash_secret(token))
            endpoints.append(Endpoint(uid, token))
    finally:
        db.close()
    return endpoints


def write_users(path: Path, endpoints: Sequence[Endpoint]) -> None:
    path.write_text("".join(f"{e.uid}\t{e.token}\n" for e in endpoints))
    path.chmod(0o600)


@dataclass
class EchoReading:
    kb_per_connection: float
    rss_before_kb: int
    rss_after_kb: int


async def measure_echo(plan: Plan, tmp: Path, run: int) -> EchoReading:
    """RSS per connection of the bare aiohttp echo server: 2 connections first, then N - 2 more."""
    async with (
        child_process(echo_server_argv(), tmp / f"echo-{run}.log", LISTENING, SERVER_START_TIMEOUT) as server,
        ws_client_session() as session,
    ):
        url = server.ready.group(1)
        first = EchoClients()
        try:
            await first.open(session, url, 2)
            before = await settled_rss_kb(server.pid, plan.settle_seconds)
            argv = load_argv("echo", url, "--count", str(plan.endpoints - 2))
            async with child_process(argv, tmp / f"echo-load-{run}.log", CONNECTED, LOAD_START_TIMEOUT):
                after = await settled_rss_kb(server.pid, plan.settle_seconds)
        finally:
            await first.close()
    return EchoReading((after - before) / (plan.endpoints - 2), before, after)


@dataclass
class KioskReading:
    kb_per_connection: float
    rss_before_kb: int
    rss_after_kb: int
    connect_seconds: float  # for the N - 2 loaded endpoints, handshake + auth, as the load process saw it
    idle_ms: list[float]
    loaded_ms: list[float]
    server_cpu_share_loaded: float  # server CPU seconds per wall second while the loaded rings ran
    loaded_seconds: float
    open_files_limit: int


async def measure_kiosk(
    data_dir: Path, probes: tuple[Endpoint, Endpoint], users_file: Path, plan: Plan, tmp: Path, run: int
) -> KioskReading:
    admin = {"KIOSK_ADMIN_KEY": secrets.token_urlsafe(24)}  # given, so the server prints no generated key
    first, second = probes
    alternate = [(first, second) if i % 2 == 0 else (second, first) for i in range(plan.rings)]
    server_log = tmp / f"server-{run}.log"
    async with (
        child_process(
            kiosk_server_argv(data_dir), server_log, LISTENING, SERVER_START_TIMEOUT, admin
        ) as server,
        ws_client_session() as session,
        aiohttp.ClientSession() as http,
    ):
        url = server.ready.group(1)
        try:
            await connect_endpoints(session, url, list(probes))
            await ring_series(http, url, alternate[:WARMUP_RINGS])
            idle = await ring_series(http, url, alternate)
            before = await settled_rss_kb(server.pid, plan.settle_seconds)

            argv = load_argv("kiosk", url, "--users", str(users_file))
            async with child_process(argv, tmp / f"load-{run}.log", CONNECTED, LOAD_START_TIMEOUT) as load:
                connect_seconds = float(load.ready.group(2))
                after = await settled_rss_kb(server.pid, plan.settle_seconds)
                await ring_series(http, url, alternate[:WARMUP_RINGS])
                cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
                loaded = await ring_series(http, url, alternate, plan.loaded_ring_period)
                cpu1, wall1 = cpu_seconds(server.pid), time.monotonic()
                # Every endpoint is still logged in: none was dropped while the load ran.
                async with http.get(f"{url}/v1/users", headers=first.bearer) as response:
                    online = sum(1 for u in (await response.json())["users"] if u["online"])
                if online != plan.endpoints:
                    raise RuntimeError(f"{online} of {plan.endpoints} endpoints online after the rings")
        finally:
            await close_endpoints(list(probes))
        limit = open_files_limit(server.pid)
    return KioskReading(
        kb_per_connection=(after - before) / (plan.endpoints - 2),
        rss_before_kb=before,
        rss_after_kb=after,
        connect_seconds=connect_seconds,
        idle_ms=idle,
        loaded_ms=loaded,
        server_cpu_share_loaded=(cpu1 - cpu0) / (wall1 - wall0),
        loaded_seconds=wall1 - wall0,
        open_files_limit=limit,
    )


# ----------------------------------------------------------------------------- the measurement


@dataclass
class Measurement:
    plan: Plan
    memory_kb: list[float] = field(default_factory=list)
    echo_kb: list[float] = field(default_factory=list)
    loaded_p99: list[float] = field(default_factory=list)
    idle_p99: list[float] = field(default_factory=list)
    memory_notes: dict[str, list[Any]] = field(default_factory=dict)
    ring_notes: dict[str, list[Any]] = field(default_factory=dict)
    user_creation_s: float = 0.0


def _note(notes: dict[str, list[Any]], key: str, value: Any) -> None:
    notes.setdefault(key, []).append(value)


async def measure(settings: RunSettings) -> Measurement:
    plan = _plan(settings)
    # The load process raises its own limit; the server raises its own at start (kiosk/server/app.py).
    raise_open_file_limit(100)
    result = Measurement(plan)
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-capacity-") as name:
        tmp = Path(name)
        data_dir = tmp / "server"
        started = time.monotonic()
        endpoints = await asyncio.to_thread(create_users, data_dir, plan.endpoints)
        result.user_creation_s = time.monotonic() - started
        users_file = tmp / "load-users.tsv"
        write_users(users_file, endpoints[2:])
        probes = (endpoints[0], endpoints[1])
        for run in range(plan.runs):
            echo = await measure_echo(plan, tmp, run)
            kiosk = await measure_kiosk(data_dir, probes, users_file, plan, tmp, run)
            result.memory_kb.append(kiosk.kb_per_connection)
            result.echo_kb.append(echo.kb_per_connection)
            m = result.memory_notes
            _note(m, "server_rss_before_kb", kiosk.rss_before_kb)
            _note(m, "server_rss_loaded_kb", kiosk.rss_after_kb)
            _note(m, "echo_rss_before_kb", echo.rss_before_kb)
            _note(m, "echo_rss_loaded_kb", echo.rss_after_kb)
            _note(m, "connect_and_auth_per_s", (plan.endpoints - 2) / kiosk.connect_seconds)
            _note(m, "server_open_files_limit", kiosk.open_files_limit)
            result.loaded_p99.append(percentile(kiosk.loaded_ms, 99))
            result.idle_p99.append(percentile(kiosk.idle_ms, 99))
            r = result.ring_notes
            _note(r, "loaded_p50_ms", percentile(kiosk.loaded_ms, 50))
            _note(r, "loaded_max_ms", max(kiosk.loaded_ms))
            _note(r, "idle_p50_ms", percentile(kiosk.idle_ms, 50))
            _note(r, "idle_max_ms", max(kiosk.idle_ms))
            _note(r, "server_cpu_share_during_loaded_rings", kiosk.server_cpu_share_loaded)
            _note(r, "loaded_rings_seconds", kiosk.loaded_seconds)
    return result


# One measurement serves both figures: the load is generated once per harness run.
_measured: dict[RunSettings, Measurement | Exception] = {}


async def _measurement(settings: RunSettings) -> Measurement:
    if settings not in _measured:
        try:
            _measured[settings] = await measure(settings)
        except Exception as exc:
            _measured[settings] = exc  # the second figure reports the same failure without a rerun
    found = _measured[settings]
    if isinstance(found, Exception):
        raise found
    return found


def _medians(notes: dict[str, list[Any]]) -> dict[str, Any]:
    return {f"{key}_median": statistics.median(values) for key, values in notes.items()}


async def run_memory(settings: RunSettings) -> Samples:
    m = await _measurement(settings)
    notes: dict[str, Any] = {
        "connections": m.plan.endpoints,
        "users_created_directly_in_s": round(m.user_creation_s, 2),
        **_medians(m.memory_notes),
    }
    return Samples(m.memory_kb, m.echo_kb, notes)


async def run_ringing(settings: RunSettings) -> Samples:
    m = await _measurement(settings)
    notes: dict[str, Any] = {
        "connections": m.plan.endpoints,
        "rings_per_run": m.plan.rings,
        "loaded_ring_period_s": m.plan.loaded_ring_period,
        **_medians(m.ring_notes),
        "loaded_p50_ms": m.ring_notes["loaded_p50_ms"],
        "idle_p50_ms": m.ring_notes["idle_p50_ms"],
    }
    return Samples(m.loaded_p99, m.idle_p99, notes)


BENCHMARKS = [
    Benchmark(
        name="server_memory_per_connection",
        unit="KB",
        target_ratio=None,
        target_value=50.0,
        measures=(
            "resident memory (VmRSS) the `kiosk server` process gains per logged-in signaling WebSocket: "
            "(RSS with N endpoints connected and authenticated - RSS with 2) / (N - 2); N = 2000 "
            "(200 in quick mode), clients in a separate load-generator process on loopback"
        ),
        baseline_measures=(
            "the same per-connection RSS of a bare aiohttp WebSocket echo server in its own process "
            "(same heartbeat and frame limit, one message echoed per connection): aiohttp's own floor"
        ),
        run=run_memory,
    ),
    Benchmark(
        name="server_ringing_latency_p99",
        unit="ms",
        target_ratio=None,
        target_value=100.0,
        measures=(
            "99th percentile, per run of 200 rings (30 in quick mode), of the time from `POST /v1/calls` "
            "to the receiver's `call.incoming`, between two probe endpoints while N = 2000 (200) "
            "logged-in endpoints are connected; full mode spreads the rings over one heartbeat period"
        ),
        baseline_measures="the same rings' p99 on the same server before the load connected (the 2 probes only)",
        run=run_ringing,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_capacity")
    parser.add_argument("command", choices=["echo-server"], help="run the baseline's bare echo server")
    parser.parse_args(argv)
    raise_open_file_limit(0)
    asyncio.run(_serve_echo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
