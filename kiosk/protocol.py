"""The signaling protocol shared by the call server and every client.

`docs/protocol.md` is the description; this module holds its names, limits and message checks so the
server and the clients cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SESSIONS_PER_CONNECTION = 4
DEFAULT_MAX_PARTICIPANTS = 4  # without an SFU every session is a mesh, and a mesh of four is the most
DEFAULT_MESH_LIMIT = 4  # with an SFU (Janus), a session of more participants than this goes through it
DEFAULT_SFU_MAX_PARTICIPANTS = 16
DEFAULT_RING_TIMEOUT = 45.0
DEFAULT_TOKEN_TTL = 3600
DEFAULT_REJOIN_GRACE = 20.0  # seconds a dropped participant may take to come back (join with rejoin)

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
MAX_NAME_LENGTH = 100
MAX_AVATAR_LENGTH = 2000
MAX_SDP_LENGTH = 60 * 1024
# Secrets as presented by a client: anything longer, or not printable ASCII, cannot be one of ours.
MAX_AUTH_TOKEN_LENGTH = 256
MAX_CALL_TOKEN_LENGTH = 4096
# A request `id`: a string of at most this many characters, or an integer a JavaScript number holds.
MAX_REQUEST_ID_LENGTH = 100
MAX_REQUEST_ID_INT = 2**53 - 1
# GET /v1/calls: highest `page` (a larger one would overflow the database's OFFSET).
MAX_PAGE = 1_000_000
# Fields naming the sender, which only the server sets (`from` of a relay, `user` of a broadcast).
SENDER_FIELDS = ("from", "uid", "user")


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
    RATE_LIMITED = "RATE_LIMITED"
    SFU_UNAVAILABLE = "SFU_UNAVAILABLE"
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
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SFU_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(Exception):
    """A refusal that travels to the other side as `{"error": {"code", "message"}}`."""

    def __init__(self, code: ErrorCode | str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        # RATE_LIMITED only: whole seconds until a new attempt can succeed.
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.retry_after is not None:
            body["retryAfterSeconds"] = self.retry_after
        return body

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
        "rejoin": (_BOOL, False),
    },
    "leave": {"sessionId": (_STR, True)},
    "end": {"sessionId": (_STR, True)},
    "offer": {
        "sessionId": (_STR, True),
        "to": (_STR, True),
        "sdp": (_STR, True),
        "negotiationId": (_STR, False),
    },
    "answer": {
        "sessionId": (_STR, True),
        "to": (_STR, True),
        "sdp": (_STR, True),
        "negotiationId": (_STR, False),
    },
    "candidate": {"sessionId": (_STR, True), "to": (_STR, True), "candidate": ((dict, type(None)), True)},
    "media.state": {"sessionId": (_STR, True), "audioMuted": (_BOOL, True), "videoMuted": (_BOOL, True)},
    "switch.video": {"sessionId": (_STR, True)},
    "sfu.lost": {"sessionId": (_STR, True), "room": ((int,), True)},
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
        "session.media",
        "call.incoming",
        "call.updated",
        "pong",
    }
)

_ID_FIELDS = {"sessionId", "to", "authToken", "negotiationId"}


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


def is_valid_request_id(value: object) -> bool:
    """A usable request `id`: a string of at most 100 characters or an integer within +-(2**53 - 1)."""
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_LENGTH
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_REQUEST_ID_INT


def is_plausible_secret(value: object, max_length: int) -> bool:
    """Printable ASCII of 1 to max_length characters: what every auth token, admin key and call token is."""
    return isinstance(value, str) and 0 < len(value) <= max_length and value.isascii() and value.isprintable()


def decode_json(raw: str | bytes) -> Any:
    """json.loads that fails only with ValueError (deep nesting raises RecursionError in the stdlib)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON") from None


def request_id_of(raw: str | bytes) -> str | int | None:
    """The `id` of a frame that failed the checks, if it has a usable one, so the error can echo it."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = decode_json(raw)
    except ValueError:
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if is_valid_request_id(request_id) else None


def parse_client_message(raw: str | bytes) -> dict[str, Any]:
    """Decode and check one client frame; raise ProtocolError naming what is wrong.

    Returns the message object with optional booleans filled in with their defaults. Fields this
    document does not name are ignored (and never relayed).
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        message = decode_json(raw)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED, "message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(ErrorCode.MALFORMED, 'message must be an object with a string "type"')
    request_id = message.get("id")
    if request_id is not None and not is_valid_request_id(request_id):
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f'"id" must be a string of at most {MAX_REQUEST_ID_LENGTH} characters or an integer',
        )
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


def claims_other_sender(message: dict[str, Any], uid: str) -> str | None:
    """The sender field (`from`, `uid`, `user`) of a client message that names someone other than
    `uid`, if any: a participant may not act for another, so such a message is refused."""
    for name in SENDER_FIELDS:
        if name not in message:
            continue
        value = message[name]
        claimed = value.get("uid") if isinstance(value, dict) else value
        if claimed != uid:
            return name
    return None


def error_body(code: ErrorCode | str, message: str, *, retry_after: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if retry_after is not None:
        error["retryAfterSeconds"] = retry_after
    return {"error": error}
