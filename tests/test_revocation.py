"""Auth tokens can be revoked and users removed (REST and `kiosk users`), effective on open connections."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_KEY, CreateUser, SignalingClient, WsConnect

from kiosk.server import RunningServer
from kiosk.server.admin import UnknownUserError, add_user, list_users, remove_user, revoke_tokens
from kiosk.server.cli import add_users_parser

ADMIN = {"X-Admin-Key": ADMIN_KEY}


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> int:
    async with http.request(method, url, **kwargs) as r:
        return r.status


async def closed_with(client: SignalingClient, timeout: float = 10.0) -> tuple[int | None, str]:
    """Wait for the server's close frame on this WebSocket; the code and reason it carries."""
    while True:
        message = await client.ws.receive(timeout=timeout)
        if message.type == aiohttp.WSMsgType.CLOSE:
            return int(message.data), str(message.extra or "")
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return None, "no close frame"


async def test_a_new_token_revokes_the_old_one_and_closes_its_connections(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    open_ws = await ws_connect(amy)
    url = f"{call_server.url}/v1/users/amy/token"
    assert await status_of(http, "POST", url) == 403  # admin only
    assert await status_of(http, "POST", url, headers=amy.headers) == 403
    async with http.post(url, headers=ADMIN) as r:
        assert r.status == 200
        body = await r.json()
    assert body["uid"] == "amy" and body["authToken"] != amy.auth_token
    assert await closed_with(open_ws) == (1008, "auth token revoked")
    me = f"{call_server.url}/v1/me"
    assert await status_of(http, "GET", me, headers=amy.headers) == 401
    assert await status_of(http, "GET", me, headers={"Authorization": f"Bearer {body['authToken']}"}) == 200
    assert await status_of(http, "POST", f"{call_server.url}/v1/users/nobody/token", headers=ADMIN) == 404


async def test_revoking_all_tokens_signs_the_user_out_everywhere(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob = await create_user("amy"), await create_user("bob")
    tabs = [await ws_connect(amy), await ws_connect(amy)]
    bobs = await ws_connect(bob)
    url = f"{call_server.url}/v1/users/amy/tokens"
    assert await status_of(http, "DELETE", url, headers=ADMIN) == 204
    for tab in tabs:
        assert await closed_with(tab) == (1008, "auth token revoked")
    assert (await bobs.call("ping"))["type"] == "pong"  # another user's connection stays
    again = await ws_connect()
    assert (await again.call("auth", authToken=amy.auth_token))["error"]["code"] == "UNAUTHORIZED"


async def test_a_removed_user_is_gone_but_its_calls_stay_in_the_other_partys_log(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob = await create_user("amy", "Amy"), await create_user("bob")
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "amy", "callType": "audio"}, headers=bob.headers
    ) as r:
        assert r.status == 201, await r.text()
    open_ws = await ws_connect(amy)
    assert await status_of(http, "DELETE", f"{call_server.url}/v1/users/amy", headers=bob.headers) == 403
    assert await status_of(http, "DELETE", f"{call_server.url}/v1/users/amy", headers=ADMIN) == 204
    assert await closed_with(open_ws) == (1008, "auth token revoked")
    assert await status_of(http, "GET", f"{call_server.url}/v1/me", headers=amy.headers) == 401
    async with http.get(f"{call_server.url}/v1/users", headers=bob.headers) as r:
        assert [u["uid"] for u in (await r.json())["users"]] == ["bob"]
    async with http.get(f"{call_server.url}/v1/calls", headers=bob.headers) as r:
        calls = (await r.json())["calls"]
    assert len(calls) == 1 and calls[0]["receiver"]["name"] == "Amy"
    # Nobody can ring a removed user, and its uid stays taken.
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "amy", "callType": "audio"}, headers=bob.headers
    ) as r:
        assert r.status == 404
    async with http.post(
        f"{call_server.url}/v1/users", json={"uid": "amy", "name": "New"}, headers=ADMIN
    ) as r:
        assert r.status == 409
    assert await status_of(http, "DELETE", f"{call_server.url}/v1/users/amy", headers=ADMIN) == 404


async def test_kiosk_users_revoke_reaches_a_running_servers_open_connections(
    call_server: RunningServer, http: aiohttp.ClientSession, ws_connect: WsConnect
) -> None:
    data_dir = call_server.config.data_dir
    created = add_user(data_dir, "door", "Front door")
    auth = {"Authorization": f"Bearer {created['authToken']}"}
    client = await ws_connect()
    assert (await client.call("auth", authToken=created["authToken"]))["type"] == "ok"
    new_token = revoke_tokens(data_dir, "door", new_token=True)
    assert new_token is not None
    # Written straight to the database, with no server told: the server sees it within seconds.
    assert await closed_with(client) == (1008, "auth token revoked")
    assert await status_of(http, "GET", f"{call_server.url}/v1/me", headers=auth) == 401
    fresh = {"Authorization": f"Bearer {new_token}"}
    assert await status_of(http, "GET", f"{call_server.url}/v1/me", headers=fresh) == 200
    remove_user(data_dir, "door")
    assert await status_of(http, "GET", f"{call_server.url}/v1/me", headers=fresh) == 401
    assert list_users(data_dir) == []
    with pytest.raises(UnknownUserError):
        remove_user(data_dir, "door")


def test_cli_users_revoke_and_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="kiosk")
    add_users_parser(parser.add_subparsers(dest="command", required=True))
    data_dir = str(tmp_path / "d")

    def run(*argv: str) -> int:
        args = parser.parse_args(["users", *argv, "--data-dir", data_dir])
        return int(args.func(args))

    assert run("revoke", "amy") == 1
    assert "no user 'amy'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # a mistyped directory is not made
    assert run("add", "amy", "--name", "Amy") == 0
    first = capsys.readouterr().out.strip()
    assert run("revoke", "amy", "--new-token") == 0
    second = capsys.readouterr().out.strip()
    assert second and second != first
    assert run("remove", "amy") == 0
    assert run("list") == 0
    assert "amy" not in capsys.readouterr().out
    assert run("remove", "amy") == 1


async def test_the_database_file_is_for_the_servers_user_only(
    start_call_server: Any, create_user: CreateUser
) -> None:
    old = os.umask(0o022)
    try:
        server = await start_call_server()
        await create_user("amy")
    finally:
        os.umask(old)
    for path in server.config.data_dir.glob("kiosk.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_an_sdk_endpoint_whose_token_is_revoked_says_so_and_stops_retrying(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from calls_support import ADMIN_KEY as SUPPORT_ADMIN_KEY
    from calls_support import endpoints, running_server, wait_until

    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door") as (door,),
    ):
        admin = {"X-Admin-Key": SUPPORT_ADMIN_KEY}
        async with http.delete(f"{server.url}/v1/users/door/tokens", headers=admin) as r:
            assert r.status == 204

        def refused() -> bool:
            return any(error.code == "UNAUTHORIZED" for (error,) in door.events.of("on_error"))

        await wait_until(refused, 15, "an UNAUTHORIZED error")
        lost = len(door.events.of("on_error"))
        await asyncio.sleep(2.5)  # several reconnect delays: no more attempts, no more errors
        assert len(door.events.of("on_error")) == lost
        assert not door.calls.signaling.connected
