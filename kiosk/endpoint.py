"""The headless endpoint (`kiosk endpoint`): a Calls client with emulated media, scriptable from a shell.

Every SDK event is printed as one JSON line; at the end a JSON report with the session stats is
written. It joins a session directly, calls a user, or waits to answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from kiosk.calls import (
    Call,
    CallEventListener,
    Calls,
    CallsError,
    CallSettingsBuilder,
    CallStatus,
    CallType,
)
from kiosk.calls.events import EVENT_NAMES
from kiosk.media.emulated import EmulatedDevices

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Event payloads (dataclasses, enums, lists) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class EventRecorder(CallEventListener):
    """Records every event with its payload; optionally prints each as a JSON line."""

    def __init__(self, name: str = "", out: IO[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.out = out
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        for event in EVENT_NAMES:
            setattr(self, event, self._make_handler(event))

    def _make_handler(self, event: str) -> Any:
        def handler(*args: Any) -> None:
            self.events.append((event, args))
            self._changed.set()
            if self.out is not None:
                line: dict[str, Any] = {"t": round(time.time(), 3), "event": event}
                if self.name:
                    line["endpoint"] = self.name
                if args:
                    line["data"] = to_jsonable(args[0] if len(args) == 1 else list(args))
                self.out.write(json.dumps(line) + "\n")
                self.out.flush()

        return handler

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.events if name == event]

    async def wait_for(self, event: str, timeout: float = 10.0, count: int = 1) -> tuple[Any, ...]:
        """Wait until `event` has happened `count` times; return the arguments of the last one."""
        deadline = time.monotonic() + timeout
        while len(self.of(event)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name or 'endpoint'}: no {event} within {timeout} s; saw {self.names()}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.of(event)[count - 1]


@dataclasses.dataclass
class EndpointOptions:
    server: str
    auth_token: str
    session: str | None = None
    call: str | None = None
    answer: bool = False
    audio_only: bool = False
    duration: float | None = None
    report: Path | None = None
    codec: str | None = None
    loopback: bool = False
    ring_wait: float = 60.0
    record: bool = False
    recording_dir: Path | None = None


async def run_endpoint(options: EndpointOptions, out: IO[str] = sys.stdout) -> int:
    """Run one endpoint to the end of its call; 0 if a call happened and media arrived."""
    events = EventRecorder(out=out)
    calls = Calls(
        options.server,
        auth_token=options.auth_token,
        devices=EmulatedDevices(),
        video_codec=options.codec,
        ice_host_addresses=["127.0.0.1"] if options.loopback else None,
        recording_dir=options.recording_dir,
    )
    calls.add_call_event_listener("endpoint", events)
    report: dict[str, Any] = {"ok": False}
    try:
        user = await calls.login()
        _say(out, "logged_in", to_jsonable(user))
        reached = await _reach_session(calls, events, options, out)
        if reached is None:
            return 1
        session_id, call_type = reached
        # An answered audio call stays audio-only unless asked otherwise.
        audio_only = options.audio_only or call_type == CallType.AUDIO
        settings = (
            CallSettingsBuilder()
            .set_is_audio_only_call(audio_only)
            .auto_record_on_call_start(options.record)
            .build()
        )
        token = await calls.generate_token(session_id)
        await calls.start_session(token, settings)
        _say(out, "session_started", {"sessionId": session_id})
        ended = asyncio.ensure_future(_first_of(events, "on_call_ended", "on_session_timeout"))
        try:
            await asyncio.wait_for(asyncio.shield(ended), options.duration)
        except TimeoutError:
            pass
        if calls.session is not None and calls.active_call is not None:
            await calls.end_call(session_id)
        await calls.end_session()
        stats = calls.last_session_stats
        ended.cancel()
        if stats is not None:
            report["stats"] = stats.to_json()
            report["ok"] = bool(stats.participants) and all(
                p.video_frames_decoded > 0 or p.audio_frames_decoded > 0 for p in stats.participants.values()
            )
        return 0 if report["ok"] else 1
    except CallsError as exc:
        _say(out, "error", {"code": exc.code, "message": exc.message})
        report["error"] = {"code": exc.code, "message": exc.message}
        return 2
    finally:
        report["events"] = events.names()
        if options.report is not None:
            options.report.write_text(json.dumps(report, indent=2))
        await calls.close()


async def _reach_session(
    calls: Calls, events: EventRecorder, options: EndpointOptions, out: IO[str]
) -> tuple[str, CallType | None] | None:
    """The session id to join and the call's type: given, reached by calling someone, or by answering."""
    if options.session:
        return options.session, None
    if options.call:
        kind = CallType.AUDIO if options.audio_only else CallType.VIDEO
        call = await calls.initiate_call(options.call, kind)
        _say(out, "calling", to_jsonable(call))
        if call.status != CallStatus.INITIATED:
            return None
        outcome = await _first_of(
            events, "on_outgoing_call_accepted", "on_outgoing_call_rejected", timeout=options.ring_wait
        )
        if outcome is None or outcome[0] != "on_outgoing_call_accepted":
            _say(out, "not_answered", to_jsonable(outcome[1][0]) if outcome else {"status": "no answer"})
            return None
        return call.session_id, call.type
    if options.answer:
        _say(out, "waiting_for_call", {})
        found = await _first_of(events, "on_incoming_call_received", timeout=options.ring_wait)
        if found is None:
            return None
        incoming: Call = found[1][0]
        await calls.accept_call(incoming.session_id)
        return incoming.session_id, incoming.type
    raise CallsError("BAD_REQUEST", "give --session, --call or --answer")


async def _first_of(
    events: EventRecorder, *names: str, timeout: float | None = None
) -> tuple[str, tuple[Any, ...]] | None:
    start = len(events.events)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for name, args in events.events[start:]:
            if name in names:
                return name, args
        start = len(events.events)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        events._changed.clear()
        try:
            await asyncio.wait_for(events._changed.wait(), remaining)
        except TimeoutError:
            return None


def _say(out: IO[str], what: str, data: Any) -> None:
    out.write(json.dumps({"t": round(time.time(), 3), "status": what, "data": data}) + "\n")
    out.flush()
