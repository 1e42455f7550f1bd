"""REST endpoints, errors, secrets handling and user administration of the call server."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import ADMIN_KEY, CreateUser, ServerFactory, WsConnect

from kiosk.protocol import MAX_MESSAGE_BYTES
from kiosk.server import RunningServer
from kiosk.server.admin import UserExistsError, add_user, list_users
from kiosk.server.cli import add_server_parser, add_users_parser

ADMIN = {"X-Admin-Key": ADMIN_KEY}


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, **kwargs) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    assert (status, body["error"]["code"]) == (expected_status, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --- users ---


async def test_create_user_returns_201_and_a_working_auth_token(
    call_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = {"uid": "door", "name": "Front door", "avatar": "https://example.org/d.png"}
    status, created = await fetch(http, "POST", f"{call_server.url}/v1/users", json=body, headers=ADMIN)
    assert status == 201
    assert {k: created[k] for k in ("uid", "name", "avatar")} == body
    assert isinstance(created["authToken"], str) and len(created["authToken"]) >= 32
    auth = {"Authorization": f"Bearer {created['authToken']}"}
    assert await fetch(http, "GET", f"{call_server.url}/v1/me", headers=auth) == (200, body)


async def test_create_user_without_avatar(call_server: RunningServer, http: aiohttp.ClientSession) -> None:
    body = {"uid": "hall", "name": "Hall"}
    status, created = await fetch(http, "POST", f"{call_server.url}/v1/users", json=body, headers=ADMIN)
    assert status == 201 and created["avatar"] is None


async def test_duplicate_uid_is_409(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    await create_user("door")
    body = {"uid": "door", "name": "Another"}
    status, error = await fetch(http, "POST", f"{call_server.url}/v1/users", json=body, headers=ADMIN)
    assert_error(status, error, 409, "USER_EXISTS")


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        "null",
        json.dumps({"name": "No uid"}),
        json.dumps({"uid": "door"}),
        json.dumps({"uid": "bad uid!", "name": "x"}),
        json.dumps({"uid": "x" * 101, "name": "x"}),
        json.dumps({"uid": 12, "name": "x"}),
        json.dumps({"uid": "door", "name": ""}),
        json.dumps({"uid": "door", "name": "x" * 101}),
        json.dumps({"uid": "door", "name": ["x"]}),
        json.dumps({"uid": "door", "name": "x", "avatar": "a" * 2001}),
        json.dumps({"uid": "door", "name": "x", "avatar": 5}),
    ],
)
async def test_bad_user_body_is_400(
    call_server: RunningServer, http: aiohttp.ClientSession, body: str
) -> None:
    status, error = await fetch(http, "POST", f"{call_server.url}/v1/users", data=body, headers=ADMIN)
    assert_error(status, error, 400, "BAD_REQUEST")


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Key": "wrong"}, {"X-Admin-Key": ""}])
async def test_create_user_needs_the_admin_key(
    call_server: RunningServer, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    body = {"uid": "door", "name": "Door"}
    status, error = await fetch(http, "POST", f"{call_server.url}/v1/users", json=body, headers=headers)
    assert_error(status, error, 403, "FORBIDDEN")
    assert list_users(call_server.config.data_dir) == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
async def test_user_requests_need_a_known_auth_token(
    call_server: RunningServer, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/v1/me"), ("GET", "/v1/users"), ("GET", "/v1/calls")]:
        status, error = await fetch(http, method, f"{call_server.url}{path}", headers=headers)
        assert_error(status, error, 401, "UNAUTHORIZED")


async def test_list_users_ordered_with_online_flag(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    zed = await create_user("zed", "Zed")
    amy = await create_user("amy", "Amy", avatar="https://example.org/a.png")
    ws = await ws_connect(amy)
    status, body = await fetch(http, "GET", f"{call_server.url}/v1/users", headers=zed.headers)
    assert status == 200
    assert body == {
        "users": [
            {"uid": "amy", "name": "Amy", "avatar": "https://example.org/a.png", "online": True},
            {"uid": "zed", "name": "Zed", "avatar": None, "online": False},
        ]
    }
    await ws.close()
    for _ in range(50):  # the server notices the close asynchronously
        _, body = await fetch(http, "GET", f"{call_server.url}/v1/users", headers=zed.headers)
        if not body["users"][0]["online"]:
            break
        await asyncio.sleep(0.02)
    assert body["users"][0]["online"] is False


# --- routes, sizes, internal errors ---


async def test_unknown_route_and_method_are_json_404(
    call_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, error = await fetch(http, "GET", f"{call_server.url}/v1/nothing")
    assert_error(status, error, 404, "NOT_FOUND")
    status, error = await fetch(http, "GET", f"{call_server.url}/")
    assert_error(status, error, 404, "NOT_FOUND")
    status, error = await fetch(http, "DELETE", f"{call_server.url}/v1/me")
    assert_error(status, error, 404, "NOT_FOUND")
    status, error = await fetch(http, "GET", f"{call_server.url}/v1/ws")  # not a WebSocket upgrade
    assert_error(status, error, 400, "BAD_REQUEST")


async def test_body_over_64_kib_is_413(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    body = json.dumps({"uid": "door", "name": "Door", "pad": "x" * MAX_MESSAGE_BYTES})
    status, error = await fetch(http, "POST", f"{call_server.url}/v1/users", data=body, headers=ADMIN)
    assert_error(status, error, 413, "PAYLOAD_TOO_LARGE")
    # Just under the limit is read (and then judged on its fields).
    user = await create_user("amy")
    body = json.dumps({"sessionId": "room", "pad": "x" * (MAX_MESSAGE_BYTES - 100)})
    status, _ = await fetch(
        http, "POST", f"{call_server.url}/v1/calls/token", data=body, headers=user.headers
    )
    assert status == 200


async def test_unexpected_exception_is_500_internal_and_server_stays_up(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    user = await create_user("amy")
    await call_server.storage.close()  # every storage call now raises RuntimeError
    status, error = await fetch(http, "GET", f"{call_server.url}/v1/me", headers=user.headers)
    assert_error(status, error, 500, "INTERNAL")
    assert "Traceback" not in error["error"]["message"] and "storage" not in error["error"]["message"]
    status, error = await fetch(http, "GET", f"{call_server.url}/v1/nothing")
    assert_error(status, error, 404, "NOT_FOUND")


# --- call tokens ---


async def test_call_token(
    start_call_server: ServerFactory, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    ice = [{"urls": ["stun:stun.example.org:3478"]}]
    server = await start_call_server(token_ttl=120, ice_servers=ice)
    amy = await create_user("amy")
    before = int(time.time())
    status, body = await fetch(
        http, "POST", f"{server.url}/v1/calls/token", json={"sessionId": "room-1"}, headers=amy.headers
    )
    assert status == 200
    assert (body["sessionId"], body["uid"], body["iceServers"]) == ("room-1", "amy", ice)
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    assert (claims["sub"], claims["sid"]) == ("amy", "room-1")
    assert claims["exp"] - claims["iat"] == 120 and before <= claims["iat"] <= before + 2
    assert body["expiresAt"] == claims["exp"] * 1000
    assert isinstance(claims["jti"], str) and claims["jti"]
    status, again = await fetch(
        http, "POST", f"{server.url}/v1/calls/token", json={"sessionId": "room-1"}, headers=amy.headers
    )
    assert jwt.decode(again["token"], options={"verify_signature": False})["jti"] != claims["jti"]


async def test_a_rung_calls_session_gives_tokens_only_to_its_parties(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    amy, ben, eve = await create_user("amy"), await create_user("ben"), await create_user("eve")
    status, call = await fetch(
        http,
        "POST",
        f"{call_server.url}/v1/calls",
        json={"receiverUid": "ben", "callType": "video"},
        headers=amy.headers,
    )
    assert status == 201
    url = f"{call_server.url}/v1/calls/token"
    for party in (amy, ben):
        status, _ = await fetch(
            http, "POST", url, json={"sessionId": call["sessionId"]}, headers=party.headers
        )
        assert status == 200
    status, error = await fetch(http, "POST", url, json={"sessionId": call["sessionId"]}, headers=eve.headers)
    assert_error(status, error, 403, "FORBIDDEN")


@pytest.mark.parametrize("body", [{}, {"sessionId": 5}, {"sessionId": "has space"}, {"sessionId": ""}])
async def test_call_token_bad_body_is_400(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, body: dict[str, Any]
) -> None:
    amy = await create_user("amy")
    status, error = await fetch(
        http, "POST", f"{call_server.url}/v1/calls/token", json=body, headers=amy.headers
    )
    assert_error(status, error, 400, "BAD_REQUEST")


# --- secrets on disk ---


async def test_secrets_on_disk(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    data_dir = call_server.config.data_dir
    key_file = data_dir / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    await call_server.close()
    # No plain auth token anywhere in the data directory, only its hash.
    blobs = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert amy.auth_token.encode() not in blobs
    assert hashlib.sha256(amy.auth_token.encode()).hexdigest().encode() in blobs


async def test_generated_admin_key_is_printed_once_and_only_its_hash_kept(
    start_call_server: ServerFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("KIOSK_ADMIN_KEY", raising=False)
    first = await start_call_server(admin_key=None)
    out = capsys.readouterr().out
    assert first.admin_key and out.count("admin key:") == 1 and f"admin key: {first.admin_key}" in out
    await first.close()
    second = await start_call_server(admin_key=None)
    assert second.admin_key is None
    assert "admin key" not in capsys.readouterr().out
    data_dir = second.config.data_dir
    blobs = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert first.admin_key.encode() not in blobs
    body = {"uid": "door", "name": "Door"}
    status, _ = await fetch(
        http, "POST", f"{second.url}/v1/users", json=body, headers={"X-Admin-Key": first.admin_key}
    )
    assert status == 201
    status, _ = await fetch(http, "POST", f"{second.url}/v1/users", json=body, headers={"X-Admin-Key": "x"})
    assert status == 403


async def test_admin_key_from_environment(
    start_call_server: ServerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIOSK_ADMIN_KEY", "from-env")
    server = await start_call_server(admin_key=None)
    assert server.admin_key == "from-env"
    body = {"uid": "door", "name": "Door"}
    status, _ = await fetch(
        http, "POST", f"{server.url}/v1/users", json=body, headers={"X-Admin-Key": "from-env"}
    )
    assert status == 201


# --- administration without REST ---


async def test_admin_add_user_works_beside_a_running_server(
    call_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    data_dir = call_server.config.data_dir
    created = add_user(data_dir, "door", "Front door", "https://example.org/d.png")
    assert created["uid"] == "door" and created["authToken"]
    auth = {"Authorization": f"Bearer {created['authToken']}"}
    status, me = await fetch(http, "GET", f"{call_server.url}/v1/me", headers=auth)
    assert (status, me["name"]) == (200, "Front door")
    with pytest.raises(UserExistsError, match="door"):
        add_user(data_dir, "door", "Again")
    with pytest.raises(ValueError):
        add_user(data_dir, "bad uid", "x")
    assert list_users(data_dir) == [
        {"uid": "door", "name": "Front door", "avatar": "https://example.org/d.png"}
    ]


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kiosk")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_server_parser(subparsers)
    add_users_parser(subparsers)
    return parser.parse_args(argv)


def test_cli_users_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = str(tmp_path / "d")
    args = _cli("users", "add", "door", "--name", "Front door", "--data-dir", data_dir)
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert len(token) >= 32 and token.isalnum()  # safe as a command-line argument (no leading "-")
    assert json.loads(err) == {"uid": "door", "name": "Front door", "avatar": None}

    args = _cli("users", "add", "door", "--name", "Again", "--data-dir", data_dir)
    assert args.func(args) == 1
    out, err = capsys.readouterr()
    assert out == "" and "already exists" in err and "Traceback" not in err

    args = _cli("users", "list", "--data-dir", data_dir)
    assert args.func(args) == 0
    assert capsys.readouterr().out == "door\tFront door\t\n"


def test_cli_data_dir_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIOSK_DATA_DIR", str(tmp_path / "env"))
    args = _cli("users", "add", "amy", "--name", "Amy")
    assert args.func(args) == 0
    assert (tmp_path / "env" / "kiosk.db").exists()
    assert list_users(tmp_path / "env")[0]["uid"] == "amy"


def test_cli_server_options() -> None:
    args = _cli(
        "server", "--host", "0.0.0.0", "--port", "9000", "--data-dir", "/tmp/x", "--admin-key", "k",
        "--token-ttl", "60", "--ring-timeout", "5", "--max-participants", "3",
    )  # fmt: skip
    assert (args.host, args.port, str(args.data_dir), args.admin_key) == ("0.0.0.0", 9000, "/tmp/x", "k")
    assert (args.token_ttl, args.ring_timeout, args.max_participants) == (60, 5.0, 3)
    assert callable(args.func)
    assert os.fspath(args.data_dir) == "/tmp/x"
