"""The load generator of bench/server_capacity.py: many signaling clients in a process of their own.

    python -m bench.server_capacity_load kiosk --url http://127.0.0.1:PORT --users FILE
    python -m bench.server_capacity_load echo --url http://127.0.0.1:PORT --count N

`kiosk`: one WebSocket per line "uid<TAB>authToken" of FILE, each logged in with `auth` exactly as
docs/protocol.md says. `echo`: N WebSockets to a bare echo server's /ws, each exchanging one message.
Bounded: at most CONNECT_CONCURRENCY handshakes in flight. Once all are up it prints
`connected N in S s` (or `load failed: ...` and exits 1), keeps them open, reading (and so answering
pings, as an idle kiosk does) until SIGTERM or SIGINT, then closes them all and exits.

A process of its own so that the ringing clock, in the harness process, never waits on this
process's event loop: its work (thousands of heartbeats, closing) would otherwise be charged to the
server. Its heartbeat timers are exact, not rounded to whole seconds (see `ws_client_session`), so the
endpoints ping like separate devices. The client code (`Endpoint`) is shared with the harness side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kiosk.protocol import MAX_MESSAGE_BYTES

HEARTBEAT_SECONDS = 20.0  # what the Calls SDK (kiosk/calls/signaling.py) and the server both use
# Handshakes in flight at once: keeps the load bounded and well under the server's listen backlog.
CONNECT_CONCURRENCY = 64
CONNECT_TIMEOUT = 20.0  # per connection, handshake + first reply: a server that stops accepting fails


def raise_open_file_limit(needed: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); fails if still under `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise RuntimeError(f"open-file limit {soft} (hard {hard}) is under the {needed} this run needs")
    return soft


def ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url.removeprefix("http") + path


def ws_client_session() -> aiohttp.ClientSession:
    """A session for many WebSockets that behave like separate devices.

    limit=0: a WebSocket holds its connector slot for its whole life; the default 100 would cap N.
    aiohttp rounds timers longer than `timeout_ceil_threshold` (default 5 s) up to whole seconds of
    this process's clock, so the heartbeats of connections opened within a second would all fire in
    one loop iteration, hundreds of pings reaching the server at once. Kiosks are separate machines
    whose clocks share no second boundaries: with exact timers each keeps its own phase.
    """
    connector = aiohttp.TCPConnector(limit=0, timeout_ceil_threshold=2 * HEARTBEAT_SECONDS)
    return aiohttp.ClientSession(connector=connector)


async def _ws_connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    # As the Calls SDK connects: heartbeat 20 s, 64 KiB frames.
    return await session.ws_connect(url, heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_MESSAGE_BYTES)


@dataclass
class Endpoint:
    """One logged-in signaling connection; its reader timestamps `call.incoming` when one is awaited."""

    uid: str
    token: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    incoming: asyncio.Future[tuple[float, str]] | None = None

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            self.ws = await _ws_connect(session, ws_url(url, "/v1/ws"))
            await self.ws.send_str(json.dumps({"type": "auth", "authToken": self.token, "id": 1}))
            reply = await self.ws.receive_json()
        if reply.get("type") != "ok" or reply.get("id") != 1 or reply.get("user", {}).get("uid") != self.uid:
            raise RuntimeError(f"auth of {self.uid} refused: {reply}")
        self.reader = asyncio.create_task(self._read(self.ws), name=f"bench-reader-{self.uid}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Reading is also what answers the server's pings (aiohttp replies inside receive()).
        async for message in ws:
            arrived = time.perf_counter()
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            waiting = self.incoming
            if waiting is None or waiting.done():
                continue
            body = json.loads(message.data)
            if body.get("type") == "call.incoming":
                waiting.set_result((arrived, str(body["call"]["sessionId"])))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader
        self.ws, self.reader = None, None


async def bounded(count: int, step: Callable[[int], Awaitable[None]]) -> None:
    """Run step(0..count-1) with at most CONNECT_CONCURRENCY at once; the first failure is raised."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await step(i)

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def connect_endpoints(session: aiohttp.ClientSession, url: str, endpoints: list[Endpoint]) -> None:
    await bounded(len(endpoints), lambda i: endpoints[i].connect(session, url))


async def close_endpoints(endpoints: list[Endpoint]) -> None:
    await asyncio.gather(*(e.close() for e in endpoints), return_exceptions=True)


class EchoClients:
    """Connections to a bare echo server, each having exchanged one message, kept open and read."""

    def __init__(self) -> None:
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self._readers: list[asyncio.Task[None]] = []

    async def open(self, session: aiohttp.ClientSession, url: str, count: int) -> None:
        async def one(i: int) -> None:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await _ws_connect(session, ws_url(url, "/ws"))
                self.sockets.append(ws)
                await ws.send_str(json.dumps({"type": "ping", "id": i}))
                await ws.receive_str()
            self._readers.append(asyncio.create_task(self._drain(ws)))

        await bounded(count, one)

    @staticmethod
    async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await asyncio.gather(*self._readers, return_exceptions=True)


def read_users(path: Path) -> list[Endpoint]:
    endpoints = []
    for line in path.read_text().splitlines():
        uid, token = line.split("\t")
        endpoints.append(Endpoint(uid, token))
    return endpoints


async def _run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    endpoints = read_users(args.users) if args.mode == "kiosk" else []
    echo = EchoClients()
    count = len(endpoints) if args.mode == "kiosk" else args.count
    async with ws_client_session() as session:
        try:
            raise_open_file_limit(count + 100)
            started = time.monotonic()
            if args.mode == "kiosk":
                await connect_endpoints(session, args.url, endpoints)
            else:
                await echo.open(session, args.url, count)
            print(f"connected {count} in {time.monotonic() - started:.3f} s", flush=True)
            await stop.wait()
            return 0
        except Exception as exc:
            print(f"load failed: {type(exc).__name__}: {exc}", flush=True)
            return 1
        finally:
            await close_endpoints(endpoints)
            await echo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_capacity_load")
    parser.add_argument("mode", choices=["kiosk", "echo"])
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--users", type=Path, help="kiosk: lines uid<TAB>authToken")
    parser.add_argument("--count", type=int, default=0, help="echo: how many connections")
    args = parser.parse_args(argv)
    if args.mode == "kiosk" and args.users is None:
        parser.error("kiosk needs --users")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
