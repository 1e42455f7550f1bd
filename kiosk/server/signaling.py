"""The signaling WebSocket, GET /v1/ws (docs/protocol.md, "WebSocket signaling")."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from kiosk.protocol import MAX_MESSAGE_BYTES, ErrorCode, ProtocolError, error_body, parse_client_message
from kiosk.server.connections import Connection
from kiosk.server.context import CONTEXT, ServerContext
from kiosk.server.models import User
from kiosk.server.tokens import hash_secret

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 20.0
# Frames up to this size are read and refused with PAYLOAD_TOO_LARGE (the limit is 64 KiB); larger
# ones make aiohttp close the connection (1009) instead of buffering arbitrary amounts.
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_BYTES
# How long closing waits for the client's close frame (server shutdown closes every connection).
CLOSE_TIMEOUT_SECONDS = 3.0

Handler = Callable[[ServerContext, Connection, User, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def _request_id(raw: str) -> str | int | None:
    """The `id` of a frame that failed the checks, if it has a usable one, so the error can echo it."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def _reply(message: dict[str, Any], request_id: str | int | None) -> dict[str, Any]:
    return message if request_id is None else {**message, "id": request_id}


def _error(error: ProtocolError, request_id: str | int | None) -> dict[str, Any]:
    return _reply({"type": "error", **error_body(error.code, error.message)}, request_id)


async def _join(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> dict[str, Any]:
    return await ctx.sessions.join(conn.id, user, msg)


async def _leave(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.leave(conn.id, msg["sessionId"])


async def _end(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.end_from(conn.id, user, msg["sessionId"])


async def _relay(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.relay(conn.id, user, msg)


async def _media_state(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.media_state(conn.id, user, msg)


async def _switch_video(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.switch_video(conn.id, user, msg["sessionId"])


async def _recording(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> None:
    await ctx.sessions.recording(conn.id, user, msg["sessionId"], msg["recording"])


async def _ping(ctx: ServerContext, conn: Connection, user: User, msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "pong"}


# Handlers for authenticated connections; None from a handler means a plain `ok`.
_HANDLERS: dict[str, Handler] = {
    "join": _join,
    "leave": _leave,
    "end": _end,
    "offer": _relay,
    "answer": _relay,
    "candidate": _relay,
    "media.state": _media_state,
    "switch.video": _switch_video,
    "recording": _recording,
    "ping": _ping,
}


async def _auth(ctx: ServerContext, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    if conn.user is not None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection is already authenticated")
    user = await ctx.storage.user_for_auth_token(hash_secret(msg["authToken"]))
    if user is None:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown auth token")
    conn.user = user
    await ctx.state.add_connection(user.uid, conn.id)
    log.info("connection %s is %s", conn.id, user.uid)
    return {"type": "ok", "user": user.to_json()}


async def handle_frame(ctx: ServerContext, conn: Connection, raw: str) -> None:
    """One client frame in, one reply out (`ok`, `error`, `joined` or `pong`); never raises."""
    request_id: str | int | None = None
    try:
        try:
            msg = parse_client_message(raw.encode())  # bytes, so the 64 KiB limit counts bytes
        except ProtocolError:
            request_id = _request_id(raw)
            raise
        request_id = msg.get("id")
        if msg["type"] == "auth":
            reply: dict[str, Any] | None = await _auth(ctx, conn, msg)
        elif conn.user is None:
            raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "send auth first")
        else:
            reply = await _HANDLERS[msg["type"]](ctx, conn, conn.user, msg)
        conn.send(_reply(reply or {"type": "ok"}, request_id))
    except ProtocolError as exc:
        conn.send(_error(exc, request_id))
    except Exception:
        log.exception("unexpected error handling a message from %s", conn.user.uid if conn.user else conn.id)
        conn.send(_error(ProtocolError(ErrorCode.INTERNAL, "internal error"), request_id))


async def _disconnected(ctx: ServerContext, conn: Connection) -> None:
    ctx.hub.discard(conn)
    if conn.user is not None:
        await ctx.sessions.leave_all(conn.id)
        await ctx.state.remove_connection(conn.user.uid, conn.id)
        log.info("connection %s (%s) closed", conn.id, conn.user.uid)
    await conn.finish()


@routes.get("/v1/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    ctx = request.app[CONTEXT]
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_FRAME_BYTES, timeout=CLOSE_TIMEOUT_SECONDS
    )
    await ws.prepare(request)
    conn = Connection(ws, request.transport)
    conn.start()
    ctx.hub.add(conn)
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                await handle_frame(ctx, conn, frame.data)
            elif frame.type == WSMsgType.BINARY:
                conn.send(_error(ProtocolError(ErrorCode.MALFORMED, "frames must be JSON text"), None))
            elif frame.type == WSMsgType.ERROR:
                log.info("connection %s: %r", conn.id, ws.exception())
                break
    finally:
        # Shielded: when the server shuts down this handler is cancelled, but the sessions it was in
        # must still be left (and the other side told) before the connection is forgotten.
        await asyncio.shield(_disconnected(ctx, conn))
    return ws
