"""Door release through the server: only in a call with the door, only for users allowed, never
replayed, the answer to both sides, and every request in the call log with who asked."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
from conftest import ADMIN_KEY, CreateUser, SignalingClient, TestUser, WsConnect

from kiosk.server import RunningServer

ADMIN = {"X-Admin-Key": ADMIN_KEY}


def nonce() -> str:
    return secrets.token_urlsafe(16)


async def allow_doors(
    http: aiohttp.ClientSession, server: RunningServer, uid: str, allowed: bool = True
) -> None:
    async with http.put(
        f"{server.url}/v1/users/{uid}/permissions", json={"openDoors": allowed}, headers=ADMIN
    ) as r:
        assert r.status == 200, await r.text()


async def rung_call(
    http: aiohttp.ClientSession, server: RunningServer, caller: TestUser, receiver: TestUser
) -> str:
    async with http.post(
        f"{server.url}/v1/calls",
        json={"receiverUid": receiver.uid, "callType": "video"},
        headers=caller.headers,
    ) as r:
        assert r.status == 201, await r.text()
        session_id = str((await r.json())["sessionId"])
    async with http.post(f"{server.url}/v1/calls/{session_id}/accept", headers=receiver.headers) as r:
        assert r.status == 200, await r.text()
    return session_id


async def error_of(client: SignalingClient, **fields: Any) -> str:
    reply = await client.call("door.open", **fields)
    assert reply["type"] == "error", reply
    return str(reply["error"]["code"])


async def test_a_resident_in_a_call_with_the_door_opens_it_once(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    door, amy = await create_user("door", "Front door"), await create_user("amy", "Amy")
    await allow_doors(http, call_server, "amy")
    door_ws, amy_ws = await ws_connect(door), await ws_connect(amy)
    session_id = await rung_call(http, call_server, door, amy)
    joined = await door_ws.join(session_id, door=True)
    assert joined["self"]["door"] is True
    seen = await amy_ws.join(session_id)
    assert [p.get("door") for p in seen["participants"]] == [True]  # the page knows to show the button
    await door_ws.wait_for("participant.joined")

    asked = nonce()
    assert (await amy_ws.call("door.open", sessionId=session_id, to="door", nonce=asked))["type"] == "ok"
    request = await door_ws.wait_for("door.open")
    assert (request["from"], request["nonce"], request["sessionId"]) == ("amy", asked, session_id)
    answer = await door_ws.call("door.result", sessionId=session_id, to="amy", nonce=asked, opened=True)
    assert answer["type"] == "ok", answer
    for ws in (amy_ws, door_ws):
        told = await ws.wait_for("door.opened")
        assert told["opened"] is True and told["by"]["uid"] == "amy" and told["door"]["uid"] == "door"

    # The same request again (a replay, even by the one who made it) is refused and never reaches the door.
    assert await error_of(amy_ws, sessionId=session_id, to="door", nonce=asked) == "INVALID_STATE"
    # So is a second answer to an answered request.
    again = await door_ws.call("door.result", sessionId=session_id, to="amy", nonce=asked, opened=True)
    assert again["type"] == "error" and again["error"]["code"] == "INVALID_STATE"
    # A door that cannot open says why; both sides hear it.
    second = nonce()
    await amy_ws.ok("door.open", sessionId=session_id, to="door", nonce=second)
    await door_ws.wait_for("door.open")
    await door_ws.ok(
        "door.result",
        sessionId=session_id,
        to="amy",
        nonce=second,
        opened=False,
        reason="the door is held open",
    )
    told = await amy_ws.wait_for("door.opened")
    assert told["opened"] is False and told["reason"] == "the door is held open"
    await door_ws.wait_for("door.opened")

    # The call log has both, with who asked.
    async with http.get(f"{call_server.url}/v1/calls/{session_id}", headers=door.headers) as r:
        logged = (await r.json())["doorOpenings"]
    assert [(o["by"], o["door"], o["opened"]) for o in logged] == [
        ("amy", "door", True),
        ("amy", "door", False),
    ]
    async with http.get(f"{call_server.url}/v1/calls", headers=amy.headers) as r:
        entry = (await r.json())["calls"][0]
    assert len(entry["doorOpenings"]) == 2 and entry["doorOpenings"][1]["reason"] == "the door is held open"
    door_ws.discard("call.updated", "door.opened")
    await door_ws.assert_silent()  # the replayed request never reached the door


async def test_door_requests_that_are_refused(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    door, other_door = await create_user("door"), await create_user("garage")
    amy, bob = await create_user("amy"), await create_user("bob")
    await allow_doors(http, call_server, "amy")
    door_ws, garage_ws, amy_ws, bob_ws = [await ws_connect(u) for u in (door, other_door, amy, bob)]
    # A session joined by call tokens alone (no ringing), so that a third can be in it.
    session_id, other_session = "hall", "garage-call"
    await door_ws.join(session_id, door=True)
    # Outside a call with the door: not in its session.
    assert await error_of(amy_ws, sessionId=session_id, to="door", nonce=nonce()) == "NOT_IN_SESSION"
    await amy_ws.join(session_id)
    # A user without the permission, though in the call.
    await bob_ws.join(session_id)
    assert await error_of(bob_ws, sessionId=session_id, to="door", nonce=nonce()) == "FORBIDDEN"
    # Another kiosk's door, not in this call.
    await garage_ws.join(other_session, door=True)
    assert await error_of(amy_ws, sessionId=session_id, to="garage", nonce=nonce()) == "PEER_NOT_FOUND"
    assert await error_of(amy_ws, sessionId=other_session, to="garage", nonce=nonce()) == "NOT_IN_SESSION"
    # A participant that has no door; a nonce too short to be one's own.
    assert await error_of(amy_ws, sessionId=session_id, to="bob", nonce=nonce()) == "INVALID_STATE"
    assert await error_of(amy_ws, sessionId=session_id, to="door", nonce="short") == "BAD_REQUEST"
    # The permission taken away counts at once, on the open connection.
    await allow_doors(http, call_server, "amy", allowed=False)
    assert await error_of(amy_ws, sessionId=session_id, to="door", nonce=nonce()) == "FORBIDDEN"
    # An answer nobody asked for, and one from an endpoint without a door.
    bogus = await door_ws.call("door.result", sessionId=session_id, to="amy", nonce=nonce(), opened=True)
    assert bogus["error"]["code"] == "INVALID_STATE"
    fake = await bob_ws.call("door.result", sessionId=session_id, to="amy", nonce=nonce(), opened=True)
    assert fake["error"]["code"] == "INVALID_STATE"
    door_ws.discard("participant.joined")
    await door_ws.assert_silent()  # no refused request reached a door
    await garage_ws.assert_silent()
    async with http.put(
        f"{call_server.url}/v1/users/amy/permissions", json={"openDoors": True}, headers=amy.headers
    ) as r:
        assert r.status == 403
