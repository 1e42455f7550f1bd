"""A session's media as a mesh: one peer connection to each other participant (docs/protocol.md).

The decisions, each with its reason:

- Joining: we offer to those already in the session (the joined reply); anyone who joins after us
  offers to us.
- Glare: when both sides offer at once, the smaller uid's offer wins: the larger uid answers it,
  the smaller drops the other (`initiates_with`).
- An answer names the offer it answers (`negotiationId`): an answer to an offer of a connection since
  replaced is never applied to the new one (it would leave that one unable to connect).
- Offers queued behind a dead connection arrive together when it comes back: only the newest is
  answered.
- Rebuilds: aiortc has no ICE restart, so a connection whose media stopped is replaced by a new one,
  offered by the smaller uid; at most one offer in flight (unless the other side has just come back:
  that offer went to a connection now gone) and at most one rebuild every REBUILD_INTERVAL_SECONDS.
- Make before break: the connection a rebuild replaces, if it ever carried media, is kept open (on
  both sides: the answer to a new offer keeps it too) until the new one brings media, and then
  closed. A Wi-Fi handover or a short blackout leaves the old connection's ICE pair working, and its
  media comes back the moment the path does, sooner than a new connection can be negotiated over a
  signaling connection that is itself backing off. If the old one's media comes back first, the new
  one is dropped and the old one is the connection again; the other side, whose new connection then
  never connects, does the same once it has had MEDIA_START_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal, Protocol

from aiortc.exceptions import InvalidStateError

from kiosk.calls.events import RTCUser
from kiosk.calls.media import (
    MEDIA_STALL_SECONDS,
    MEDIA_START_SECONDS,
    OFFER_ANSWER_SECONDS,
    REBUILD_INTERVAL_SECONDS,
    MediaContext,
    MediaLink,
    retire,
)
from kiosk.calls.peer import ParticipantStats, RemoteParticipant, RemotePeer
from kiosk.protocol import IceCandidate, Negotiation, SdpRequest

log = logging.getLogger(__name__)


class MeshPeer(MediaLink, Protocol):
    """What the mesh needs of a peer connection: `RemotePeer`, or a test's fake."""

    negotiation_id: str
    lock: asyncio.Lock
    closed: bool
    offered_at: float | None

    @property
    def signaling_state(self) -> str: ...

    async def create_offer(self) -> str: ...

    async def answer_offer(self, sdp: str) -> str: ...

    async def accept_answer(self, sdp: str) -> None: ...

    def awaiting_answer(self, within: float) -> bool: ...

    async def add_remote_candidate(self, init: IceCandidate | None) -> None: ...


PeerFactory = Callable[[RemoteParticipant], MeshPeer]


class MeshMedia:
    mode: Literal["mesh"] = "mesh"

    def __init__(self, context: MediaContext, new_peer: PeerFactory | None = None) -> None:
        self._context = context
        self._new_peer_connection: PeerFactory = new_peer or self._remote_peer
        self._peers: dict[str, MeshPeer] = {}
        # uid -> the connection a rebuild replaced, kept until the new one brings media (make before
        # break); its media still reaches the session.
        self._standby: dict[str, MeshPeer] = {}
        self._offers_seen: dict[str, int] = {}  # uid -> offers received from it
        self._rebuilt_at: dict[str, float] = {}  # uid -> when we last rebuilt its peer connection
        self._departed: dict[str, ParticipantStats] = {}  # the last figures of those who left
        self._handed_over = False

    def _remote_peer(self, participant: RemoteParticipant) -> RemotePeer:
        c = self._context
        peer = RemotePeer(
            participant,
            audio_track=c.audio.subscribe(),
            video_track=c.video.subscribe(),
            ice_servers=c.ice_servers,
            video_codec=c.host.video_codec,
            session_started_at=c.started_at,
            on_video_frame=c.on_video_frame,
            on_audio_frame=c.on_audio_frame,
            on_connection_state=c.on_peer_state,
            on_keyframe_request=c.video.request_keyframe,
            audio=c.audio_for(participant.user.uid),
        )
        peer.on_media_started = lambda link: self.settle(link.uid)
        return peer

    @property
    def peers(self) -> Mapping[str, MeshPeer]:
        return MappingProxyType(self._peers)

    @property
    def offers_received(self) -> Mapping[str, int]:
        return MappingProxyType(self._offers_seen)

    def initiates_with(self, uid: str) -> bool:
        """Who offers when both could: the smaller uid, so that both sides never offer at once."""
        return self._context.self_uid() < uid

    # ----------------------------------------------------------------- the session's events

    def start(self, present: list[RemoteParticipant]) -> None:
        for participant in present:
            self._context.spawn(self._offer_to(participant))

    def participant_back(self, uid: str, now_reachable: bool) -> None:
        self.rebuild_if_broken(uid, now_reachable=now_reachable)

    def participant_left(self, uid: str) -> None:
        standby = self._standby.pop(uid, None)
        if standby is not None:
            self._context.spawn(standby.close())
        peer = self._peers.pop(uid, None)
        self._offers_seen.pop(uid, None)
        self._rebuilt_at.pop(uid, None)
        if peer is not None:
            self._context.spawn(retire(uid, peer, self._departed))

    def handle(self, message: Negotiation) -> None:
        if self._handed_over:
            return  # a mesh negotiation overtaken by the switch to the SFU
        if message["type"] == "offer":
            uid = message["from"]
            self._offers_seen[uid] = self._offers_seen.get(uid, 0) + 1
            self._context.spawn(
                self._answer(uid, message["sdp"], self._offers_seen[uid], message.get("negotiationId"))
            )
        elif message["type"] == "answer":
            self._context.spawn(
                self._accept_answer(message["from"], message["sdp"], message.get("negotiationId"))
            )
        elif message["type"] == "candidate":
            # aiortc puts all of its own candidates in the SDP; browsers trickle theirs.
            self._context.spawn(self._add_candidate(message["from"], message["candidate"]))

    def broken(self, uid: str, peer: MediaLink) -> bool:
        mesh_peer = self._peers.get(uid)
        if mesh_peer is None or mesh_peer is not peer:
            return False  # not (or no longer) this mesh's connection to uid
        peer = mesh_peer
        now = self._context.clock()
        if peer.signaling_state == "have-local-offer" and peer.offered_at:
            return now - peer.offered_at > OFFER_ANSWER_SECONDS  # our offer went unanswered
        if peer.last_media_at is None:
            return peer.age() > MEDIA_START_SECONDS  # negotiated: give it time to connect
        return peer.age() > MEDIA_STALL_SECONDS  # media came, then stopped

    def repair(self, uid: str) -> None:
        self.rebuild_if_broken(uid)

    def tick(self) -> None:
        for uid in list(self._standby):
            self.settle(uid)

    def settle(self, uid: str) -> None:
        """Make before break: close the connection a rebuild replaced once the new one brings media;
        go back to it if its own media came back first and the new one has brought none."""
        standby, current = self._standby.get(uid), self._peers.get(uid)
        if standby is None:
            return
        if current is None or current.closed:
            del self._standby[uid]
            self._context.spawn(standby.close())
            return
        if current.last_media_at is not None:
            log.info("the new connection to %s brings media: the old one is closed", uid)
            del self._standby[uid]
            self._context.spawn(standby.close())
        elif standby.receiving(MEDIA_STALL_SECONDS) and (
            current.age() > MEDIA_START_SECONDS or self.initiates_with(uid)
        ):
            # The offerer decides at once (the new connection is its own); the answerer, whose new
            # connection the offerer then drops, once that one has had its time.
            log.info("media from %s came back on the old connection: the new one is dropped", uid)
            del self._standby[uid]
            self._peers[uid] = standby
            self._context.spawn(current.close())

    # ----------------------------------------------------------------- negotiation

    def rebuild_if_broken(self, uid: str, now_reachable: bool = False) -> None:
        c = self._context
        peer = self._peers.get(uid)
        participant = c.participants.get(uid)
        if self._handed_over or not c.active() or participant is None or not self.initiates_with(uid):
            return
        if peer is not None and peer.receiving(MEDIA_STALL_SECONDS):
            return
        if peer is not None and peer.awaiting_answer(OFFER_ANSWER_SECONDS) and not now_reachable:
            return  # one offer in flight at a time, unless that one went to a connection now gone
        now = c.clock()
        if not now_reachable and now - self._rebuilt_at.get(uid, float("-inf")) < REBUILD_INTERVAL_SECONDS:
            return
        self._rebuilt_at[uid] = now
        log.info("media from %s stopped: rebuilding the peer connection", uid)
        c.spawn(self._offer_to(participant))

    def _new_peer(self, participant: RemoteParticipant) -> MeshPeer:
        uid = participant.user.uid
        old = self._peers.pop(uid, None)
        if old is not None:
            if old.last_media_at is not None and not old.closed:
                # It carried media: kept until the new one does (make before break).
                previous = self._standby.pop(uid, None)
                if previous is not None:
                    self._context.spawn(previous.close())
                self._standby[uid] = old
            else:  # it never connected: nothing to keep (a connection kept in standby stays there)
                self._context.spawn(old.close())
        peer = self._new_peer_connection(participant)
        self._peers[participant.user.uid] = peer
        return peer

    async def _offer_to(self, participant: RemoteParticipant) -> None:
        c = self._context
        peer = self._new_peer(participant)
        async with peer.lock:
            sdp = await peer.create_offer()
            if c.active() and not peer.closed:
                log.info("offer %s to %s", peer.negotiation_id, peer.uid)
                offer: SdpRequest = {
                    "type": "offer",
                    "sessionId": c.session_id,
                    "to": peer.uid,
                    "sdp": sdp,
                    "negotiationId": peer.negotiation_id,
                }
                await c.host.signaling.request(offer)

    async def _answer(self, uid: str, sdp: str, seen: int = 0, negotiation: str | None = None) -> None:
        c = self._context
        if seen and seen != self._offers_seen.get(uid):
            # Offers queued behind a dead connection arrive together when it comes back: only the
            # newest is the offerer's current connection; answering the others would confuse it.
            return
        current = self._peers.get(uid)
        if current is not None and current.signaling_state == "have-local-offer" and self.initiates_with(uid):
            return  # both offered at once: ours wins (smaller uid), theirs is dropped; they answer ours
        participant = c.participants.get(uid) or RemoteParticipant(RTCUser(uid))
        peer = self._new_peer(participant)
        async with peer.lock:
            try:
                answer = await peer.answer_offer(sdp)
            except InvalidStateError:
                if peer.closed:
                    return  # a newer offer replaced this connection while it was being answered
                raise
            if seen and seen != self._offers_seen.get(uid):
                return  # a newer offer came meanwhile: it gets the answer
            if c.active() and not peer.closed:
                log.info("answer %s to %s", negotiation or "", uid)
                reply: SdpRequest = {"type": "answer", "sessionId": c.session_id, "to": uid, "sdp": answer}
                if negotiation:
                    reply["negotiationId"] = negotiation
                await c.host.signaling.request(reply)

    async def _accept_answer(self, uid: str, sdp: str, negotiation: str | None = None) -> None:
        peer = self._peers.get(uid)
        if peer is None:
            return
        async with peer.lock:
            if peer.signaling_state != "have-local-offer" or (
                negotiation is not None and negotiation != peer.negotiation_id
            ):
                # The answer to an offer of a connection since replaced: applying it to this one
                # would leave this one unable to connect.
                log.info("answer %s from %s is for an older offer: ignored", negotiation, uid)
                return
            log.info("answer %s from %s", negotiation or "", uid)
            await peer.accept_answer(sdp)

    async def _add_candidate(self, uid: str, candidate: IceCandidate | None) -> None:
        peer = self._peers.get(uid)
        if peer is None:
            return  # no connection with uid (it left, or the offer was dropped in a glare)
        async with peer.lock:  # after the description being applied, so the candidate finds it
            await peer.add_remote_candidate(candidate)

    # ----------------------------------------------------------------- the end

    def hand_over(self) -> dict[str, MeshPeer]:
        """The switch to the SFU: the connections go on carrying media until the room's feeds
        replace them (the SFU media closes them); the mesh negotiates no more."""
        self._handed_over = True
        for standby in self._standby.values():
            self._context.spawn(standby.close())
        self._standby.clear()
        peers, self._peers = dict(self._peers), {}
        return peers

    async def stats(self) -> dict[str, ParticipantStats]:
        return {
            **self._departed,
            **{uid: await peer.collect_stats() for uid, peer in list(self._peers.items())},
        }

    async def close(self) -> None:
        peers, self._peers = [*self._peers.values(), *self._standby.values()], {}
        self._standby.clear()
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
