"""Hardening of the call server against what an outside probe found: unauthenticated WebSockets held
for ever, ordinary disconnects logged as errors, secrets in the access log, headers of the web client."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import aiohttp
import pytest
from conftest import CreateUser, WsConnect

from kiosk.server import RunningServer
from kiosk.server.limits import LIMITS, RateLimits


def set_limits(server: RunningServer, **changes: Any) -> None:
    current = server.app[LIMITS].limits
    server.app[LIMITS].limits = RateLimits(**{**current.__dict__, **changes})


async def close_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> tuple[int, str]:
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type == aiohttp.WSMsgType.CLOSE:
            return int(message.data), str(message.extra or "")
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            raise AssertionError("closed without a close frame")


async def test_a_websocket_that_does_not_authenticate_in_time_is_closed(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    set_limits(call_server, ws_auth_seconds=0.3)
    amy = await create_user("amy")
    silent = await ws_connect()
    signed_in = await ws_connect(amy)
    assert await close_frame(silent.ws) == (1008, "auth timeout")
    await asyncio.sleep(0.3)
    assert (await signed_in.call("ping"))["type"] == "pong"  # one that authenticated stays


async def test_one_address_may_hold_only_so_many_unauthenticated_websockets(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    set_limits(call_server, ws_unauthenticated_per_address=5)
    amy = await create_user("amy")
    url = f"{call_server.url}/v1/ws"
    held = [await http.ws_connect(url) for _ in range(5)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url)
    assert refused.value.status == 429
    # One authenticates: its place is free again, and authenticated ones are not counted.
    await held[0].send_json({"type": "auth", "authToken": amy.auth_token})
    assert (await held[0].receive_json(timeout=5))["type"] == "ok"
    held.append(await http.ws_connect(url))
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(url)
    # One closes: its place is free again.
    await held[1].close()
    for _ in range(100):
        try:
            held.append(await http.ws_connect(url))
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("a closed connection's place was not given back")
    for ws in held:
        await ws.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashes or loses its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("where", ["rest-body", "websocket-frame"])
async def test_a_client_reset_mid_request_is_an_ordinary_disconnect(
    call_server: RunningServer, create_user: CreateUser, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    amy = await create_user("amy")
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", call_server.port))
        sock.setblocking(False)
        if where == "rest-body":
            request = (
                "POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {amy.auth_token}\r\nContent-Length: 4000\r\n\r\n"
                '{"receiverUid": "b'
            )
            await loop.sock_sendall(sock, request.encode())
        else:
            handshake = (
                "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, handshake.encode())
            await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)  # 101 Switching Protocols
            # A masked text frame announcing 1000 bytes, of which 10 are sent.
            await loop.sock_sendall(
                sock, bytes([0x81, 0xFE]) + struct.pack("!H", 1000) + b"\0\0\0\0" + b"x" * 10
            )
        await asyncio.sleep(0.1)
        _reset(sock)
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    statuses = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert not [s for s in statuses if '" 500 ' in s], statuses


async def test_no_secret_in_the_access_log_and_the_web_clients_headers(
    call_server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-t0ken-value-that-must-not-be-logged"
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    referer = {"Referer": f"{call_server.url}/app/?token={secret}"}
    async with http.get(f"{call_server.url}/app/?token={secret}") as page:
        assert page.status == 200
        headers = page.headers
    for name in ("app.js", "style.css"):
        async with http.get(f"{call_server.url}/app/{name}", headers=referer) as r:
            assert r.status == 200
    async with http.get(f"{call_server.url}/app?token={secret}", allow_redirects=False) as r:
        assert r.status == 302
    async with http.get(f"{call_server.url}/v1/me", params={"token": secret}) as r:
        assert r.status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) >= 5 and any("/app/app.js" in line for line in lines), lines
    assert not [line for line in lines if secret in line], lines
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


async def test_repr_of_the_servers_config_and_handle_shows_no_admin_key(call_server: RunningServer) -> None:
    assert call_server.admin_key and call_server.config.admin_key
    for text in (repr(call_server), repr(call_server.config), str(call_server.config)):
        assert call_server.admin_key not in text


def test_admin_key_from_a_file(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from kiosk.server.cli import add_server_parser, read_secret_file

    key = tmp_path / "admin.key"
    key.write_text("from-a-file\n")
    assert read_secret_file(key, "admin key") == "from-a-file"
    parser = argparse.ArgumentParser(prog="kiosk")
    add_server_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["server", "--admin-key-file", str(key)])
    assert args.admin_key_file == key and args.admin_key is None
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args(["server", "--admin-key-file", str(key), "--admin-key", "x"])
    capsys.readouterr()
    (tmp_path / "empty").write_text("\n")
    for missing, words in ((tmp_path / "nope", "No such file"), (tmp_path / "empty", "is empty")):
        with pytest.raises(ValueError, match=words):
            read_secret_file(missing, "admin key")


async def test_cross_origin_requests_only_from_listed_origins(
    start_call_server: Any, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    server = await start_call_server(cors_origins=["https://Reception.example:443/"])
    amy = await create_user("amy")
    listed, other = "https://reception.example", "https://evil.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with http.options(f"{server.url}/v1/calls", headers={"Origin": listed, **preflight}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == listed
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    async with http.get(f"{server.url}/v1/me", headers={"Origin": listed, **amy.headers}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == listed
    async with http.options(f"{server.url}/v1/calls", headers={"Origin": other, **preflight}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.get(f"{server.url}/v1/me", headers={"Origin": other, **amy.headers}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    # The WebSocket: its own pages and listed origins; a page of another site is refused.
    for origin in (listed, server.url):
        ws = await http.ws_connect(f"{server.url}/v1/ws", headers={"Origin": origin})
        await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{server.url}/v1/ws", headers={"Origin": other})
    assert refused.value.status == 403
    with pytest.raises(ValueError, match="CORS origin"):
        await start_call_server(cors_origins=["reception.example"])


async def test_the_pending_websocket_cap_can_be_lifted_for_a_proxy(
    start_call_server: Any, http: aiohttp.ClientSession
) -> None:
    server = await start_call_server(max_pending_websockets_per_address=0)
    held = [await http.ws_connect(f"{server.url}/v1/ws") for _ in range(25)]  # past the default 20
    for ws in held:
        await ws.close()
    with pytest.raises(ValueError, match="max_pending_websockets_per_address"):
        await start_call_server(max_pending_websockets_per_address=-1)
