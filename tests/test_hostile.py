"""Hostile input the protocol must refuse: acting for another participant, secrets on disk and in logs,
and the malformed inputs that used to reach the server as 500 INTERNAL (each found by probing)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_KEY, CreateUser, SignalingClient, TestUser, WsConnect, issue_call_token

from kiosk.server import RunningServer

ADMIN = {"X-Admin-Key": ADMIN_KEY}


async def participants(server: RunningServer, user: TestUser, session_id: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{server.url}/v1/sessions/{session_id}/participants",
            params={"type": "direct"},
            headers=user.headers,
        ) as r,
    ):
        assert r.status == 200
        return int((await r.json())["count"])


async def raw_http(server: RunningServer, request: bytes) -> tuple[int, dict[str, Any]]:
    """One request written byte for byte (headers a client library would refuse to send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- a participant cannot act for another ---


async def test_media_state_relay_and_leave_for_another_user_are_forbidden(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy_user, bob_user, cat_user = [await create_user(uid) for uid in ("amy", "bob", "cat")]
    amy, bob, cat = [await ws_connect(u) for u in (amy_user, bob_user, cat_user)]
    for ws in (amy, bob, cat):
        await ws.join("room")
    for ws in (amy, amy, bob):
        await ws.wait_for("participant.joined")
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("media.state", {"audioMuted": True, "videoMuted": True, "uid": "bob"}),
        ("media.state", {"audioMuted": True, "videoMuted": True, "user": bob_user.public}),
        ("media.state", {"audioMuted": True, "videoMuted": True, "user": "bob"}),
        ("offer", {"to": "cat", "sdp": "v=0 forged", "from": "bob"}),
        ("answer", {"to": "cat", "sdp": "v=0 forged", "from": "bob"}),
        ("candidate", {"to": "cat", "candidate": None, "from": "bob"}),
        ("recording", {"recording": True, "user": {"uid": "bob"}}),
        ("switch.video", {"requestedBy": "amy", "uid": "bob"}),
        ("leave", {"uid": "bob"}),
        ("end", {"uid": "bob"}),
    ]
    for message_type, fields in attempts:
        assert await amy.error(message_type, sessionId="room", **fields) == "FORBIDDEN", message_type
    # Nothing reached anyone, and everyone is still in the session with an unchanged state.
    for ws in (bob, cat):
        await ws.assert_silent(0.2)
    assert await participants(call_server, amy_user, "room") == 3
    dan = await ws_connect(await create_user("dan"))
    joined = await dan.join("room")
    states = {p["uid"]: (p["audioMuted"], p["videoMuted"]) for p in joined["participants"]}
    assert states == {"amy": (False, False), "bob": (False, False), "cat": (False, False)}
    # Naming oneself is allowed (the server sets the sender either way).
    await amy.ok("media.state", sessionId="room", audioMuted=True, videoMuted=False, uid="amy")
    muted = await bob.wait_for("media.state")
    assert muted["user"]["uid"] == "amy" and muted["audioMuted"] is True
    await amy.ok("offer", sessionId="room", to="cat", sdp="v=0", **{"from": "amy"})
    assert (await cat.wait_for("offer"))["from"] == "amy"


async def test_leave_end_and_relay_on_a_session_one_is_not_in(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy_user, bob_user, eve_user = [await create_user(uid) for uid in ("amy", "bob", "eve")]
    amy, bob, eve = [await ws_connect(u) for u in (amy_user, bob_user, eve_user)]
    await amy.join("room")
    await bob.join("room")
    await amy.wait_for("participant.joined")
    # Eve sends everything out of order: session messages for a session she never joined.
    for message_type, fields in [
        ("offer", {"to": "amy", "sdp": "v=0"}),
        ("answer", {"to": "amy", "sdp": "v=0"}),
        ("candidate", {"to": "bob", "candidate": {"candidate": "x"}}),
        ("media.state", {"audioMuted": True, "videoMuted": True}),
        ("switch.video", {}),
        ("recording", {"recording": True}),
        ("leave", {}),
        ("end", {}),
    ]:
        assert await eve.error(message_type, sessionId="room", **fields) == "NOT_IN_SESSION", message_type
    # Her own valid token for the room does not let her use bob's, nor bob's token let her in.
    bobs_token = await issue_call_token(call_server, bob_user, "room")
    assert (await eve.join("room", token=bobs_token))["error"]["code"] == "TOKEN_WRONG_USER"
    other_room = await issue_call_token(call_server, eve_user, "other-room")
    assert (await eve.join("room", token=other_room))["error"]["code"] == "TOKEN_WRONG_SESSION"
    for ws in (amy, bob):
        await ws.assert_silent(0.2)
    assert await participants(call_server, amy_user, "room") == 2
    await amy.ok("offer", sessionId="room", to="bob", sdp="v=0 still fine")
    assert (await bob.wait_for("offer"))["sdp"] == "v=0 still fine"


async def test_rest_call_actions_by_the_wrong_party(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, eve = [await create_user(uid) for uid in ("amy", "bob", "eve")]
    bob_ws = await ws_connect(bob)
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "bob", "callType": "video"}, headers=amy.headers
    ) as r:
        call = await r.json()
    await bob_ws.wait_for("call.incoming")
    url = f"{call_server.url}/v1/calls/{call['sessionId']}"
    refused = [
        (eve, "POST", "/end", None),  # ending a ringing call one is not party to
        (eve, "POST", "/accept", None),
        (eve, "POST", "/reject", {"status": "rejected"}),
        (eve, "GET", "", None),
        (amy, "POST", "/accept", None),  # the initiator cannot accept for the receiver
        (amy, "POST", "/reject", {"status": "rejected"}),  # nor reject as the receiver
        (bob, "POST", "/reject", {"status": "cancelled"}),  # nor the receiver cancel as the initiator
    ]
    for user, method, path, body in refused:
        async with http.request(method, url + path, json=body, headers=user.headers) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "FORBIDDEN", (user.uid, path)
    async with http.post(
        f"{call_server.url}/v1/calls/token", json={"sessionId": call["sessionId"]}, headers=eve.headers
    ) as r:
        assert r.status == 403
    # The call is untouched: still ringing, and bob can accept it.
    async with http.get(url, headers=amy.headers) as r:
        assert (await r.json())["status"] == "initiated"
    await bob_ws.assert_silent(0.2)
    async with http.post(url + "/accept", headers=bob.headers) as r:
        assert r.status == 200 and (await r.json())["status"] == "ongoing"


# --- secrets: compared in constant time, stored hashed, never logged ---


async def test_secrets_are_compared_in_constant_time(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    create_user: CreateUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    amy = await create_user("amy")
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with http.get(f"{call_server.url}/v1/me", headers=amy.headers) as r:
        assert r.status == 200
    assert len(compared) == 1  # the stored hash against the presented token's hash
    async with http.post(
        f"{call_server.url}/v1/users", json={"uid": "x"}, headers={"X-Admin-Key": "no"}
    ) as r:
        assert r.status == 403
    async with http.post(f"{call_server.url}/v1/users", json={"uid": "y", "name": "Y"}, headers=ADMIN) as r:
        assert r.status == 201
    assert len(compared) == 3  # each admin key check too
    assert all(len(a) == len(b) == 64 for a, b in compared)  # SHA-256 hex, never the secret itself


async def test_no_secret_is_stored_or_logged(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    create_user: CreateUser,
    ws_connect: WsConnect,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's access log included
    amy = await create_user("amy")
    bob = await create_user("bob")
    wrong_token = "f" * 64
    wrong_admin = "not-the-admin-key-0123"
    a, b = await ws_connect(amy), await ws_connect(bob)
    call_token = await issue_call_token(call_server, amy, "room")
    await a.join("room", token=call_token)
    await b.join("room")
    await a.ok("offer", sessionId="room", to="bob", sdp="v=0")
    # Failures of every kind, with the secrets in the places a careless log line would print them.
    async with http.get(f"{call_server.url}/v1/me", headers={"Authorization": f"Bearer {wrong_token}"}) as r:
        assert r.status == 401
    async with http.post(f"{call_server.url}/v1/users", json={}, headers={"X-Admin-Key": wrong_admin}) as r:
        assert r.status == 403
    ws = await ws_connect()
    assert await ws.error("auth", authToken=wrong_token) == "UNAUTHORIZED"
    assert await ws.error("auth", authToken=amy.auth_token + "x") == "UNAUTHORIZED"
    assert (await b.join("room2", token=call_token))["error"]["code"] == "TOKEN_WRONG_SESSION"
    await ws.send_raw('{"type": "auth", "authToken": "' + wrong_token + '", "extra": [')  # malformed
    await ws.wait_for("error")
    await a.close()
    await b.close()
    secrets = [amy.auth_token, bob.auth_token, ADMIN_KEY, wrong_token, wrong_admin, call_token]

    data_dir = call_server.config.data_dir
    for phase in ("running", "stopped"):  # running: the WAL holds recent writes
        blobs = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        for secret in secrets[:-1]:
            assert secret.encode() not in blobs, phase
        await call_server.close()

    assert len(caplog.records) > 10  # the log did see the session
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err):
        for secret in secrets:
            assert secret not in text


# --- malformed input that once became 500 INTERNAL ---


async def test_inputs_that_used_to_crash_a_handler_are_refused(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    url = call_server.url
    rest_cases: list[tuple[str, str, dict[str, str], str, int, str]] = [
        # A lone surrogate is valid JSON but not UTF-8: it used to fail in the database.
        ("POST", "/v1/users", ADMIN, '{"uid": "bob", "name": "\\ud800"}', 400, "BAD_REQUEST"),
        ("POST", "/v1/users", ADMIN, '{"uid": "bob", "name": "B", "avatar": "\\udfff"}', 400, "BAD_REQUEST"),
        # Deep nesting: RecursionError in the JSON decoder.
        ("POST", "/v1/calls/token", amy.headers, "[" * 50_000, 400, "BAD_REQUEST"),
        ("POST", "/v1/calls", amy.headers, '{"a":' * 12_000, 400, "BAD_REQUEST"),
        # A page beyond SQLite's integers: OverflowError in the query.
        ("GET", "/v1/calls?page=99999999999999999999", amy.headers, "", 400, "BAD_REQUEST"),
        ("GET", "/v1/calls?page=1000001", amy.headers, "", 400, "BAD_REQUEST"),
        ("GET", "/v1/calls?perPage=1_0", amy.headers, "", 400, "BAD_REQUEST"),
    ]
    for method, path, headers, body, status, code in rest_cases:
        async with http.request(method, url + path, data=body.encode(), headers=headers) as r:
            reply = await r.json()
            assert (r.status, reply["error"]["code"]) == (status, code), (path, body[:40], reply)
    # Header bytes that are not UTF-8 (aiohttp hands them over as surrogates): used to fail hashing.
    status, reply = await raw_http(
        call_server,
        b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert (status, reply["error"]["code"]) == (401, "UNAUTHORIZED")
    status, reply = await raw_http(
        call_server,
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nX-Admin-Key: \xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert (status, reply["error"]["code"]) == (403, "FORBIDDEN")

    ws = await ws_connect()
    assert await ws.error("auth", authToken="\ud800") == "UNAUTHORIZED"
    assert await ws.error("auth", authToken="x" * 10_000) == "UNAUTHORIZED"
    await ws.send_raw("[" * 50_000)
    assert (await ws.wait_for("error"))["error"]["code"] == "MALFORMED"
    authed = await ws_connect(amy)
    for token in ("\ud800", "x" * 5000, "a b.c"):
        assert (await authed.join("room", token=token))["error"]["code"] == "TOKEN_INVALID"
    assert (await authed.join("room"))["type"] == "joined"


async def test_request_ids_are_bounded(call_server: RunningServer, ws_connect: WsConnect) -> None:
    ws: SignalingClient = await ws_connect()
    for request_id in ("x" * 101, 2**53, -(2**53), 1.5, True, {"a": 1}):
        await ws.send({"type": "ping", "id": request_id})
        reply = await ws.wait_for("error")
        assert reply["error"]["code"] == "MALFORMED" and "id" not in reply, request_id
    for request_id in ("x" * 100, 2**53 - 1, -5):
        await ws.send({"type": "ping", "id": request_id})
        reply = await ws.wait_for("error")
        assert reply == {
            "type": "error",
            "id": request_id,
            "error": {"code": "NOT_AUTHENTICATED", "message": "send auth first"},
        }
