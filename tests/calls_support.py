"""Helpers for SDK tests: a real call server on loopback and endpoints with emulated media."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from kiosk.calls import Calls, CallSettings, CallSettingsBuilder
from kiosk.endpoint import EventRecorder
from kiosk.media.emulated import EmulatedDevices
from kiosk.server.app import RunningServer, start_server
from kiosk.server.config import ServerConfig

ADMIN_KEY = "test-admin-key-0123456789"


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: Any) -> AsyncIterator[RunningServer]:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, admin_key=ADMIN_KEY, **overrides)
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.close()


async def make_user(server_url: str, uid: str, name: str | None = None) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server_url}/v1/users",
            json={"uid": uid, "name": name or uid.title()},
            headers={"X-Admin-Key": ADMIN_KEY},
        ) as response:
            body = await response.json()
            assert response.status == 201, body
            return str(body["authToken"])


def tone_for(uid: str) -> float:
    """Each test user's emulated microphone has its own tone (alice 330 Hz, bob 550 Hz, ...)."""
    return 330.0 + 110.0 * (sum(map(ord, uid)) % 5)


class Endpoint:
    """One Calls client with its emulated devices and an EventRecorder listening to everything."""

    def __init__(self, server_url: str, uid: str, token: str, tmp: Path, **options: Any) -> None:
        self.uid = uid
        self.token = token
        self.devices: EmulatedDevices = options.pop("devices", None) or EmulatedDevices(
            width=320, height=240, fps=15, tone_hz=tone_for(uid)
        )
        options.setdefault("ice_host_addresses", ["127.0.0.1"])
        self.calls = Calls(
            server_url,
            auth_token=token,
            devices=self.devices,
            recording_dir=tmp / "recordings" / uid,
            device_poll_interval=0.2,
            **options,
        )
        self.events = EventRecorder(uid)
        self.calls.add_call_event_listener("test", self.events)

    async def join(self, session_id: str, settings: CallSettings | None = None) -> None:
        token = await self.calls.generate_token(session_id)
        await self.calls.start_session(token, settings or CallSettingsBuilder().build())

    async def stats_from(self, uid: str) -> Any:
        stats = await self.calls.get_session_stats()
        return stats.participants.get(uid)


@asynccontextmanager
async def endpoints(server_url: str, tmp: Path, *uids: str, **options: Any) -> AsyncIterator[list[Endpoint]]:
    made: list[Endpoint] = []
    try:
        for uid in uids:
            token = await make_user(server_url, uid)
            made.append(Endpoint(server_url, uid, token, tmp, **options))
        for endpoint in made:
            await endpoint.calls.login()
        yield made
    finally:
        for endpoint in made:
            await endpoint.calls.close()


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an (a)synchronous predicate until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def new_session_id() -> str:
    return "s-" + uuid.uuid4().hex[:12]


async def video_frames(endpoint: Endpoint, uid: str) -> int:
    """Video frames `endpoint` has decoded from `uid` so far."""
    stats = await endpoint.stats_from(uid)
    return stats.video_frames_decoded if stats else 0


async def audio_frames(endpoint: Endpoint, uid: str) -> int:
    stats = await endpoint.stats_from(uid)
    return stats.audio_frames_decoded if stats else 0


async def audio_level(endpoint: Endpoint, uid: str) -> float:
    """RMS level of what `endpoint` heard from `uid` over the last 200 ms (0..1)."""
    stats = await endpoint.stats_from(uid)
    return stats.audio_level if stats else 0.0
