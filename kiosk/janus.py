"""A client of Janus's HTTP API (the plain REST transport: `POST /janus`, `POST /janus/<session>[/<handle>]`,
`GET /janus/<session>` for events), shared by the call server (kiosk/server/sfu.py: VideoRoom rooms) and
the Calls SDK (kiosk/calls/sfu.py: publishing and subscribing).

Neutral, as kiosk/protocol.py is: the standard library and aiohttp only, nothing from kiosk.calls or
kiosk.server.

- `JanusSession(api_url)`: one Janus session. `create()` makes it and, unless `long_poll=False`, starts
  a keepalive every 25 s and one long poll for the events of all its handles; `attach(plugin)` gives a
  `JanusHandle`; `destroy()` ends it (and everything attached to it). It is also an async context
  manager (`async with JanusSession(url, long_poll=False) as janus:`).
- `JanusHandle`: a handle attached to a plugin. `request(body)` for a synchronous plugin request (its
  data), `message(body, jsep)` for an asynchronous one (the data and jsep of its event, which the long
  poll brings back, matched by transaction id); `on_event(data, jsep)` for the plugin's own events,
  `on_core_event(event)` for Janus's (webrtcup, media, hangup...); `detach()`.

Errors: `JanusError` when Janus or a plugin refuses a request (`code`: Janus's or the plugin's error
code); its subclass `JanusUnavailable` when Janus cannot be reached, answers with an HTTP error or not
at all in time, or dropped the session. Once a session is lost (`error`), its `on_lost` and its
handles' `on_lost` are called and every later request raises that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_SECONDS = 25.0  # Janus drops a session after 60 s without a request (its session_timeout)
REQUEST_TIMEOUT = 5.0  # one HTTP request to Janus
EVENT_TIMEOUT = 10.0  # a plugin's asynchronous reply (joined, configured, attached, started)
DESTROY_TIMEOUT = 2.0  # leaving: destroy and detach do not wait long for a Janus that may be gone
POLL_TIMEOUT = 45.0  # Janus answers a quiet long poll after 30 s
POLL_MAX_EVENTS = 10
POLL_RETRY_SECONDS = 0.2  # a failed long poll is tried once more after this; a second failure is Janus gone

# Janus core error codes.
ERROR_NO_SUCH_SESSION = 458  # the Janus session is gone (timed out, destroyed, Janus restarted)
ERROR_NO_SUCH_HANDLE = 459
ERROR_PLUGIN_NOT_FOUND = 460
# The VideoRoom plugin's error codes a caller may want to tell apart.
ERROR_NO_SUCH_ROOM = 426
ERROR_NO_SUCH_FEED = 428
ERROR_UNAUTHORIZED = 433


class JanusError(Exception):
    """Janus or one of its plugins refused a request; `code` is its error code, if it gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class JanusUnavailable(JanusError):
    """Janus cannot be reached, answered with an HTTP error or not in time, or dropped our session."""


def _refusal(what: str, reason: Any, code: Any) -> JanusError:
    number = code if isinstance(code, int) else None
    return JanusError(f"{what}: {reason}" + (f" (error {number})" if number is not None else ""), number)


class JanusSession:
    """A Janus API session over HTTP, with its keepalive and long poll; handles are attached on it.

    `http`: an aiohttp session to share (it is not closed here); without one the session makes its own.
    `long_poll=False`: no long poll and no keepalive, for a short-lived session of synchronous requests
    (an asynchronous one then raises JanusError, as its event would never be read)."""

    def __init__(
        self, api_url: str, *, http: aiohttp.ClientSession | None = None, long_poll: bool = True
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.long_poll = long_poll
        self._http = http
        self._own_http = http is None
        self.id: int | None = None
        self.handles: dict[int, JanusHandle] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.error: JanusUnavailable | None = None  # why the session stopped, if Janus went away
        self.on_lost: Callable[[JanusUnavailable], None] | None = None

    # --------------------------------------------------------------- transport

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _post(
        self, path: str, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """POST one API request (a transaction id added if it has none); Janus's reply, or JanusError
        for a refusal, JanusUnavailable if it could not be had."""
        body = {**body, "transaction": body.get("transaction") or secrets.token_hex(8)}
        try:
            async with self._session().post(
                f"{self.api_url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    raise JanusUnavailable(
                        f"Janus at {self.api_url} answered HTTP {response.status} to {body.get('janus')}"
                    )
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusUnavailable(
                f"Janus at {self.api_url} is unavailable: {str(exc) or type(exc).__name__}"
            ) from exc
        if not isinstance(reply, dict):
            raise JanusUnavailable(f"Janus at {self.api_url} sent a reply that is not a JSON object")
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            if error.get("code") == ERROR_NO_SUCH_SESSION and path and self.id is not None:
                # Janus dropped our session (its timeout after a network loss, or a restart): every
                # handle on it is gone too, which the long poll may take 30 s to tell.
                lost = JanusUnavailable("Janus dropped the session", ERROR_NO_SUCH_SESSION)
                self._lost(lost)
                raise lost
            raise _refusal(f"Janus refused {body.get('janus')}", error.get("reason"), error.get("code"))
        return reply

    # --------------------------------------------------------------- lifecycle

    async def create(self) -> JanusSession:
        """Make the session on Janus (and start its long poll and keepalive)."""
        reply = await self._post("", {"janus": "create"})
        self.id = int(reply["data"]["id"])
        if self.long_poll:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._poll(), name=f"janus-poll-{self.id}"),
                loop.create_task(self._keepalive(), name=f"janus-keepalive-{self.id}"),
            ]
        return self

    async def attach(self, plugin: str = VIDEOROOM) -> JanusHandle:
        """A new handle on `plugin` (JanusError 460 if Janus has no such plugin)."""
        self._check()
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": plugin})
        handle = JanusHandle(self, int(reply["data"]["id"]), plugin)
        self.handles[handle.id] = handle
        return handle

    async def destroy(self) -> None:
        """End the session on Janus (if it still has it) and here; pending requests fail. Never raises
        for Janus being gone."""
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self.id is not None and self.error is None:
            try:
                await self._post(f"/{self.id}", {"janus": "destroy"}, timeout=DESTROY_TIMEOUT)
            except JanusError as exc:
                log.debug("destroying Janus session %s failed: %s", self.id, exc)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending(JanusUnavailable("the Janus session was closed"))
        if self._own_http and self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> JanusSession:
        try:
            return await self.create()
        except BaseException:
            await self.destroy()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.destroy()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed or self.id is None:
            raise JanusUnavailable("the Janus session is closed")

    def _lost(self, error: JanusUnavailable) -> None:
        if self.error is not None or self.closed:
            return
        log.warning("Janus session %s lost: %s", self.id, error)
        self.error = error
        self._fail_pending(error)
        for handle in list(self.handles.values()):
            handle._lost(error)
        if self.on_lost is not None:
            self.on_lost(error)

    def _fail_pending(self, error: JanusError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            try:
                await self._post(f"/{self.id}", {"janus": "keepalive"})
            except JanusError as exc:
                self._lost(exc if isinstance(exc, JanusUnavailable) else JanusUnavailable(str(exc), exc.code))
                return

    async def _poll(self) -> None:
        url = f"{self.api_url}/{self.id}"
        failures = 0
        while True:
            try:
                async with self._session().get(
                    url,
                    params={"maxev": str(POLL_MAX_EVENTS), "rid": str(int(time.time() * 1000))},
                    timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT),
                ) as response:
                    if response.status != 200:
                        raise JanusUnavailable(f"Janus answered HTTP {response.status} to a poll")
                    events = await response.json(content_type=None)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, ValueError, JanusUnavailable) as exc:
                failures += 1
                if failures >= 2:  # one retry: a single dropped connection is not Janus gone
                    self._lost(
                        exc
                        if isinstance(exc, JanusUnavailable)
                        else JanusUnavailable(f"Janus poll failed: {str(exc) or type(exc).__name__}")
                    )
                    return
                await asyncio.sleep(POLL_RETRY_SECONDS)
                continue
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):
                    try:
                        self._dispatch(event)
                    except Exception:  # a callback's bug must not stop the event stream
                        log.exception("handling Janus event %s failed", event.get("janus"))
                    if event.get("janus") == "error":
                        error = event.get("error") or {}
                        if error.get("code") == ERROR_NO_SUCH_SESSION:  # it timed out on Janus
                            self._lost(JanusUnavailable("Janus dropped the session", ERROR_NO_SUCH_SESSION))
                            return

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind in ("keepalive", "ack"):
            return
        transaction = event.get("transaction")
        future = self._pending.pop(transaction, None) if transaction else None
        if future is not None and kind in ("event", "success", "error"):
            if not future.done():
                future.set_result(event)
            return
        handle = self.handles.get(int(event.get("sender") or 0))
        if handle is not None:
            handle._event(event)

    async def _request(self, handle: JanusHandle, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A Janus API request on a handle; an asynchronous one ("ack") waits for its event."""
        self._check()
        transaction = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        what = (body.get("body") or {}).get("request") or body.get("janus")
        try:
            reply = await self._post(f"/{self.id}/{handle.id}", {**body, "transaction": transaction})
            if reply.get("janus") != "ack":
                return reply
            if not self.long_poll:
                raise JanusError(f"{what} is asynchronous: it needs a Janus session with its long poll")
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise JanusUnavailable(f"Janus did not answer {what} in time") from None
        finally:
            self._pending.pop(transaction, None)
            if future.done() and not future.cancelled():
                future.exception()  # failed by _lost while _post itself raised: nobody else reads it


class JanusHandle:
    """A handle attached to a plugin: requests, and the events Janus sends it on its own."""

    def __init__(self, session: JanusSession, handle_id: int, plugin: str = VIDEOROOM) -> None:
        self.session = session
        self.id = handle_id
        self.plugin = plugin
        self.on_event: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None
        self.on_core_event: Callable[[dict[str, Any]], None] | None = None  # webrtcup, media, hangup, ...
        self.on_lost: Callable[[JanusUnavailable], None] | None = None

    async def request(self, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """A synchronous plugin request (create, destroy, exists, list...): the plugin's data."""
        data, _ = self._plugin_reply(
            body, await self.session._request(self, {"janus": "message", "body": body}, timeout)
        )
        return data

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = EVENT_TIMEOUT
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request (join, publish, start...): its event's data and jsep."""
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        return self._plugin_reply(body, await self.session._request(self, request, timeout))

    def _plugin_reply(
        self, body: dict[str, Any], reply: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        what = body.get("request")
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            raise _refusal(f"Janus refused {what}", error.get("reason"), error.get("code"))
        data = (reply.get("plugindata") or {}).get("data") or {}
        if "error_code" in data or "error" in data:  # the plugins' convention (VideoRoom, AudioBridge...)
            raise _refusal(f"{self.plugin} refused {what}", data.get("error"), data.get("error_code"))
        return dict(data), reply.get("jsep")

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("janus") == "event":
            if self.on_event is not None:
                data = (event.get("plugindata") or {}).get("data") or {}
                self.on_event(data, event.get("jsep"))
        elif self.on_core_event is not None:
            self.on_core_event(event)

    def _lost(self, error: JanusUnavailable) -> None:
        if self.on_lost is not None:
            self.on_lost(error)

    async def detach(self) -> None:
        """Detach from the plugin (never raises: a gone session or Janus has detached us already)."""
        self.session.handles.pop(self.id, None)
        if self.session.closed or self.session.error is not None:
            return
        try:
            await self.session._request(self, {"janus": "detach"}, DESTROY_TIMEOUT)
        except JanusError as exc:
            log.debug("detaching Janus handle %s failed: %s", self.id, exc)


__all__ = [
    "DESTROY_TIMEOUT",
    "ERROR_NO_SUCH_FEED",
    "ERROR_NO_SUCH_HANDLE",
    "ERROR_NO_SUCH_ROOM",
    "ERROR_NO_SUCH_SESSION",
    "ERROR_PLUGIN_NOT_FOUND",
    "ERROR_UNAUTHORIZED",
    "EVENT_TIMEOUT",
    "KEEPALIVE_SECONDS",
    "POLL_MAX_EVENTS",
    "REQUEST_TIMEOUT",
    "VIDEOROOM",
    "JanusError",
    "JanusHandle",
    "JanusSession",
    "JanusUnavailable",
]
