"""The headless endpoint (`kiosk endpoint`): a Calls client with emulated media, scriptable from a shell.

Every SDK event is printed as one JSON line; at the end a JSON report with the session stats is
written. It joins a session directly, calls a user, or waits to answer. With `--config` it is the whole
kiosk that config describes, assembled as `kiosk run` assembles it (`kiosk.assembly`), with no screen;
the command line's options override the config's settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from kiosk.assembly import LOOPBACK, Kiosk, KioskOptions
from kiosk.calls import CallEventListener, Calls, CallsError, CallType
from kiosk.calls.events import EVENT_NAMES
from kiosk.calls.peer import RemoteMedia
from kiosk.config import load_config
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.hardware import Controls

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
    # The call server's address, or several addresses of one service tried in turn (default: the
    # config's server.url and server.urls).
    server: str | list[str] = ""
    auth_token: str = ""  # default: the config's token
    config: Path | None = None  # a device config: its devices, buttons, LEDs, keyboard, control socket
    idle: bool = False  # no call of its own: wait for calls, buttons and keys
    session: str | None = None
    call: str | None = None
    answer: bool = False
    audio_only: bool = False
    duration: float | None = None
    report: Path | None = None
    codec: str | None = None
    loopback: bool = False
    ice_addresses: list[str] | None = None  # offer only these local addresses to ICE
    ring_wait: float = 60.0
    record: bool = False
    recording_dir: Path | None = None
    ca_file: Path | None = None  # the CA an https:// server must chain to (default: config, else system)
    stats_every: float | None = None  # print the session stats as a "stats" line this often, seconds
    open_door_after: float | None = None  # in the call, ask the door kiosk to open after this long


def kiosk_options(options: EndpointOptions, listeners: Mapping[str, CallEventListener]) -> KioskOptions:
    """The endpoint's command line as the kiosk's options: each one given overrides the config's."""
    servers = [options.server] if isinstance(options.server, str) else list(options.server)
    ice = LOOPBACK if options.loopback else (tuple(options.ice_addresses) if options.ice_addresses else None)
    return KioskOptions(
        servers=tuple(url for url in servers if url),
        auth_token=options.auth_token,
        ca_file=options.ca_file,
        recording_dir=options.recording_dir,
        auto_record=True if options.record else None,
        video_codec=options.codec,
        ice_addresses=ice,
        audio_only=options.audio_only,
        listeners=listeners,
    )


async def run_endpoint(options: EndpointOptions, out: IO[str] = sys.stdout) -> int:
    """Run one endpoint to the end of its call; 0 if a call happened and media arrived.

    The call is driven by a KioskController, as on a kiosk, so buttons, keys and the control socket
    act on it exactly as they would on the device.
    """
    events = EventRecorder(out=out)
    config = load_config(options.config) if options.config is not None else None  # ConfigError: caller
    kiosk = Kiosk(config, kiosk_options(options, {"endpoint": events}))

    def observe(state: KioskState) -> None:
        _say(out, "state", {"phase": state.phase.value, "peer": state.peer_name, "message": state.message})

    report: dict[str, Any] = {"ok": False}
    try:
        await kiosk.start()
        calls, controller = kiosk.calls, kiosk.controller
        controller.add_observer(observe)
        _say(out, "logged_in", to_jsonable(kiosk.user))
        if kiosk.users is not None:  # the config's embedded server, with a visitor to call this kiosk
            _say(out, "embedded_server", {"url": kiosk.server_url, "visitorToken": kiosk.users.visitor_token})
        if kiosk.controls is not None:
            _say(out, "controls", _describe_controls(kiosk.controls))
        if options.idle:
            # A kiosk at rest: calls come in and go out through buttons, keys and the control socket.
            await _idle(controller, options.duration)
            report["ok"] = True
            return 0
        if options.session:
            await controller.join(options.session)
        elif options.call:
            await controller.call(options.call, CallType.AUDIO if options.audio_only else CallType.VIDEO)
            await controller.wait_for_phase(Phase.IN_CALL, Phase.IDLE, timeout=options.ring_wait)
        elif options.answer:
            _say(out, "waiting_for_call", {})
            if await controller.wait_for_phase(Phase.RINGING_IN, timeout=options.ring_wait):
                await controller.answer()
        else:
            raise CallsError("BAD_REQUEST", "give --session, --call or --answer")
        if controller.state.phase != Phase.IN_CALL:
            report["outcome"] = controller.state.message or "no call"
            return 1
        ice: dict[str, dict[str, Any]] = {}
        report["ice"] = ice
        watchers = [asyncio.ensure_future(_watch_ice_pairs(calls, ice))]
        if options.stats_every:
            watchers.append(asyncio.ensure_future(_print_stats(calls, options.stats_every, out)))
        if options.open_door_after is not None:
            watchers.append(asyncio.ensure_future(_open_door_after(controller, options.open_door_after)))
        try:
            await controller.wait_for_phase(Phase.IDLE, timeout=options.duration)
        finally:
            for watcher in watchers:
                watcher.cancel()
        if controller.state.phase == Phase.IN_CALL:
            await controller.hang_up()
        await calls.end_session()  # waits for a session the server is ending
        stats = calls.last_session_stats
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
        await kiosk.close()


async def _idle(controller: KioskController, duration: float | None) -> None:
    """Run for `duration` seconds (or until stopped); a call still going then is hung up."""
    if duration is None:
        await asyncio.Event().wait()  # until the process is stopped
    await asyncio.sleep(duration or 0)
    if controller.state.phase != Phase.IDLE:
        await controller.hang_up()


def selected_ice_pairs(calls: Calls) -> dict[str, dict[str, Any]]:
    """The candidate pair ICE selected with each remote participant: its local and remote candidate
    types ("host", "srflx", "relay"), addresses and protocol. Read from aiortc's and aioice's
    internals (they have no public API for it), so anything unexpected gives an empty entry."""
    pairs: dict[str, dict[str, Any]] = {}
    session = calls.session
    for uid, peer in list(session.peers.items()) if session is not None else []:
        if not isinstance(peer, RemoteMedia):
            continue  # no peer connection of its own (a test's stand-in)
        try:
            transceiver = peer.pc.getTransceivers()[0]
            connection = transceiver.receiver.transport.transport._connection
            nominated = dict(connection._nominated)
        except (AttributeError, IndexError):
            continue
        for pair in nominated.values():
            local, remote = pair.local_candidate, pair.remote_candidate
            pairs[uid] = {
                "local": local.type,
                "remote": remote.type,
                "localAddress": f"{local.host}:{local.port}",
                "remoteAddress": f"{remote.host}:{remote.port}",
                "protocol": local.transport,
            }
            break  # RTP and RTCP share one component (rtcp-mux)
    return pairs


async def _watch_ice_pairs(calls: Calls, into: dict[str, dict[str, Any]]) -> None:
    """Keep `into` up to date with the selected pairs while the call lasts (the connections are gone
    by the time the report is written)."""
    while True:
        into.update(selected_ice_pairs(calls))
        await asyncio.sleep(0.5)


async def _print_stats(calls: Calls, every: float, out: IO[str]) -> None:
    """A "stats" line every `every` seconds while the call lasts: a timeline of the bitrate, the
    picture size, the playout buffer, losses (the report at the end has only the totals)."""
    while True:
        await asyncio.sleep(every)
        if calls.session is None:
            continue
        try:
            stats = await calls.get_session_stats()
        except CallsError:  # the session ended meanwhile
            continue
        _say(out, "stats", stats.to_json())


def _describe_controls(controls: Controls) -> dict[str, Any]:
    return {
        "buttons": controls.buttons is not None,
        "lights": controls.lights is not None,
        "keyboard": controls.keyboard is not None,
        "controlSocket": str(controls.control.path) if controls.control is not None else None,
    }


async def _open_door_after(controller: KioskController, seconds: float) -> None:
    """Ask the door kiosk in the call to open (its answer prints as an on_door_opened event)."""
    await asyncio.sleep(seconds)
    task = controller.open_door()
    if task is not None:
        await task


def _say(out: IO[str], what: str, data: Any) -> None:
    out.write(json.dumps({"t": round(time.time(), 3), "status": what, "data": data}) + "\n")
    out.flush()
