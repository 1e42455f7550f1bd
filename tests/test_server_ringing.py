"""Ringing (POST /v1/calls and its transitions), call logs, and what survives a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from conftest import CreateUser, ServerFactory, SignalingClient, TestUser, WsConnect, issue_call_token

from kiosk.server import RunningServer


class Rest:
    """Small REST helper bound to one server."""

    def __init__(self, http: aiohttp.ClientSession, server: RunningServer) -> None:
        self.http = http
        self.server = server

    async def __call__(
        self, method: str, path: str, user: TestUser, body: dict[str, Any] | None = None, **params: Any
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.request(
            method, f"{self.server.url}/v1{path}", json=body, params=params or None, headers=user.headers
        ) as r:
            return r.status, await r.json()

    async def ring(self, caller: TestUser, receiver: str, call_type: str = "video") -> dict[str, Any]:
        status, call = await self("POST", "/calls", caller, {"receiverUid": receiver, "callType": call_type})
        assert status == 201, call
        return call

    async def act(
        self, user: TestUser, session_id: str, action: str, **body: Any
    ) -> tuple[int, dict[str, Any]]:
        return await self("POST", f"/calls/{session_id}/{action}", user, body)

    async def log(self, user: TestUser, **params: Any) -> dict[str, Any]:
        status, body = await self("GET", "/calls", user, **params)
        assert status == 200, body
        return body


@pytest.fixture
def rest(call_server: RunningServer, http: aiohttp.ClientSession) -> Rest:
    return Rest(http, call_server)


@pytest.fixture
async def pair(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> tuple[TestUser, TestUser, SignalingClient, SignalingClient]:
    amy = await create_user("amy", "Amy")
    bob = await create_user("bob", "Bob")
    return amy, bob, await ws_connect(amy), await ws_connect(bob)


async def updated(ws: SignalingClient, status: str) -> dict[str, Any]:
    message = await ws.wait_for("call.updated")
    assert message["call"]["status"] == status, message
    return message["call"]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_accept_join_hangup_ends_the_call(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    rest: Rest,
    pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient],
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    before = now_ms()
    call = await rest.ring(amy, "bob", "video")
    session_id = call["sessionId"]
    assert session_id.startswith("c-")
    assert call == {
        "sessionId": session_id,
        "type": "video",
        "status": "initiated",
        "initiator": amy.public,
        "receiver": bob.public,
        "initiatedAt": call["initiatedAt"],
        "joinedAt": None,
        "endedAt": None,
        "durationSeconds": 0,
        "hasRecording": False,
    }
    assert before <= call["initiatedAt"] <= now_ms()
    assert await bob_ws.wait_for("call.incoming") == {"type": "call.incoming", "call": call}

    status, accepted = await rest.act(bob, session_id, "accept")
    assert status == 200 and accepted["status"] == "ongoing" and accepted["joinedAt"] >= call["initiatedAt"]
    for ws in (amy_ws, bob_ws):
        assert await updated(ws, "ongoing") == accepted
    assert await rest("GET", f"/calls/{session_id}", amy) == (200, accepted)

    await amy_ws.join(session_id)
    joined = await bob_ws.join(session_id)
    assert joined["audioOnly"] is False
    async with http.get(
        f"{call_server.url}/v1/sessions/{session_id}/participants",
        params={"type": "default"},
        headers=amy.headers,
    ) as r:
        assert (await r.json())["count"] == 2
    async with http.get(
        f"{call_server.url}/v1/sessions/{session_id}/participants",
        params={"type": "direct"},
        headers=amy.headers,
    ) as r:
        assert (await r.json())["count"] == 0

    await amy_ws.ok("recording", sessionId=session_id, recording=True)
    await asyncio.sleep(1.1)  # so the duration is at least one second
    await amy_ws.ok("leave", sessionId=session_id)
    assert (await bob_ws.wait_for("session.ended"))["reason"] == "hangup"
    for ws in (amy_ws, bob_ws):
        ended = await updated(ws, "ended")
    assert ended["endedAt"] >= ended["joinedAt"] + 1000
    assert ended["durationSeconds"] == (ended["endedAt"] - ended["joinedAt"]) // 1000 >= 1
    assert ended["hasRecording"] is True
    log = await rest.log(bob)
    assert log["total"] == 1 and log["calls"][0] == {**ended, "direction": "incoming"}
    assert (await rest.log(amy))["calls"][0]["direction"] == "outgoing"
    # A final call refuses further changes.
    for user, action, body in [
        (bob, "accept", {}),
        (amy, "end", {}),
        (bob, "reject", {"status": "rejected"}),
    ]:
        status, error = await rest.act(user, session_id, action, **body)
        assert (status, error["error"]["code"]) == (409, "INVALID_STATE")


async def test_reject_and_busy_by_the_receiver(
    rest: Rest, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    for outcome in ("rejected", "busy"):
        call = await rest.ring(amy, "bob", "audio")
        await bob_ws.wait_for("call.incoming")
        status, error = await rest.act(amy, call["sessionId"], "reject", status=outcome)
        assert (status, error["error"]["code"]) == (403, "FORBIDDEN")  # only the receiver may
        status, error = await rest.act(amy, call["sessionId"], "accept")
        assert (status, error["error"]["code"]) == (403, "FORBIDDEN")
        status, rejected = await rest.act(bob, call["sessionId"], "reject", status=outcome)
        assert status == 200 and rejected["status"] == outcome and rejected["endedAt"] is not None
        for ws in (amy_ws, bob_ws):
            assert await updated(ws, outcome) == rejected
        status, error = await rest.act(bob, call["sessionId"], "accept")
        assert (status, error["error"]["code"]) == (409, "INVALID_STATE")
    assert [c["status"] for c in (await rest.log(amy))["calls"]] == ["busy", "rejected"]


async def test_cancel_by_the_initiator(
    rest: Rest, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    call = await rest.ring(amy, "bob")
    status, error = await rest.act(bob, call["sessionId"], "reject", status="cancelled")
    assert (status, error["error"]["code"]) == (403, "FORBIDDEN")
    for bad in ({}, {"status": "ended"}, {"status": 3}):
        status, error = await rest.act(amy, call["sessionId"], "reject", **bad)
        assert (status, error["error"]["code"]) == (400, "BAD_REQUEST")
    status, cancelled = await rest.act(amy, call["sessionId"], "reject", status="cancelled")
    assert status == 200 and cancelled["status"] == "cancelled"
    for ws in (amy_ws, bob_ws):
        assert await updated(ws, "cancelled") == cancelled


async def test_end_before_answer_cancels_and_end_of_ongoing_ends_the_session(
    rest: Rest,
    create_user: CreateUser,
    ws_connect: WsConnect,
    pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient],
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    call = await rest.ring(amy, "bob")
    status, ended = await rest.act(amy, call["sessionId"], "end")
    assert status == 200 and ended["status"] == "cancelled"
    await updated(bob_ws, "cancelled")
    await updated(amy_ws, "cancelled")

    # The receiver ending before an answer: ended.
    call = await rest.ring(amy, "bob")
    status, ended = await rest.act(bob, call["sessionId"], "end")
    assert (status, ended["status"], ended["durationSeconds"]) == (200, "ended", 0)
    await updated(amy_ws, "ended")
    await updated(bob_ws, "ended")

    call = await rest.ring(amy, "bob")
    session_id = call["sessionId"]
    await rest.act(bob, session_id, "accept")
    # A third user may not get into the two parties' session.
    cat = await create_user("cat")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{rest.server.url}/v1/calls/token", json={"sessionId": session_id}, headers=cat.headers
        ) as r:
            assert r.status == 403
    for ws in (amy_ws, bob_ws):
        await ws.join(session_id)
    status, ended = await rest.act(bob, session_id, "end")
    assert status == 200 and ended["status"] == "ended"
    for ws in (amy_ws, bob_ws):
        over = await ws.wait_for("session.ended")
        assert over == {"type": "session.ended", "sessionId": session_id, "reason": "ended", "by": bob.public}
    for ws in (amy_ws, bob_ws):
        assert (await updated(ws, "ongoing"))["sessionId"] == session_id
        assert await updated(ws, "ended") == ended
    assert await amy_ws.error("leave", sessionId=session_id) == "NOT_IN_SESSION"


@pytest.mark.parametrize("call_server", [{"rejoin_grace": 0.2}], indirect=True)
async def test_ws_end_and_disconnect_end_an_ongoing_call(
    rest: Rest,
    ws_connect: WsConnect,
    pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient],
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    for how in ("alone", "end", "disconnect"):
        call = await rest.ring(amy, "bob")
        session_id = call["sessionId"]
        await rest.act(bob, session_id, "accept")
        await updated(amy_ws, "ongoing")
        await amy_ws.join(session_id)
        if how == "alone":  # the only participant leaving also ends the session
            await amy_ws.ok("leave", sessionId=session_id)
        else:
            await bob_ws.join(session_id)
            if how == "end":
                await bob_ws.ok("end", sessionId=session_id)
                assert (await amy_ws.wait_for("session.ended"))["reason"] == "ended"
            else:
                await bob_ws.close()
                assert (await amy_ws.wait_for("session.ended"))["reason"] == "hangup"
        assert (await updated(amy_ws, "ended"))["sessionId"] == session_id
        amy_ws.discard("participant.joined")
    status, final = await rest("GET", f"/calls/{session_id}", amy)
    assert final["status"] == "ended"


async def test_busy_when_the_receiver_is_in_a_call(
    rest: Rest,
    create_user: CreateUser,
    ws_connect: WsConnect,
    pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient],
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    cat = await create_user("cat")
    dan = await create_user("dan")
    cat_ws = await ws_connect(cat)

    first = await rest.ring(amy, "bob")  # bob rings
    await bob_ws.wait_for("call.incoming")
    busy = await rest.ring(cat, "bob")
    assert busy["status"] == "busy" and busy["endedAt"] is not None
    busy = await rest.ring(dan, "amy")  # amy rings as the caller
    assert busy["status"] == "busy"

    await rest.act(bob, first["sessionId"], "accept")  # ongoing
    assert (await rest.ring(cat, "bob"))["status"] == "busy"
    await rest.act(amy, first["sessionId"], "end")
    await bob_ws.join("some-direct-room")  # joined in any session
    assert (await rest.ring(cat, "bob"))["status"] == "busy"
    await bob_ws.ok("leave", sessionId="some-direct-room")
    assert (await rest.ring(cat, "bob"))["status"] == "initiated"
    assert (await bob_ws.wait_for("call.incoming"))["call"]["initiator"]["uid"] == "cat"
    bob_ws.discard("call.updated", "participant.joined")
    await bob_ws.assert_silent(0.1)  # no call.incoming for the calls that found bob busy
    await cat_ws.assert_silent(0.1)  # the caller learns "busy" from the reply only
    log = await rest.log(bob, status="busy")
    assert log["total"] == 3 and {c["initiator"]["uid"] for c in log["calls"]} == {"cat"}


@pytest.mark.parametrize("call_server", [0.3], indirect=True)
async def test_unanswered_after_the_ring_timeout(
    rest: Rest, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    call = await rest.ring(amy, "bob")
    started = time.monotonic()
    for ws in (amy_ws, bob_ws):
        unanswered = await updated(ws, "unanswered")
    assert 0.25 <= time.monotonic() - started < 2
    assert unanswered["sessionId"] == call["sessionId"] and unanswered["endedAt"] is not None
    status, error = await rest.act(bob, call["sessionId"], "accept")
    assert (status, error["error"]["code"]) == (409, "INVALID_STATE")
    # Answered and joined calls are not timed out.
    call = await rest.ring(amy, "bob")
    await rest.act(bob, call["sessionId"], "accept")
    await updated(amy_ws, "ongoing")
    await bob_ws.join(call["sessionId"])
    await asyncio.sleep(0.5)
    status, current = await rest("GET", f"/calls/{call['sessionId']}", amy)
    assert current["status"] == "ongoing"
    await bob_ws.call("leave", sessionId=call["sessionId"])
    await updated(amy_ws, "ended")


@pytest.mark.parametrize("call_server", [0.3], indirect=True)
async def test_an_accepted_call_nobody_joins_ends_after_the_ring_timeout(
    rest: Rest, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    call = await rest.ring(amy, "bob")
    status, _ = await rest.act(bob, call["sessionId"], "accept")
    assert status == 200
    await updated(amy_ws, "ongoing")
    ended = await updated(amy_ws, "ended")
    assert ended["sessionId"] == call["sessionId"]
    # nobody is left busy: bob can be called again and it rings
    again = await rest.ring(amy, "bob")
    assert again["status"] == "initiated"


async def test_call_requests_are_checked(
    rest: Rest, create_user: CreateUser, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, _, _ = pair
    cat = await create_user("cat")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"receiverUid": "amy", "callType": "video"}, 403, "FORBIDDEN"),
        ({"receiverUid": "nobody", "callType": "video"}, 404, "NOT_FOUND"),
        ({"receiverUid": "bob", "callType": "hologram"}, 400, "BAD_REQUEST"),
        ({"receiverUid": "bob"}, 400, "BAD_REQUEST"),
        ({"callType": "audio"}, 400, "BAD_REQUEST"),
        ({"receiverUid": ["bob"], "callType": "audio"}, 400, "BAD_REQUEST"),
    ]
    for body, expected_status, code in cases:
        status, error = await rest("POST", "/calls", amy, body)
        assert (status, error["error"]["code"]) == (expected_status, code), body
    call = await rest.ring(amy, "bob")
    for method, path in [("GET", ""), ("POST", "/accept"), ("POST", "/end")]:
        status, error = await rest(method, f"/calls/{call['sessionId']}{path}", cat, {})
        assert (status, error["error"]["code"]) == (403, "FORBIDDEN")
    status, error = await rest.act(cat, call["sessionId"], "reject", status="rejected")
    assert (status, error["error"]["code"]) == (403, "FORBIDDEN")
    status, error = await rest("GET", "/calls/c-unknown", amy)
    assert (status, error["error"]["code"]) == (404, "NOT_FOUND")
    status, error = await rest.act(amy, "c-unknown", "accept")
    assert (status, error["error"]["code"]) == (404, "NOT_FOUND")


async def test_call_log_filters_and_paging(
    rest: Rest, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    bob = await create_user("bob")
    cat = await create_user("cat")
    made: list[dict[str, Any]] = []
    # amy -> bob video (ended, recorded), bob -> amy audio (rejected), amy -> bob audio (cancelled),
    # cat -> bob video (unrelated to amy).
    call = await rest.ring(amy, "bob", "video")
    await rest.act(bob, call["sessionId"], "accept")
    amy_ws = await ws_connect(amy)
    await amy_ws.join(call["sessionId"])
    await amy_ws.ok("recording", sessionId=call["sessionId"], recording=True)
    await rest.act(amy, call["sessionId"], "end")
    made.append(call)
    call = await rest.ring(bob, "amy", "audio")
    await rest.act(amy, call["sessionId"], "reject", status="rejected")
    made.append(call)
    call = await rest.ring(amy, "bob", "audio")
    await rest.act(amy, call["sessionId"], "reject", status="cancelled")
    made.append(call)
    other = await rest.ring(cat, "bob", "video")
    await rest.act(cat, other["sessionId"], "end")

    newest_first = [c["sessionId"] for c in reversed(made)]
    log = await rest.log(amy)
    assert (log["page"], log["perPage"], log["total"]) == (1, 20, 3)
    assert [c["sessionId"] for c in log["calls"]] == newest_first
    assert [c["direction"] for c in log["calls"]] == ["outgoing", "incoming", "outgoing"]

    def ids(body: dict[str, Any]) -> list[str]:
        return [c["sessionId"] for c in body["calls"]]

    assert ids(await rest.log(amy, type="audio")) == newest_first[:2]
    assert ids(await rest.log(amy, type="video")) == [made[0]["sessionId"]]
    assert ids(await rest.log(amy, status="rejected")) == [made[1]["sessionId"]]
    assert ids(await rest.log(amy, direction="incoming")) == [made[1]["sessionId"]]
    assert ids(await rest.log(amy, direction="outgoing")) == [made[2]["sessionId"], made[0]["sessionId"]]
    assert ids(await rest.log(amy, hasRecording="true")) == [made[0]["sessionId"]]
    assert ids(await rest.log(amy, hasRecording="false")) == newest_first[:2]
    assert ids(await rest.log(amy, type="audio", direction="outgoing")) == [made[2]["sessionId"]]

    page = await rest.log(amy, perPage=2)
    assert (ids(page), page["total"], page["perPage"]) == (newest_first[:2], 3, 2)
    page = await rest.log(amy, perPage=2, page=2)
    assert (ids(page), page["page"]) == (newest_first[2:], 2)
    assert ids(await rest.log(amy, perPage=2, page=3)) == []
    assert (await rest.log(bob))["total"] == 4
    assert (await rest.log(cat))["total"] == 1

    for params in [
        {"type": "fax"},
        {"status": "lost"},
        {"direction": "sideways"},
        {"hasRecording": "yes"},
        {"page": "0"},
        {"page": "x"},
        {"perPage": "0"},
        {"perPage": "101"},
    ]:
        status, error = await rest("GET", "/calls", amy, **params)
        assert (status, error["error"]["code"]) == (400, "BAD_REQUEST"), params


async def test_switch_video_makes_the_call_a_video_call(
    rest: Rest, pair: tuple[TestUser, TestUser, SignalingClient, SignalingClient]
) -> None:
    amy, bob, amy_ws, bob_ws = pair
    call = await rest.ring(amy, "bob", "audio")
    await rest.act(bob, call["sessionId"], "accept")
    assert (await amy_ws.join(call["sessionId"]))["audioOnly"] is True  # an audio call starts audio-only
    await bob_ws.join(call["sessionId"])
    await bob_ws.ok("switch.video", sessionId=call["sessionId"])
    await amy_ws.wait_for("switch.video")
    status, current = await rest("GET", f"/calls/{call['sessionId']}", amy)
    assert current["type"] == "video"


async def test_restart_keeps_users_tokens_calls_and_call_tokens(
    start_call_server: ServerFactory,
    http: aiohttp.ClientSession,
    create_user: CreateUser,
    ws_connect: WsConnect,
) -> None:
    first = await start_call_server()
    amy = await create_user("amy")
    bob = await create_user("bob")
    rest = Rest(http, first)
    done = await rest.ring(amy, "bob", "audio")
    await rest.act(bob, done["sessionId"], "reject", status="rejected")
    ringing = await rest.ring(amy, "bob", "video")
    call_token = await issue_call_token(first, amy, "room")
    await first.close()

    second = await start_call_server()
    assert second.port != 0
    rest = Rest(http, second)
    status, me = await rest("GET", "/me", amy)
    assert (status, me) == (200, amy.public)
    log = await rest.log(bob)
    assert [(c["sessionId"], c["status"]) for c in log["calls"]] == [
        (ringing["sessionId"], "unanswered"),  # left ringing by the previous run
        (done["sessionId"], "rejected"),
    ]
    ws = await ws_connect(amy, server=second)
    joined = await ws.join("room", token=call_token)
    assert joined["type"] == "joined"
    # And the new run works as usual.
    assert (await rest.ring(amy, "bob"))["status"] == "initiated"


async def test_stopping_with_live_calls_is_quick_and_closes_them(
    start_call_server: ServerFactory,
    http: aiohttp.ClientSession,
    create_user: CreateUser,
    ws_connect: WsConnect,
) -> None:
    server = await start_call_server()
    amy, bob = await create_user("amy"), await create_user("bob")
    amy_ws, bob_ws = await ws_connect(amy), await ws_connect(bob)
    rest = Rest(http, server)
    call = await rest.ring(amy, "bob")
    await rest.act(bob, call["sessionId"], "accept")
    await amy_ws.join(call["sessionId"])
    await bob_ws.join(call["sessionId"])
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2
    with pytest.raises(ConnectionError):
        await amy_ws.wait_for("never")
    # Nobody comes back to it after the restart: it ends at the join deadline (the ring timeout).
    server = await start_call_server(ring_timeout=0.5)
    rest = Rest(http, server)
    status, final = await rest("GET", f"/calls/{call['sessionId']}", amy)
    assert (status, final["status"]) == (200, "ongoing")
    for _ in range(100):
        status, final = await rest("GET", f"/calls/{call['sessionId']}", amy)
        if final["status"] != "ongoing":
            break
        await asyncio.sleep(0.05)
    assert final["status"] == "ended"


async def test_an_ongoing_call_can_be_rejoined_after_a_restart_and_not_after_its_end(
    start_call_server: ServerFactory,
    http: aiohttp.ClientSession,
    create_user: CreateUser,
    ws_connect: WsConnect,
) -> None:
    server = await start_call_server()
    amy, bob = await create_user("amy"), await create_user("bob")
    amy_ws, bob_ws = await ws_connect(amy), await ws_connect(bob)
    rest = Rest(http, server)
    call = await rest.ring(amy, "bob")
    session_id = call["sessionId"]
    await rest.act(bob, session_id, "accept")
    amy_token, bob_token = (
        await issue_call_token(server, amy, session_id),
        await issue_call_token(server, bob, session_id),
    )
    await amy_ws.join(session_id, token=amy_token)
    await bob_ws.join(session_id, token=bob_token)
    await server.close()

    server = await start_call_server()
    rest = Rest(http, server)
    amy_ws, bob_ws = await ws_connect(amy), await ws_connect(bob)
    # Both come back with the tokens they had: the call goes on.
    assert (await amy_ws.join(session_id, token=amy_token, rejoin=True))["type"] == "joined"
    assert (await bob_ws.join(session_id, token=bob_token, rejoin=True))["type"] == "joined"
    assert (await rest("GET", f"/calls/{session_id}", amy))[1]["status"] == "ongoing"
    await amy_ws.ok("end", sessionId=session_id)
    await updated(bob_ws, "ended")
    # Over: neither a new call token nor the old ones open its session again.
    status, body = await rest("POST", "/calls/token", amy, {"sessionId": session_id})
    assert (status, body["error"]["code"]) == (409, "INVALID_STATE")
    fresh = await ws_connect(bob)
    reply = await fresh.call(
        "join", sessionId=session_id, callToken=bob_token, audioMuted=False, videoMuted=False, audioOnly=False
    )
    assert reply["type"] == "error" and reply["error"]["code"] == "INVALID_STATE", reply


async def test_a_rejected_calls_session_gives_no_call_tokens(rest: Rest, create_user: CreateUser) -> None:
    amy, bob = await create_user("amy"), await create_user("bob")
    for final, who in (("rejected", bob), ("cancelled", amy)):
        call = await rest.ring(amy, "bob")
        assert (await rest.act(who, call["sessionId"], "reject", status=final))[0] == 200
        for user in (amy, bob):
            status, body = await rest("POST", "/calls/token", user, {"sessionId": call["sessionId"]})
            assert (status, body["error"]["code"]) == (409, "INVALID_STATE"), (final, body)


async def test_racing_requests_have_one_winner(rest: Rest, create_user: CreateUser) -> None:
    amy, bob, cat = [await create_user(uid) for uid in ("amy", "bob", "cat")]
    first, second = await asyncio.gather(rest.ring(amy, "bob"), rest.ring(cat, "bob"))
    assert sorted([first["status"], second["status"]]) == ["busy", "initiated"]
    ringing = first if first["status"] == "initiated" else second
    caller = amy if ringing["initiator"]["uid"] == "amy" else cat
    # All three need a ringing call, so exactly one can win.
    results = await asyncio.gather(
        rest.act(bob, ringing["sessionId"], "accept"),
        rest.act(bob, ringing["sessionId"], "reject", status="rejected"),
        rest.act(caller, ringing["sessionId"], "reject", status="cancelled"),
    )
    assert sorted(status for status, _ in results) == [200, 409, 409]
    winner = next(body for status, body in results if status == 200)
    status, current = await rest("GET", f"/calls/{ringing['sessionId']}", bob)
    assert current == winner
