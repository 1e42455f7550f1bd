"""Every REST refusal as `{"error": {"code", "message"}}`, and no stack trace ever reaches a client."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from kiosk.protocol import HTTP_STATUS, ErrorCode, ProtocolError, error_body

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499

# aiohttp's own refusals (unknown route, body too large, not a WebSocket upgrade...) in protocol terms.
_CODE_FOR_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.NOT_FOUND,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


def error_response(
    code: ErrorCode | str, message: str, status: int | None = None, *, retry_after: int | None = None
) -> web.Response:
    if status is None:
        status = HTTP_STATUS.get(ErrorCode(code), 400) if code in ErrorCode.__members__ else 400
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        error_body(code, message, retry_after=retry_after), status=status, headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        return error_response(exc.code, exc.message, exc.http_status, retry_after=exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODE_FOR_STATUS.get(
            exc.status, ErrorCode.INTERNAL if exc.status >= 500 else ErrorCode.BAD_REQUEST
        )
        status = exc.status
        if status in (404, 405):
            # A path that exists for another method is still "no such route" for this request.
            status, message = 404, f"no route {request.method} {request.path}"
        elif status == 413:
            message = "request body over 64 KiB"
        else:
            message = exc.reason
        return error_response(code, message, status)
    except asyncio.CancelledError:
        raise
    except ConnectionError as exc:
        # The client reset or closed its connection before its request was read or answered: an
        # ordinary disconnect, not a server error. 499 (nginx's "client closed request") is only
        # for the access log; nobody is there to read it.
        log.debug("client went away during %s %s: %r", request.method, request.path, exc)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(ErrorCode.INTERNAL, "internal error", 500)
