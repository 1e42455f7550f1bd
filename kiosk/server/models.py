"""The server's records: users and calls, with their JSON forms from docs/protocol.md."""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.protocol import FINAL_CALL_STATUSES, CallJson, CallStatus, CallType, UserJson


@dataclass(frozen=True)
class User:
    uid: str
    name: str
    avatar: str | None = None

    def to_json(self) -> UserJson:
        return {"uid": self.uid, "name": self.name, "avatar": self.avatar}


@dataclass(frozen=True)
class CallRecord:
    """One ringing call, also its call-log entry (the protocol's Call object). The session id is the
    call's id."""

    session_id: str
    type: CallType
    status: CallStatus
    initiator: User
    receiver: User
    initiated_at: int
    joined_at: int | None = None
    ended_at: int | None = None
    duration_seconds: int = 0
    has_recording: bool = False
    # The receiver is a ring group (its members rang); once answered, the member who took it.
    group: bool = False
    answered_by: User | None = None
    has_picture: bool = False  # the caller's kiosk sent stills while it rang (the last is kept)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_CALL_STATUSES

    def is_party(self, uid: str) -> bool:
        """One of the two in the call: the caller and the receiver (of a ring group's call, the
        member who answered it; a group itself is never a party)."""
        if self.group:
            return uid == self.initiator.uid or (self.answered_by is not None and uid == self.answered_by.uid)
        return uid in (self.initiator.uid, self.receiver.uid)

    def to_json(self, viewer_uid: str | None = None) -> CallJson:
        """The protocol's Call object; with `viewer_uid`, plus that user's call-log `direction`."""
        body: CallJson = {
            "sessionId": self.session_id,
            "type": str(self.type),
            "status": str(self.status),
            "initiator": self.initiator.to_json(),
            "receiver": self.receiver.to_json(),
            "initiatedAt": self.initiated_at,
            "joinedAt": self.joined_at,
            "endedAt": self.ended_at,
            "durationSeconds": self.duration_seconds,
            "hasRecording": self.has_recording,
        }
        if self.group:
            body["group"] = True
        if self.answered_by is not None:
            body["answeredBy"] = self.answered_by.to_json()
        if self.has_picture:
            body["hasPicture"] = True
        if viewer_uid is not None:
            body["direction"] = "outgoing" if viewer_uid == self.initiator.uid else "incoming"
        return body
