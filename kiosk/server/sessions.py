"""Live sessions: join, leave, end, and what participants send each other inside one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from kiosk.janus import JanusError
from kiosk.protocol import (
    FINAL_CALL_STATUSES,
    MAX_SESSIONS_PER_CONNECTION,
    CallStatus,
    CallType,
    CandidateRelay,
    ErrorCode,
    JoinedReply,
    JoinRequest,
    MediaJson,
    MediaStateRequest,
    ParticipantLeftMessage,
    ProtocolError,
    RelayRequest,
    SdpRelay,
    SessionEndedMessage,
    SessionType,
)
from kiosk.server.clock import now_ms
from kiosk.server.config import ServerConfig
from kiosk.server.connections import Hub
from kiosk.server.models import User
from kiosk.server.sfu import JanusRooms, SfuRoom
from kiosk.server.state import LiveState, Participant, Session
from kiosk.server.storage import Storage, StorageClosedError
from kiosk.server.tokens import CallTokens
from kiosk.server.turn import ice_servers_for

log = logging.getLogger(__name__)

# Called with (session id, user who caused it or None) once a session is over or has emptied.
SessionOverHook = Callable[[str, User | None], Awaitable[None]]


def _others(session: Session, conn_id: str) -> list[str]:
    return [cid for cid in session.participants if cid != conn_id]


def media_of(session: Session) -> MediaJson:
    """The session's `media` as participants see it (docs/protocol.md, "Group calls through the SFU")."""
    if session.sfu is None:
        return {"mode": "mesh"}
    return {"mode": "sfu", "sfu": SfuRoom.from_state(session.sfu).for_client()}


class Sessions:
    def __init__(
        self,
        config: ServerConfig,
        state: LiveState,
        storage: Storage,
        tokens: CallTokens,
        hub: Hub,
        rooms: JanusRooms | None = None,
    ) -> None:
        self._config = config
        self._rooms = rooms
        # Session id -> (lock, how many hold or await it): one SFU room change at a time per session.
        self._allocating: dict[str, tuple[asyncio.Lock, int]] = {}
        self._state = state
        self._storage = storage
        self._tokens = tokens
        self._hub = hub
        # (session id, connection id) -> the timer that removes a dropped participant after the grace.
        self._grace: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # Set by the ringing service, which turns the end of a call's session into the end of the call.
        self.on_session_over: SessionOverHook | None = None

    async def join(self, conn_id: str, user: User, msg: JoinRequest) -> JoinedReply:
        """Join the session; returns the `joined` reply (without `id`)."""
        session_id = msg["sessionId"]
        self._tokens.verify(msg["callToken"], uid=user.uid, session_id=session_id)
        call = await self._storage.get_call(session_id)
        if call is not None and call.status in FINAL_CALL_STATUSES:
            # A call token outlives its call (it is valid for hours): the call's end is what ends it.
            raise ProtocolError(ErrorCode.INVALID_STATE, f"call {session_id} is over ({call.status})")
        if msg.get("rejoin"):
            rejoined = await self._rejoin(conn_id, user, session_id, msg)
            if rejoined is not None:
                return rejoined
        switched = await self._grow_past_mesh(session_id)
        participant = Participant(
            conn_id=conn_id,
            user=user,
            audio_muted=msg["audioMuted"],
            video_muted=msg["videoMuted"],
            joined_at=now_ms(),
            door=msg.get("door", False),
        )
        session = await self._state.join(
            session_id,
            participant,
            # Only sessions created by ringing are "default"; applies when this join creates it.
            session_type=SessionType.DEFAULT if call is not None else SessionType.DIRECT,
            audio_only=msg["audioOnly"] or (call is not None and call.type == CallType.AUDIO),
            max_participants=self._config.max_participants,
            max_sessions_per_connection=MAX_SESSIONS_PER_CONNECTION,
        )
        me = session.participants[conn_id]
        others = [p for cid, p in session.participants.items() if cid != conn_id]
        if switched:
            # Those in the mesh move their media to the room; the newcomer learns it from its reply.
            self._hub.send_many(
                (p.conn_id for p in others),
                {"type": "session.media", "sessionId": session_id, "media": media_of(session)},
            )
        # Before the reply: the others must know the newcomer before its offers reach them.
        self._hub.send_many(
            (p.conn_id for p in others),
            {"type": "participant.joined", "sessionId": session_id, "participant": me.to_json()},
        )
        log.info("%s joined %s session %s (%d in it)", user.uid, session.type, session_id, len(others) + 1)
        return self._joined_reply(session, conn_id, user, rejoined=False)

    def _joined_reply(self, session: Session, conn_id: str, user: User, *, rejoined: bool) -> JoinedReply:
        """The `joined` reply (without `id`) for this connection's participant."""
        return {
            "type": "joined",
            "sessionId": session.id,
            "self": session.participants[conn_id].to_json(),
            "participants": [p.to_json() for cid, p in session.participants.items() if cid != conn_id],
            "audioOnly": session.audio_only,
            "iceServers": ice_servers_for(self._config, user.uid),
            "rejoined": rejoined,
            "rejoinGraceMs": int(self._config.rejoin_grace * 1000),
            "media": media_of(session),
        }

    async def _grow_past_mesh(self, session_id: str) -> bool:
        """Before a join that takes a mesh session past the mesh limit, give the session an SFU room.
        True if this join switched the session to it. Raises SFU_UNAVAILABLE if Janus cannot make a
        room: the newcomer is refused and the call goes on as it was."""
        if self._rooms is None:
            return False
        session = await self._state.get_session(session_id)
        if session is None or session.sfu is not None or len(session.participants) < self._config.mesh_limit:
            return False
        async with self._room_change(session_id):
            current = await self._state.get_session(session_id)
            if current is None or current.sfu is not None:
                return False
            room = await self._new_room(
                session_id,
                replacing=None,
                unavailable=f"the group-call media server is unavailable; session {session_id} stays at "
                f"{len(current.participants)}",
            )
            if room is None:
                return False
            log.info("session %s outgrew the mesh: media through SFU room %s", session_id, room.room)
            return True

    async def sfu_lost(self, conn_id: str, session_id: str, room_number: int) -> None:
        """A participant found the session's room gone from Janus (Janus restarted): make a new one and
        move everyone to it (`session.media`). A room that is still there, or was replaced already,
        is left as it is. Raises SFU_UNAVAILABLE if Janus cannot be asked or make the room."""
        session, _ = await self._state.member(session_id, conn_id)
        if self._rooms is None or session.sfu is None or session.sfu["room"] != room_number:
            return
        async with self._room_change(session_id):
            current = await self._state.get_session(session_id)
            if current is None or current.sfu is None or current.sfu["room"] != room_number:
                return  # replaced while we waited
            try:
                if await self._rooms.exists(room_number):
                    return
            except JanusError as exc:
                raise ProtocolError(
                    ErrorCode.SFU_UNAVAILABLE, f"the group-call media server is unavailable: {exc}"
                ) from None
            room = await self._new_room(
                session_id, replacing=room_number, unavailable="the group-call media server is unavailable"
            )
            current = await self._state.get_session(session_id)
            if room is None or current is None:
                return
            log.info("SFU room %s of session %s was gone: now room %s", room_number, session_id, room.room)
            self._hub.send_many(
                list(current.participants),
                {"type": "session.media", "sessionId": session_id, "media": media_of(current)},
            )

    @contextlib.asynccontextmanager
    async def _room_change(self, session_id: str) -> AsyncIterator[None]:
        """One room creation at a time per session in this process (across processes, set_sfu's
        compare-and-set decides). A session's lock lives while someone holds or awaits it."""
        lock, users = self._allocating.get(session_id, (asyncio.Lock(), 0))
        self._allocating[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._allocating[session_id]
            if users == 1:
                del self._allocating[session_id]
            else:
                self._allocating[session_id] = (lock, users - 1)

    async def _new_room(self, session_id: str, *, replacing: int | None, unavailable: str) -> SfuRoom | None:
        """Make a room and make it the session's (in place of room `replacing`, if given); None, and
        the room destroyed, if the session ended or another join or process changed its room first.
        Raises SFU_UNAVAILABLE, the message starting with `unavailable`, if Janus cannot make it."""
        assert self._rooms is not None
        try:
            room = await self._rooms.create_room(session_id, self._config.max_participants)
        except JanusError as exc:
            log.warning("session %s needs an SFU room but Janus made none: %s", session_id, exc)
            raise ProtocolError(ErrorCode.SFU_UNAVAILABLE, f"{unavailable}: {exc}") from None
        kept = await self._state.set_sfu(session_id, room.to_state(), replacing=replacing)
        if kept is None or kept["room"] != room.room:
            await self._destroy_room(room)
            return None
        return room

    async def _room_of(self, session_id: str) -> SfuRoom | None:
        if self._rooms is None:
            return None
        session = await self._state.get_session(session_id)
        return SfuRoom.from_state(session.sfu) if session is not None and session.sfu else None

    async def _destroy_room(self, room: SfuRoom) -> None:
        if self._rooms is None:
            return
        try:
            await self._rooms.destroy_room(room)
        except JanusError as exc:
            log.warning("SFU room %s of session %s not destroyed: %s", room.room, room.session_id, exc)

    async def _rejoin(
        self, conn_id: str, user: User, session_id: str, msg: JoinRequest
    ) -> JoinedReply | None:
        """The participant comes back on a new connection: it takes its place over, and the others
        are told so (participant.joined with rejoined). None if it is not in the session (then it
        joins as anyone would: after a server restart the session is built again this way)."""
        session = await self._state.rejoin(
            session_id, user.uid, conn_id, msg["audioMuted"], msg["videoMuted"]
        )
        if session is None:
            return None
        for key in [k for k in self._grace if k[0] == session_id]:
            if session.participants.get(key[1]) is None:  # the old connection's timer
                self._grace.pop(key).cancel()
        me = session.participants[conn_id]
        others = [p for cid, p in session.participants.items() if cid != conn_id]
        self._hub.send_many(
            (p.conn_id for p in others),
            {
                "type": "participant.joined",
                "sessionId": session_id,
                "participant": me.to_json(),
                "rejoined": True,
            },
        )
        log.info("%s rejoined session %s", user.uid, session_id)
        return self._joined_reply(session, conn_id, user, rejoined=True)

    async def leave(
        self, conn_id: str, session_id: str, reason: Literal["left", "disconnected"] = "left"
    ) -> None:
        """Remove one connection; a 1:1 session is then over for the other side (reason hangup)."""
        room = await self._room_of(session_id)
        outcome = await self._state.leave(session_id, conn_id)
        leaver = outcome.participant
        others = [p.conn_id for p in outcome.others]
        message: SessionEndedMessage | ParticipantLeftMessage
        if outcome.session_over:
            message = {
                "type": "session.ended",
                "sessionId": session_id,
                "reason": "hangup",
                "by": leaver.user.to_json(),
            }
        else:
            message = {
                "type": "participant.left",
                "sessionId": session_id,
                "participant": leaver.to_json(),
                "reason": reason,
            }
        self._hub.send_many(others, message)
        log.info("%s left session %s (%s)", leaver.uid, session_id, reason)
        if outcome.session_empty:
            if room is not None:
                await self._destroy_room(room)
            await self._session_over(session_id, leaver.user)

    async def disconnected(self, conn_id: str) -> None:
        """A connection closed. Its participants stay for the rejoin grace, so that an endpoint whose
        network dropped can come back without the call ending; then they leave (reason
        disconnected). With no grace they leave at once."""
        if self._config.rejoin_grace <= 0:
            await self.leave_all(conn_id)
            return
        loop = asyncio.get_running_loop()
        for session_id in await self._state.sessions_of_connection(conn_id):
            key = (session_id, conn_id)
            if key in self._grace:
                continue
            self._grace[key] = loop.call_later(self._config.rejoin_grace, self._grace_expired, key)

    def _grace_expired(self, key: tuple[str, str]) -> None:
        asyncio.get_running_loop().create_task(self._grace_over(*key), name="rejoin-grace")

    async def _grace_over(self, session_id: str, conn_id: str) -> None:
        self._grace.pop((session_id, conn_id), None)
        try:
            await self.leave(conn_id, session_id, reason="disconnected")
        except ProtocolError:
            pass  # it rejoined on another connection, or the session ended meanwhile

    def close(self) -> None:
        """The server stops: pending grace timers are dropped with the live state."""
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()

    async def leave_all(self, conn_id: str) -> None:
        """A connection closed: it leaves every session it was in."""
        for session_id in await self._state.sessions_of_connection(conn_id):
            try:
                await self.leave(conn_id, session_id, reason="disconnected")
            except ProtocolError:
                pass  # the session ended meanwhile

    async def end(self, session_id: str, by: User | None) -> int:
        """End the session for everyone in it (reason ended); returns how many were in it."""
        room = await self._room_of(session_id)
        participants = await self._state.end_session(session_id)
        self._hub.send_many(
            (p.conn_id for p in participants),
            {
                "type": "session.ended",
                "sessionId": session_id,
                "reason": "ended",
                "by": by.to_json() if by else None,
            },
        )
        if participants:
            log.info("session %s ended by %s", session_id, by.uid if by else "the server")
        if room is not None:
            await self._destroy_room(room)
        await self._session_over(session_id, by)
        return len(participants)

    async def end_from(self, conn_id: str, user: User, session_id: str) -> None:
        """`end` sent by a participant."""
        await self._state.member(session_id, conn_id)
        await self.end(session_id, user)

    async def _session_over(self, session_id: str, by: User | None) -> None:
        if self.on_session_over is None:
            return
        try:
            await self.on_session_over(session_id, by)
        except StorageClosedError:
            # Shutting down: the call stays open in the log, and is closed as abandoned at the next start.
            log.info("session %s ended as the server stopped", session_id)
        except Exception:
            # The session is gone either way; a failure to update its call must not undo that.
            log.exception("updating the call of session %s failed", session_id)

    async def relay(self, conn_id: str, user: User, msg: RelayRequest) -> None:
        """offer / answer / candidate to one other participant, named by uid."""
        session_id = msg["sessionId"]
        session, _ = await self._state.member(session_id, conn_id)
        peer = session.by_uid(msg["to"]) if msg["to"] != user.uid else None
        if peer is None:
            raise ProtocolError(ErrorCode.PEER_NOT_FOUND, f"{msg['to']} is not in session {session_id}")
        relayed: SdpRelay | CandidateRelay
        if msg["type"] == "candidate":
            relayed = {
                "type": "candidate",
                "sessionId": session_id,
                "from": user.uid,
                "candidate": msg["candidate"],
            }
        else:
            relayed = {"type": msg["type"], "sessionId": session_id, "from": user.uid, "sdp": msg["sdp"]}
            if "negotiationId" in msg:
                relayed["negotiationId"] = msg["negotiationId"]
        self._hub.send(peer.conn_id, relayed)

    async def media_state(self, conn_id: str, user: User, msg: MediaStateRequest) -> None:
        session_id = msg["sessionId"]
        session = await self._state.set_media(session_id, conn_id, msg["audioMuted"], msg["videoMuted"])
        self._hub.send_many(
            _others(session, conn_id),
            {
                "type": "media.state",
                "sessionId": session_id,
                "user": user.to_json(),
                "audioMuted": msg["audioMuted"],
                "videoMuted": msg["videoMuted"],
            },
        )

    async def switch_video(self, conn_id: str, user: User, session_id: str) -> None:
        session, _ = await self._state.member(session_id, conn_id)
        await self._state.set_audio_only(session_id, False)
        self._hub.send_many(
            _others(session, conn_id),
            {"type": "switch.video", "sessionId": session_id, "requestedBy": user.to_json()},
        )
        if session.type == SessionType.DEFAULT:
            # The call log records what the call became.
            await self._storage.update_call(
                session_id, type=CallType.VIDEO, if_status=[CallStatus.INITIATED, CallStatus.ONGOING]
            )

    async def recording(self, conn_id: str, user: User, session_id: str, recording: bool) -> None:
        at = now_ms()
        # Kept on the participant, so that whoever joins later learns it (recordingSince).
        session = await self._state.set_recording(session_id, conn_id, at if recording else None)
        self._hub.send_many(
            _others(session, conn_id),
            {
                "type": "recording",
                "sessionId": session_id,
                "user": user.to_json(),
                "recording": recording,
                "at": at,
            },
        )
        if recording and session.type == SessionType.DEFAULT:
            await self._storage.update_call(session_id, has_recording=True)
