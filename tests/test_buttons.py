"""GPIO buttons and LEDs on gpiozero's MockFactory, and their emulation (control socket, keyboard),
driving two real endpoints through a real call server."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from calls_support import Endpoint, endpoints, running_server, wait_until
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from kiosk.calls import CallStatus
from kiosk.config import (
    ButtonSection,
    ButtonsSection,
    CallButtonSection,
    EndButtonSection,
    LedsSection,
    parse_config,
)
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.hardware import (
    ButtonPanel,
    ControlServer,
    HardwareError,
    KeyboardControl,
    StatusLights,
    is_raspberry_pi_5,
    make_pin_factory,
    start_controls,
)
from kiosk.hardware import buttons as buttons_module

MUTE, END, AUDIO, CALL = 17, 27, 22, 23
LED_IN_CALL, LED_MUTED, LED_RINGING = 5, 6, 13
HOLD_S = 0.3
BLINK_S = 0.08


def buttons_config(contact: str = "", **end: Any) -> ButtonsSection:
    return ButtonsSection(
        pin_factory="mock",
        mute=ButtonSection(MUTE, bounce_ms=30),
        end=EndButtonSection(END, bounce_ms=30, hold_s=HOLD_S, **end),
        audio_mode=ButtonSection(AUDIO),
        call=CallButtonSection(CALL, contact=contact) if contact else None,
    )


LEDS = LedsSection(in_call=LED_IN_CALL, muted=LED_MUTED, ringing=LED_RINGING)


@pytest.fixture
def mock_factory() -> Iterator[Callable[[], MockFactory]]:
    """Fresh MockFactories (one per emulated device), emptied after the test."""
    made: list[MockFactory] = []

    def make() -> MockFactory:
        made.append(MockFactory())
        return made[-1]

    yield make
    for factory in made:
        factory.reset()


class Kiosk:
    """One endpoint's controller with its buttons and LEDs on a mock factory."""

    def __init__(self, endpoint: Endpoint, panel: ButtonPanel, lights: StatusLights) -> None:
        self.endpoint = endpoint
        self.controller = panel.controller
        self.panel = panel
        self.lights = lights

    def pin(self, name: str) -> Any:
        return self.panel.buttons[name].pin

    def led(self, name: str) -> Any:
        return self.lights.leds[name].pin

    def press(self, name: str) -> None:
        # drive_* runs when_pressed/when_released right here, on the loop's thread.
        self.pin(name).drive_low()
        self.pin(name).drive_high()

    async def hold(self, name: str, seconds: float) -> None:
        self.pin(name).drive_low()
        await asyncio.sleep(seconds)
        self.pin(name).drive_high()


@asynccontextmanager
async def kiosk_on(endpoint: Endpoint, factory: MockFactory, buttons: ButtonsSection) -> AsyncIterator[Kiosk]:
    controller = KioskController(endpoint.calls)
    panel = ButtonPanel(buttons, controller, asyncio.get_running_loop(), pin_factory=factory)
    lights = StatusLights(LEDS, controller, pin_factory=factory, blink_on_s=BLINK_S, blink_off_s=BLINK_S)
    kiosk = Kiosk(endpoint, panel, lights)
    try:
        yield kiosk
    finally:
        kiosk.panel.close()  # a test may have replaced the panel
        lights.close()


def count_calls(obj: Any, method: str) -> list[Any]:
    """Wrap obj.method so each call is recorded (the panel looks methods up when it acts)."""
    seen: list[Any] = []
    original = getattr(obj, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(obj, method, wrapper)
    return seen


def connected(a: Endpoint, b: Endpoint) -> bool:
    """Both sessions active and each knowing the other. The controller reports IN_CALL while a session
    is still starting, and the SDK drops a media.state from a participant it does not know yet."""
    sessions = (a.calls.session, b.calls.session)
    if any(s is None or not s.active for s in sessions):
        return False
    return b.uid in sessions[0].participants and a.uid in sessions[1].participants


async def changes_of(pin: Any, seconds: float) -> int:
    """How many times an output pin changed state within `seconds`."""
    pin.clear_states()
    await asyncio.sleep(seconds)
    return len(pin.states) - 1


# ----------------------------------------------------------------------------- real calls


async def test_buttons_and_leds_through_a_whole_call(tmp_path, mock_factory):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door_ep, desk_ep),
        kiosk_on(door_ep, mock_factory(), buttons_config(contact="desk")) as door,
        kiosk_on(desk_ep, mock_factory(), buttons_config()) as desk,
    ):
        assert not door.led("in_call").state and not door.led("ringing").state

        # the call button rings the configured contact; both ringing LEDs blink
        door.press("call")
        await wait_until(lambda: desk.controller.state.phase == Phase.RINGING_IN, 10, "desk rings")
        assert door.controller.state.phase == Phase.RINGING_OUT
        assert await changes_of(door.led("ringing"), 5 * BLINK_S) >= 3
        assert await changes_of(desk.led("ringing"), 5 * BLINK_S) >= 3
        assert not desk.led("in_call").state

        # a short press of the end button while ringing answers (press_answers)
        await desk.hold("end", 0.05)
        await wait_until(lambda: desk.controller.state.phase == Phase.IN_CALL, 10, "desk answered")
        await wait_until(lambda: door.controller.state.phase == Phase.IN_CALL, 10, "door in call")
        await wait_until(lambda: connected(door_ep, desk_ep), 10, "both in the session")
        for kiosk in (door, desk):
            assert kiosk.led("in_call").state and not kiosk.led("muted").state
            assert await changes_of(kiosk.led("ringing"), 3 * BLINK_S) == 0
            assert not kiosk.led("ringing").state

        # mute: the remote side hears of it; time from the press to the remote event
        latencies = []
        started = time.perf_counter()
        door.press("mute")
        muted = (await desk_ep.events.wait_for("on_user_muted", 5))[0]
        latencies.append(time.perf_counter() - started)
        assert muted.uid == "door" and muted.audio_muted
        assert door_ep.calls.session.audio_muted and door.controller.state.muted
        assert door.led("muted").state and not desk.led("muted").state

        # a bouncing contact: five edges within 10 ms, driven from another thread as gpiozero does
        # A zero-length press ends at the window's close (30 ms): wait past the next window too.
        await asyncio.sleep(0.1)
        toggles = count_calls(door.controller, "toggle_mute")
        pin = door.pin("mute")

        def bounce() -> float:
            begun = time.perf_counter()
            for level in (False, True, False, True, False):
                if level:
                    pin.drive_high()
                else:
                    pin.drive_low()
                time.sleep(0.002)
            return time.perf_counter() - begun

        burst = await asyncio.to_thread(bounce)
        assert burst < 0.030, f"the burst took {burst * 1000:.1f} ms, longer than the bounce window"
        await asyncio.sleep(0.1)
        pin.drive_high()  # let go, well after the window
        await desk_ep.events.wait_for("on_user_muted", 5, count=2)
        await asyncio.sleep(0.3)
        assert len(toggles) == 1
        assert len(desk_ep.events.of("on_user_muted")) == 2
        assert not door_ep.calls.session.audio_muted and not door.led("muted").state

        # more presses, for the latency figures
        for n in range(3, 7):
            await asyncio.sleep(0.1)
            started = time.perf_counter()
            door.press("mute")
            await desk_ep.events.wait_for("on_user_muted", 5, count=n)
            latencies.append(time.perf_counter() - started)
        assert len(toggles) == 5 and not door_ep.calls.session.audio_muted
        print(
            f"\npress-to-remote on_user_muted over {len(latencies)} presses: "
            f"min {min(latencies) * 1000:.1f} ms, median {statistics.median(latencies) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        assert max(latencies) < 1.0

        # audio mode: the next available mode, and playback moves to that mode's device
        modes = [m.mode for m in door_ep.calls.get_audio_output_modes()]
        current = door_ep.calls.session.audio_mode
        expected = modes[(modes.index(current) + 1) % len(modes)]
        opened = len(door_ep.devices.opened_speakers)
        door.press("audio_mode")
        await wait_until(lambda: door_ep.calls.session.audio_mode == expected, 5, "next audio mode")
        assert door.controller.state.audio_mode == expected
        await door_ep.calls.session.audio_output_settled()  # the speaker opens off the loop
        assert len(door_ep.devices.opened_speakers) == opened + 1
        assert door_ep.devices.opened_speakers[-1].device.audio_mode == expected
        assert door_ep.calls.session.speaker is door_ep.devices.opened_speakers[-1]

        # the end button in a call ends it on both sides
        door.press("end")
        await wait_until(lambda: door.controller.state.phase == Phase.IDLE, 10, "door idle")
        await wait_until(lambda: desk.controller.state.phase == Phase.IDLE, 10, "desk idle")
        assert desk.controller.state.message == "Door hung up"
        assert door_ep.calls.session is None and desk_ep.calls.session is None
        for kiosk in (door, desk):
            assert not kiosk.led("in_call").state and not kiosk.led("muted").state
        assert (await door_ep.calls.get_call_logs()).calls[0].status == CallStatus.ENDED


async def test_holding_end_while_ringing_rejects_and_the_release_does_not_answer(tmp_path, mock_factory):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door_ep, desk_ep),
        kiosk_on(door_ep, mock_factory(), buttons_config(contact="desk")) as door,
        kiosk_on(desk_ep, mock_factory(), buttons_config()) as desk,
    ):
        presses = count_calls(desk.controller, "end_pressed")
        holds = count_calls(desk.controller, "end_held")
        answers = count_calls(desk.controller, "answer")
        door.press("call")
        await wait_until(lambda: desk.controller.state.phase == Phase.RINGING_IN, 10, "desk rings")

        await desk.hold("end", HOLD_S + 0.3)
        await wait_until(lambda: door.controller.state.phase == Phase.IDLE, 10, "door idle")
        assert door.controller.state.message == "Desk declined the call"
        await asyncio.sleep(0.3)  # time for a wrongly counted release to act
        assert len(holds) == 1 and presses == [] and answers == []
        assert desk.controller.state.phase == Phase.IDLE and desk_ep.calls.session is None
        assert (await door_ep.calls.get_call_logs()).calls[0].status == CallStatus.REJECTED
        assert not desk.led("ringing").state and not door.led("ringing").state

        # with hold_rejects off, holding while ringing does nothing; the call keeps ringing
        desk.panel.close()
        desk.panel = ButtonPanel(
            buttons_config(hold_rejects=False),
            desk.controller,
            asyncio.get_running_loop(),
            pin_factory=desk.panel.pin_factory,
        )
        door.press("call")
        await wait_until(lambda: desk.controller.state.phase == Phase.RINGING_IN, 10, "desk rings again")
        await desk.hold("end", HOLD_S + 0.3)
        await asyncio.sleep(0.3)
        assert len(holds) == 2 and presses == [] and desk.controller.state.phase == Phase.RINGING_IN
        await door.controller.hang_up()
        await wait_until(lambda: desk.controller.state.phase == Phase.IDLE, 10, "ringing over")


async def test_control_socket_drives_a_call(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door_ep, desk_ep),
    ):
        door_kiosk, desk_kiosk = KioskController(door_ep.calls), KioskController(desk_ep.calls)
        door_path, desk_path = tmp_path / "door.sock", tmp_path / "desk.sock"
        door_ctl, desk_ctl = ControlServer(door_kiosk, door_path), ControlServer(desk_kiosk, desk_path)
        await door_ctl.start()
        await desk_ctl.start()
        try:
            assert door_path.stat().st_mode & 0o777 == 0o600
            door_r, door_w = await asyncio.open_unix_connection(door_path)
            desk_r, desk_w = await asyncio.open_unix_connection(desk_path)

            async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                return (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\n")

            state = json.loads(await ask(door_r, door_w, "state"))
            assert state["phase"] == "idle" and state["session_id"] is None
            assert (await ask(door_r, door_w, "mute")) == "ok"  # no call: nothing to mute, no error

            assert (await ask(door_r, door_w, "call desk")) == "ok"
            assert door_kiosk.state.phase == Phase.RINGING_OUT
            await wait_until(lambda: desk_kiosk.state.phase == Phase.RINGING_IN, 10, "desk rings")
            assert (await ask(desk_r, desk_w, "answer")) == "ok"
            await wait_until(lambda: connected(door_ep, desk_ep), 10, "both in the session")

            assert (await ask(door_r, door_w, "mute")) == "ok"
            muted = (await desk_ep.events.wait_for("on_user_muted", 5))[0]
            assert muted.uid == "door" and muted.audio_muted
            state = json.loads(await ask(door_r, door_w, "state"))
            assert state["phase"] == "in_call" and state["muted"] is True and state["peer_name"] == "Desk"
            assert state["session_id"] == door_kiosk.state.call.session_id

            reply = await ask(door_r, door_w, "bogus")
            assert reply.startswith("error: unknown command 'bogus'") and "call <uid>" in reply
            assert (await ask(door_r, door_w, "call")).startswith("error: call needs a uid")
            assert (await ask(door_r, door_w, "mute now")) == "error: mute takes no argument"
            assert door_ep.calls.session.audio_muted  # the refused commands changed nothing

            assert (await ask(desk_r, desk_w, "end")) == "ok"
            await wait_until(lambda: door_kiosk.state.phase == Phase.IDLE, 10, "door idle")
            assert (await ask(door_r, door_w, "call nobody")).startswith("error: Could not call nobody")

            # a second kiosk may not take over a live socket
            with pytest.raises(HardwareError, match="in use"):
                await ControlServer(door_kiosk, door_path).start()
            for writer in (door_w, desk_w):
                writer.close()
        finally:
            await door_ctl.close()
            await desk_ctl.close()
        assert not door_path.exists()


# ----------------------------------------------------------------------------- no call server


class Spy:
    """Stands in for KioskController where only the calls matter."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.state = KioskState()
        self.observers: list[Callable[[KioskState], None]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.actions.append((name, {"args": args, **kwargs}))

    def add_observer(self, observer: Callable[[KioskState], None]) -> None:
        self.observers.append(observer)
        observer(self.state)

    def show(self, **changes: Any) -> None:
        self.state = KioskState(**changes)
        for observer in self.observers:
            observer(self.state)


async def test_debounce_keeps_a_tap_shorter_than_the_window(mock_factory):
    spy = Spy()
    panel = ButtonPanel(buttons_config(), spy, asyncio.get_running_loop(), pin_factory=mock_factory())
    try:
        end = panel.buttons["end"].pin
        end.drive_low()
        end.drive_high()  # released within the 30 ms window: the edge is dropped, the settle finds it
        await asyncio.sleep(0)
        assert spy.actions == []
        await asyncio.sleep(0.08)
        assert spy.actions == [("end_pressed", {"args": (), "press_answers": True})]

        # a release that bounces back low and high again: still one press
        spy.actions.clear()
        await asyncio.sleep(0.05)
        mute = panel.buttons["mute"].pin
        for _ in range(3):
            mute.drive_low()
            mute.drive_high()
        await asyncio.sleep(0.08)
        assert [name for name, _ in spy.actions] == ["toggle_mute"]
    finally:
        panel.close()
    with pytest.raises(HardwareError, match=r"buttons\.mute\.pin: cannot use GPIO 99"):
        ButtonPanel(
            ButtonsSection(mute=ButtonSection(99)),
            spy,
            asyncio.get_running_loop(),
            pin_factory=mock_factory(),
        )


async def test_leds_active_low_and_a_repeated_state_keeps_the_blink(mock_factory):
    spy = Spy()
    leds = LedsSection(in_call=LED_IN_CALL, muted=LED_MUTED, ringing=LED_RINGING, active_high=False)
    lights = StatusLights(leds, spy, mock_factory(), blink_on_s=BLINK_S, blink_off_s=BLINK_S)
    try:
        pins = {name: led.pin for name, led in lights.leds.items()}
        assert all(pin.state for pin in pins.values())  # active low: off is a high pin
        spy.show(phase=Phase.IN_CALL, muted=True)
        assert not pins["in_call"].state and not pins["muted"].state
        spy.show(phase=Phase.RINGING_IN)
        assert pins["in_call"].state and pins["muted"].state
        pins["ringing"].clear_states()
        for _ in range(10):  # state updates while ringing (messages, names) must not restart the blink
            spy.show(phase=Phase.RINGING_IN, message="still ringing")
            await asyncio.sleep(BLINK_S / 2)
        assert len(pins["ringing"].states) - 1 >= 4
        spy.show(phase=Phase.IDLE)
        assert await changes_of(pins["ringing"], 3 * BLINK_S) == 0 and pins["ringing"].state
    finally:
        lights.close()


def test_pin_factories_and_the_pi5_choice(tmp_path, monkeypatch):
    assert isinstance(make_pin_factory("mock"), MockFactory)
    with pytest.raises(
        HardwareError, match="cannot use the lgpio pin factory: the lgpio module is not installed"
    ):
        make_pin_factory("lgpio")
    with pytest.raises(HardwareError, match="unknown pin factory 'gpio'"):
        make_pin_factory("gpio")

    pi5, pi4 = tmp_path / "pi5", tmp_path / "pi4"
    pi5.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    pi4.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    assert is_raspberry_pi_5(pi5) and not is_raspberry_pi_5(pi4)
    assert not is_raspberry_pi_5(tmp_path / "missing")

    # "default" on a Pi 5 goes to lgpio itself (here it fails, naming lgpio); elsewhere gpiozero decides
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    with pytest.raises(HardwareError, match="lgpio"):
        make_pin_factory("default", model_path=pi5)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert isinstance(make_pin_factory("default", model_path=pi5), MockFactory)  # an explicit choice wins

    # the header's gpiochip is found by its label, whatever its number; compatibility links are skipped
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("gpiochip10", "gpiochip11", "gpiochip2"):
        (dev / name).touch()
    (dev / "gpiochip4").symlink_to(dev / "gpiochip2")
    labels = {"gpiochip10": "gpio-brcmstb@107d508500", "gpiochip2": "pinctrl-rp1", "gpiochip4": "pinctrl-rp1"}
    monkeypatch.setattr(buttons_module, "gpiochip_label", lambda path: labels.get(path.name, ""))
    assert buttons_module.header_gpiochip(dev) == 2
    labels["gpiochip2"] = "something else"
    assert buttons_module.header_gpiochip(dev) is None


async def test_start_controls_builds_what_the_config_asks_for(tmp_path, monkeypatch):
    socket_path = tmp_path / "kiosk.sock"
    config = parse_config(
        f"""
        [buttons]
        pin_factory = "mock"
        mute = {{ pin = {MUTE} }}
        end = {{ pin = {END}, press_answers = false }}
        call = {{ pin = {CALL}, contact = "desk" }}
        [leds]
        in_call = {LED_IN_CALL}
        ringing = {LED_RINGING}
        [emulation]
        keyboard = true
        control_socket = "{socket_path}"
        """,
        check_devices=False,
    )
    with os.fdopen(os.open(os.devnull, os.O_RDONLY)) as not_a_terminal:
        monkeypatch.setattr("sys.stdin", not_a_terminal)
        spy = Spy()
        controls = await start_controls(config, spy)
        try:
            assert isinstance(controls.pin_factory, MockFactory) and controls.owns_pin_factory
            assert controls.buttons is not None and set(controls.buttons.buttons) == {"mute", "end", "call"}
            assert controls.lights is not None and set(controls.lights.leds) == {"in_call", "ringing"}
            assert controls.keyboard is None  # stdin is not a terminal
            controls.buttons.buttons["call"].pin.drive_low()
            await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(b"end\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"ok\n"
            writer.close()
            assert spy.actions == [
                ("call", {"args": ("desk",)}),
                ("dispatch", {"args": ("end",), "press_answers": False}),
            ]
        finally:
            await controls.close()
    assert not socket_path.exists() and controls.buttons.keys == {}


async def test_keyboard_reads_keys_in_cbreak_and_restores_the_terminal():
    spy = Spy()
    master, slave = os.openpty()
    with os.fdopen(slave) as terminal:
        before = termios.tcgetattr(slave)
        keyboard = KeyboardControl(spy, contact="desk", press_answers=False, stdin=terminal)
        assert keyboard.start()
        try:
            assert not termios.tcgetattr(slave)[3] & termios.ICANON
            os.write(master, b"mEx")  # no Enter needed; unknown keys do nothing
            os.write(master, b"ec")
            await wait_until(lambda: len(spy.actions) == 4, 2, "four keys")
        finally:
            keyboard.close()
        assert termios.tcgetattr(slave) == before
        assert spy.actions == [
            ("dispatch", {"args": ("mute",)}),
            ("dispatch", {"args": ("end_hold",), "hold_rejects": True}),
            ("dispatch", {"args": ("end",), "press_answers": False}),
            ("dispatch", {"args": ("call:desk",)}),
        ]
    os.close(master)

    with os.fdopen(os.open(os.devnull, os.O_RDONLY)) as not_a_terminal:
        assert not KeyboardControl(spy, stdin=not_a_terminal).start()


async def test_socket_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(HardwareError, match="exists and is not a socket"):
        await ControlServer(Spy(), path).start()
    assert path.read_text() == ""  # left alone
