"""The kiosk's call logic, as a client of the Calls SDK.

Touch buttons (the UI), GPIO buttons and the keyboard of an emulated device all drive the same
`KioskController` actions, so a press of the physical mute button does exactly what the on-screen
mute button does. The controller follows the ringing flow of the documents: it rings and answers
through `initiate_call` / `accept_call`, starts the session when a call is accepted, and ends a call
with `end_call` followed by `end_session` (the end-call coordination the documents describe).

Actions are plain methods that schedule their work on the event loop and return the task, so a
GPIO callback (handed to the loop) or a Kivy button can call them without awaiting; a test can
await the returned task. Failures become a message in the state, never an exception in a callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from kiosk.calls import (
    Call,
    CallEventListener,
    Calls,
    CallsError,
    CallSettings,
    CallSettingsBuilder,
    CallStatus,
    CallType,
)

if TYPE_CHECKING:
    from kiosk.media.volume import OutputVolume

log = logging.getLogger(__name__)


class Phase(StrEnum):
    IDLE = "idle"
    RINGING_IN = "ringing_in"  # someone calls us
    RINGING_OUT = "ringing_out"  # we call someone
    IN_CALL = "in_call"


@dataclass(frozen=True)
class KioskState:
    """What a screen or a set of LEDs shows."""

    phase: Phase = Phase.IDLE
    call: Call | None = None
    peer_name: str = ""
    muted: bool = False
    video_paused: bool = False
    audio_mode: str | None = None
    volume: int | None = (
        None  # percent, of the mode playing (or that a call would start in); None: no control
    )
    message: str = ""  # the last outcome or error, in words ("Reception is busy")


SettingsFactory = Callable[[Call | None], CallSettings]
Observer = Callable[[KioskState], None]

_OUTCOME_WORDS = {
    CallStatus.REJECTED: "{name} declined the call",
    CallStatus.BUSY: "{name} is busy",
    CallStatus.UNANSWERED: "{name} did not answer",
    CallStatus.CANCELLED: "{name} hung up before you answered",
    CallStatus.ENDED: "Call with {name} ended",
}


class KioskController:
    def __init__(
        self,
        calls: Calls,
        *,
        auto_answer_after: float = 0.0,
        settings_factory: SettingsFactory | None = None,
        view: Any = None,
        volume: OutputVolume | None = None,
    ) -> None:
        self.calls = calls
        self.auto_answer_after = auto_answer_after
        self.settings_factory = settings_factory or _default_settings
        self.view = view
        self.volume = volume
        self._volume_lock = asyncio.Lock()
        self.state = KioskState(volume=self._volume_of(None))
        self._observers: list[Observer] = []
        self._auto_answer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hanging_up = False  # our own end_call is in flight: its on_call_ended is not "they hung up"
        calls.add_call_event_listener("kiosk-controller", _ControllerListener(self))

    # ----------------------------------------------------------------- state

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)
        observer(self.state)

    def remove_observer(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _live_session(self) -> Any:
        """The session if it is up (a press while it is still starting does nothing)."""
        session = self.calls.session
        return session if session is not None and session.active else None

    async def wait_for_phase(self, *phases: Phase, timeout: float | None = None) -> bool:
        """Wait until the kiosk is in one of `phases`; False if `timeout` passes first."""
        if self.state.phase in phases:
            return True
        reached = asyncio.get_running_loop().create_future()

        def watch(state: KioskState) -> None:
            if state.phase in phases and not reached.done():
                reached.set_result(True)

        self._observers.append(watch)
        try:
            await asyncio.wait_for(reached, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._observers.remove(watch)

    def _set(self, **changes: Any) -> None:
        self.state = dataclasses.replace(self.state, **changes)
        for observer in list(self._observers):
            try:
                observer(self.state)
            except Exception:
                log.exception("state observer failed")

    def report(self, message: str) -> None:
        """Show a message (a device problem found at start) until the next one."""
        self._set(message=message)

    def _run(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        async def guarded() -> Any:
            try:
                return await coro
            except CallsError as exc:
                log.warning("%s failed: %s", what, exc)
                self._set(message=f"Could not {what}: {exc.message}")
            except Exception as exc:  # a kiosk shows a message, not a traceback
                log.exception("%s failed", what)
                self._set(message=f"Could not {what}: {exc}")
            return None

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- actions

    def call(self, uid: str, call_type: CallType = CallType.VIDEO) -> asyncio.Task[Any]:
        return self._run(self._call(uid, call_type), f"call {uid}")

    async def _call(self, uid: str, call_type: CallType) -> None:
        if self.state.phase != Phase.IDLE:
            self._set(message="Already in a call")
            return
        call = await self.calls.initiate_call(uid, call_type)
        if call.status != CallStatus.INITIATED:
            self._set(phase=Phase.IDLE, call=call, message=_outcome(call, call.receiver.name or uid))
            self.calls.clear_active_call()
            return
        self._set(phase=Phase.RINGING_OUT, call=call, peer_name=call.receiver.name or uid, message="Calling…")

    def join(self, session_id: str, settings: CallSettings | None = None) -> asyncio.Task[Any]:
        """Join a session directly (the documents' session-only flow: no ringing)."""
        return self._run(self._join(session_id, settings), f"join {session_id}")

    async def _join(self, session_id: str, settings: CallSettings | None) -> None:
        if self.state.phase != Phase.IDLE:
            self._set(message="Already in a call")
            return
        token = await self.calls.generate_token(session_id)
        self._set(phase=Phase.IN_CALL, call=None, peer_name="", message="")
        try:
            await self.calls.start_session(token, settings or self.settings_factory(None), self.view)
        except CallsError:
            self._set(phase=Phase.IDLE)
            raise
        self._sync_session_state()

    def answer(self) -> asyncio.Task[Any]:
        return self._run(self._answer(), "answer")

    async def _answer(self) -> None:
        call = self.state.call
        if self.state.phase != Phase.RINGING_IN or call is None:
            return
        self._cancel_auto_answer()
        accepted = await self.calls.accept_call(call.session_id)
        await self._start_session(accepted)

    def reject(self) -> asyncio.Task[Any]:
        return self._run(self._reject(), "reject")

    async def _reject(self) -> None:
        call = self.state.call
        if self.state.phase != Phase.RINGING_IN or call is None:
            return
        self._cancel_auto_answer()
        await self.calls.reject_call(call.session_id, CallStatus.REJECTED)
        self.calls.clear_active_call()
        self._set(phase=Phase.IDLE, call=None, message=f"Declined the call from {self.state.peer_name}")

    def hang_up(self) -> asyncio.Task[Any]:
        """End the call in progress, or cancel the one we are ringing."""
        return self._run(self._hang_up(), "hang up")

    async def _hang_up(self) -> None:
        call = self.state.call
        if self.state.phase == Phase.RINGING_OUT and call is not None:
            await self.calls.reject_call(call.session_id, CallStatus.CANCELLED)
            self.calls.clear_active_call()
            self._set(phase=Phase.IDLE, call=None, message="Call cancelled")
        elif self.state.phase == Phase.IN_CALL:
            await self._end_call()

    async def _end_call(self) -> None:
        # The documents' ringing-flow end: end the call (the other side gets on_call_ended), clear the
        # active call, then end the session to release camera and microphone.
        call = self.state.call
        self._hanging_up = True
        try:
            if call is not None and self.calls.get_active_call() is not None:
                try:
                    await self.calls.end_call(call.session_id)
                except CallsError as exc:
                    log.info("end_call: %s", exc)  # already over on the server: just leave
            self.calls.clear_active_call()
            await self.calls.end_session()
        finally:
            self._hanging_up = False
        self._finish(f"Call with {self.state.peer_name} ended" if self.state.peer_name else "Call ended")

    def end_pressed(self, *, press_answers: bool = True) -> asyncio.Task[Any] | None:
        """The end button's press: answers while ringing (when so configured), else hangs up."""
        if self.state.phase == Phase.RINGING_IN:
            return self.answer() if press_answers else None
        if self.state.phase == Phase.IN_CALL and self._live_session() is not None:
            # Through the SDK's end-call button event, as a touch on the on-screen button does.
            self.calls.press_end_call_button()
            return None
        return self.hang_up()

    def end_held(self, *, hold_rejects: bool = True) -> asyncio.Task[Any] | None:
        """The end button held: rejects while ringing (when so configured), else hangs up."""
        if self.state.phase == Phase.RINGING_IN:
            return self.reject() if hold_rejects else None
        return self.hang_up()

    def toggle_mute(self) -> None:
        session = self._live_session()
        if session is None:
            return
        muted = not session.audio_muted
        self.calls.mute_audio(muted)
        self._set(muted=muted)

    def open_door(self) -> asyncio.Task[Any] | None:
        """In a call with a door kiosk: ask it to release its door (the answer comes as a message)."""
        if self._live_session() is None:
            self._set(message="Open the door during a call with it")
            return None
        return self._run(self.calls.open_door(), "open the door")

    def _door_answered(self, result: Any) -> None:
        me = self.calls.user.uid if self.calls.user is not None else ""
        who = "You" if result.opened_by.uid == me else (result.opened_by.name or result.opened_by.uid)
        if result.opened:
            words = "Door released" if result.door.uid == me else f"{result.door.name or 'The door'} released"
            self._set(message=f"{words} ({who.lower() if who == 'You' else who})")
        else:
            self._set(message=f"The door was not released: {result.reason or 'no reason given'}")

    def toggle_video(self) -> None:
        session = self._live_session()
        if session is None:
            return
        paused = not session.video_muted
        self.calls.pause_video(paused)
        self._set(video_paused=paused)

    def cycle_audio_mode(self) -> None:
        """Next available audio mode, in the order the device offers them."""
        session = self._live_session()
        if session is None:
            return
        modes = [m.mode for m in self.calls.get_audio_output_modes()]
        if not modes:
            self._set(message="No audio output available")
            return
        current = session.audio_mode
        following = modes[(modes.index(current) + 1) % len(modes)] if current in modes else modes[0]
        try:
            self.calls.set_audio_mode(following)
        except CallsError as exc:
            self._set(message=exc.message)
            return
        self._set(audio_mode=following, volume=self._volume_of(following))

    def _volume_mode(self) -> str | None:
        """The mode whose volume the buttons change: the call's, else the one a call starts in."""
        session = self._live_session()
        if session is not None and session.audio_mode:
            return str(session.audio_mode)
        return self.starting_mode()

    def starting_mode(self) -> str | None:
        """The audio mode a call starts in: the settings' default mode if its device is present,
        else the first present one (as the SDK chooses)."""
        modes = self.calls.devices.audio_modes()
        wanted = self.settings_factory(None).default_audio_mode
        if wanted is not None and wanted in modes:
            return str(wanted)
        return modes[0] if modes else None

    def _volume_of(self, mode: str | None) -> int | None:
        if self.volume is None:
            return None
        if mode is None:
            mode = self.starting_mode()
        return self.volume.level(mode) if mode else None

    def volume_up(self) -> asyncio.Task[Any]:
        return self._run(self._step_volume(1), "turn the volume up")

    def volume_down(self) -> asyncio.Task[Any]:
        return self._run(self._step_volume(-1), "turn the volume down")

    async def _step_volume(self, steps: int) -> None:
        volume, mode = self.volume, self._volume_mode()
        if volume is None:
            self._set(message="This kiosk has no volume control")
            return
        if mode is None:
            self._set(message="No audio output available")
            return
        async with self._volume_lock:  # presses in a row apply in order
            # Off the loop: a mixer write and the saved levels' file.
            level = await asyncio.to_thread(volume.step, mode, steps)
        self._set(volume=level)

    def dispatch(self, action: str, **options: Any) -> Any:
        """Run an action by name (for the keyboard and the control socket): mute, video, end,
        end_hold, answer, reject, audio_mode, volume_up, volume_down, door, call:<uid>."""
        if action.startswith("call:"):
            return self.call(action.split(":", 1)[1])
        handlers: dict[str, Callable[[], Any]] = {
            "mute": self.toggle_mute,
            "video": self.toggle_video,
            "end": lambda: self.end_pressed(**options),
            "end_hold": lambda: self.end_held(**options),
            "answer": self.answer,
            "reject": self.reject,
            "audio_mode": self.cycle_audio_mode,
            "volume_up": self.volume_up,
            "volume_down": self.volume_down,
            "door": self.open_door,
        }
        handler = handlers.get(action)
        if handler is None:
            raise ValueError(f"unknown action {action!r}")
        return handler()

    # ----------------------------------------------------------------- sessions

    async def _start_session(self, call: Call) -> None:
        settings = self.settings_factory(call)
        token = await self.calls.generate_token(call.session_id)
        self._set(phase=Phase.IN_CALL, call=call, message="")
        try:
            await self.calls.start_session(token, settings, self.view)
        except CallsError:
            self._set(phase=Phase.IDLE, call=None)
            raise
        self._sync_session_state()

    def _sync_session_state(self) -> None:
        session = self.calls.session
        mode = session.audio_mode if session else None
        self._set(
            muted=bool(session and session.audio_muted),
            video_paused=bool(session and session.video_muted),
            audio_mode=mode,
            volume=self._volume_of(mode),
        )

    def _finish(self, message: str) -> None:
        self._cancel_auto_answer()
        self._set(
            phase=Phase.IDLE,
            call=None,
            muted=False,
            video_paused=False,
            volume=self._volume_of(None),
            message=message,
        )

    def _cancel_auto_answer(self) -> None:
        if self._auto_answer is not None:
            self._auto_answer.cancel()
            self._auto_answer = None

    # ----------------------------------------------------------------- SDK events

    def _incoming(self, call: Call) -> None:
        if self.state.phase != Phase.IDLE:
            return  # the SDK answers busy for us
        self._set(
            phase=Phase.RINGING_IN, call=call, peer_name=call.initiator.name or call.initiator.uid, message=""
        )
        if self.auto_answer_after > 0:
            loop = asyncio.get_running_loop()
            self._auto_answer = loop.call_later(self.auto_answer_after, self.answer)

    def _outgoing_accepted(self, call: Call) -> None:
        if self.state.phase == Phase.RINGING_OUT:
            self._run(self._start_session(call), "start the call")

    def _outgoing_over(self, call: Call) -> None:
        if (
            self.state.phase == Phase.RINGING_OUT
            and self.state.call
            and call.session_id == self.state.call.session_id
        ):
            self.calls.clear_active_call()
            self._set(phase=Phase.IDLE, call=None, message=_outcome(call, self.state.peer_name))

    def _incoming_over(self, call: Call) -> None:
        if (
            self.state.phase == Phase.RINGING_IN
            and self.state.call
            and call.session_id == self.state.call.session_id
        ):
            self._cancel_auto_answer()
            self.calls.clear_active_call()
            self._set(phase=Phase.IDLE, call=None, message=_outcome(call, self.state.peer_name))

    def _call_ended(self) -> None:
        # The other side hung up: clear the active call and release the media (documents: remote side).
        if self.state.phase == Phase.IN_CALL and not self._hanging_up:
            self.calls.clear_active_call()
            self._run(self._after_remote_end(), "end the call")

    async def _after_remote_end(self) -> None:
        await self.calls.end_session()
        self._finish(f"{self.state.peer_name} hung up" if self.state.peer_name else "Call ended")


class _ControllerListener(CallEventListener):
    def __init__(self, controller: KioskController) -> None:
        super().__init__()
        self.controller = controller

    def on_incoming_call_received(self, call: Call) -> None:
        self.controller._incoming(call)

    def on_outgoing_call_accepted(self, call: Call) -> None:
        self.controller._outgoing_accepted(call)

    def on_outgoing_call_rejected(self, call: Call) -> None:
        self.controller._outgoing_over(call)

    def on_incoming_call_cancelled(self, call: Call) -> None:
        self.controller._incoming_over(call)

    def on_call_end_button_pressed(self) -> None:
        self.controller.hang_up()

    def on_call_ended(self) -> None:
        self.controller._call_ended()

    def on_session_timeout(self) -> None:
        self.controller._finish("The call ended because nobody else was in it")

    def on_audio_mode_changed(self, modes: Any) -> None:
        selected = next((m.mode for m in modes if m.selected), None)
        if selected is not None and selected != self.controller.state.audio_mode:
            self.controller._set(audio_mode=selected, volume=self.controller._volume_of(selected))

    def on_error(self, error: Any) -> None:
        self.controller._set(message=error.message)

    def on_door_opened(self, result: Any) -> None:
        self.controller._door_answered(result)


def _outcome(call: Call, name: str) -> str:
    if call.status == CallStatus.ONGOING:
        by = call.answered_by or call.receiver
        return f"Answered elsewhere ({by.name or by.uid})"
    template = _OUTCOME_WORDS.get(call.status, "Call {status}")
    return template.format(name=name or "They", status=call.status)


def _default_settings(call: Call | None) -> CallSettings:
    audio_only = call is not None and call.type == CallType.AUDIO
    return CallSettingsBuilder().set_is_audio_only_call(audio_only).build()
