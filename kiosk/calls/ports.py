"""What a call session needs from the world around it, as small typed interfaces.

A `CallSession` is given these instead of the `Calls` client that made it, so that its decisions
(glare, rebuilds, resubscriptions) can be driven by fakes in tests, as gpiozero's devices are driven
by its mock pin factory: `SignalingChannel` carries requests to the call server (the typed messages
of kiosk.protocol), `EventSink` takes the documents' events, `CallView` is the application's screen
(optional hooks), `SessionHost` is the rest: devices, codec, recording directory, the signaling
connection's upkeep, and the callback by which the session says it is over. `Send` is how the
session's own parts (controls, recording) tell the others through it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import av

from kiosk.protocol import (
    AuthRequest,
    ClientMessage,
    JoinedReply,
    JoinRequest,
    OkReply,
    PingRequest,
    PongReply,
)

if TYPE_CHECKING:
    from kiosk.calls.constants import Mode
    from kiosk.calls.door import DoorOpener
    from kiosk.media.devices import MediaDevices

log = logging.getLogger(__name__)


Accepted = OkReply | JoinedReply | PongReply  # a request's reply when it is not refused


class SignalingChannel(Protocol):
    """The signaling connection, as the session uses it."""

    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int:
        """Counts the connections made: tells this connection from a newer one."""
        ...

    @overload
    async def request(self, message: JoinRequest, *, timeout: float = ...) -> JoinedReply: ...

    @overload
    async def request(self, message: PingRequest, *, timeout: float = ...) -> PongReply: ...

    @overload
    async def request(self, message: AuthRequest, *, timeout: float = ...) -> OkReply: ...

    @overload
    async def request(self, message: ClientMessage, *, timeout: float = ...) -> Accepted: ...

    async def request(self, message: ClientMessage, *, timeout: float = ...) -> Accepted:
        """Send a message and wait for its reply (`joined` to `join`, `pong` to `ping`, else `ok`);
        CallsError on an error reply, ConnectionFailedError when the connection is gone or the reply
        is late."""
        ...


# What a session's parts tell the others: requests whose fields, but for the session id, are booleans.
SessionNotice = Literal["media.state", "switch.video", "recording"]


class Send(Protocol):
    """How a session's part tells the others (in the background; the session adds its id):
    `send("media.state", audioMuted=True, videoMuted=False)`."""

    def __call__(self, message_type: SessionNotice, **fields: bool) -> None: ...


class EventSink(Protocol):
    """Where the documents' events go (the client's listeners)."""

    def emit(self, event: str, *args: Any) -> None: ...


class SessionOver(StrEnum):
    """Why a session ended by itself (the session's own decisions; the server's end comes through
    the client)."""

    TIMEOUT = "timeout"  # alone for the idle timeout period: on_session_timeout
    LOST = "lost"  # everyone we talked to is gone and the server no longer has the session


class SessionHost(Protocol):
    """The client a session belongs to, as the session needs it."""

    @property
    def devices(self) -> MediaDevices: ...

    @property
    def video_codec(self) -> str | None: ...

    @property
    def recording_dir(self) -> Path: ...

    @property
    def listeners(self) -> EventSink: ...

    @property
    def signaling(self) -> SignalingChannel: ...

    @property
    def signaling_connected(self) -> bool: ...

    @property
    def door_opener(self) -> DoorOpener | None:
        """This endpoint's door, if it drives one (it then joins sessions saying so)."""
        ...

    def refresh_signaling(self) -> None:
        """Drop the signaling connection and make a new one (media stalled: it may be dead)."""
        ...


SessionOverCallback = Callable[[SessionOver], None]


class CallView(Protocol):
    """The application's screen for a call, as the session calls it."""

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        """A decoded remote video frame (called for every frame: keep it short)."""
        ...

    def remove_participant(self, uid: str) -> None:
        """That participant left."""
        ...

    def set_mode(self, mode: Mode) -> None:
        """The layout: DEFAULT (grid), SPOTLIGHT or SINGLE."""
        ...

    def set_pip(self, pip: bool) -> None:
        """Picture-in-picture on or off."""
        ...

    def close(self) -> None:
        """The session ended."""
        ...


# The hooks, and how many arguments each takes. A view given to start_session may implement any of
# them (a probe that only wants frames implements render_frame).
VIEW_HOOKS: dict[str, int] = {
    "render_frame": 2,
    "remove_participant": 1,
    "set_mode": 1,
    "set_pip": 1,
    "close": 0,
}


class _GuardedView:
    """A view given to start_session as a CallView: the hooks it has, checked when it is given (as
    gpiozero checks a callback when it is assigned), called so that a failing view is logged and
    never breaks the call; the hooks it lacks do nothing."""

    def __init__(self, view: object) -> None:
        self._hooks: dict[str, Callable[..., object]] = {}
        for name, arity in VIEW_HOOKS.items():
            hook = getattr(view, name, None)
            if hook is None:
                continue
            if not callable(hook):
                raise TypeError(f"view.{name} must be callable, not {type(hook).__name__}")
            try:
                signature = inspect.signature(hook)
            except ValueError:  # a builtin without a signature: trusted
                self._hooks[name] = hook
                continue
            try:
                signature.bind(*([None] * arity))
            except TypeError:
                raise TypeError(f"view.{name} must take {arity} argument(s), not {name}{signature}") from None
            self._hooks[name] = hook

    def _call(self, name: str, *args: object) -> None:
        hook = self._hooks.get(name)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("view.%s failed", name)

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        self._call("render_frame", uid, frame)

    def remove_participant(self, uid: str) -> None:
        self._call("remove_participant", uid)

    def set_mode(self, mode: Mode) -> None:
        self._call("set_mode", mode)

    def set_pip(self, pip: bool) -> None:
        self._call("set_pip", pip)

    def close(self) -> None:
        self._call("close")


def as_call_view(view: object | None) -> CallView:
    """The view given to start_session (any object with some of the hooks, or None) as a CallView;
    TypeError now if a hook it has cannot be called as the session will call it."""
    return _GuardedView(view)


FrameCallback = Callable[[str, av.VideoFrame], None]
AudioCallback = Callable[[str, av.AudioFrame], None]
