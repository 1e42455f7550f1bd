"""Doors in a call (docs/protocol.md, "Doors"): asking a door kiosk in the call to release its door
(`Calls.open_door`), and, on a kiosk that drives a door relay, answering such requests.

The SDK knows nothing of GPIO: a kiosk with a door gives the Calls client a `DoorOpener` (the
hardware layer's relay, kiosk.hardware.door), and joins its sessions saying it has a door."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from kiosk.calls.errors import CallsError
from kiosk.calls.events import RTCUser
from kiosk.calls.ports import EventSink, SignalingChannel
from kiosk.protocol import DoorOpenedMessage, DoorOpenRelay, DoorOpenRequest, DoorResultRequest

log = logging.getLogger(__name__)

# How many answered request nonces a door remembers, to refuse a request delivered twice.
_REMEMBERED_NONCES = 256


@dataclass(frozen=True)
class DoorOutcome:
    """What a door did with a request: released, or why not (words a person can read)."""

    opened: bool
    reason: str = ""


class DoorOpener(Protocol):
    """A door this endpoint can release (a relay); the SDK calls it for each request the server passed on."""

    async def release(self, requested_by: str) -> DoorOutcome: ...


@dataclass(frozen=True)
class DoorResult:
    """The payload of on_door_opened, on every endpoint in the call: whose door, who asked, and
    whether it was released (if not, `reason` says why)."""

    session_id: str
    door: RTCUser
    opened_by: RTCUser
    opened: bool
    reason: str
    at: int  # ms since the epoch


class SessionDoor:
    """The door side and the asking side of one session."""

    def __init__(
        self,
        session_id: str,
        signaling: Callable[[], SignalingChannel],
        events: EventSink,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        opener: DoorOpener | None,
    ) -> None:
        self._session_id = session_id
        self._signaling = signaling
        self._events = events
        self._spawn = spawn
        self.opener = opener
        self._answered: dict[str, None] = {}  # nonces answered, oldest first

    async def ask(self, door_uid: str) -> None:
        """Send `door.open` to `door_uid`; returns once the server passed it on (the answer comes as
        on_door_opened). CallsError if the server refuses it (FORBIDDEN: this user may not open doors;
        INVALID_STATE: that participant has no door; PEER_NOT_FOUND: not in this call)."""
        request: DoorOpenRequest = {
            "type": "door.open",
            "sessionId": self._session_id,
            "to": door_uid,
            "nonce": secrets.token_urlsafe(18),  # fresh for each request: the server takes it once
        }
        await self._signaling().request(request)

    def requested(self, message: DoorOpenRelay) -> None:
        """The server passed on someone's request to this endpoint's door."""
        nonce, by = message["nonce"], message["from"]
        if nonce in self._answered:
            log.warning("door request %s from %s came twice: ignored", nonce, by)
            return
        self._answered[nonce] = None
        while len(self._answered) > _REMEMBERED_NONCES:
            del self._answered[next(iter(self._answered))]
        self._spawn(self._answer(by, nonce))

    async def _answer(self, by: str, nonce: str) -> None:
        if self.opener is None:
            outcome = DoorOutcome(False, "this endpoint has no door")
        else:
            try:
                outcome = await self.opener.release(by)
            except Exception as exc:  # a relay that fails must not take the call with it
                log.exception("the door could not be released")
                outcome = DoorOutcome(False, f"the door relay failed: {exc}"[:200])
        answer: DoorResultRequest = {
            "type": "door.result",
            "sessionId": self._session_id,
            "to": by,
            "nonce": nonce,
            "opened": outcome.opened,
        }
        if outcome.reason:
            answer["reason"] = outcome.reason[:200]
        try:
            await self._signaling().request(answer)
        except CallsError as exc:
            log.warning("the door's answer to %s was not taken: %s", by, exc)

    def answered(self, message: DoorOpenedMessage) -> None:
        """The door answered a request in this call (ours, or anyone's): tell the listeners."""
        self._events.emit(
            "on_door_opened",
            DoorResult(
                session_id=self._session_id,
                door=RTCUser.from_json(message["door"]),
                opened_by=RTCUser.from_json(message["by"]),
                opened=bool(message["opened"]),
                reason=str(message.get("reason") or ""),
                at=int(message["at"]),
            ),
        )
