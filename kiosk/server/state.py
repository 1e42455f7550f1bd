"""Live state: who is online, who is in which session, which calls are in progress.

`LiveState` is the interface; `MemoryState` keeps it in this process. A Redis implementation (for
several server processes) comes later, so every method is a coroutine, returns copies rather than
live objects, and each rule that must hold under concurrency (the 1:1 hangup rule, the participant
limit, the busy check) is applied inside one method call, where the in-memory version is atomic.
Connections are named by id here; the sockets themselves stay in `connections.Hub`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiosk.protocol import ErrorCode, ParticipantJson, ProtocolError, SessionType
from kiosk.server.models import User


@dataclass
class Participant:
    conn_id: str
    user: User
    audio_muted: bool
    video_muted: bool
    joined_at: int
    recording_since: int | None = None  # ms since the epoch, while it records
    door: bool = False  # it joined with `door`: it drives a door relay (kiosk.server.doors)

    @property
    def uid(self) -> str:
        return self.user.uid

    def to_json(self) -> ParticipantJson:
        found: ParticipantJson = {
            **self.user.to_json(),
            "audioMuted": self.audio_muted,
            "videoMuted": self.video_muted,
            "joinedAt": self.joined_at,
        }
        if self.recording_since is not None:
            found["recordingSince"] = self.recording_since
        if self.door:
            found["door"] = True
        return found


@dataclass
class Session:
    id: str
    type: SessionType
    audio_only: bool
    # Keyed by connection id, in join order: membership is per connection, not per user.
    participants: dict[str, Participant] = field(default_factory=dict)
    # The SFU room the session's media goes through once it outgrew the mesh (kiosk.server.sfu
    # SfuRoom.to_state()), or None while it is a mesh. It stays for the rest of the session.
    sfu: dict[str, Any] | None = None
    # Whether three or more were ever in it at once: a group call stays one when it shrinks to two.
    was_group: bool = False

    def by_uid(self, uid: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.uid == uid), None)

    def add(self, participant: Participant) -> None:
        self.participants[participant.conn_id] = participant
        if len(self.participants) >= 3:
            self.was_group = True

    @property
    def one_to_one(self) -> bool:
        """A rung call between two that never was a group: when one leaves, it is over for both (the
        documents' on_call_ended). Any other session ends for its last one by the idle timeout."""
        return self.type == SessionType.DEFAULT and not self.was_group and len(self.participants) == 2


@dataclass
class LeaveOutcome:
    participant: Participant  # who left
    others: list[Participant]  # everyone else who was in the session
    # The 1:1 rule (Session.one_to_one) applied: the others were removed too and the session is gone.
    session_over: bool
    session_empty: bool  # nobody is left (also true when session_over)


class LiveState(ABC):
    # Whether this state outlives the server process (a shared store); the in-memory one does not,
    # so at start the server closes calls a previous run left open.
    survives_restart: bool = False

    # --- presence ---
    @abstractmethod
    async def add_connection(self, uid: str, conn_id: str) -> None: ...

    @abstractmethod
    async def remove_connection(self, uid: str, conn_id: str) -> None: ...

    @abstractmethod
    async def connections_of(self, uid: str) -> list[str]: ...

    @abstractmethod
    async def online_uids(self) -> set[str]: ...

    # --- sessions ---
    @abstractmethod
    async def join(
        self,
        session_id: str,
        participant: Participant,
        *,
        session_type: SessionType,
        audio_only: bool,
        max_participants: int,
        max_sessions_per_connection: int,
    ) -> Session:
        """Add the participant, creating the session (with this type and audio-only flag) if needed.

        Raises ProtocolError ALREADY_IN_SESSION (this connection, or another connection of the same
        user, is in it), SESSION_FULL, or BAD_REQUEST (too many sessions on this connection).
        """

    @abstractmethod
    async def rejoin(
        self, session_id: str, uid: str, conn_id: str, audio_muted: bool, video_muted: bool
    ) -> Session | None:
        """Move `uid`'s participant in the session (whatever connection it was on) to `conn_id`, with
        this media state; None, and nothing changed, if the session has no participant `uid`."""

    @abstractmethod
    async def leave(self, session_id: str, conn_id: str) -> LeaveOutcome:
        """Remove a participant; if the session had exactly two, it is over and removed whole.

        Raises ProtocolError NOT_IN_SESSION.
        """

    @abstractmethod
    async def end_session(self, session_id: str) -> list[Participant]:
        """Remove the session; returns who was in it (empty if there was no such session)."""

    @abstractmethod
    async def get_session(self, session_id: str) -> Session | None: ...

    @abstractmethod
    async def member(self, session_id: str, conn_id: str) -> tuple[Session, Participant]:
        """The session and this connection's participant; ProtocolError NOT_IN_SESSION if not joined."""

    @abstractmethod
    async def set_media(self, session_id: str, conn_id: str, audio_muted: bool, video_muted: bool) -> Session:
        """Record a participant's mute state; returns the session. ProtocolError NOT_IN_SESSION."""

    @abstractmethod
    async def set_recording(self, session_id: str, conn_id: str, since: int | None) -> Session:
        """Record that a participant records (since when, ms) or not (None); returns the session.
        ProtocolError NOT_IN_SESSION."""

    @abstractmethod
    async def set_audio_only(self, session_id: str, audio_only: bool) -> None: ...

    @abstractmethod
    async def set_sfu(
        self, session_id: str, room: dict[str, Any], replacing: int | None = None
    ) -> dict[str, Any] | None:
        """Give the session this SFU room unless it has one already (or, with `replacing`, in place of
        the room numbered so, if that is still its room); returns the session's room (the one given,
        or the one another join gave first), or None if there is no such session."""

    @abstractmethod
    async def sessions_of_connection(self, conn_id: str) -> list[str]: ...

    # --- calls in progress (ringing or ongoing) ---
    @abstractmethod
    async def reserve_call(self, session_id: str, initiator_uid: str, receiver_uid: str) -> bool:
        """Record a new call unless the receiver is busy (in a call in progress, as either party, or
        joined in any session); False, and nothing recorded, if busy."""

    @abstractmethod
    async def release_call(self, session_id: str) -> None:
        """The call reached a final status."""


class MemoryState(LiveState):
    def __init__(self) -> None:
        self._connections: dict[str, set[str]] = {}  # uid -> conn ids
        self._sessions: dict[str, Session] = {}
        self._joined: dict[str, list[str]] = {}  # conn id -> session ids
        self._calls: dict[str, tuple[str, str]] = {}  # session id -> (initiator, receiver)

    async def add_connection(self, uid: str, conn_id: str) -> None:
        self._connections.setdefault(uid, set()).add(conn_id)

    async def remove_connection(self, uid: str, conn_id: str) -> None:
        conns = self._connections.get(uid)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._connections[uid]

    async def connections_of(self, uid: str) -> list[str]:
        return sorted(self._connections.get(uid, ()))

    async def online_uids(self) -> set[str]:
        return set(self._connections)

    async def join(
        self,
        session_id: str,
        participant: Participant,
        *,
        session_type: SessionType,
        audio_only: bool,
        max_participants: int,
        max_sessions_per_connection: int,
    ) -> Session:
        session = self._sessions.get(session_id)
        joined = self._joined.get(participant.conn_id, [])
        if session is not None:
            if participant.conn_id in session.participants:
                raise ProtocolError(ErrorCode.ALREADY_IN_SESSION, f"already in session {session_id}")
            if session.by_uid(participant.uid) is not None:
                # Peers address each other by uid, so one user can be in a session only once.
                raise ProtocolError(
                    ErrorCode.ALREADY_IN_SESSION,
                    f"{participant.uid} is already in session {session_id} on another connection",
                )
        if len(joined) >= max_sessions_per_connection:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"a connection may be in at most {max_sessions_per_connection} sessions",
            )
        if session is not None and len(session.participants) >= max_participants:
            raise ProtocolError(
                ErrorCode.SESSION_FULL, f"session {session_id} has {max_participants} participants"
            )
        if session is None:
            session = Session(id=session_id, type=session_type, audio_only=audio_only)
            self._sessions[session_id] = session
        session.add(copy.copy(participant))
        self._joined.setdefault(participant.conn_id, []).append(session_id)
        return copy.deepcopy(session)

    async def rejoin(
        self, session_id: str, uid: str, conn_id: str, audio_muted: bool, video_muted: bool
    ) -> Session | None:
        session = self._sessions.get(session_id)
        old = session.by_uid(uid) if session is not None else None
        if session is None or old is None:
            return None
        if old.conn_id != conn_id:
            self._remove(session, old.conn_id)
            # Re-inserted at its place in join order, under the new connection.
            order = list(session.participants.items())
            position = next((i for i, (_, p) in enumerate(order) if p.joined_at > old.joined_at), len(order))
            order.insert(position, (conn_id, old))
            session.participants = dict(order)
            self._joined.setdefault(conn_id, []).append(session_id)
        old.conn_id, old.audio_muted, old.video_muted = conn_id, audio_muted, video_muted
        return copy.deepcopy(session)

    def _remove(self, session: Session, conn_id: str) -> Participant:
        participant = session.participants.pop(conn_id)
        joined = self._joined.get(conn_id, [])
        if session.id in joined:
            joined.remove(session.id)
        if not joined:
            self._joined.pop(conn_id, None)
        return participant

    async def leave(self, session_id: str, conn_id: str) -> LeaveOutcome:
        session = self._sessions.get(session_id)
        if session is None or conn_id not in session.participants:
            raise ProtocolError(ErrorCode.NOT_IN_SESSION, f"not in session {session_id}")
        one_to_one = session.one_to_one
        participant = self._remove(session, conn_id)
        others = list(session.participants.values())
        if one_to_one:
            for other in others:
                self._remove(session, other.conn_id)
        if not session.participants:
            del self._sessions[session_id]
        return LeaveOutcome(
            participant=participant,
            others=copy.deepcopy(others),
            session_over=one_to_one,
            session_empty=not session.participants,
        )

    async def end_session(self, session_id: str) -> list[Participant]:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return []
        return copy.deepcopy([self._remove(session, conn_id) for conn_id in list(session.participants)])

    async def get_session(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        return copy.deepcopy(session) if session is not None else None

    async def member(self, session_id: str, conn_id: str) -> tuple[Session, Participant]:
        session = self._sessions.get(session_id)
        if session is None or conn_id not in session.participants:
            raise ProtocolError(ErrorCode.NOT_IN_SESSION, f"not in session {session_id}")
        snapshot = copy.deepcopy(session)
        return snapshot, snapshot.participants[conn_id]

    async def set_media(self, session_id: str, conn_id: str, audio_muted: bool, video_muted: bool) -> Session:
        def change(participant: Participant) -> None:
            participant.audio_muted, participant.video_muted = audio_muted, video_muted

        return self._change_participant(session_id, conn_id, change)

    async def set_recording(self, session_id: str, conn_id: str, since: int | None) -> Session:
        def change(participant: Participant) -> None:
            participant.recording_since = since

        return self._change_participant(session_id, conn_id, change)

    def _change_participant(
        self, session_id: str, conn_id: str, change: Callable[[Participant], None]
    ) -> Session:
        session = self._sessions.get(session_id)
        if session is None or conn_id not in session.participants:
            raise ProtocolError(ErrorCode.NOT_IN_SESSION, f"not in session {session_id}")
        change(session.participants[conn_id])
        return copy.deepcopy(session)

    async def set_audio_only(self, session_id: str, audio_only: bool) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.audio_only = audio_only

    async def set_sfu(
        self, session_id: str, room: dict[str, Any], replacing: int | None = None
    ) -> dict[str, Any] | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        current = session.sfu["room"] if session.sfu is not None else None
        if current == replacing:
            session.sfu = dict(room)
        return dict(session.sfu) if session.sfu is not None else None

    async def sessions_of_connection(self, conn_id: str) -> list[str]:
        return list(self._joined.get(conn_id, ()))

    def _busy(self, uid: str) -> bool:
        if any(uid in parties for parties in self._calls.values()):
            return True
        return any(s.by_uid(uid) is not None for s in self._sessions.values())

    async def reserve_call(self, session_id: str, initiator_uid: str, receiver_uid: str) -> bool:
        if self._busy(receiver_uid):
            return False
        self._calls[session_id] = (initiator_uid, receiver_uid)
        return True

    async def release_call(self, session_id: str) -> None:
        self._calls.pop(session_id, None)
