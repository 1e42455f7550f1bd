"""Trickled ICE candidates (as browsers send them) reach a real aiortc connection: two kiosk peer
connections whose descriptions carry no candidates at all connect only through the candidates sent
one by one, some of them before the description they belong to was applied."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from kiosk.calls.events import RTCUser
from kiosk.calls.ice import restrict_host_addresses
from kiosk.calls.peer import RemoteParticipant, RemotePeer


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


def _peer(uid: str, states: list[str]) -> RemotePeer:
    return RemotePeer(
        RemoteParticipant(RTCUser(uid)),
        audio_track=AudioStreamTrack(),
        video_track=VideoStreamTrack(),
        ice_servers=[],
        video_codec=None,
        session_started_at=0.0,
        on_video_frame=lambda uid, frame: None,
        on_audio_frame=lambda uid, frame: None,
        on_connection_state=lambda peer, state: states.append(state),
    )


def _split(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The description without its candidates, and those candidates as a browser trickles them."""
    kept, candidates, mid, index = [], [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


async def _connected(states: list[str], timeout: float) -> bool:
    for _ in range(int(timeout / 0.05)):
        if "connected" in states:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_connection_whose_candidates_all_trickle_connects() -> None:
    offerer_states: list[str] = []
    answerer_states: list[str] = []
    offerer, answerer = _peer("bob", offerer_states), _peer("alice", answerer_states)
    try:
        offer, offer_candidates = _split(await offerer.create_offer())
        assert offer_candidates and "a=candidate" not in offer
        # The first candidate overtakes the offer (it is kept until the offer is applied); the
        # others follow it, then the end of candidates; one nobody can read is dropped.
        await answerer.add_remote_candidate(offer_candidates[0])
        answer, answer_candidates = _split(await answerer.answer_offer(offer))
        for candidate in [*offer_candidates[1:], {"candidate": "candidate:garbage", "sdpMid": "0"}, None]:
            await answerer.add_remote_candidate(candidate)
        await offerer.accept_answer(answer)
        for candidate in [*answer_candidates, {"candidate": ""}]:  # "" ends them too, as in browsers
            await offerer.add_remote_candidate(candidate)
        assert await _connected(offerer_states, 10.0) and await _connected(answerer_states, 10.0)
        ice = answerer.pc.getTransceivers()[0].receiver.transport.transport
        bundled = [c for c in offer_candidates if c["sdpMLineIndex"] == 0]  # one transport for both
        assert len(ice.getRemoteCandidates()) == len(bundled)  # all but the garbage
    finally:
        await offerer.close()
        await answerer.close()


async def test_without_the_trickled_candidates_the_same_connection_never_connects() -> None:
    # The control: with no candidate anywhere, nothing can connect; the test above is not luck.
    offerer_states: list[str] = []
    answerer_states: list[str] = []
    offerer, answerer = _peer("bob", offerer_states), _peer("alice", answerer_states)
    try:
        offer, _ = _split(await offerer.create_offer())
        answer, _ = _split(await answerer.answer_offer(offer))
        await offerer.accept_answer(answer)
        assert not await _connected(offerer_states, 2.0)
        assert "connected" not in answerer_states
    finally:
        await offerer.close()
        await answerer.close()
