"""Door release through the call server (docs/protocol.md, "Doors").

A kiosk with a door relay joins its sessions with `door`. Someone in a session with it sends
`door.open` (to that kiosk, with a nonce of its own); the server lets it through only if the asker is
in the same session as the door, is allowed to open doors (a per-user permission), and has not used
that nonce in this session before, which also writes the request into the call log. The door kiosk
pulses its relay and answers `door.result`; the server takes an answer only for a request it passed
on, records it, and tells everyone in the session (`door.opened`, released or why not)."""

from __future__ import annotations

import logging

from kiosk.protocol import (
    MIN_DOOR_NONCE_LENGTH,
    DoorOpenedMessage,
    DoorOpenRelay,
    DoorOpenRequest,
    DoorResultRequest,
    ErrorCode,
    ProtocolError,
)
from kiosk.server.clock import now_ms
from kiosk.server.connections import Hub
from kiosk.server.models import User
from kiosk.server.state import LiveState
from kiosk.server.storage import Storage

log = logging.getLogger(__name__)


class Doors:
    def __init__(self, state: LiveState, storage: Storage, hub: Hub) -> None:
        self._state = state
        self._storage = storage
        self._hub = hub

    async def open(self, conn_id: str, user: User, msg: DoorOpenRequest) -> None:
        """Pass a `door.open` on to the door, or refuse it (ProtocolError)."""
        session_id, nonce = msg["sessionId"], msg["nonce"]
        if len(nonce) < MIN_DOOR_NONCE_LENGTH:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"door.open: 'nonce' must be at least {MIN_DOOR_NONCE_LENGTH} characters",
            )
        session, _ = await self._state.member(session_id, conn_id)  # NOT_IN_SESSION: only during a call
        door = session.by_uid(msg["to"]) if msg["to"] != user.uid else None
        if door is None:
            raise ProtocolError(ErrorCode.PEER_NOT_FOUND, f"{msg['to']} is not in session {session_id}")
        if not door.door:
            raise ProtocolError(ErrorCode.INVALID_STATE, f"{door.uid} has no door to open")
        # Read now, not at sign-in: a permission taken away counts at once.
        if not await self._storage.door_permission(user.uid):
            log.info("%s may not open doors: refused door.open to %s", user.uid, door.uid)
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user.uid} may not open doors")
        if not await self._storage.add_door_request(session_id, nonce, door.uid, user.uid):
            log.warning("%s replayed a door.open in session %s: refused", user.uid, session_id)
            raise ProtocolError(
                ErrorCode.INVALID_STATE, "this door request was made before (its nonce is used)"
            )
        relayed: DoorOpenRelay = {
            "type": "door.open",
            "sessionId": session_id,
            "from": user.uid,
            "nonce": nonce,
        }
        self._hub.send(door.conn_id, relayed)
        log.info("%s asked %s to open its door (session %s)", user.uid, door.uid, session_id)

    async def result(self, conn_id: str, user: User, msg: DoorResultRequest) -> None:
        """Record the door's answer and tell everyone in the session."""
        session_id = msg["sessionId"]
        session, me = await self._state.member(session_id, conn_id)
        if not me.door:
            raise ProtocolError(ErrorCode.INVALID_STATE, "door.result from an endpoint without a door")
        reason = msg.get("reason") or None
        if not await self._storage.answer_door_request(
            session_id, msg["nonce"], user.uid, msg["to"], msg["opened"], reason
        ):
            raise ProtocolError(ErrorCode.INVALID_STATE, "no door request waits for this answer")
        asker = session.by_uid(msg["to"])
        told: DoorOpenedMessage = {
            "type": "door.opened",
            "sessionId": session_id,
            "door": user.to_json(),
            "by": asker.user.to_json()
            if asker is not None
            else {"uid": msg["to"], "name": msg["to"], "avatar": None},
            "nonce": msg["nonce"],
            "opened": msg["opened"],
            "at": now_ms(),
        }
        if reason:
            told["reason"] = reason
        self._hub.send_many(list(session.participants), told)
        log.info(
            "door of %s %s for %s (session %s)",
            user.uid,
            "released" if msg["opened"] else f"not released: {reason}",
            msg["to"],
            session_id,
        )
