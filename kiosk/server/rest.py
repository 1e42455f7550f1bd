"""REST endpoints under /v1 (docs/protocol.md, "REST")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kiosk.protocol import (
    FINAL_CALL_STATUSES,
    MAX_AUTH_TOKEN_LENGTH,
    MAX_AVATAR_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_PICTURE_BYTES,
    CallJson,
    CallStatus,
    CallType,
    DoorOpeningJson,
    ErrorCode,
    ProtocolError,
    SessionType,
    is_plausible_secret,
)
from kiosk.server.context import CONTEXT, ServerContext
from kiosk.server.limits import LIMITS, FailedAuthLimiter, client_address
from kiosk.server.models import User
from kiosk.server.ringing import CallLogQuery
from kiosk.server.storage import Storage, UserExistsError
from kiosk.server.tokens import hash_secret, new_secret
from kiosk.server.turn import ice_servers_for
from kiosk.server.validation import (
    bad_request,
    optional_text,
    query_bool,
    query_int,
    read_json_object,
    require_choice,
    require_id,
    require_text,
)

routes = web.RouteTableDef()

_REJECT_STATUSES = (CallStatus.REJECTED, CallStatus.BUSY, CallStatus.CANCELLED)


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CONTEXT]


def _auth_failures(request: web.Request) -> FailedAuthLimiter:
    """Failed attempts per address; an address over the limit is refused (429) before any check."""
    failures = request.app[LIMITS].auth
    failures.refuse_if_blocked(client_address(request))
    return failures


async def _user(request: web.Request) -> User:
    """The user whose auth token is in `Authorization: Bearer ...`; 401 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing Authorization: Bearer <authToken>")
    failures = _auth_failures(request)
    user = None
    if is_plausible_secret(token, MAX_AUTH_TOKEN_LENGTH):
        user = await _ctx(request).storage.user_for_auth_token(hash_secret(token))
    if user is None:
        failures.failed(client_address(request))
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown auth token")
    return user


def _require_admin(request: web.Request) -> None:
    presented = request.headers.get("X-Admin-Key")
    if not presented:
        raise ProtocolError(ErrorCode.FORBIDDEN, "missing or wrong X-Admin-Key")
    failures = _auth_failures(request)
    if not _ctx(request).admin.checker.matches(presented):
        failures.failed(client_address(request))
        raise ProtocolError(ErrorCode.FORBIDDEN, "missing or wrong X-Admin-Key")


def _session_id(request: web.Request) -> str:
    return require_id(dict(request.match_info), "sessionId")


@routes.post("/v1/users")
async def create_user(request: web.Request) -> web.Response:
    _require_admin(request)
    body = await read_json_object(request)
    user = User(
        uid=require_id(body, "uid"),
        name=require_text(body, "name", MAX_NAME_LENGTH),
        avatar=optional_text(body, "avatar", MAX_AVATAR_LENGTH),
    )
    token = new_secret()
    try:
        await _ctx(request).storage.create_user(user, hash_secret(token))
    except UserExistsError:
        raise ProtocolError(ErrorCode.USER_EXISTS, f"user {user.uid} already exists") from None
    return web.json_response({**user.to_json(), "authToken": token}, status=201)


@routes.get("/v1/users")
async def list_users(request: web.Request) -> web.Response:
    await _user(request)
    ctx = _ctx(request)
    online = await ctx.state.online_uids()
    users = await ctx.storage.list_users()
    listed: list[dict[str, object]] = [{**u.to_json(), "online": u.uid in online} for u in users]
    # Ring groups are called like users: online while any member is.
    for group, members in await ctx.storage.list_groups():
        listed.append({**group.to_json(), "online": any(m in online for m in members), "group": True})
    listed.sort(key=lambda entry: str(entry["uid"]))
    return web.json_response({"users": listed})


def _uid(request: web.Request) -> str:
    return require_id(dict(request.match_info), "uid")


async def _revoke(request: web.Request, revoke: Callable[[Storage, str], Awaitable[bool]]) -> str:
    """An admin's revocation of the user in the path: 404 for an unknown one; its open connections
    are closed at once (1008). Returns the uid."""
    _require_admin(request)
    ctx = _ctx(request)
    uid = _uid(request)
    if not await revoke(ctx.storage, uid):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user {uid}")
    await ctx.revocations.check()
    return uid


@routes.delete("/v1/users/{uid}")
async def remove_user(request: web.Request) -> web.Response:
    """Remove a user: its tokens stop working and its open connections close at once (1008)."""
    await _revoke(request, lambda storage, uid: storage.remove_user(uid))
    return web.Response(status=204)


@routes.post("/v1/users/{uid}/token")
async def replace_token(request: web.Request) -> web.Response:
    """A new auth token for the user; every token it had before stops working at once."""
    token = new_secret()
    uid = await _revoke(request, lambda storage, uid: storage.revoke_tokens(uid, hash_secret(token)))
    return web.json_response({"uid": uid, "authToken": token})


@routes.delete("/v1/users/{uid}/tokens")
async def revoke_tokens(request: web.Request) -> web.Response:
    """Revoke every auth token of the user (it can sign in again only with a new one)."""
    await _revoke(request, lambda storage, uid: storage.revoke_tokens(uid))
    return web.Response(status=204)


@routes.put("/v1/users/{uid}/permissions")
async def set_permissions(request: web.Request) -> web.Response:
    """What the user may do beyond calling: `openDoors` (ask a door kiosk in its call to open)."""
    _require_admin(request)
    uid = _uid(request)
    body = await read_json_object(request)
    allowed = body.get("openDoors")
    if not isinstance(allowed, bool):
        raise bad_request("'openDoors' must be true or false")
    if not await _ctx(request).storage.set_door_permission(uid, allowed):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user {uid}")
    return web.json_response({"uid": uid, "openDoors": allowed})


@routes.post("/v1/groups")
async def create_group(request: web.Request) -> web.Response:
    """A ring group: called like a user, it rings every member; the first to answer takes the call."""
    _require_admin(request)
    body = await read_json_object(request)
    group = User(
        uid=require_id(body, "uid"),
        name=require_text(body, "name", MAX_NAME_LENGTH),
        avatar=optional_text(body, "avatar", MAX_AVATAR_LENGTH),
    )
    try:
        await _ctx(request).storage.create_group(group)
    except UserExistsError:
        raise ProtocolError(ErrorCode.USER_EXISTS, f"{group.uid} already exists") from None
    return web.json_response({**group.to_json(), "members": []}, status=201)


@routes.get("/v1/groups")
async def list_groups(request: web.Request) -> web.Response:
    await _user(request)
    groups = await _ctx(request).storage.list_groups()
    return web.json_response({"groups": [{**g.to_json(), "members": members} for g, members in groups]})


def _member(request: web.Request) -> tuple[str, str]:
    info = dict(request.match_info)
    return require_id(info, "uid"), require_id(info, "member")


@routes.put("/v1/groups/{uid}/members/{member}")
async def add_group_member(request: web.Request) -> web.Response:
    _require_admin(request)
    group, member = _member(request)
    if not await _ctx(request).storage.set_group_member(group, member, True):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {group} or no user {member}")
    return web.Response(status=204)


@routes.delete("/v1/groups/{uid}/members/{member}")
async def remove_group_member(request: web.Request) -> web.Response:
    _require_admin(request)
    group, member = _member(request)
    if not await _ctx(request).storage.set_group_member(group, member, False):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {group} or no user {member}")
    return web.Response(status=204)


@routes.get("/v1/me")
async def me(request: web.Request) -> web.Response:
    return web.json_response((await _user(request)).to_json())


@routes.post("/v1/calls/token")
async def call_token(request: web.Request) -> web.Response:
    user = await _user(request)
    body = await read_json_object(request)
    ctx = _ctx(request)
    session_id = require_id(body, "sessionId")
    call = await ctx.storage.get_call(session_id)
    if call is not None and not call.is_party(user.uid):
        # A rung call's session belongs to its two parties (of a ring group's call, the caller and
        # the member who answered); nobody else may listen in.
        raise ProtocolError(ErrorCode.FORBIDDEN, "this session belongs to a call between two other users")
    if call is not None and call.status in FINAL_CALL_STATUSES:
        raise ProtocolError(ErrorCode.INVALID_STATE, f"call {session_id} is over ({call.status})")
    issued = ctx.tokens.issue(user.uid, session_id)
    return web.json_response(
        {
            "token": issued.token,
            "sessionId": issued.session_id,
            "uid": issued.uid,
            "expiresAt": issued.expires_at,
            "iceServers": ice_servers_for(ctx.config, user.uid),
        }
    )


@routes.get("/v1/sessions/{sessionId}/participants")
async def participants(request: web.Request) -> web.Response:
    await _user(request)
    session_id = _session_id(request)
    session_type = require_choice(request.query.get("type"), SessionType, "type")
    session = await _ctx(request).state.get_session(session_id)
    count = len(session.participants) if session is not None and session.type == session_type else 0
    return web.json_response({"sessionId": session_id, "type": str(session_type), "count": count})


@routes.post("/v1/calls")
async def create_call(request: web.Request) -> web.Response:
    user = await _user(request)
    body = await read_json_object(request)
    receiver_uid = require_id(body, "receiverUid")
    call_type = require_choice(body.get("callType"), CallType, "callType")
    call = await _ctx(request).ringing.create(user, receiver_uid, call_type)
    return web.json_response(call.to_json(), status=201)


@routes.get("/v1/calls")
async def call_log(request: web.Request) -> web.Response:
    user = await _user(request)
    q = request.query
    direction = q.get("direction")
    if direction not in (None, "incoming", "outgoing"):
        raise bad_request("'direction' must be incoming or outgoing")
    query = CallLogQuery(
        type=require_choice(q["type"], CallType, "type") if "type" in q else None,
        status=require_choice(q["status"], CallStatus, "status") if "status" in q else None,
        direction=direction,  # type: ignore[arg-type]  # checked just above
        has_recording=query_bool(request, "hasRecording"),
        page=query_int(request, "page", 1, 1, MAX_PAGE),
        per_page=query_int(request, "perPage", 20, 1, 100),
    )
    ctx = _ctx(request)
    calls, total = await ctx.ringing.call_log(user, query)
    openings = await ctx.storage.door_openings([c.session_id for c in calls])
    return web.json_response(
        {
            "calls": [_with_doors(c.to_json(viewer_uid=user.uid), openings) for c in calls],
            "page": query.page,
            "perPage": query.per_page,
            "total": total,
        }
    )


@routes.get("/v1/calls/{sessionId}")
async def get_call(request: web.Request) -> web.Response:
    user = await _user(request)
    ctx = _ctx(request)
    call = await ctx.ringing.get(user, _session_id(request))
    return web.json_response(_with_doors(call.to_json(), await ctx.storage.door_openings([call.session_id])))


@routes.put("/v1/calls/{sessionId}/picture")
async def put_call_picture(request: web.Request) -> web.Response:
    """While its call rings, the caller's kiosk sends a still of its camera now and then: the callee
    sees who is at the door before answering (no audio, no video call yet), and the last still stays
    with the call (a missed call's picture)."""
    user = await _user(request)
    ctx = _ctx(request)
    session_id = _session_id(request)
    call = await ctx.ringing.get(user, session_id)
    if user.uid != call.initiator.uid:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only the caller sends its picture")
    if call.status != CallStatus.INITIATED:
        raise ProtocolError(ErrorCode.INVALID_STATE, f"call {session_id} is {call.status}, not ringing")
    jpeg = await request.read()
    if len(jpeg) > MAX_PICTURE_BYTES:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"a picture is at most {MAX_PICTURE_BYTES} bytes")
    if not jpeg.startswith(b"\xff\xd8\xff"):
        raise bad_request("the body must be a JPEG image")
    await ctx.storage.set_call_picture(session_id, jpeg)
    return web.Response(status=204)


@routes.get("/v1/calls/{sessionId}/picture")
async def get_call_picture(request: web.Request) -> web.Response:
    user = await _user(request)
    ctx = _ctx(request)
    session_id = _session_id(request)
    await ctx.ringing.get(user, session_id)  # the call's parties, and the members a group's call rang
    found = await ctx.storage.call_picture(session_id)
    if found is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"call {session_id} has no picture")
    jpeg, at = found
    return web.Response(
        body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Picture-At": str(at)}
    )


def _with_doors(call: CallJson, openings: dict[str, list[DoorOpeningJson]]) -> CallJson:
    """A call-log entry with the door releases asked during the call, if any (who asked, which door)."""
    if call["sessionId"] in openings:
        call["doorOpenings"] = openings[call["sessionId"]]
    return call


@routes.post("/v1/calls/{sessionId}/accept")
async def accept_call(request: web.Request) -> web.Response:
    user = await _user(request)
    call = await _ctx(request).ringing.accept(user, _session_id(request))
    return web.json_response(call.to_json())


@routes.post("/v1/calls/{sessionId}/reject")
async def reject_call(request: web.Request) -> web.Response:
    user = await _user(request)
    session_id = _session_id(request)
    body = await read_json_object(request)
    status = body.get("status")
    if not isinstance(status, str) or status not in _REJECT_STATUSES:
        raise bad_request("'status' must be rejected, busy or cancelled")
    call = await _ctx(request).ringing.reject(user, session_id, CallStatus(status))
    return web.json_response(call.to_json())


@routes.post("/v1/calls/{sessionId}/end")
async def end_call(request: web.Request) -> web.Response:
    user = await _user(request)
    call = await _ctx(request).ringing.end(user, _session_id(request))
    return web.json_response(call.to_json())
