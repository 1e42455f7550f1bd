"""The signaling protocol shared by the call server and every client.

`docs/protocol.md` is the description; this module holds its names, limits and message checks so the
server and the clients cannot drift apart.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SESSIONS_PER_CONNECTION = 4
DEFAULT_MAX_PARTICIPANTS = 4
DEFAULT_RING_TIMEOUT = 45.0
DEFAULT_TOKEN_TTL = 3600

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
MAX_NAME_LENGTH = 100
MAX_AVATAR_LENGTH = 2000
MAX_SDP_LENGTH = 60 * 1024


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    USER_EXISTS = "USER_EXISTS"
    INVALID_STATE = "INVALID_STATE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_WRONG_SESSION = "TOKEN_WRONG_SESSION"
    TOKEN_WRONG_USER = "TOKEN_WRONG_USER"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    NOT_IN_SESSION = "NOT_IN_SESSION"
    ALREADY_IN_SESSION = "ALREADY_IN_SESSION"
    SESSION_FULL = "SESSION_FULL"
    PEER_NOT_FOUND = "PEER_NOT_FOUND"
    MALFORMED = "MALFORMED"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    INTERNAL = "INTERNAL"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.USER_EXISTS: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_WRONG_SESSION: 403,
    ErrorCode.TOKEN_WRONG_USER: 403,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(Exception):
    """A refusal that travels to the other side as `{"error": {"code", "message"}}`."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)


class CallType(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


class CallStatus(StrEnum):
    INITIATED = "initiated"
    ONGOING = "ongoing"
    REJECTED = "rejected"
    BUSY = "busy"
    CANCELLED = "cancelled"
    UNANSWERED = "unanswered"
    ENDED = "ended"


FINAL_CALL_STATUSES = frozenset(
    {CallStatus.REJECTED, CallStatus.BUSY, CallStatus.CANCELLED, CallStatus.UNANSWERED, CallStatus.ENDED}
)


class SessionType(StrEnum):
    DIRECT = "direct"
    DEFAULT = "default"


# Client -> server message types and their fields: name -> (python type(s), required).
_STR = (str,)
_BOOL = (bool,)
CLIENT_MESSAGES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "auth": {"authToken": (_STR, True)},
    "join": {
        "sessionId": (_STR, True),
        "callToken": (_STR, True),
        "audioMuted": (_BOOL, False),
        "videoMuted": (_BOOL, False),
        "audioOnly": (_BOOL, False),
    },
    "leave": {"sessionId": (_STR, True)},
    "end": {"sessionId": (_STR, True)},
    "offer": {"sessionId": (_STR, True), "to": (_STR, True), "sdp": (_STR, True)},
    "answer": {"sessionId": (_STR, True), "to": (_STR, True), "sdp": (_STR, True)},
    "candidate": {"sessionId": (_STR, True), "to": (_STR, True), "candidate": ((dict, type(None)), True)},
    "media.state": {"sessionId": (_STR, True), "audioMuted": (_BOOL, True), "videoMuted": (_BOOL, True)},
    "switch.video": {"sessionId": (_STR, True)},
    "recording": {"sessionId": (_STR, True), "recording": (_BOOL, True)},
    "ping": {},
}

SERVER_MESSAGES = frozenset(
    {
        "ok",
        "error",
        "joined",
        "participant.joined",
        "participant.left",
        "session.ended",
        "offer",
        "answer",
        "candidate",
        "media.state",
        "switch.video",
        "recording",
        "call.incoming",
        "call.updated",
        "pong",
    }
)

_ID_FIELDS = {"sessionId", "to", "authToken"}


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


def parse_client_message(raw: str | bytes) -> dict[str, Any]:
    """Decode and check one client frame; raise ProtocolError naming what is wrong.

    Returns the message object with optional booleans filled in with their defaults.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(ErrorCode.MALFORMED, "message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(ErrorCode.MALFORMED, 'message must be an object with a string "type"')
    request_id = message.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, str | int)):
        raise ProtocolError(ErrorCode.MALFORMED, '"id" must be a string or an integer')
    fields = CLIENT_MESSAGES.get(message["type"])
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {message['type'][:40]!r}")
    for name, (types, required) in fields.items():
        if name not in message:
            if required:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{message['type']}: missing field {name!r}")
            if types is _BOOL:
                message[name] = False
            continue
        value = message[name]
        if not isinstance(value, types) or (types is not _BOOL and isinstance(value, bool)):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"{message['type']}: field {name!r} has the wrong type"
            )
        if name in _ID_FIELDS and name != "authToken" and not is_valid_id(value):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{message['type']}: field {name!r} is not a valid id")
        if name == "sdp" and len(value) > MAX_SDP_LENGTH:
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, "sdp too long")
    return message


def error_body(code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message}}
