"""Event payloads and listeners.

Payloads follow the iOS document's objects (RTCUser, RTCMutedUser, CallSwitchRequestInfo,
RTCRecordingInfo, AudioMode list). A listener is any object with some `on_...` methods; subclass
`CallEventListener` to get no-op defaults, or pass callables: `CallEventListener(on_user_joined=fn)`.
Listener methods may be plain functions or coroutines. A listener that raises is logged and skipped:
it never breaks the session or the other listeners.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiosk.media.devices import MediaDeviceInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RTCUser:
    uid: str
    name: str = ""
    avatar: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RTCUser:
        """From the protocol's user object (a `kiosk.protocol.UserJson`, or any with `uid`)."""
        return cls(uid=str(data["uid"]), name=str(data.get("name") or ""), avatar=data.get("avatar"))


@dataclass(frozen=True)
class RTCMutedUser:
    uid: str
    name: str
    audio_muted: bool
    video_muted: bool


@dataclass(frozen=True)
class CallSwitchRequestInfo:
    requested_by: RTCUser | None
    session_id: str = ""


@dataclass(frozen=True)
class RTCRecordingInfo:
    recording_started: bool
    user: RTCUser | None
    at_ms: int = 0
    directory: str | None = None  # where the files go, on the side that records
    file: str | None = None  # the recording file, on the side that records


@dataclass(frozen=True)
class AudioModeInfo:
    """One entry of the audio-mode list passed to on_audio_mode_changed."""

    mode: str
    selected: bool = False


@dataclass(frozen=True)
class CallError:
    """The payload of on_error: a code an app can branch on, and words a person can read."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


# Every listener method the SDK calls, with the payload it passes. Names in the documents that
# differ only by platform are delivered under both spellings (see ALIASES).
EVENT_NAMES = (
    "on_user_joined",  # RTCUser
    "on_user_left",  # RTCUser
    "on_user_list_changed",  # list[RTCUser]
    "on_call_ended",  # ()
    "on_call_end_button_pressed",  # ()
    "on_session_timeout",  # ()
    "on_session_timeout_warning",  # seconds left (kiosk addition: the documents' 60 s warning)
    "on_audio_mode_changed",  # list[AudioModeInfo]
    "on_call_switched_to_video",  # CallSwitchRequestInfo
    "on_user_muted",  # RTCMutedUser
    "on_recording_toggled",  # RTCRecordingInfo
    "on_screen_share_started",  # ()
    "on_screen_share_stopped",  # ()
    "on_media_device_list_updated",  # list[MediaDeviceInfo]
    "on_error",  # CallError
    "on_door_opened",  # kiosk.calls.door.DoorResult (kiosk addition: a door kiosk's relay, released or why not)
    # Ringing (the documents' Ringing guide, delivered through the same listeners).
    "on_incoming_call_received",  # Call
    "on_outgoing_call_accepted",  # Call
    "on_outgoing_call_rejected",  # Call (rejected or busy)
    "on_incoming_call_cancelled",  # Call (cancelled or unanswered)
    "on_call_ended_message_received",  # Call
)

ALIASES = {
    "on_user_list_changed": "on_user_list_updated",  # Web, React Native
    "on_audio_mode_changed": "on_audio_modes_updated",  # React Native
}


class CallEventListener:
    """Base listener: every event as a no-op method; or build one from callables by keyword.

    Subclass and override what you need, or `CallEventListener(on_user_joined=fn, on_call_ended=fn2)`.
    """

    def __init__(self, **handlers: Callable[..., Any]) -> None:
        known = set(EVENT_NAMES) | set(ALIASES.values())
        for name, handler in handlers.items():
            if name not in known:
                raise TypeError(f"unknown event {name!r}; known: {', '.join(sorted(known))}")
            setattr(self, name, handler)

    def on_user_joined(self, user: RTCUser) -> None: ...
    def on_user_left(self, user: RTCUser) -> None: ...
    def on_user_list_changed(self, users: list[RTCUser]) -> None: ...
    def on_call_ended(self) -> None: ...
    def on_call_end_button_pressed(self) -> None: ...
    def on_session_timeout(self) -> None: ...
    def on_session_timeout_warning(self, seconds_left: int) -> None: ...
    def on_audio_mode_changed(self, modes: list[AudioModeInfo]) -> None: ...
    def on_call_switched_to_video(self, info: CallSwitchRequestInfo) -> None: ...
    def on_user_muted(self, muted_user: RTCMutedUser) -> None: ...
    def on_recording_toggled(self, info: RTCRecordingInfo) -> None: ...
    def on_door_opened(self, result: Any) -> None: ...  # a kiosk.calls.door.DoorResult
    def on_screen_share_started(self) -> None: ...
    def on_screen_share_stopped(self) -> None: ...
    def on_media_device_list_updated(self, devices: list[MediaDeviceInfo]) -> None: ...
    def on_error(self, error: CallError) -> None: ...
    def on_incoming_call_received(self, call: Any) -> None: ...
    def on_outgoing_call_accepted(self, call: Any) -> None: ...
    def on_outgoing_call_rejected(self, call: Any) -> None: ...
    def on_incoming_call_cancelled(self, call: Any) -> None: ...
    def on_call_ended_message_received(self, call: Any) -> None: ...


class ListenerRegistry:
    """Listeners by id (the same id replaces), plus the one from the call settings."""

    def __init__(self) -> None:
        self._by_id: dict[str, Any] = {}
        self.settings_listener: Any = None

    def add(self, listener_id: str, listener: Any) -> None:
        if not isinstance(listener_id, str) or not listener_id:
            raise ValueError("listener_id must be a non-empty string")
        self._by_id[listener_id] = listener

    def remove(self, listener_id: str) -> None:
        self._by_id.pop(listener_id, None)

    def listeners(self) -> list[Any]:
        found = list(self._by_id.values())
        if self.settings_listener is not None and self.settings_listener not in found:
            found.append(self.settings_listener)
        return found

    def emit(self, event: str, *args: Any) -> None:
        for listener in self.listeners():
            handler = _handler(listener, event)
            if handler is None:
                continue
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_listener_failure)
            except Exception:
                log.exception("listener %r failed in %s", listener, event)


def _handler(listener: Any, event: str) -> Callable[..., Any] | None:
    """The listener's method for `event`: the Python name, else the other platforms' spelling.

    An inherited no-op default does not hide an alias the subclass really implements.
    """
    own: object = getattr(listener, event, None)
    alias = ALIASES.get(event)
    other: object = getattr(listener, alias, None) if alias else None
    if callable(other) and (not callable(own) or _is_default(listener, event)):
        return other
    return own if callable(own) else None


def _is_default(listener: Any, event: str) -> bool:
    method = getattr(type(listener), event, None)
    return (
        method is not None
        and method is getattr(CallEventListener, event, None)
        and event not in vars(listener)
    )


def _log_listener_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async listener failed", exc_info=task.exception())


__all__ = [
    "AudioModeInfo",
    "CallError",
    "CallEventListener",
    "CallSwitchRequestInfo",
    "ListenerRegistry",
    "MediaDeviceInfo",
    "RTCMutedUser",
    "RTCRecordingInfo",
    "RTCUser",
]
