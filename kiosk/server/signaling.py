"""The signaling WebSocket, GET /v1/ws (docs/protocol.md, "WebSocket signaling")."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from kiosk.protocol import (
    MAX_AUTH_TOKEN_LENGTH,
    MAX_MESSAGE_BYTES,
    AuthRequest,
    ClientMessage,
    ErrorCode,
    OkReply,
    ProtocolError,
    Reply,
    RequestId,
    claims_other_sender,
    is_plausible_secret,
    parse_client_message,
    request_id_of,
)
from kiosk.server import limits
from kiosk.server.connections import Connection
from kiosk.server.context import CONTEXT, ServerContext
from kiosk.server.tokens import hash_secret

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 10.0  # a dead connection is noticed within 15 s (ping, then 5 s for the pong)
# Frames up to this size are read and refused with PAYLOAD_TOO_LARGE (the limit is 64 KiB); larger
# ones make aiohttp close the connection (1009) instead of buffering arbitrary amounts.
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_BYTES
# How long closing waits for the client's close frame (server shutdown closes every connection).
CLOSE_TIMEOUT_SECONDS = 3.0


def _request_id(raw: str | bytes) -> RequestId | None:
    """The `id` of a frame that failed the checks, if it has a usable one, so the error can echo it."""
    return request_id_of(raw) if isinstance(raw, str) else None


def _reply(message: Reply, request_id: RequestId | None) -> Reply:
    if request_id is not None:
        message["id"] = request_id
    return message


def _error(error: ProtocolError, request_id: RequestId | None) -> Reply:
    return _reply({"type": "error", "error": error.to_json()}, request_id)


async def _handle(ctx: ServerContext, conn: Connection, msg: ClientMessage) -> Reply | None:
    """Act on one checked message; the reply, or None for a plain `ok`."""
    if msg["type"] == "auth":
        return await _auth(ctx, conn, msg)
    user = conn.user
    if user is None:
        raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "send auth first")
    if (field := claims_other_sender(msg, user.uid)) is not None:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{field!r} names another user; act only for yourself")
    sessions = ctx.sessions
    if msg["type"] == "join":
        return await sessions.join(conn.id, user, msg)
    if msg["type"] == "leave":
        await sessions.leave(conn.id, msg["sessionId"])
    elif msg["type"] == "end":
        await sessions.end_from(conn.id, user, msg["sessionId"])
    elif msg["type"] == "media.state":
        await sessions.media_state(conn.id, user, msg)
    elif msg["type"] == "switch.video":
        await sessions.switch_video(conn.id, user, msg["sessionId"])
    elif msg["type"] == "sfu.lost":
        await sessions.sfu_lost(conn.id, msg["sessionId"], msg["room"])
    elif msg["type"] == "recording":
        await sessions.recording(conn.id, user, msg["sessionId"], msg["recording"])
    elif msg["type"] == "ping":
        return {"type": "pong"}
    elif msg["type"] == "door.open":
        await ctx.doors.open(conn.id, user, msg)
    elif msg["type"] == "door.result":
        await ctx.doors.result(conn.id, user, msg)
    else:  # offer, answer, candidate
        await sessions.relay(conn.id, user, msg)
    return None


async def _auth(ctx: ServerContext, conn: Connection, msg: AuthRequest) -> OkReply:
    if conn.user is not None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection is already authenticated")
    guard = limits.guard_of(conn.ws)
    guard.server.auth.refuse_if_blocked(guard.address)
    token = msg["authToken"]
    user = None
    if is_plausible_secret(token, MAX_AUTH_TOKEN_LENGTH):
        user = await ctx.storage.user_for_auth_token(hash_secret(token))
    if user is None:
        guard.server.auth.failed(guard.address)
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown auth token")
    conn.user = user
    conn.token_hash = hash_secret(token)
    conn.authenticated.set()
    await ctx.state.add_connection(user.uid, conn.id)
    log.info("connection %s is %s", conn.id, user.uid)
    return {"type": "ok", "user": user.to_json(), "canOpenDoors": await ctx.storage.door_permission(user.uid)}


async def _over_rate(
    conn: Connection, guard: limits.ConnectionGuard, raw: str | bytes, verdict: limits.Verdict
) -> None:
    """A frame over the connection's message rate: refused unread, or the connection closed (1008)."""
    size = len(raw)
    if verdict is limits.Verdict.REFUSE:
        error = ProtocolError(
            ErrorCode.RATE_LIMITED,
            "too many messages; slow down",
            retry_after=guard.messages.retry_after(size),
        )
        conn.send(_error(error, _request_id(raw)))
        return
    log.warning("closing connection %s from %s: message rate limit exceeded", conn.id, guard.address)
    await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"message rate limit exceeded")


async def handle_frame(ctx: ServerContext, conn: Connection, raw: str | bytes) -> None:
    """One client frame in, one reply out (`ok`, `error`, `joined` or `pong`); never raises.

    A frame over the connection's rate limit gets RATE_LIMITED instead (or, on sustained abuse, the
    connection is closed); a binary frame is MALFORMED."""
    request_id: RequestId | None = None
    guard = limits.guard_of(conn.ws)
    verdict = guard.messages.check(len(raw.encode()) if isinstance(raw, str) else len(raw))
    if verdict is not limits.Verdict.ALLOW:
        await _over_rate(conn, guard, raw, verdict)
        return
    try:
        if isinstance(raw, bytes):
            raise ProtocolError(ErrorCode.MALFORMED, "frames must be JSON text")
        try:
            msg = parse_client_message(raw.encode())  # bytes, so the 64 KiB limit counts bytes
        except ProtocolError:
            request_id = _request_id(raw)
            raise
        request_id = msg.get("id")
        reply = await _handle(ctx, conn, msg)
        conn.send(_reply(reply or {"type": "ok"}, request_id))
    except ProtocolError as exc:
        conn.send(_error(exc, request_id))
    except Exception:
        log.exception("unexpected error handling a message from %s", conn.user.uid if conn.user else conn.id)
        conn.send(_error(ProtocolError(ErrorCode.INTERNAL, "internal error"), request_id))


async def _disconnected(ctx: ServerContext, conn: Connection) -> None:
    ctx.hub.discard(conn)
    if conn.user is not None:
        await ctx.sessions.disconnected(conn.id)
        await ctx.state.remove_connection(conn.user.uid, conn.id)
        log.info("connection %s (%s) closed", conn.id, conn.user.uid)
    await conn.finish()


class _AddressSlot:
    """A WebSocket's place among its address's unauthenticated ones, given back once."""

    def __init__(self, server: limits.ServerLimits, address: str) -> None:
        server.admit_unauthenticated(address)  # 429 before the upgrade if this address holds too many
        self._server: limits.ServerLimits | None = server
        self.address = address

    def release(self) -> None:
        if self._server is not None:
            self._server.release_unauthenticated(self.address)
            self._server = None


async def _auth_deadline(conn: Connection, slot: _AddressSlot, seconds: float) -> None:
    """Until the connection authenticates it counts against its address; past the deadline it is
    closed, so a connection that never says who it is does not hold a socket for ever."""
    try:
        await asyncio.wait_for(conn.authenticated.wait(), seconds)
    except TimeoutError:
        log.info("closing connection %s from %s: no auth within %.0f s", conn.id, slot.address, seconds)
        await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"auth timeout")
    slot.release()


@routes.get("/v1/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    ctx = request.app[CONTEXT]
    server = request.app[limits.LIMITS]
    slot = _AddressSlot(server, limits.client_address(request))
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_FRAME_BYTES, timeout=CLOSE_TIMEOUT_SECONDS
    )
    try:
        await ws.prepare(request)
    except BaseException:
        slot.release()
        raise
    conn = Connection(ws, request.transport)
    conn.start()
    ctx.hub.add(conn)
    deadline = asyncio.create_task(
        _auth_deadline(conn, slot, server.limits.ws_auth_seconds), name=f"auth-deadline-{conn.id}"
    )
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                await handle_frame(ctx, conn, frame.data)
            elif frame.type == WSMsgType.BINARY:
                await handle_frame(ctx, conn, frame.data)  # counted, then refused as MALFORMED
            elif frame.type == WSMsgType.ERROR:
                log.info("connection %s: %r", conn.id, ws.exception())
                break
    finally:
        deadline.cancel()
        slot.release()
        # Shielded: when the server shuts down this handler is cancelled, but the sessions it was in
        # must still be left (and the other side told) before the connection is forgotten.
        await asyncio.shield(_disconnected(ctx, conn))
    return ws
