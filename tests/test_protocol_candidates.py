"""A trickled ICE candidate is checked as a message is (docs/protocol.md, "Field types"): the server
relays the `candidate` object whole, so one of the wrong shape is refused before it reaches anyone,
and what the project's own clients send (a browser's RTCIceCandidate.toJSON(), or null) passes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from browser_support import chromium
from conftest import CreateUser, WsConnect

from kiosk.protocol import (
    MAX_CANDIDATE_LENGTH,
    MAX_ICE_TOKEN_LENGTH,
    MAX_MLINE_INDEX,
    ErrorCode,
    ProtocolError,
    parse_client_message,
)
from kiosk.server import RunningServer

LINE = "candidate:842163049 1 udp 1677729535 192.0.2.5 54321 typ srflx raddr 10.0.0.5 rport 54321"


def candidate_message(candidate: object) -> str:
    return json.dumps({"type": "candidate", "sessionId": "room", "to": "bob", "candidate": candidate})


@pytest.mark.parametrize(
    "candidate",
    [
        None,  # the end of candidates, as calls.js sends it
        {"candidate": LINE, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsGp"},  # toJSON()
        {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsGp"},  # "" ends them too
        {"candidate": LINE, "sdpMid": None, "sdpMLineIndex": None, "usernameFragment": None},
        {"candidate": LINE, "sdpMid": "0"},  # the optional ones left out
        {"candidate": ""},
        {"candidate": "c" * MAX_CANDIDATE_LENGTH, "sdpMid": "m" * MAX_ICE_TOKEN_LENGTH},
        {"candidate": LINE, "sdpMLineIndex": MAX_MLINE_INDEX, "usernameFragment": "u" * MAX_ICE_TOKEN_LENGTH},
    ],
)
def test_a_candidate_as_browsers_send_it_is_accepted_unchanged(candidate: Any) -> None:
    message = parse_client_message(candidate_message(candidate))
    assert message["type"] == "candidate" and message["candidate"] == candidate


@pytest.mark.parametrize(
    "candidate, field",
    [
        # not an object
        ("candidate:1 1 udp 1 192.0.2.5 5000 typ host", "'candidate'"),
        ([LINE], "'candidate'"),
        (7, "'candidate'"),
        (True, "'candidate'"),
        # nested objects where text is due
        ({"candidate": {"candidate": LINE}}, "'candidate.candidate'"),
        ({"candidate": LINE, "sdpMid": {"mid": "0"}}, "'candidate.sdpMid'"),
        ({"candidate": LINE, "usernameFragment": ["EsGp"]}, "'candidate.usernameFragment'"),
        # wrong types and values
        ({"candidate": None}, "'candidate.candidate'"),
        ({"candidate": 5}, "'candidate.candidate'"),
        ({"candidate": LINE, "sdpMid": 0}, "'candidate.sdpMid'"),
        ({"candidate": LINE, "sdpMLineIndex": "0"}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": 0.0}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": True}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": -1}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": MAX_MLINE_INDEX + 1}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "usernameFragment": 1}, "'candidate.usernameFragment'"),
        # missing, or more than the definition names
        ({"sdpMid": "0", "sdpMLineIndex": 0}, "'candidate.candidate'"),
        ({"candidate": LINE, "sdpMid": "0", "from": "amy"}, "'from'"),
        ({"candidate": LINE, "sdpMid": "0", "relayProtocol": "udp"}, "'relayProtocol'"),
        # too long
        ({"candidate": "c" * (MAX_CANDIDATE_LENGTH + 1)}, "candidate.candidate"),
        ({"candidate": LINE, "sdpMid": "m" * (MAX_ICE_TOKEN_LENGTH + 1)}, "candidate.sdpMid"),
        (
            {"candidate": LINE, "usernameFragment": "u" * (MAX_ICE_TOKEN_LENGTH + 1)},
            "candidate.usernameFragment",
        ),
    ],
)
def test_a_candidate_of_another_shape_is_a_bad_request_naming_the_field(candidate: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(candidate_message(candidate))
    # The top level's refusal of a field of the wrong type, missing or too long.
    assert refused.value.code == ErrorCode.BAD_REQUEST
    assert field in refused.value.message


async def test_the_server_refuses_a_malformed_candidate_and_relays_nothing(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    amy, bob = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob")]
    await amy.join("room")
    await bob.join("room")
    await amy.wait_for("participant.joined")
    for bad in (
        {"candidate": LINE, "sdpMid": "0", "note": {"deep": ["x" * 1000]}},
        {"candidate": {"candidate": LINE}, "sdpMid": "0"},
        {"candidate": LINE, "sdpMLineIndex": -1},
        {"candidate": "c" * (MAX_CANDIDATE_LENGTH + 1), "sdpMid": "0"},
    ):
        reply = await bob.call("candidate", sessionId="room", to="amy", candidate=bad)
        assert reply["type"] == "error" and reply["error"]["code"] == "BAD_REQUEST", reply
    await amy.assert_silent(0.3)
    # The same path carries a good one, unchanged.
    good = {"candidate": LINE, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsGp"}
    await bob.ok("candidate", sessionId="room", to="amy", candidate=good)
    assert await amy.wait_for("candidate") == {
        "type": "candidate",
        "sessionId": "room",
        "from": "bob",
        "candidate": good,
    }


# What calls.js does with each candidate it gathers (kiosk/web/calls.js, pc.onicecandidate).
_GATHER = """async () => {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("audio", { direction: "sendrecv" });
  pc.addTransceiver("video", { direction: "sendrecv" });
  const found = [];
  const done = new Promise((resolve) => {
    pc.onicecandidate = (event) => {
      found.push(event.candidate ? event.candidate.toJSON() : null);
      if (!event.candidate) resolve();
    };
  });
  await pc.setLocalDescription(await pc.createOffer());
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 10000))]);
  pc.close();
  return found;
}"""


async def test_the_candidates_a_real_browser_trickles_are_accepted_and_relayed_unchanged(
    call_server: RunningServer, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(f"{call_server.url}/app/")
        found: list[Any] = await page.evaluate(_GATHER)
    assert found and found[-1] is None and any(found[:-1]), found
    amy, bob = [await ws_connect(await create_user(uid)) for uid in ("amy", "bob")]
    await amy.join("room")
    await bob.join("room")
    for candidate in found:
        await bob.ok("candidate", sessionId="room", to="amy", candidate=candidate)
        assert (await amy.wait_for("candidate"))["candidate"] == candidate
