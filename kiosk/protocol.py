"""The signaling protocol shared by the call server and every client.

`docs/protocol.md` is the description; this module holds its names, limits, every message's shape (a
TypedDict each) and the checks of a client's messages made from those shapes, so the server and the
clients cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    NamedTuple,
    NotRequired,
    TypedDict,
    TypeGuard,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

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
# A trickled ICE candidate's fields. Browsers' candidate lines are about 150 characters; RFC 8839's
# grammar (host names as addresses, a ufrag of up to 256 characters, extensions) allows several
# hundred, so 2,048 refuses none that is real.
MAX_CANDIDATE_LENGTH = 2048
MAX_PICTURE_BYTES = 60 * 1024  # a ringing caller's still (JPEG), within the 64 KiB body limit
MAX_DOOR_REASON_LENGTH = 200  # a door's "why not", shown to both sides
MIN_DOOR_NONCE_LENGTH = 16  # a door.open's nonce: long enough that guessing one is hopeless
MAX_ICE_TOKEN_LENGTH = 256  # sdpMid ("0" in practice) and usernameFragment (4 to 256 characters)
MAX_MLINE_INDEX = 65535  # sdpMLineIndex is a WebIDL unsigned short
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

    def to_json(self) -> ErrorJson:
        return error_body(self.code, self.message, retry_after=self.retry_after)["error"]

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


# ----------------------------------------------------------------------------- the messages
#
# Every signaling message's shape, once: a TypedDict per message, as its JSON object is on the wire
# (docs/protocol.md, "WebSocket signaling"). The server and the Calls SDK build and read them, and the
# type checker holds both to these definitions; a client's messages are checked at run time against
# the same definitions (`check_client_message`): each field's type, whether it may be left out, and
# the rules its `Annotated` metadata adds (an id, a length, a range); an object inside a message that
# has a definition of its own (`IceCandidate`) is checked by it, field by field.

RequestId = str | int  # a request's `id`, echoed in its reply (is_valid_request_id)


@dataclass(frozen=True)
class FieldRule:
    """What a client's field must be beyond its type: the metadata of an `Annotated` field."""

    valid_id: bool = False  # matches ID_PATTERN
    max_length: int | None = None
    too_long: ErrorCode = ErrorCode.BAD_REQUEST  # the refusal of a value over max_length
    min_value: int | None = None  # an integer's bounds
    max_value: int | None = None


Id = Annotated[str, FieldRule(valid_id=True)]
Sdp = Annotated[str, FieldRule(max_length=MAX_SDP_LENGTH, too_long=ErrorCode.PAYLOAD_TOO_LARGE)]
IceToken = Annotated[str | None, FieldRule(max_length=MAX_ICE_TOKEN_LENGTH)]


class IceCandidate(TypedDict):
    """A trickled ICE candidate (an RTCIceCandidateInit) as a browser's RTCIceCandidate.toJSON() gives
    it; `candidate` "" ends the candidates. The server relays it whole, so it is checked as a message is,
    and, unlike a message's, a field it does not name is refused: it would reach the other side."""

    candidate: Annotated[str, FieldRule(max_length=MAX_CANDIDATE_LENGTH)]
    sdpMid: NotRequired[IceToken]
    sdpMLineIndex: NotRequired[Annotated[int | None, FieldRule(min_value=0, max_value=MAX_MLINE_INDEX)]]
    usernameFragment: NotRequired[IceToken]


# -- client to server: requests, each answered by a reply (below) with its `id`


class _Request(TypedDict):
    id: NotRequired[RequestId]


class AuthRequest(_Request):
    type: Literal["auth"]
    authToken: str  # any string: a wrong one is UNAUTHORIZED, not BAD_REQUEST


class JoinRequest(_Request):
    """`join`; with `rejoin`, take back our place after a reconnect. The server reads the optional
    booleans as False when they are left out (parse_client_message fills them in)."""

    type: Literal["join"]
    sessionId: Id
    callToken: str
    audioMuted: NotRequired[bool]
    videoMuted: NotRequired[bool]
    audioOnly: NotRequired[bool]
    rejoin: NotRequired[bool]
    door: NotRequired[bool]  # this endpoint drives a door relay: others in the session may ask it to open


class LeaveRequest(_Request):
    type: Literal["leave"]
    sessionId: Id


class EndRequest(_Request):
    type: Literal["end"]
    sessionId: Id


class SdpRequest(_Request):
    """`offer` or `answer` to one other participant; an answer names the offer it answers."""

    type: Literal["offer", "answer"]
    sessionId: Id
    to: Id
    sdp: Sdp
    negotiationId: NotRequired[Id]


class CandidateRequest(_Request):
    type: Literal["candidate"]
    sessionId: Id
    to: Id
    candidate: IceCandidate | None


class MediaStateRequest(_Request):
    type: Literal["media.state"]
    sessionId: Id
    audioMuted: bool
    videoMuted: bool


class SwitchVideoRequest(_Request):
    type: Literal["switch.video"]
    sessionId: Id


class SfuLostRequest(_Request):
    type: Literal["sfu.lost"]
    sessionId: Id
    room: int


class RecordingRequest(_Request):
    type: Literal["recording"]
    sessionId: Id
    recording: bool


class DoorOpenRequest(_Request):
    """`door.open`: ask participant `to` (an endpoint that joined with `door`) to release its door.
    `nonce` is this request's own (at least 16 characters): the server takes a (session, nonce) once,
    so a request cannot be replayed, and the answer names it."""

    type: Literal["door.open"]
    sessionId: Id
    to: Id
    nonce: Id


class DoorResultRequest(_Request):
    """`door.result`: the door's answer to the `door.open` it was sent (`to` is who asked)."""

    type: Literal["door.result"]
    sessionId: Id
    to: Id
    nonce: Id
    opened: bool
    reason: NotRequired[Annotated[str, FieldRule(max_length=MAX_DOOR_REASON_LENGTH)]]


class PingRequest(_Request):
    type: Literal["ping"]


ClientMessage = (
    AuthRequest
    | JoinRequest
    | LeaveRequest
    | EndRequest
    | SdpRequest
    | CandidateRequest
    | MediaStateRequest
    | SwitchVideoRequest
    | SfuLostRequest
    | RecordingRequest
    | DoorOpenRequest
    | DoorResultRequest
    | PingRequest
)
RelayRequest = SdpRequest | CandidateRequest  # relayed to the participant named by `to`


# -- JSON objects inside the server's messages


class UserJson(TypedDict):
    uid: str
    name: str
    avatar: str | None


class ParticipantJson(UserJson):
    audioMuted: bool
    videoMuted: bool
    joinedAt: int
    # When (ms since the epoch) this participant started recording, while it records: how a
    # late joiner learns of a recording already going on.
    recordingSince: NotRequired[int]
    door: NotRequired[bool]  # present (true) when this participant can open a door


class IceServer(TypedDict):
    """One RTCPeerConnection `iceServers` entry (docs/protocol.md, "iceServers")."""

    urls: list[str]
    username: NotRequired[str]
    credential: NotRequired[str]


class SfuRoomJson(TypedDict):
    """The SFU room a session's media goes through, as participants are told (never its secret)."""

    url: str
    room: int
    pin: str
    videoCodecs: str


class MeshMediaJson(TypedDict):
    mode: Literal["mesh"]


class SfuMediaJson(TypedDict):
    mode: Literal["sfu"]
    sfu: SfuRoomJson


MediaJson = MeshMediaJson | SfuMediaJson  # a session's `media`


class DoorOpeningJson(TypedDict):
    door: str  # the uid of the endpoint with the door
    by: str  # the uid of who asked
    at: int  # when it was asked, ms since the epoch
    opened: bool | None  # None: the door never answered
    reason: NotRequired[str]


class CallJson(TypedDict):
    """The Call object of ringing (docs/protocol.md, "Ringing"); `direction` in call logs only."""

    sessionId: str
    type: str  # CallType
    status: str  # CallStatus
    initiator: UserJson
    receiver: UserJson
    initiatedAt: int
    joinedAt: int | None
    endedAt: int | None
    durationSeconds: int
    hasRecording: bool
    direction: NotRequired[Literal["incoming", "outgoing"]]
    doorOpenings: NotRequired[list[DoorOpeningJson]]  # in call logs: every door release asked in the call
    group: NotRequired[bool]  # the receiver is a ring group: every member rang, the first to answer took it
    answeredBy: NotRequired[UserJson]  # a ring group's call: the member who answered
    hasPicture: NotRequired[bool]  # a still of the caller from the ring (GET /v1/calls/{id}/picture)


class ErrorJson(TypedDict):
    code: str  # ErrorCode
    message: str
    retryAfterSeconds: NotRequired[int]  # RATE_LIMITED only


class ErrorBody(TypedDict):
    """A refused REST request's body."""

    error: ErrorJson


# -- server to client: replies (with the request's `id`)


class _Reply(TypedDict):
    id: NotRequired[RequestId]


class OkReply(_Reply):
    type: Literal["ok"]
    user: NotRequired[UserJson]  # after `auth`
    canOpenDoors: NotRequired[bool]  # after `auth`: whether this user may ask a door to open


class ErrorReply(_Reply):
    type: Literal["error"]
    error: ErrorJson


class JoinedReply(_Reply):
    type: Literal["joined"]
    sessionId: str
    self: ParticipantJson
    participants: list[ParticipantJson]  # the others
    audioOnly: bool
    iceServers: list[IceServer]
    rejoined: bool
    rejoinGraceMs: int
    media: MediaJson


class PongReply(_Reply):
    type: Literal["pong"]


Reply = OkReply | ErrorReply | JoinedReply | PongReply

# -- server to client: what happens in a session you are in


class ParticipantJoinedMessage(TypedDict):
    type: Literal["participant.joined"]
    sessionId: str
    participant: ParticipantJson
    rejoined: NotRequired[bool]  # true when it came back


class ParticipantLeftMessage(TypedDict):
    type: Literal["participant.left"]
    sessionId: str
    participant: ParticipantJson
    reason: Literal["left", "disconnected"]


class SessionEndedMessage(TypedDict):
    type: Literal["session.ended"]
    sessionId: str
    reason: Literal["hangup", "ended"]
    by: UserJson | None


# `from` is a Python keyword: these two are spelled the functional way.
SdpRelay = TypedDict(
    "SdpRelay",
    {
        "type": Literal["offer", "answer"],
        "sessionId": str,
        "from": str,
        "sdp": str,
        "negotiationId": NotRequired[str],
    },
)
CandidateRelay = TypedDict(
    "CandidateRelay",
    {"type": Literal["candidate"], "sessionId": str, "from": str, "candidate": IceCandidate | None},
)
Negotiation = SdpRelay | CandidateRelay  # relayed from another participant


class SessionMediaMessage(TypedDict):
    type: Literal["session.media"]
    sessionId: str
    media: MediaJson


class MediaStateMessage(TypedDict):
    type: Literal["media.state"]
    sessionId: str
    user: UserJson
    audioMuted: bool
    videoMuted: bool


DoorOpenRelay = TypedDict(
    "DoorOpenRelay", {"type": Literal["door.open"], "sessionId": str, "from": str, "nonce": str}
)


class DoorOpenedMessage(TypedDict):
    """To everyone in the session once the door answered a `door.open`: released, or why not."""

    type: Literal["door.opened"]
    sessionId: str
    door: UserJson
    by: UserJson
    nonce: str
    opened: bool
    reason: NotRequired[str]
    at: int


class SwitchVideoMessage(TypedDict):
    type: Literal["switch.video"]
    sessionId: str
    requestedBy: UserJson


class RecordingMessage(TypedDict):
    type: Literal["recording"]
    sessionId: str
    user: UserJson
    recording: bool
    at: int


SessionMessage = (
    ParticipantJoinedMessage
    | ParticipantLeftMessage
    | SessionEndedMessage
    | SdpRelay
    | CandidateRelay
    | SessionMediaMessage
    | MediaStateMessage
    | SwitchVideoMessage
    | RecordingMessage
    | DoorOpenRelay
    | DoorOpenedMessage
)

# -- server to client: ringing


class CallIncomingMessage(TypedDict):
    type: Literal["call.incoming"]
    call: CallJson


class CallUpdatedMessage(TypedDict):
    type: Literal["call.updated"]
    call: CallJson


ServerMessage = Reply | SessionMessage | CallIncomingMessage | CallUpdatedMessage


# -- the tables the checks use, made from the definitions above


class ClientField(NamedTuple):
    types: tuple[type, ...]  # what isinstance accepts (a bool is never an int)
    required: bool
    rule: FieldRule | None
    # An object field's own fields (its TypedDict's), checked in turn; any other field is refused.
    shape: dict[str, ClientField] | None = None


def _type_names(message: type) -> tuple[str, ...]:
    """The `type` values a message definition stands for."""
    return get_args(get_type_hints(message)["type"])


def _members(hint: object) -> tuple[object, ...]:
    """The types a hint allows: a union's members, or the hint itself."""
    if get_origin(hint) in (Union, UnionType):
        return tuple(t for arg in get_args(hint) for t in _members(arg))
    return (hint,)


def _runtime_types(hint: object) -> tuple[type, ...]:
    kinds: list[type] = []
    for member in _members(hint):
        # a TypedDict (isinstance cannot take one) or dict[str, Any] -> dict
        kind = dict if is_typeddict(member) else get_origin(member) or member
        assert isinstance(kind, type), hint
        kinds.append(kind)
    return tuple(kinds)


def _client_fields(message: type, skip: tuple[str, ...] = ("type", "id")) -> dict[str, ClientField]:
    """A definition's fields but `skip` (of a message: its name, and the request id, checked on its own)."""
    fields: dict[str, ClientField] = {}
    for name, hint in get_type_hints(message, include_extras=True).items():
        if name in skip:
            continue
        required = get_origin(hint) is not NotRequired
        if not required:
            (hint,) = get_args(hint)
        rule = None
        if get_origin(hint) is Annotated:
            hint, rule = get_args(hint)
        objects = [cast(type, t) for t in _members(hint) if is_typeddict(t)]
        shape = _client_fields(objects[0], skip=()) if objects else None
        fields[name] = ClientField(_runtime_types(hint), required, rule, shape)
    return fields


# Client -> server message types and their fields, in order: name -> field -> ClientField.
CLIENT_MESSAGES: dict[str, dict[str, ClientField]] = {
    name: _client_fields(message) for message in get_args(ClientMessage) for name in _type_names(message)
}
SERVER_MESSAGES = frozenset(name for message in get_args(ServerMessage) for name in _type_names(message))
REPLIES = frozenset(name for message in get_args(Reply) for name in _type_names(message))
_SESSION_MESSAGES = frozenset(name for message in get_args(SessionMessage) for name in _type_names(message))


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


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Decode and check one client frame; raise ProtocolError naming what is wrong.

    Returns the message with its optional booleans filled in with their defaults (False). A message's
    fields that its definition does not name are ignored (and never relayed); inside an object that is
    relayed whole (a `candidate`), they are refused.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        message = decode_json(raw)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED, "message is not JSON") from None
    return check_client_message(message, fill_defaults=True)


def check_client_message(message: object, *, fill_defaults: bool = False) -> ClientMessage:
    """Check a decoded client message against its definition (CLIENT_MESSAGES, made from the
    TypedDicts above); raise ProtocolError naming what is wrong, or return it, typed. With
    `fill_defaults`, optional booleans left out are set to False."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(ErrorCode.MALFORMED, 'message must be an object with a string "type"')
    kind: str = message["type"]
    request_id = message.get("id")
    if request_id is not None and not is_valid_request_id(request_id):
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f'"id" must be a string of at most {MAX_REQUEST_ID_LENGTH} characters or an integer',
        )
    fields = CLIENT_MESSAGES.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    _check_fields(kind, fields, message)
    if fill_defaults:
        for name, field in fields.items():
            if name not in message and field.types == (bool,):
                message[name] = False
    return cast(ClientMessage, message)


def _check_fields(kind: str, fields: dict[str, ClientField], data: dict[str, Any], prefix: str = "") -> None:
    """Check `data` (a message of type `kind`, or an object inside one, named `prefix`) against its
    fields; an object inside is checked the same way, and may hold no field of its own."""
    for name, field in fields.items():
        where = prefix + name
        if name not in data:
            if field.required:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind}: missing field {where!r}")
            continue
        value = data[name]
        if not isinstance(value, field.types) or (bool not in field.types and isinstance(value, bool)):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind}: field {where!r} has the wrong type")
        if field.shape is not None and isinstance(value, dict):
            unknown = sorted(key for key in value if key not in field.shape)
            if unknown:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"{kind}: field {where!r} has an unknown field {unknown[0][:40]!r}"
                )
            _check_fields(kind, field.shape, value, f"{where}.")
        rule = field.rule
        if rule is None:
            continue
        if rule.valid_id and not is_valid_id(value):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind}: field {where!r} is not a valid id")
        if rule.max_length is not None and isinstance(value, str) and len(value) > rule.max_length:
            raise ProtocolError(rule.too_long, f"{where} too long")
        if isinstance(value, int) and not (
            (rule.min_value is None or value >= rule.min_value)
            and (rule.max_value is None or value <= rule.max_value)
        ):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind}: field {where!r} is out of range")


def claims_other_sender(message: Mapping[str, object], uid: str) -> str | None:
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


def server_message(data: object) -> ServerMessage | None:
    """`data` (a decoded frame from the server) as the server's message, if it is one: an object with a
    `type` this protocol names. The server is trusted for the rest of its fields."""
    if isinstance(data, dict) and data.get("type") in SERVER_MESSAGES:
        return cast(ServerMessage, data)
    return None


def is_session_message(message: ServerMessage) -> TypeGuard[SessionMessage]:
    """Whether `message` is about a session the client is in (it carries that session's id)."""
    return message["type"] in _SESSION_MESSAGES


def error_body(code: ErrorCode | str, message: str, *, retry_after: int | None = None) -> ErrorBody:
    error: ErrorJson = {"code": str(code), "message": message}
    if retry_after is not None:
        error["retryAfterSeconds"] = retry_after
    return {"error": error}
