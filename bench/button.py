"""button_to_remote_{muted_p50,muted_p99,silence_p50}: a GPIO mute press until the other side knows.

Subject: the whole button path. A gpiozero Button on a MockFactory pin (driven from a thread of its
own, as a pin library's callback thread would be) -> kiosk.hardware.ButtonPanel (debounce, hand-over
to the loop) -> KioskController.toggle_mute -> Calls.mute_audio -> signaling -> the embedded call
server -> the remote endpoint's `on_user_muted` listener. Both endpoints (the kiosk and the remote
one) are Calls endpoints in the harness process, in a 640x480@30 video call with tone audio through
the bench's call server on loopback; CLOCK_MONOTONIC times the press and the event.

Silence: from a mute press to the first audio frame the remote side decodes from the kiosk that is
all zeros (the SDK sends digital silence while muted). The remote peer's decoded-audio callback is
wrapped to see every frame. After each unmute the next press waits until the remote side hears the
tone again, so every silence measured was caused by its own press.

Presses alternate mute and unmute, with a short random gap after the remote side has seen the effect.

Baseline: the same latencies when the app calls the SDK's `mute_audio` directly on the loop (no GPIO,
no panel, no controller), interleaved with the button presses in the same call, so the ratio shows
what the button path adds. Targets: p99 (and p50) of the press to `on_user_muted` under 50 ms on
loopback; p50 of the press to remote silence under 150 ms (our target: ITU-T G.114's one-way
mouth-to-ear delay for interactive speech, since mute should reach the other side's ear no later than
speech does).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import av
from gpiozero.pins.mock import MockFactory

from bench.common import BenchServer, bench_server, loopback_only, new_session_id, wait_until
from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import CallEventListener, Calls, CallSettingsBuilder, RTCMutedUser
from kiosk.config import ButtonSection, ButtonsSection
from kiosk.controller import KioskController, Phase
from kiosk.hardware import ButtonPanel
from kiosk.media.emulated import EmulatedDevices

WIDTH, HEIGHT, FPS = 640, 480, 30
KIOSK, REMOTE = "bench-button-kiosk", "bench-button-remote"
MUTE_PIN = 17
BOUNCE_MS = 30  # the config's default
PRESS_S = 0.08  # how long the finger stays on the button
GAP_S = (0.05, 0.15)  # random pause after the remote side has seen a press's effect
EVENT_TIMEOUT = 5.0
SETUP_TIMEOUT = 20.0


def p50(values: list[float]) -> float:
    return float(statistics.median(values))


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[98])


class RemoteEar:
    """What the remote endpoint sees of the kiosk: its mute events and every decoded audio frame."""

    def __init__(self) -> None:
        self.muted_events: list[tuple[float, bool]] = []  # (monotonic, audio_muted)
        self.frames: list[tuple[float, bool]] = []  # (monotonic, all zeros)
        self.changed = asyncio.Event()

    def listener(self) -> CallEventListener:
        ear = self

        class Listener(CallEventListener):
            def on_user_muted(self, muted_user: RTCMutedUser) -> None:
                if muted_user.uid == KIOSK:
                    ear.muted_events.append((time.monotonic(), muted_user.audio_muted))
                    ear.changed.set()

        return Listener()

    def wrap(self, calls: Calls) -> None:
        """Hear every audio frame the remote endpoint decodes from the kiosk."""
        session = calls.session
        if session is None:
            raise RuntimeError("the remote endpoint is in no session")

        def heard(uid: str, frame: av.AudioFrame) -> None:
            if uid != KIOSK:
                return
            silent = not frame.to_ndarray().any()
            self.frames.append((time.monotonic(), silent))
            self.changed.set()

        session.add_remote_audio_tap(heard)

    async def wait(self, found: Callable[[], float | None], what: str) -> float:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            at = found()
            if at is not None:
                return at
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {EVENT_TIMEOUT} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def event_after(self, index: int, muted: bool) -> Callable[[], float | None]:
        def found() -> float | None:
            if len(self.muted_events) > index:
                at, state = self.muted_events[index]
                if state != muted:
                    raise RuntimeError(f"remote saw audio_muted={state}, expected {muted}")
                return at
            return None

        return found

    def frame_after(self, since: float, silent: bool) -> Callable[[], float | None]:
        def found() -> float | None:
            first = None
            for at, is_silent in reversed(self.frames):  # newest first, back to `since`
                if at < since:
                    break
                if is_silent == silent:
                    first = at
            return first

        return found


@dataclass
class Call:
    kiosk: Calls
    remote: Calls
    controller: KioskController
    panel: ButtonPanel
    factory: MockFactory
    ear: RemoteEar


@asynccontextmanager
async def _call(env: BenchServer) -> AsyncIterator[Call]:
    """The kiosk (controller + GPIO panel) and the remote endpoint in one call, audio flowing."""
    ear = RemoteEar()
    made: list[Calls] = []
    factory = MockFactory()
    panel: ButtonPanel | None = None
    try:
        for uid, tone in ((KIOSK, 440.0), (REMOTE, 660.0)):
            calls = Calls(
                env.url,
                auth_token=env.tokens[uid],
                devices=EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=tone),
                ice_host_addresses=["127.0.0.1"],
                recording_dir=env.tmp / "recordings" / uid,
            )
            made.append(calls)
            await calls.login()
        kiosk, remote = made
        remote.add_call_event_listener("bench-button", ear.listener())
        controller = KioskController(kiosk)
        panel = ButtonPanel(
            ButtonsSection(pin_factory="mock", mute=ButtonSection(MUTE_PIN, bounce_ms=BOUNCE_MS)),
            controller,
            asyncio.get_running_loop(),
            pin_factory=factory,
        )
        session_id = new_session_id()
        await remote.start_session(await remote.generate_token(session_id), CallSettingsBuilder().build())
        await controller.join(session_id)
        if controller.state.phase != Phase.IN_CALL:
            raise RuntimeError(f"the kiosk did not join: {controller.state.message}")

        def connected() -> bool:
            sessions = (kiosk.session, remote.session)
            if any(s is None or not s.active for s in sessions):
                return False
            peer = remote.session.peers.get(KIOSK) if remote.session is not None else None
            return (
                REMOTE in kiosk.session.participants  # type: ignore[union-attr]
                and KIOSK in remote.session.participants  # type: ignore[union-attr]
                and peer is not None
                and peer.stats.audio_frames_decoded > 0
            )

        await wait_until(connected, SETUP_TIMEOUT, "audio from the kiosk at the remote endpoint")
        ear.wrap(remote)
        started = time.monotonic()
        await ear.wait(ear.frame_after(started, silent=False), "tone from the kiosk")
        yield Call(kiosk, remote, controller, panel, factory, ear)
    finally:
        if panel is not None:
            panel.close()
        factory.reset()
        for calls in made:
            await calls.close()


# ----------------------------------------------------------------------------- presses


def _press_in_thread(pin: Any, pressed_at: list[float]) -> threading.Thread:
    """Press and release the mock pin from another thread, as a pin library's thread would."""

    def finger() -> None:
        pressed_at.append(time.monotonic())
        pin.drive_low()
        time.sleep(PRESS_S)
        pin.drive_high()

    thread = threading.Thread(target=finger, name="bench-finger", daemon=True)
    thread.start()
    return thread


@dataclass
class Measured:
    muted: list[float] = field(default_factory=list)  # press to on_user_muted, ms (mute and unmute)
    silence: list[float] = field(default_factory=list)  # mute press to the first all-zero frame, ms
    unmute_sound: list[float] = field(default_factory=list)  # unmute to the first non-silent frame


async def _toggle(call: Call, by_button: bool, out: Measured) -> None:
    session = call.kiosk.session
    if session is None or not session.active:
        raise RuntimeError("the kiosk's session ended")
    muting = not session.audio_muted
    index = len(call.ear.muted_events)
    finger: threading.Thread | None = None
    if by_button:
        pressed_at: list[float] = []
        finger = _press_in_thread(call.panel.buttons["mute"].pin, pressed_at)
        await wait_until(lambda: bool(pressed_at), EVENT_TIMEOUT, "the finger thread")
        t0 = pressed_at[0]
    else:
        t0 = time.monotonic()
        call.kiosk.mute_audio(muting)
    event = await call.ear.wait(call.ear.event_after(index, muting), "on_user_muted at the remote side")
    out.muted.append((event - t0) * 1000)
    heard = await call.ear.wait(call.ear.frame_after(t0, silent=muting), "the remote side's audio change")
    (out.silence if muting else out.unmute_sound).append((heard - t0) * 1000)
    if finger is not None:
        await asyncio.to_thread(finger.join)  # released; the bounce window passes in the gap below
    await asyncio.sleep(random.uniform(*GAP_S))


async def _run_once(env: BenchServer, presses: int) -> tuple[Measured, Measured]:
    """`presses` toggles by the button and as many by the SDK, interleaved in mute/unmute pairs."""
    button, direct = Measured(), Measured()
    async with _call(env) as call:
        for pair in range(presses // 2):
            for by_button in (True, False) if pair % 2 == 0 else (False, True):
                for _ in range(2):  # mute, then unmute: every pair starts and ends unmuted
                    await _toggle(call, by_button, button if by_button else direct)
    return button, direct


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Collected:
    muted_p50: list[float] = field(default_factory=list)
    muted_p99: list[float] = field(default_factory=list)
    silence_p50: list[float] = field(default_factory=list)
    base_muted_p50: list[float] = field(default_factory=list)
    base_muted_p99: list[float] = field(default_factory=list)
    base_silence_p50: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


_cache: dict[RunSettings, Collected] = {}


async def _collect(settings: RunSettings) -> Collected:
    if settings in _cache:
        return _cache[settings]
    loopback_only()
    runs = settings.repeats(full=3, quick=1)
    presses = 10 if settings.quick else 100
    out = Collected()
    extra: dict[str, list[float]] = {"unmute_to_sound_ms_p50": [], "silence_p95": [], "base_silence_p95": []}
    async with bench_server(KIOSK, REMOTE) as env:
        for _ in range(runs):
            button, direct = await _run_once(env, presses)
            out.muted_p50.append(p50(button.muted))
            out.muted_p99.append(p99(button.muted))
            out.silence_p50.append(p50(button.silence))
            out.base_muted_p50.append(p50(direct.muted))
            out.base_muted_p99.append(p99(direct.muted))
            out.base_silence_p50.append(p50(direct.silence))
            extra["unmute_to_sound_ms_p50"].append(p50(button.unmute_sound + direct.unmute_sound))
            extra["silence_p95"].append(float(sorted(button.silence)[int(len(button.silence) * 0.95)]))
            extra["base_silence_p95"].append(float(sorted(direct.silence)[int(len(direct.silence) * 0.95)]))
            extra.setdefault("button_max_ms", []).append(max(button.muted))
    out.notes = {
        **{f"{k}_median": float(statistics.median(v)) for k, v in extra.items()},
        "presses_per_run_by_button": presses,
        "toggles_per_run_by_sdk": presses,
        "muted_p50_per_run": out.muted_p50,
        "muted_p99_per_run": out.muted_p99,
        "silence_p50_per_run": out.silence_p50,
        "endpoints": "kiosk and remote both in the harness process (one asyncio loop), 640x480@30 video call",
        "bounce_ms": BOUNCE_MS,
        "press_s": PRESS_S,
    }
    _cache.clear()
    _cache[settings] = out
    return out


def _runner(value: str, baseline: str) -> Any:
    async def run(settings: RunSettings) -> Samples:
        got = await _collect(settings)
        return Samples(list(getattr(got, value)), list(getattr(got, baseline)), dict(got.notes))

    return run


_PATH = (
    "gpiozero MockFactory pin pressed from a thread -> ButtonPanel -> KioskController.toggle_mute -> "
    "Calls.mute_audio -> call server (loopback) -> the remote endpoint"
)
_DIRECT = (
    "the same, with the app calling Calls.mute_audio directly on the loop (no GPIO, panel or controller)"
)

BENCHMARKS = [
    Benchmark(
        name="button_to_remote_muted_p50",
        unit="ms",
        target_ratio=None,
        target_value=50.0,
        measures=f"p50 per run of press to the remote side's on_user_muted (mute and unmute presses): {_PATH}; "
        "target: the p99 target of 50 ms applied to the p50 too",
        baseline_measures=f"p50 of {_DIRECT}",
        run=_runner("muted_p50", "base_muted_p50"),
    ),
    Benchmark(
        name="button_to_remote_muted_p99",
        unit="ms",
        target_ratio=None,
        target_value=50.0,
        measures=f"p99 per run of press to the remote side's on_user_muted (mute and unmute presses): {_PATH}",
        baseline_measures=f"p99 of {_DIRECT}",
        run=_runner("muted_p99", "base_muted_p99"),
    ),
    Benchmark(
        name="button_to_remote_silence_p50",
        unit="ms",
        target_ratio=None,
        target_value=150.0,
        measures=f"p50 per run of mute press to the first all-zero audio frame the remote side decodes: {_PATH}; "
        "target 150 ms is ours (ITU-T G.114 one-way mouth-to-ear delay: mute should be heard no later "
        "than speech would be)",
        baseline_measures=f"p50 of {_DIRECT}",
        run=_runner("silence_p50", "base_silence_p50"),
    ),
]
