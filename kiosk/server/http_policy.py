"""What every HTTP answer of the server carries or leaves out: cross-origin rules (an allow-list of
origins, docs/protocol.md "Cross-origin requests"), the browser client's security headers, and an
access log that never writes a query string or a Referer's (a sign-in link's token was one)."""

from __future__ import annotations

import logging
from collections.abc import Collection

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

from kiosk.protocol import ErrorCode
from kiosk.server.errors import error_response
from kiosk.urls import normalise_origin

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, POST, DELETE"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE = "600"
WEBSOCKET_PATH = "/v1/ws"

# The browser client (kiosk/web): its own scripts and styles only, nothing inline, never framed.
# Connections: its own server (REST, WebSocket) and Janus's HTTP API, which may be on another host.
# Avatars are any image URL a user was given.
WEB_CLIENT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss: http: https:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _origin_of(request: web.BaseRequest) -> str | None:
    """This server's own origin as the browser sees it (scheme and Host header)."""
    try:
        return normalise_origin(f"{request.scheme}://{request.host}")
    except ValueError:
        return None


def _normalised(origin: str) -> str | None:
    try:
        return normalise_origin(origin)
    except ValueError:
        return None


def cors_middleware(allowed: Collection[str]) -> Middleware:
    """Same origin by default; `allowed` origins may call the REST API (preflights answered,
    Access-Control-Allow-Origin set to that origin) and open the WebSocket. A WebSocket upgrade from
    a page of any other site is refused (403), so a page elsewhere cannot use a signed-in browser's
    connection (cross-site WebSocket hijacking)."""
    allowed = frozenset(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Origin")
        if header is None:
            return await handler(request)  # not a browser's cross-origin request (or same-origin GET)
        origin = _normalised(header)
        listed = origin is not None and origin in allowed
        same = origin is not None and origin == _origin_of(request)
        if request.path == WEBSOCKET_PATH and not (same or listed):
            log.info("refusing a WebSocket from a page of %r", header[:100])
            return error_response(ErrorCode.FORBIDDEN, "this origin may not open the WebSocket", 403)
        if listed and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=_cors_headers(header, preflight=True))
        response = await handler(request)
        if listed and not response.prepared:
            response.headers.update(_cors_headers(header, preflight=False))
        return response

    return middleware


def _cors_headers(origin: str, *, preflight: bool) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            }
        )
    return headers


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: no answer gives a Referer to anyone (a page's address may hold a
    token); the browser client's pages also get their CSP and may not be framed."""
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path == "/app" or request.path.startswith("/app/"):
        response.headers.setdefault("Content-Security-Policy", WEB_CLIENT_CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")


def without_query(target: str) -> str:
    """A path or URL with its query string and fragment cut off ("?…" marks that there was one)."""
    for mark in ("?", "#"):
        head, found, _ = target.partition(mark)
        if found:
            return head + "?…"
    return target


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line without query strings, in the request line and in the Referer:
    a sign-in link's token, or anything else a client put in a URL, is never written."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        referer = request.headers.get("Referer")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d "%s" "%s" %.3fs',
            request.remote or "-",
            request.method,
            without_query(request.path_qs),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            without_query(referer) if referer else "-",
            request.headers.get("User-Agent", "-"),
            time,
        )
