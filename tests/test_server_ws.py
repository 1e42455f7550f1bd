"""The signaling WebSocket: auth, call-token checks, sessions, relay, broadcasts and bad frames."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import CreateUser, ServerFactory, SignalingClient, TestUser, WsConnect, issue_call_token

from kiosk.protocol import MAX_MESSAGE_BYTES
from kiosk.server import RunningServer


async def count(
    http: aiohttp.ClientSession, server: RunningServer, user: TestUser, session_id: str, kind: str
) -> int:
    url = f"{server.url}/v1/sessions/{session_id}/participants"
    async with http.get(url, params={"type": kind}, headers=user.headers) as r:
        body = await r.json()
        assert r.status == 200, body
        assert (body["sessionId"], body["type"]) == (session_id, kind)
        return body["count"]


async def rung_call(
    http: aiohttp.ClientSession, server: RunningServer, caller: TestUser, receiver: TestUser
) -> str:
    """Ring `receiver` from `caller` and accept: the session id of a 1:1 call (session type default)."""
    async with http.post(
        f"{server.url}/v1/calls",
        json={"receiverUid": receiver.uid, "callType": "audio"},
        headers=caller.headers,
    ) as r:
        assert r.status in (200, 201), await r.text()
        session_id = str((await r.json())["sessionId"])
    async with http.post(f"{server.url}/v1/calls/{session_id}/accept", headers=receiver.headers) as r:
        assert r.status == 200, await r.text()
    return session_id


def forge(data_dir: Path, **claims: Any) -> str:
    """A call token signed with the server's real key, with chosen claims."""
    now = int(time.time())
    full = {"sub": "amy", "sid": "room", "iat": now, "exp": now + 60, "jti": "j1", **claims}
    full = {k: v for k, v in full.items() if v is not None}
    return jwt.encode(full, (data_dir / "signing.key").read_bytes(), algorithm="HS256")


@pytest.fixture
async def trio(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> tuple[SignalingClient, SignalingClient, SignalingClient]:
    users = [await create_user(uid) for uid in ("amy", "bob", "cat")]
    return tuple([await ws_connect(u) for u in users])  # type: ignore[return-value]


# --- auth ---


async def test_auth_replies_ok_with_the_user(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy", "Amy", avatar="https://example.org/a.png")
    ws = await ws_connect()
    reply = await ws.call("auth", authToken=amy.auth_token)
    assert reply == {"type": "ok", "id": "r1", "user": amy.public, "canOpenDoors": False}
    assert await ws.error("auth", authToken=amy.auth_token) == "BAD_REQUEST"  # once per connection


async def test_messages_before_auth_are_refused_and_bad_auth_keeps_the_connection(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    ws = await ws_connect()
    assert await ws.error("ping") == "NOT_AUTHENTICATED"
    assert await ws.error("join", sessionId="room", callToken="x") == "NOT_AUTHENTICATED"
    assert await ws.error("auth", authToken="not-a-token") == "UNAUTHORIZED"
    assert (await ws.call("auth", authToken=amy.auth_token))["type"] == "ok"
    assert await ws.call("ping") == {"type": "pong", "id": "r5"}


async def test_ping_echoes_integer_and_string_ids(trio: tuple[SignalingClient, ...]) -> None:
    amy = trio[0]
    await amy.send({"type": "ping", "id": 7})
    assert await amy.wait_for("pong") == {"type": "pong", "id": 7}
    await amy.send({"type": "ping"})
    assert await amy.wait_for("pong") == {"type": "pong"}


# --- call tokens ---


async def test_every_call_token_error_then_the_connection_still_joins(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    bob = await create_user("bob")
    ws = await ws_connect(amy)
    data_dir = call_server.config.data_dir
    good = await issue_call_token(call_server, amy, "room")
    header, payload, signature = good.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    cases = {
        "TOKEN_INVALID": [
            "garbage",
            "a.b.c",
            f"{header}.{payload}.{flipped}",  # tampered signature
            f"{header}.{forge(data_dir, sub='bob').split('.')[1]}.{signature}",  # altered claims
            jwt.encode({"sub": "amy", "sid": "room", "iat": 1, "exp": 2**31, "jti": "x"}, b"k" * 64),
            forge(data_dir, jti=None),  # a required claim missing
        ],
        "TOKEN_EXPIRED": [forge(data_dir, iat=int(time.time()) - 120, exp=int(time.time()) - 60)],
        "TOKEN_WRONG_SESSION": [await issue_call_token(call_server, amy, "other-room")],
        "TOKEN_WRONG_USER": [await issue_call_token(call_server, bob, "room")],
    }
    for code, tokens in cases.items():
        for token in tokens:
            reply = await ws.join("room", token=token)
            assert reply["type"] == "error" and reply["error"]["code"] == code, (token, reply)
    joined = await ws.join("room", token=good)
    assert joined["type"] == "joined" and joined["self"]["uid"] == "amy"


async def test_expired_message_names_the_expiry(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    ws = await ws_connect(amy)
    exp = int(time.time()) - 5
    reply = await ws.join("room", token=forge(call_server.config.data_dir, exp=exp, iat=exp - 10))
    assert reply["error"] == {"code": "TOKEN_EXPIRED", "message": f"call token expired at {exp * 1000}"}


async def test_tokens_from_a_short_ttl_expire(
    start_call_server: ServerFactory, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    server = await start_call_server(token_ttl=1)
    amy = await create_user("amy")
    ws = await ws_connect(amy)
    token = await issue_call_token(server, amy, "room")
    await asyncio.sleep(2.05)  # exp is whole seconds; 1 s ttl is over by then
    assert (await ws.join("room", token=token))["error"]["code"] == "TOKEN_EXPIRED"


# --- join / leave / end ---


async def test_join_leave_among_three(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, cat = trio
    assert amy.user is not None
    joined = await amy.join("room", audioMuted=True, audioOnly=True)
    assert joined["type"] == "joined" and joined["id"]
    assert joined["sessionId"] == "room" and joined["participants"] == [] and joined["audioOnly"] is True
    assert joined["iceServers"] == []
    me = joined["self"]
    assert {k: me[k] for k in ("uid", "name", "avatar", "audioMuted", "videoMuted")} == {
        **amy.user.public,
        "audioMuted": True,
        "videoMuted": False,
    }
    assert abs(me["joinedAt"] - time.time() * 1000) < 5000

    joined = await bob.join("room")
    assert [p["uid"] for p in joined["participants"]] == ["amy"]
    assert joined["participants"][0]["audioMuted"] is True
    assert joined["audioOnly"] is True  # the session's flag, set by whoever created it
    pushed = await amy.wait_for("participant.joined")
    assert pushed == {"type": "participant.joined", "sessionId": "room", "participant": joined["self"]}

    joined = await cat.join("room")
    assert sorted(p["uid"] for p in joined["participants"]) == ["amy", "bob"]
    for other in (amy, bob):
        assert (await other.wait_for("participant.joined"))["participant"]["uid"] == "cat"
    assert await count(http, call_server, amy.user, "room", "direct") == 3
    assert await count(http, call_server, amy.user, "room", "default") == 0

    assert await cat.ok("leave", sessionId="room") == {"type": "ok", "id": "r3"}
    for other in (amy, bob):
        left = await other.wait_for("participant.left")
        assert (
            left["sessionId"] == "room" and left["reason"] == "left" and left["participant"]["uid"] == "cat"
        )
    assert await count(http, call_server, amy.user, "room", "direct") == 2

    # Two left of a session joined by id: not a 1:1 call, the last stays (its idle timer runs).
    await amy.ok("leave", sessionId="room")
    left = await bob.wait_for("participant.left")
    assert (left["reason"], left["participant"]["uid"]) == ("left", "amy")
    assert await count(http, call_server, amy.user, "room", "direct") == 1
    await bob.ok("leave", sessionId="room")
    assert await count(http, call_server, amy.user, "room", "direct") == 0
    for ws in trio:
        await ws.assert_silent(0.1)


async def test_leaving_a_rung_one_to_one_call_ends_it_for_the_other(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, _ = trio
    assert amy.user is not None and bob.user is not None
    session_id = await rung_call(http, call_server, amy.user, bob.user)
    await amy.join(session_id)
    await bob.join(session_id)
    await amy.ok("leave", sessionId=session_id)
    ended = await bob.wait_for("session.ended")
    assert ended == {
        "type": "session.ended",
        "sessionId": session_id,
        "reason": "hangup",
        "by": amy.user.public,
    }
    assert await count(http, call_server, amy.user, session_id, "default") == 0
    assert await bob.error("leave", sessionId=session_id) == "NOT_IN_SESSION"


async def test_end_ends_the_session_for_everyone(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, cat = trio
    for ws in trio:
        await ws.join("room")
    assert bob.user is not None
    await bob.ok("end", sessionId="room")
    for ws in trio:
        ended = await ws.wait_for("session.ended")
        assert ended == {
            "type": "session.ended",
            "sessionId": "room",
            "reason": "ended",
            "by": bob.user.public,
        }
    assert await count(http, call_server, bob.user, "room", "direct") == 0
    assert await amy.error("end", sessionId="room") == "NOT_IN_SESSION"
    # The id can be used again for a new session.
    assert (await cat.join("room"))["participants"] == []


@pytest.mark.parametrize("call_server", [{"rejoin_grace": 0.5}], indirect=True)
async def test_a_closed_connection_leaves_its_sessions_after_the_grace(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, cat = trio
    assert amy.user is not None and bob.user is not None
    pair = await rung_call(http, call_server, amy.user, bob.user)  # before "room": busy users cannot be rung
    await amy.join(pair)
    await bob.join(pair)
    for ws in trio:
        await ws.join("room")
    await amy.close()
    await asyncio.sleep(0.2)  # within the grace: amy may still come back, nobody is told she left
    assert not [m for m in bob.inbox + cat.inbox if m["type"] in ("participant.left", "session.ended")]
    for ws in (bob, cat):
        left = await ws.wait_for("participant.left")
        assert (left["sessionId"], left["reason"], left["participant"]["uid"]) == (
            "room",
            "disconnected",
            "amy",
        )
    ended = await bob.wait_for("session.ended")
    assert ended == {"type": "session.ended", "sessionId": pair, "reason": "hangup", "by": amy.user.public}


@pytest.mark.parametrize("call_server", [{"rejoin_grace": 0.0}], indirect=True)
async def test_with_no_grace_a_closed_connection_leaves_at_once(
    call_server: RunningServer,
    http: aiohttp.ClientSession,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, _ = trio
    assert amy.user is not None and bob.user is not None
    pair = await rung_call(http, call_server, amy.user, bob.user)
    await amy.join(pair)
    await bob.join(pair)
    await amy.close()
    ended = await bob.wait_for("session.ended", timeout=0.5)
    assert ended["reason"] == "hangup"


@pytest.mark.parametrize("call_server", [{"rejoin_grace": 1.0}], indirect=True)
async def test_rejoin_on_a_new_connection_takes_the_place_over(
    call_server: RunningServer,
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
    ws_connect: WsConnect,
) -> None:
    amy, bob, cat = trio
    token = await issue_call_token(call_server, amy.user, "room")
    for ws in trio:
        await ws.join("room", token if ws is amy else None)
    await amy.close()
    # amy's network comes back: a new connection, the same call token, rejoin.
    amy2 = await ws_connect(amy.user)
    joined = await amy2.join("room", token, rejoin=True, audioMuted=True)
    assert joined["type"] == "joined" and joined["rejoined"] is True
    assert [p["uid"] for p in joined["participants"]] == ["bob", "cat"]
    assert joined["self"]["audioMuted"] is True and joined["rejoinGraceMs"] == 1000
    for ws in (bob, cat):
        note = await ws.wait_for(lambda m: m["type"] == "participant.joined" and m.get("rejoined"))
        assert note["participant"]["uid"] == "amy" and note["participant"]["audioMuted"] is True
    # Messages for amy reach her new connection; the grace passes and nobody is told she left.
    await bob.ok("offer", sessionId="room", to="amy", sdp="v=0 after the rejoin")
    offer = await amy2.wait_for("offer")
    assert offer["from"] == "bob" and offer["sdp"] == "v=0 after the rejoin"
    await asyncio.sleep(1.3)
    assert not [m for m in bob.inbox + cat.inbox if m["type"] == "participant.left"]
    # A rejoin to a session the server does not know (it restarted) is a plain join.
    fresh = await amy2.join("elsewhere", rejoin=True)
    assert fresh["rejoined"] is False and fresh["participants"] == []
    # Without rejoin, a second connection of the same user is still refused.
    assert await bob.error("join", sessionId="room", callToken=token) in ("TOKEN_WRONG_USER",)


async def test_already_in_session_and_per_connection_limit(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    first = await ws_connect(amy)
    second = await ws_connect(amy)
    await first.join("room")
    assert (await first.join("room"))["error"]["code"] == "ALREADY_IN_SESSION"
    # Another connection of the same user: peers address users by uid, so not twice in one session.
    assert (await second.join("room"))["error"]["code"] == "ALREADY_IN_SESSION"
    for name in ("s2", "s3", "s4"):
        assert (await first.join(name))["type"] == "joined"
    assert (await first.join("s5"))["error"]["code"] == "BAD_REQUEST"
    assert (await second.join("s5"))["type"] == "joined"  # membership is per connection
    await first.ok("leave", sessionId="s4")
    assert (await first.join("s6"))["type"] == "joined"


async def test_session_full(
    start_call_server: ServerFactory, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    await start_call_server(max_participants=2)
    clients = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob", "cat")]
    await clients[0].join("room")
    await clients[1].join("room")
    assert (await clients[2].join("room"))["error"]["code"] == "SESSION_FULL"
    await clients[1].ok("leave", sessionId="room")  # 1:1 over: the session is gone
    assert (await clients[2].join("room"))["type"] == "joined"


# --- relay and broadcasts ---


async def test_relay_offer_answer_candidate(
    trio: tuple[SignalingClient, SignalingClient, SignalingClient],
) -> None:
    amy, bob, cat = trio
    for ws in trio:
        await ws.join("room")
    await amy.ok("offer", sessionId="room", to="bob", sdp="v=0 offer")
    assert await bob.wait_for("offer") == {
        "type": "offer",
        "sessionId": "room",
        "from": "amy",
        "sdp": "v=0 offer",
    }
    await bob.ok("answer", sessionId="room", to="amy", sdp="v=0 answer")
    assert await amy.wait_for("answer") == {
        "type": "answer",
        "sessionId": "room",
        "from": "bob",
        "sdp": "v=0 answer",
    }
    # A negotiation id travels with the offer and its answer, so a rebuilt connection can tell
    # the answer to its own offer from one to an older offer.
    await amy.ok("offer", sessionId="room", to="bob", sdp="v=0 offer 2", negotiationId="n-2")
    assert (await bob.wait_for("offer"))["negotiationId"] == "n-2"
    await bob.ok("answer", sessionId="room", to="amy", sdp="v=0 answer 2", negotiationId="n-2")
    assert (await amy.wait_for("answer"))["negotiationId"] == "n-2"
    assert (
        await amy.error("offer", sessionId="room", to="bob", sdp="x", negotiationId="not an id")
        == "BAD_REQUEST"
    )
    assert await amy.error("offer", sessionId="room", to="bob", sdp="x", negotiationId=7) == "BAD_REQUEST"
    candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0"}
    await cat.ok("candidate", sessionId="room", to="amy", candidate=candidate)
    assert (await amy.wait_for("candidate"))["candidate"] == candidate
    await cat.ok("candidate", sessionId="room", to="amy", candidate=None)
    assert await amy.wait_for("candidate") == {
        "type": "candidate",
        "sessionId": "room",
        "from": "cat",
        "candidate": None,
    }

    assert await amy.error("offer", sessionId="room", to="nobody", sdp="x") == "PEER_NOT_FOUND"
    assert await amy.error("offer", sessionId="room", to="amy", sdp="x") == "PEER_NOT_FOUND"
    await amy.join("elsewhere")
    assert await amy.error("offer", sessionId="elsewhere", to="bob", sdp="x") == "PEER_NOT_FOUND"
    assert await bob.error("offer", sessionId="elsewhere", to="amy", sdp="x") == "NOT_IN_SESSION"
    for ws in (bob, cat):
        ws.discard("participant.joined")
        await ws.assert_silent(0.1)


async def test_media_state_switch_video_and_recording_go_to_the_others(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, cat, dan = [await create_user(uid) for uid in ("amy", "bob", "cat", "dan")]
    a, b, c = [await ws_connect(u) for u in (amy, bob, cat)]
    for ws in (a, b, c):
        await ws.join("room", audioOnly=True)
    a.inbox.clear()
    b.inbox.clear()

    await a.ok("media.state", sessionId="room", audioMuted=True, videoMuted=False)
    for ws in (b, c):
        assert await ws.wait_for("media.state") == {
            "type": "media.state",
            "sessionId": "room",
            "user": amy.public,
            "audioMuted": True,
            "videoMuted": False,
        }
    # The new state is what later joiners see.
    await b.ok("leave", sessionId="room")
    d = await ws_connect(dan)
    joined = await d.join("room")
    assert joined["audioOnly"] is True
    assert {p["uid"]: p["audioMuted"] for p in joined["participants"]} == {"amy": True, "cat": False}

    await c.ok("switch.video", sessionId="room")
    for ws in (a, d):
        switched = await ws.wait_for("switch.video")
        assert switched == {"type": "switch.video", "sessionId": "room", "requestedBy": cat.public}
    b2 = await ws_connect(bob)
    assert (await b2.join("room"))["audioOnly"] is False  # the session is a video call now

    before = time.time() * 1000
    await a.ok("recording", sessionId="room", recording=True)
    for ws in (c, d, b2):
        rec = await ws.wait_for("recording")
        assert (rec["sessionId"], rec["user"], rec["recording"]) == ("room", amy.public, True)
        assert before - 1000 <= rec["at"] <= time.time() * 1000 + 1000
    a.discard("participant.joined", "participant.left")
    await a.assert_silent(0.1)  # the sender gets only its ok replies
    for message_type, fields in [
        ("media.state", {"audioMuted": False, "videoMuted": False}),
        ("switch.video", {}),
        ("recording", {"recording": False}),
        ("leave", {}),
        ("end", {}),
    ]:
        assert await b.error(message_type, sessionId="room", **fields) == "NOT_IN_SESSION"


async def test_a_late_joiner_learns_of_a_recording_going_on(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, cat = [await create_user(uid) for uid in ("amy", "bob", "cat")]
    a, b = [await ws_connect(u) for u in (amy, bob)]
    for ws in (a, b):
        await ws.join("room")
    await a.ok("recording", sessionId="room", recording=True)
    started = (await b.wait_for("recording"))["at"]
    c = await ws_connect(cat)
    joined = await c.join("room")
    assert {p["uid"]: p.get("recordingSince") for p in joined["participants"]} == {
        "amy": started,
        "bob": None,
    }

    await a.ok("recording", sessionId="room", recording=False)
    await c.wait_for("recording")
    await c.ok("leave", sessionId="room")
    joined = await c.join("room")
    assert all("recordingSince" not in p for p in joined["participants"])  # stopped: nothing to learn


# --- bad frames ---


async def test_bad_frames_get_errors_and_disturb_nobody(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, cat, dan = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob", "cat", "dan")]
    await cat.join("other")
    await dan.join("other")
    await cat.wait_for("participant.joined")
    await amy.join("room")
    await bob.join("room")
    await amy.wait_for("participant.joined")

    async def refused(raw: str | bytes) -> dict[str, Any]:
        await amy.send_raw(raw)
        reply = await amy.wait_for("error")
        return reply

    assert (await refused("not json"))["error"]["code"] == "MALFORMED"
    assert (await refused("[1, 2]"))["error"]["code"] == "MALFORMED"
    assert (await refused('{"id": 3}'))["error"]["code"] == "MALFORMED"
    assert (await refused('{"type": 5}'))["error"]["code"] == "MALFORMED"
    assert (await refused(b'{"type": "ping"}'))["error"]["code"] == "MALFORMED"  # binary frame
    assert (await refused('{"type": "ping", "id": [1]}'))["error"]["code"] == "MALFORMED"
    unknown = await refused('{"type": "dance", "id": "d1"}')
    assert (unknown["error"]["code"], unknown["id"]) == ("UNKNOWN_TYPE", "d1")
    missing = await refused('{"type": "offer", "id": 9, "sessionId": "room", "to": "bob"}')
    assert (missing["error"]["code"], missing["id"]) == ("BAD_REQUEST", 9)
    wrong = await refused('{"type": "join", "sessionId": "room", "callToken": 5}')
    assert wrong["error"]["code"] == "BAD_REQUEST" and "id" not in wrong
    bad_id = await refused('{"type": "leave", "sessionId": "no spaces allowed"}')
    assert bad_id["error"]["code"] == "BAD_REQUEST"
    big = json.dumps(
        {"type": "offer", "id": "big", "sessionId": "room", "to": "bob", "sdp": "x" * MAX_MESSAGE_BYTES}
    )
    assert (await refused(big))["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # Multi-byte characters count as bytes: under 64 Ki characters but over 64 KiB.
    wide = json.dumps({"type": "ping", "pad": "é" * (MAX_MESSAGE_BYTES // 2 + 10)}, ensure_ascii=False)
    assert (await refused(wide))["error"]["code"] == "PAYLOAD_TOO_LARGE"

    # The offending connection still works, and so does everyone else.
    await amy.ok("offer", sessionId="room", to="bob", sdp="v=0")
    assert (await bob.wait_for("offer"))["from"] == "amy"
    await cat.ok("offer", sessionId="other", to="dan", sdp="v=0 other")
    assert (await dan.wait_for("offer"))["sdp"] == "v=0 other"
    for ws in (bob, cat, dan):
        ws.discard("participant.joined")
        await ws.assert_silent(0.1)


@pytest.mark.parametrize("call_server", [{"rejoin_grace": 0.0}], indirect=True)
async def test_a_huge_frame_closes_only_that_connection(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob, cat = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob", "cat")]
    await amy.join("room")
    await bob.join("room")
    await cat.join("room")
    await amy.send_raw("x" * (1024 * 1024))
    with pytest.raises(ConnectionError):
        await amy.wait_for("never")
    left = await bob.wait_for("participant.left")
    assert (left["participant"]["uid"], left["reason"]) == ("amy", "disconnected")
    await bob.ok("offer", sessionId="room", to="cat", sdp="v=0")
    assert (await cat.wait_for("offer"))["from"] == "bob"


# --- presence and several connections per user ---


async def test_every_connection_of_a_user_gets_pushes(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy = await create_user("amy")
    bob = await create_user("bob")
    tabs = [await ws_connect(bob), await ws_connect(bob)]
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "bob", "callType": "audio"}, headers=amy.headers
    ) as r:
        call = await r.json()
    for tab in tabs:
        assert (await tab.wait_for("call.incoming"))["call"] == call
    await tabs[0].close()
    async with http.get(f"{call_server.url}/v1/users", headers=amy.headers) as r:
        assert {u["uid"]: u["online"] for u in (await r.json())["users"]} == {"amy": False, "bob": True}


async def test_participant_count_type_checks(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    amy = await create_user("amy")
    assert await count(http, call_server, amy, "nothing-here", "direct") == 0
    for params in ({"type": "group"}, {}):
        async with http.get(
            f"{call_server.url}/v1/sessions/room/participants", params=params, headers=amy.headers
        ) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "BAD_REQUEST"
    async with http.get(f"{call_server.url}/v1/sessions/room/participants?type=direct") as r:
        assert r.status == 401
