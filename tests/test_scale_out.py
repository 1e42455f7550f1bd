"""Two `kiosk server --redis` processes on loopback sharing one redis-server (and one data directory):
a call between endpoints on different servers, and one server killed mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import ADMIN_KEY, Endpoint, make_user, video_frames, wait_until
from test_redis_state import free_port, redis_server

from kiosk.calls import CallStatus, CallType

GRACE = 3.0  # --rejoin-grace of both servers
NODE_TTL = 6.0  # redis_state.NODE_TTL_SECONDS: how long a killed server's heartbeat outlives it


@dataclass
class ServerProcess:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    log: Path

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.proc.wait()


async def start_server_process(
    name: str,
    data_dir: Path,
    redis_url: str,
    tmp: Path,
    args: tuple[str, ...] = ("--admin-key", ADMIN_KEY, "--rejoin-grace", str(GRACE)),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`kiosk server --redis` in its own process, its output in tmp/server-<name>.log; returns once it serves."""
    port = free_port()
    log = tmp / f"server-{name}.log"
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiosk.cli", "server", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--redis", redis_url, "--ring-timeout", "30", *args,
            stdout=out, stderr=out, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    finally:
        os.close(out)
    server = ServerProcess(name, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{server.url}/app/") as response:
                    if response.status == 200:
                        return server
            if proc.returncode is not None or time.monotonic() > deadline:
                await server.stop()
                raise RuntimeError(f"server {name} did not start: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def two_servers(tmp: Path) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    with redis_server(tmp / "redis") as redis_url:
        data_dir = tmp / "data"  # one host: both share the database (SQLite, WAL) and the keys
        a = await start_server_process("a", data_dir, redis_url, tmp)
        try:
            b = await start_server_process("b", data_dir, redis_url, tmp)
            try:
                yield a, b
            finally:
                await b.stop()
        finally:
            await a.stop()


async def rest(url: str, token: str, path: str) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1{path}", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def participant_count(url: str, token: str, session_id: str) -> int:
    body = await rest(url, token, f"/sessions/{session_id}/participants?type=default")
    return int(body["count"])


@contextlib.asynccontextmanager
async def door_and_desk(
    a: ServerProcess, b: ServerProcess, tmp: Path
) -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """door logged in to A (knowing B as its second address), desk to B; users made through A."""
    door_token = await make_user(a.url, "door")
    desk_token = await make_user(a.url, "desk")
    door = Endpoint([a.url, b.url], "door", door_token, tmp)  # type: ignore[arg-type]
    desk = Endpoint(b.url, "desk", desk_token, tmp)
    try:
        await door.calls.login()
        await desk.calls.login()
        assert door.calls.server_url == a.url
        yield door, desk
    finally:
        await door.calls.close()
        await desk.calls.close()


async def ring_and_connect(door: Endpoint, desk: Endpoint) -> str:
    call = await door.calls.initiate_call("desk", CallType.VIDEO)
    incoming = (await desk.events.wait_for("on_incoming_call_received", timeout=10))[0]
    assert incoming.session_id == call.session_id and incoming.initiator.uid == "door"
    accepted = await desk.calls.accept_call(call.session_id)
    assert accepted.status == CallStatus.ONGOING
    outgoing = (await door.events.wait_for("on_outgoing_call_accepted", timeout=10))[0]
    assert outgoing.session_id == call.session_id
    await door.join(call.session_id)
    await desk.join(call.session_id)
    await wait_until(lambda: video_frames(desk, "door"), 20, "door's video at desk")
    await wait_until(lambda: video_frames(door, "desk"), 20, "desk's video at door")
    return call.session_id


async def test_a_call_between_endpoints_on_two_servers(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b), door_and_desk(a, b, tmp_path) as (door, desk):
        # Presence is shared: each server sees both users online, whichever server they are on.
        for url in (a.url, b.url):
            users = (await rest(url, door.token, "/users"))["users"]
            assert {u["uid"]: u["online"] for u in users} == {"door": True, "desk": True}

        session_id = await ring_and_connect(door, desk)
        assert await participant_count(a.url, door.token, session_id) == 2
        assert await participant_count(b.url, desk.token, session_id) == 2

        door.calls.mute_audio(True)
        muted = (await desk.events.wait_for("on_user_muted", timeout=5))[0]
        assert muted.uid == "door" and muted.audio_muted
        desk.calls.pause_video(True)
        muted = (await door.events.wait_for("on_user_muted", timeout=5))[0]
        assert muted.uid == "desk" and muted.video_muted

        await asyncio.sleep(1.1)  # a call that lasts at least a second
        ended = await door.calls.end_call(session_id)
        assert ended.status == CallStatus.ENDED
        await desk.events.wait_for("on_call_ended", timeout=10)
        await door.calls.end_session()
        await wait_until(lambda: desk.calls.session is None, 10, "desk's session to end")

        # One call log, whichever server is asked.
        for url in (a.url, b.url):
            for who in (door, desk):
                calls = (await rest(url, who.token, "/calls"))["calls"]
                assert [(c["sessionId"], c["status"]) for c in calls] == [(session_id, "ended")], calls
                assert calls[0]["durationSeconds"] >= 1
        # Both are free again for a new call.
        users = (await rest(b.url, desk.token, "/users"))["users"]
        assert all(u["online"] for u in users)
        assert "Traceback" not in a.log.read_text() + b.log.read_text()


async def test_killing_a_server_mid_call_moves_its_endpoints_to_the_other(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b), door_and_desk(a, b, tmp_path) as (door, desk):
        session_id = await ring_and_connect(door, desk)
        joins_before = len(door.events.of("on_user_joined")), len(desk.events.of("on_user_joined"))

        a.kill()  # door's server: no goodbye, its sockets just close
        await a.proc.wait()
        killed_at = time.monotonic()
        await door.events.wait_for("on_error", timeout=10)
        await wait_until(
            lambda: door.calls.session is not None and door.calls.session.rejoined_since_loss,
            15,
            "door to rejoin through server B",
        )
        assert door.calls.server_url == b.url
        print(f"door rejoined through B {time.monotonic() - killed_at:.2f} s after A was killed")

        # Media went on; both sides still see exactly each other.
        frames = await video_frames(desk, "door"), await video_frames(door, "desk")
        await asyncio.sleep(1.0)
        assert await video_frames(desk, "door") > frames[0] and await video_frames(door, "desk") > frames[1]
        assert [u.uid for u in door.calls.session.user_list()] == ["door", "desk"]
        assert [u.uid for u in desk.calls.session.user_list()] == ["desk", "door"]
        assert await participant_count(b.url, desk.token, session_id) == 2

        # Past A's heartbeat and the grace: B took A's leftovers over, and nobody was removed.
        await asyncio.sleep(NODE_TTL + GRACE + 3.0 - (time.monotonic() - killed_at))
        assert not door.events.of("on_user_left") and not desk.events.of("on_user_left")
        assert not door.events.of("on_call_ended") and not desk.events.of("on_call_ended")
        assert (len(door.events.of("on_user_joined")), len(desk.events.of("on_user_joined"))) == joins_before
        assert await participant_count(b.url, desk.token, session_id) == 2
        assert "is gone" in b.log.read_text()  # B noticed A's death and took its leftovers over
        users = (await rest(b.url, desk.token, "/users"))["users"]
        assert {u["uid"]: u["online"] for u in users} == {"door": True, "desk": True}
        peer = door.calls.session.peers["desk"]
        assert peer.receiving(1.0)

        # Signaling works through B for both: mute, then the end of the call.
        door.calls.mute_audio(True)
        muted = (await desk.events.wait_for("on_user_muted", timeout=5))[0]
        assert muted.uid == "door" and muted.audio_muted
        ended = await desk.calls.end_call(session_id)
        assert ended.status == CallStatus.ENDED
        await door.events.wait_for("on_call_ended", timeout=10)
        calls = (await rest(b.url, door.token, "/calls"))["calls"]
        assert [(c["sessionId"], c["status"]) for c in calls] == [(session_id, "ended")]
        assert "Traceback" not in b.log.read_text()


# --- several addresses in the SDK, the config and the CLI (no Redis needed, but kept with the rest) ---


async def test_calls_passes_over_an_address_that_cannot_be_reached(tmp_path: Path) -> None:
    from calls_support import running_server

    from kiosk.calls import Calls

    async with running_server(tmp_path / "server") as server:
        token = await make_user(server.url, "door")
        dead = f"http://127.0.0.1:{free_port()}"
        calls = Calls([dead, server.url + "/"], auth_token=token)
        try:
            assert calls.server_url == dead
            user = await calls.login()
            assert user.uid == "door" and calls.server_url == server.url
            assert calls.rest.base_url == server.url  # REST follows signaling
            assert (await calls.get_call_logs()).calls == []
        finally:
            await calls.close()
    single = Calls("http://example.invalid:8080/")
    assert (
        single.server_urls == ["http://example.invalid:8080"] and single.server_url == single.server_urls[0]
    )
    with pytest.raises(ValueError):
        Calls([])


def test_the_config_and_the_cli_take_several_addresses() -> None:
    import argparse

    from kiosk.cli import build_parser
    from kiosk.config import ConfigError, parse_config

    text = '[server]\nurl = "http://a:8080"\nurls = ["http://b:8080", "http://a:8080"]\n'
    config = parse_config(text, check_devices=False)
    assert config.server.addresses() == ["http://a:8080", "http://b:8080"]
    assert parse_config("", check_devices=False).server.addresses() == ["http://127.0.0.1:8080"]
    with pytest.raises(ConfigError, match="server.urls"):
        parse_config('[server]\nurls = ["ftp://b"]\n', check_devices=False)

    parser = build_parser()
    args = parser.parse_args(
        ["endpoint", "--server", "http://a", "--server", "http://b", "--auth-token", "t", "--idle"]
    )
    assert isinstance(args, argparse.Namespace) and args.server == ["http://a", "http://b"]


def test_kiosk_server_refuses_a_redis_it_cannot_use(tmp_path: Path) -> None:
    import subprocess

    def run(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kiosk.cli", "server", "--port", "0", "--data-dir", str(tmp_path)]
            + ["--admin-key", ADMIN_KEY, "--redis", url],
            capture_output=True,
            text=True,
            timeout=30,
        )

    bad = run("http://127.0.0.1:6379")
    assert bad.returncode == 2 and "must start with redis://" in bad.stderr
    unreachable = run(f"redis://127.0.0.1:{free_port()}/0")
    assert unreachable.returncode == 1 and "cannot use Redis at" in unreachable.stderr


async def test_a_group_call_across_two_servers_goes_through_one_sfu_room(tmp_path: Path) -> None:
    """Five endpoints, on two server processes sharing Redis and one Janus: the session outgrows the
    mesh on whichever process takes the fifth join, and everyone, on either process, moves to the one
    room (session.media crosses processes like any message)."""
    from janus_server import VIDEOROOM_ADMIN_KEY, running_janus

    with running_janus(tmp_path) as janus, redis_server(tmp_path / "redis") as redis_url:
        args = ("--admin-key", ADMIN_KEY, "--rejoin-grace", str(GRACE), "--janus-url", janus.url)
        env = {**os.environ, "KIOSK_JANUS_ADMIN_KEY": VIDEOROOM_ADMIN_KEY}
        a = await start_server_process("a", tmp_path / "data", redis_url, tmp_path, args=args, env=env)
        b = await start_server_process("b", tmp_path / "data", redis_url, tmp_path, args=args, env=env)
        eps: list[Endpoint] = []
        try:
            for i, uid in enumerate(("ann", "ben", "cat", "dan", "eve")):
                url = (a, b)[i % 2].url
                ep = Endpoint(
                    url, uid, await make_user(a.url, uid), tmp_path, ice_host_addresses=[janus.ice_address]
                )
                eps.append(ep)
                await ep.join("group")
            for ep in eps:
                await wait_until(lambda e=ep: e.calls.session.media_mode == "sfu", 20, f"the SFU at {ep.uid}")
            for ep in eps:
                for other in eps:
                    if other is not ep:
                        await wait_until(
                            lambda e=ep, o=other.uid: video_frames(e, o), 30, f"{other.uid} at {ep.uid}"
                        )
            rooms = {ep.calls.session.sfu_room["room"] for ep in eps}
            assert len(rooms) == 1 and all(ep.calls.session.media_mode == "sfu" for ep in eps)
            assert all(
                sorted(ep.calls.session.peers) == sorted(o.uid for o in eps if o is not ep) for ep in eps
            )
        finally:
            for ep in eps:
                await ep.calls.close()
            await b.stop()
            await a.stop()
