"""Ring groups: calling "Reception" rings every member on every device; the first to answer takes the
call and the others stop ringing (answered elsewhere); nobody answers: a missed call for each member.
Members managed through REST and `kiosk groups`; it works across server processes sharing Redis."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import ADMIN_KEY as SUPPORT_ADMIN_KEY
from calls_support import Endpoint, make_user, wait_until
from conftest import ADMIN_KEY, CreateUser, SignalingClient, TestUser, WsConnect, issue_call_token

from kiosk.calls import CallStatus, CallType
from kiosk.server import RunningServer
from kiosk.server.cli import add_groups_parser

ADMIN = {"X-Admin-Key": ADMIN_KEY}


async def make_group(
    http: aiohttp.ClientSession, url: str, uid: str, members: list[str], admin: dict[str, str] = ADMIN
) -> None:
    async with http.post(f"{url}/v1/groups", json={"uid": uid, "name": uid.title()}, headers=admin) as r:
        assert r.status == 201, await r.text()
    for member in members:
        async with http.put(f"{url}/v1/groups/{uid}/members/{member}", headers=admin) as r:
            assert r.status == 204, await r.text()


async def ring(http: aiohttp.ClientSession, url: str, caller: TestUser, receiver: str) -> dict[str, Any]:
    async with http.post(
        f"{url}/v1/calls", json={"receiverUid": receiver, "callType": "video"}, headers=caller.headers
    ) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def act(
    http: aiohttp.ClientSession, url: str, user: TestUser, session_id: str, action: str, **body: Any
) -> tuple[int, Any]:
    async with http.post(f"{url}/v1/calls/{session_id}/{action}", json=body, headers=user.headers) as r:
        return r.status, await r.json()


async def incoming(ws: SignalingClient, session_id: str) -> dict[str, Any]:
    message = await ws.wait_for("call.incoming")
    assert message["call"]["sessionId"] == session_id and message["call"]["group"] is True
    return message


Reception = Callable[[], Awaitable[tuple[TestUser, TestUser, TestUser]]]


@pytest.fixture
def reception(call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser) -> Reception:
    """door (the caller), bob and cat, and the group reception of bob and cat."""

    async def make() -> tuple[TestUser, TestUser, TestUser]:
        door, bob, cat = await create_user("door"), await create_user("bob"), await create_user("cat")
        await make_group(http, call_server.url, "reception", ["bob", "cat"])
        return door, bob, cat

    return make


async def test_the_first_member_to_answer_takes_the_call(
    call_server: RunningServer, http: aiohttp.ClientSession, reception: Reception, ws_connect: WsConnect
) -> None:
    door, bob, cat = await reception()
    # bob is signed in on two devices; every one of them rings.
    bob_desk, bob_phone, cat_ws, door_ws = [await ws_connect(u) for u in (bob, bob, cat, door)]
    call = await ring(http, call_server.url, door, "reception")
    session_id = call["sessionId"]
    assert call["receiver"]["uid"] == "reception" and call["group"] is True
    for ws in (bob_desk, bob_phone, cat_ws):
        await incoming(ws, session_id)

    status, answered = await act(http, call_server.url, cat, session_id, "accept")
    assert status == 200 and answered["answeredBy"]["uid"] == "cat"
    for ws in (bob_desk, bob_phone, door_ws, cat_ws):
        updated = (await ws.wait_for("call.updated"))["call"]
        assert updated["status"] == "ongoing" and updated["answeredBy"]["uid"] == "cat"
    # Too late for bob; the call and its session are the caller's and cat's alone.
    status, body = await act(http, call_server.url, bob, session_id, "accept")
    assert (status, body["error"]["code"]) == (409, "INVALID_STATE")
    async with http.post(
        f"{call_server.url}/v1/calls/token", json={"sessionId": session_id}, headers=bob.headers
    ) as r:
        assert r.status == 403
    await door_ws.join(session_id)
    await cat_ws.join(session_id, token=await issue_call_token(call_server, cat, session_id))
    # Everyone it rang has it in the call log, with who answered.
    async with http.get(f"{call_server.url}/v1/calls", headers=bob.headers) as r:
        (logged,) = (await r.json())["calls"]
    assert logged["direction"] == "incoming" and logged["answeredBy"]["uid"] == "cat"
    # The group is called like a user: listed, online while a member is.
    async with http.get(f"{call_server.url}/v1/users", headers=door.headers) as r:
        listed = {u["uid"]: u for u in (await r.json())["users"]}
    assert listed["reception"]["group"] is True and listed["reception"]["online"] is True
    async with http.get(f"{call_server.url}/v1/groups", headers=door.headers) as r:
        assert (await r.json())["groups"] == [
            {"uid": "reception", "name": "Reception", "avatar": None, "members": ["bob", "cat"]}
        ]


@pytest.mark.parametrize("call_server", [0.5], indirect=True)
async def test_nobody_answers_a_missed_call_for_each_member(
    call_server: RunningServer, http: aiohttp.ClientSession, reception: Reception, ws_connect: WsConnect
) -> None:
    door, bob, cat = await reception()
    bob_ws = await ws_connect(bob)
    session_id = (await ring(http, call_server.url, door, "reception"))["sessionId"]
    await incoming(bob_ws, session_id)
    assert (await bob_ws.wait_for("call.updated", timeout=10))["call"]["status"] == "unanswered"
    for member in (bob, cat):  # cat was not even signed in
        async with http.get(
            f"{call_server.url}/v1/calls",
            params={"status": "unanswered", "direction": "incoming"},
            headers=member.headers,
        ) as r:
            (missed,) = (await r.json())["calls"]
        assert missed["sessionId"] == session_id and missed["receiver"]["uid"] == "reception"


async def test_one_member_declining_does_not_end_it_all_declining_does(
    call_server: RunningServer, http: aiohttp.ClientSession, reception: Reception, ws_connect: WsConnect
) -> None:
    door, bob, cat = await reception()
    door_ws = await ws_connect(door)
    session_id = (await ring(http, call_server.url, door, "reception"))["sessionId"]
    status, still = await act(http, call_server.url, bob, session_id, "reject", status="rejected")
    assert status == 200 and still["status"] == "initiated"
    await door_ws.assert_silent()  # still ringing at cat's
    status, over = await act(http, call_server.url, cat, session_id, "reject", status="busy")
    assert status == 200 and over["status"] == "rejected"
    assert (await door_ws.wait_for("call.updated"))["call"]["status"] == "rejected"
    # All busy: busy.
    session_id = (await ring(http, call_server.url, door, "reception"))["sessionId"]
    for member in (bob, cat):
        await act(http, call_server.url, member, session_id, "reject", status="busy")
    assert (
        await door_ws.wait_for(lambda m: m["type"] == "call.updated" and m["call"]["sessionId"] == session_id)
    )["call"]["status"] == "busy"


async def test_members_are_managed_by_the_admin(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    bob = await create_user("bob")
    async with http.post(
        f"{call_server.url}/v1/groups", json={"uid": "hall", "name": "Hall"}, headers=bob.headers
    ) as r:
        assert r.status == 403
    await make_group(http, call_server.url, "hall", [])
    async with http.post(
        f"{call_server.url}/v1/groups", json={"uid": "bob", "name": "Bob"}, headers=ADMIN
    ) as r:
        assert r.status == 409  # one namespace with users: calling "bob" must mean one thing
    for path, status in (
        ("hall/members/nobody", 404),
        ("nowhere/members/bob", 404),
        ("hall/members/bob", 204),
    ):
        async with http.put(f"{call_server.url}/v1/groups/{path}", headers=ADMIN) as r:
            assert r.status == status, path
    async with http.put(f"{call_server.url}/v1/groups/hall/members/bob", headers=bob.headers) as r:
        assert r.status == 403
    async with http.delete(f"{call_server.url}/v1/groups/hall/members/bob", headers=ADMIN) as r:
        assert r.status == 204
    # A group nobody is in cannot be rung.
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "hall", "callType": "audio"}, headers=bob.headers
    ) as r:
        assert r.status == 404


def test_cli_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiosk.server.admin import add_user
    from kiosk.server.cli import add_users_parser

    parser = argparse.ArgumentParser(prog="kiosk")
    sub = parser.add_subparsers(dest="command", required=True)
    add_groups_parser(sub)
    add_users_parser(sub)
    data_dir = str(tmp_path / "d")

    def run(*argv: str) -> int:
        args = parser.parse_args([*argv, "--data-dir", data_dir])
        return int(args.func(args))

    for uid in ("bob", "cat"):
        add_user(Path(data_dir), uid, uid.title())
    assert run("groups", "add", "reception", "--name", "Reception") == 0
    assert run("groups", "join", "reception", "bob") == 0 and run("groups", "join", "reception", "cat") == 0
    assert run("groups", "join", "reception", "nobody") == 1
    assert run("groups", "leave", "reception", "cat") == 0
    capsys.readouterr()
    assert run("groups", "list") == 0
    assert capsys.readouterr().out == "reception\tReception\tbob\n"
    assert run("users", "list") == 0
    assert "reception" not in capsys.readouterr().out  # a group is no user


async def test_across_two_server_processes_the_sdk_hears_answered_elsewhere(tmp_path: Path) -> None:
    from test_scale_out import two_servers

    async with two_servers(tmp_path) as (a, b), aiohttp.ClientSession() as http:
        tokens = {uid: await make_user(a.url, uid) for uid in ("door", "bob", "cat")}
        await make_group(http, a.url, "reception", ["bob", "cat"], admin={"X-Admin-Key": SUPPORT_ADMIN_KEY})
        door = Endpoint(a.url, "door", tokens["door"], tmp_path)
        bob = Endpoint(a.url, "bob", tokens["bob"], tmp_path)
        cat = Endpoint(b.url, "cat", tokens["cat"], tmp_path)  # on the other process
        try:
            for endpoint in (door, bob, cat):
                await endpoint.calls.login()
            call = await door.calls.initiate_call("reception", CallType.AUDIO)
            for member in (bob, cat):
                (rung,) = await member.events.wait_for("on_incoming_call_received", timeout=10)
                assert rung.session_id == call.session_id and rung.group
            await cat.calls.accept_call(call.session_id)
            (elsewhere,) = await bob.events.wait_for("on_incoming_call_cancelled", timeout=10)
            assert elsewhere.status == CallStatus.ONGOING and elsewhere.answered_by.uid == "cat"
            assert bob.calls.get_active_call() is None
            (accepted,) = await door.events.wait_for("on_outgoing_call_accepted", timeout=10)
            assert accepted.answered_by is not None and accepted.answered_by.uid == "cat"
            await door.join(call.session_id)
            await cat.join(call.session_id)
            await wait_until(lambda: "cat" in door.calls.session.participants, 10, "cat in the call")
        finally:
            for endpoint in (door, bob, cat):
                await endpoint.calls.close()


async def test_a_call_answered_on_one_device_stops_ringing_on_the_others(tmp_path: Path) -> None:
    from calls_support import running_server

    async with running_server(tmp_path / "server") as server:
        door_token, bob_token = await make_user(server.url, "door"), await make_user(server.url, "bob")
        door = Endpoint(server.url, "door", door_token, tmp_path)
        desk, phone = (
            Endpoint(server.url, "bob", bob_token, tmp_path),
            Endpoint(server.url, "bob", bob_token, tmp_path),
        )
        try:
            for endpoint in (door, desk, phone):
                await endpoint.calls.login()
            call = await door.calls.initiate_call("bob", CallType.AUDIO)
            for device in (desk, phone):
                await device.events.wait_for("on_incoming_call_received", timeout=10)
            await desk.calls.accept_call(call.session_id)
            (elsewhere,) = await phone.events.wait_for("on_incoming_call_cancelled", timeout=10)
            assert elsewhere.status == CallStatus.ONGOING and phone.calls.get_active_call() is None
            assert not desk.events.of("on_incoming_call_cancelled")  # the device that answered keeps it
            assert desk.calls.get_active_call() is not None
        finally:
            for endpoint in (door, desk, phone):
                await endpoint.calls.close()
