"""The SDK's two channels to the call server: REST requests and the signaling WebSocket.

Both follow docs/protocol.md. A refusal from the server becomes a `CallsError` with the protocol's
error code; a server that cannot be reached becomes a `ConnectionFailedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any, overload

import aiohttp

from kiosk.calls.errors import CallsError, ConnectionFailedError
from kiosk.calls.ports import Accepted
from kiosk.protocol import (
    MAX_MESSAGE_BYTES,
    REPLIES,
    AuthRequest,
    ClientMessage,
    JoinedReply,
    JoinRequest,
    OkReply,
    PingRequest,
    PongReply,
    ServerMessage,
    UserJson,
    decode_json,
    server_message,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 15.0
CONNECT_TIMEOUT = 3.0


def _error_from(body: object, status: int) -> CallsError:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return CallsError(str(err.get("code", "UNKNOWN")), str(err.get("message", "")))
    return CallsError("HTTP_" + str(status), f"server answered {status}")


class RestClient:
    """JSON requests under the server's /v1."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def request(
        self,
        method: str,
        path: str,
        *,
        auth_token: str | None = None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        url = f"{self.base_url}/v1{path}"
        try:
            async with self.http.request(
                method,
                url,
                json=body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                if response.status >= 400:
                    raise _error_from(data, response.status)
                if not isinstance(data, dict):
                    raise CallsError("BAD_RESPONSE", f"{method} {path}: server sent no JSON object")
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailedError(
                f"cannot reach the call server at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc

    async def put_image(self, path: str, jpeg: bytes, *, auth_token: str) -> None:
        """PUT a JPEG (a ringing caller's still)."""
        await self._binary("PUT", path, auth_token, jpeg)

    async def get_image(self, path: str, *, auth_token: str) -> bytes | None:
        """GET a JPEG; None when the server has none (404)."""
        return await self._binary("GET", path, auth_token, None)

    async def _binary(self, method: str, path: str, auth_token: str, body: bytes | None) -> bytes | None:
        headers = {"Authorization": f"Bearer {auth_token}"}
        if body is not None:
            headers["Content-Type"] = "image/jpeg"
        try:
            async with self.http.request(
                method,
                f"{self.base_url}/v1{path}",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                data = await response.read()
                if response.status == 404 and method == "GET":
                    return None
                if response.status >= 400:
                    try:
                        error = decode_json(data)
                    except ValueError:
                        error = None
                    raise _error_from(error, response.status)
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailedError(
                f"cannot reach the call server at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc


class SignalingClient:
    """One WebSocket to the server: requests with replies, and pushed messages to `on_message`."""

    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        on_message: Callable[[ServerMessage], None],
        on_closed: Callable[[], None],
    ) -> None:
        self.url = ""
        self.set_server(base_url)
        self.http = http
        self._on_message = on_message
        self._on_closed = on_closed
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Accepted]] = {}
        self._ids = itertools.count(1)
        self.user: UserJson | None = None
        self.can_open_doors = False  # as the server said at sign-in (`auth`'s reply)

    def set_server(self, base_url: str) -> None:
        """The server the next `connect` goes to (another address of the same service)."""
        scheme, rest = base_url.rstrip("/").split("://", 1)
        self.url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/ws"

    generation = 0  # counts connections made: tells "this connection" from a newer one

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self.user is not None

    async def connect(self, auth_token: str) -> UserJson:
        try:
            # Bounded: a connect sent while the network is down waits on TCP's SYN retries (1, 3, 7 s
            # apart); a fresh attempt after the network is back gets through sooner.
            self._ws = await asyncio.wait_for(
                self.http.ws_connect(self.url, heartbeat=20, max_msg_size=MAX_MESSAGE_BYTES), CONNECT_TIMEOUT
            )
        except TimeoutError as exc:
            raise ConnectionFailedError(
                f"cannot open signaling to {self.url}: no answer within {CONNECT_TIMEOUT:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailedError(
                f"cannot open signaling to {self.url}: {str(exc) or type(exc).__name__}"
            ) from exc
        self.generation += 1
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws), name="signaling-reader")
        reply = await self.request({"type": "auth", "authToken": auth_token})
        user = self.user = reply["user"]
        self.can_open_doors = bool(reply.get("canOpenDoors"))
        return user

    @overload
    async def request(self, message: JoinRequest, *, timeout: float = ...) -> JoinedReply: ...

    @overload
    async def request(self, message: PingRequest, *, timeout: float = ...) -> PongReply: ...

    @overload
    async def request(self, message: AuthRequest, *, timeout: float = ...) -> OkReply: ...

    @overload
    async def request(self, message: ClientMessage, *, timeout: float = ...) -> Accepted: ...

    async def request(self, message: ClientMessage, *, timeout: float = REQUEST_TIMEOUT) -> Accepted:
        """Send a message and wait for its `ok` (or `joined`, `pong`) reply; raise CallsError on `error`."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionFailedError("not connected to the call server")
        request_id = next(self._ids)
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await ws.send_str(json.dumps({"type": message["type"], "id": request_id, **message}))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ConnectionFailedError(f"no reply to {message['type']} within {timeout:g} s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ConnectionFailedError(f"signaling connection lost: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = server_message(json.loads(msg.data))
                except ValueError:
                    log.warning("server sent a frame that is not JSON")
                    continue
                if data is None:
                    continue  # not a message of this protocol
                request_id = data.get("id")
                future = self._pending.get(request_id) if isinstance(request_id, int) else None
                if future is not None and data["type"] in REPLIES:
                    if future.done():
                        continue
                    if data["type"] == "error":
                        future.set_exception(_error_from(data, 0))
                    elif data["type"] == "ok" or data["type"] == "joined" or data["type"] == "pong":
                        future.set_result(data)
                    continue
                try:
                    self._on_message(data)
                except Exception:
                    log.exception("handling %s failed", data["type"])
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionFailedError("signaling connection closed"))
            was_ours = ws is self._ws
            if was_ours:
                self.user = None
                self._on_closed()

    def drop(self) -> None:
        """Give the connection up now, as if it had closed (`on_closed` runs), without waiting for
        a close handshake a dead network would never answer."""
        ws, reader = self._ws, self._reader
        if ws is None or reader is None or reader.done():
            return
        reader.cancel()  # its cleanup reports the close

        async def close_quietly() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)

        asyncio.get_running_loop().create_task(close_quietly())

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        self.user = None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
