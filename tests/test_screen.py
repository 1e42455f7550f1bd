"""Wake on approach (kiosk/hardware/screen.py): a PIR on gpiozero's MockFactory, a backlight directory
laid out as the kernel's backlight class has it (Documentation/ABI/stable/sysfs-class-backlight:
`brightness` 0..`max_brightness`, `bl_power` 0 on / 4 off), DPMS commands run for real (stand-ins on
PATH that write down how they were called), and the Kivy app's touch hook in a child process (one
Kivy window per process, as tests/test_ui.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from calls_support import wait_until
from gpiozero import LED
from gpiozero.pins.mock import MockFactory

from kiosk.config import ConfigError, ScreenSection, parse_config
from kiosk.controller import KioskState, Phase
from kiosk.hardware.buttons import HardwareError
from kiosk.hardware.screen import (
    DpmsBacklight,
    EmulatedBacklight,
    Level,
    ScreenWaker,
    SysfsBacklight,
    make_backlight,
    start_screen,
)

HERE = Path(__file__).resolve().parent
PIR = 4
MAX = 255
DIMMED = 51  # 20 % of 255, the default dim_percent
NIGHT = datetime.datetime(2026, 1, 15, 23, 0)  # inside 22:00-06:30
MORNING = datetime.datetime(2026, 1, 16, 7, 0)
CHILD_TIMEOUT = 60.0


class Controller:
    """Stands in for KioskController: its phase and message, and its observers."""

    def __init__(self) -> None:
        self.state = KioskState()
        self.observers: list[Callable[[KioskState], None]] = []

    def add_observer(self, observer: Callable[[KioskState], None]) -> None:
        self.observers.append(observer)
        observer(self.state)

    def remove_observer(self, observer: Callable[[KioskState], None]) -> None:
        self.observers.remove(observer)

    def report(self, message: str) -> None:
        self.show(message=message)

    def show(self, **changes: Any) -> None:
        self.state = dataclasses.replace(self.state, **changes)
        for observer in list(self.observers):
            observer(self.state)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    made = MockFactory()
    yield made
    made.reset()


def backlight_dir(tmp: Path, *, brightness: int = MAX, power: int = 0, name: str = "10-0045") -> Path:
    """A backlight device as the kernel lays it out (the Pi 7-inch display's, on Bookworm)."""
    device = tmp / "class" / "backlight" / name
    device.mkdir(parents=True)
    for attribute, value in (
        ("max_brightness", MAX),
        ("brightness", brightness),
        ("actual_brightness", brightness),
        ("bl_power", power),
        ("type", "raw"),
    ):
        (device / attribute).write_text(f"{value}\n")
    return device


def read(device: Path, attribute: str) -> int | None:
    # None while a write is half done (truncated, not yet written): a plain file, unlike sysfs, shows that.
    text = (device / attribute).read_text().strip()
    return int(text) if text else None


def shows(device: Path, brightness: int, power: int) -> Callable[[], bool]:
    return lambda: read(device, "brightness") == brightness and read(device, "bl_power") == power


def waker_on(
    config: ScreenSection,
    controller: Controller,
    backlight: Any,
    factory: MockFactory | None = None,
    **options: Any,
) -> ScreenWaker:
    return ScreenWaker(config, controller, asyncio.get_running_loop(), backlight, factory, **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- activity and timers


async def test_motion_wakes_a_sleeping_screen(tmp_path: Path, factory: MockFactory) -> None:
    device = backlight_dir(tmp_path)
    config = ScreenSection(
        backend="sysfs", backlight=str(device), dim_after=0.1, sleep_after=0.2, motion_pin=PIR
    )
    waker = waker_on(config, Controller(), SysfsBacklight(device), factory)
    try:
        await wait_until(lambda: read(device, "bl_power") == 4, 5, "the screen asleep")
        factory.pin(PIR).drive_high()  # the PIR's output goes high: someone is there
        await wait_until(shows(device, MAX, 0), 5, "the screen on at full brightness")
        assert waker.level is Level.ON
    finally:
        await waker.close()
    assert waker.sensor.closed


async def test_without_activity_the_screen_dims_then_sleeps(tmp_path: Path) -> None:
    # A previous run left the screen off: it comes on at start.
    left_off = backlight_dir(tmp_path / "left-off", brightness=DIMMED, power=4)
    starting = waker_on(ScreenSection(sleep_after=60), Controller(), SysfsBacklight(left_off))
    try:
        await wait_until(shows(left_off, MAX, 0), 5, "the screen on at start")
    finally:
        await starting.close()

    # The timers run by themselves. Each stage lasts long enough that a busy machine does not skip one
    # (a late timer goes straight to the level of its time, as it should on a device).
    device = backlight_dir(tmp_path)
    config = ScreenSection(dim_after=0.3, sleep_after=0.9, dim_percent=20)
    sysfs = waker_on(config, Controller(), SysfsBacklight(device, dim_percent=20))
    emulated = EmulatedBacklight()
    recorded = waker_on(config, Controller(), emulated)
    try:
        # Dimmed before it slept: sleeping switches bl_power only, so the dimmed brightness stays.
        await wait_until(shows(device, DIMMED, 4), 5, "the screen asleep after dimming")
        await wait_until(lambda: emulated.level is Level.OFF, 5, "the emulated screen asleep")
        assert emulated.levels == [Level.ON, Level.DIM, Level.OFF]
    finally:
        await sysfs.close()
        await recorded.close()
    assert shows(device, MAX, 0)() and emulated.level is Level.ON  # closing leaves it on


async def test_a_touch_wakes_the_screen_and_only_wakes_it(tmp_path: Path) -> None:
    backlight, clock = EmulatedBacklight(), Clock()
    waker = waker_on(ScreenSection(sleep_after=10), Controller(), backlight, monotonic=clock)
    try:
        assert waker.touched() is False  # awake: the touch goes on to the button under it
        clock.now += 11
        waker.update()
        await wait_until(lambda: backlight.level is Level.OFF, 5, "the screen asleep")
        assert waker.touched() is True  # asleep: that touch only woke it
        assert waker.level is Level.ON
        await wait_until(lambda: backlight.level is Level.ON, 5, "the screen on")
        assert waker.touched() is False
    finally:
        await waker.close()


async def test_a_call_wakes_the_screen_and_keeps_it_on_even_in_quiet_hours(
    tmp_path: Path, factory: MockFactory
) -> None:
    device = backlight_dir(tmp_path)
    clock, now = Clock(), [NIGHT]
    config = ScreenSection(
        dim_after=10, sleep_after=60, motion_pin=PIR, asleep_from="22:00", asleep_until="06:30"
    )
    controller = Controller()
    waker = waker_on(config, controller, SysfsBacklight(device), factory, now=lambda: now[0], monotonic=clock)
    try:
        # Quiet hours: starting is activity, so dimmed; after dim_after without any, asleep.
        assert waker.in_quiet_hours() and waker.level is Level.DIM
        clock.now += 11
        waker.update()
        assert waker.level is Level.OFF
        await wait_until(lambda: read(device, "bl_power") == 4, 5, "asleep in quiet hours")

        controller.show(phase=Phase.RINGING_IN)
        assert waker.level is Level.ON
        await wait_until(shows(device, MAX, 0), 5, "the screen on for the incoming call")
        clock.now += 3600  # an hour of ringing with nobody moving: still on
        waker.update()
        assert waker.level is Level.ON
        controller.show(phase=Phase.IN_CALL)
        clock.now += 3600
        waker.update()
        assert waker.level is Level.ON

        controller.show(phase=Phase.IDLE)  # the call is over: back to the night's rule
        assert waker.level is Level.DIM
        clock.now += 11
        waker.update()
        assert waker.level is Level.OFF
        await wait_until(lambda: read(device, "bl_power") == 4, 5, "asleep again after the call")

        # Motion at night wakes it dimmed, not at full brightness.
        factory.pin(PIR).drive_high()
        await wait_until(lambda: waker.level is Level.DIM, 5, "dimmed by motion at night")
        await wait_until(shows(device, DIMMED, 0), 5, "the dimmed screen on")

        now[0] = MORNING  # quiet hours are over, and someone is there: on
        waker.update()
        assert not waker.in_quiet_hours() and waker.level is Level.ON
        await wait_until(shows(device, MAX, 0), 5, "on in the morning")
    finally:
        await waker.close()


def test_quiet_hours_within_a_day_and_across_midnight() -> None:
    def quiet(start: str, end: str, hour: int, minute: int) -> bool:
        now = datetime.datetime(2026, 1, 15, hour, minute)
        section = ScreenSection(asleep_from=start, asleep_until=end)
        waker = ScreenWaker.__new__(ScreenWaker)  # only the schedule: no loop, controller or pin
        waker.quiet = (datetime.time.fromisoformat(start), datetime.time.fromisoformat(end))
        waker._now = lambda: now  # type: ignore[method-assign]
        assert section.active
        return waker.in_quiet_hours()

    assert (
        quiet("22:00", "06:30", 23, 0) and quiet("22:00", "06:30", 6, 29) and quiet("22:00", "06:30", 22, 0)
    )
    assert not quiet("22:00", "06:30", 6, 30) and not quiet("22:00", "06:30", 12, 0)
    assert quiet("12:00", "13:30", 12, 45) and not quiet("12:00", "13:30", 13, 30)
    assert not quiet("12:00", "13:30", 11, 59)


# ----------------------------------------------------------------------------- config


def test_the_screen_section_and_its_mistakes() -> None:
    default = parse_config("")
    assert default.screen == ScreenSection() and not default.screen.active  # the screen is left alone
    config = parse_config(
        """
        [screen]
        backend = "sysfs"
        backlight = "/sys/class/backlight/10-0045"
        dim_after = 60
        sleep_after = 300.5
        dim_percent = 30
        motion_pin = 4
        asleep_from = "22:00"
        asleep_until = "06:30"
        """
    )
    assert config.screen.active and config.screen.dim_after == 60.0 and config.screen.sleep_after == 300.5
    assert config.screen.motion_pin == 4 and config.screen.asleep_until == "06:30"

    mistakes = [
        (
            "[buttons.mute]\npin = 17\n[screen]\nmotion_pin = 17\n",
            "screen.motion_pin: pin 17 is also used by buttons.mute.pin",
        ),
        (
            "[leds]\nringing = 13\n[screen]\nmotion_pin = 13\n",
            "screen.motion_pin: pin 13 is also used by leds.ringing",
        ),
        ("[screen]\nmotion_pin = 54\n", "screen.motion_pin: GPIO 54 does not exist"),
        ("[screen]\ndim_after = -1\n", "screen.dim_after: must be 0 (never) or more"),
        ("[screen]\nsleep_after = inf\n", "screen.sleep_after: expected a finite number"),
        ("[screen]\ndim_after = nan\n", "screen.dim_after: expected a finite number"),
        (
            "[screen]\ndim_after = 60\nsleep_after = 30\n",
            "screen.sleep_after: must be more than screen.dim_after",
        ),
        ("[screen]\nasleep_from = '22:00'\n", "quiet hours need both"),
        (
            "[screen]\nasleep_from = '10pm'\nasleep_until = '06:30'\n",
            "screen.asleep_from: '10pm' is not a time",
        ),
        ("[screen]\nasleep_from = '22:00'\nasleep_until = '24:00'\n", "screen.asleep_until: '24:00' is not"),
        ("[screen]\nasleep_from = '22:00'\nasleep_until = '22:00'\n", "the same time as asleep_from"),
        ("[screen]\nbackend = 'hdmi'\n", "screen.backend: expected one of"),
        (
            "[screen]\nbackend = 'dpms'\nbacklight = '/sys/class/backlight/x'\n",
            "screen.backlight: only the sysfs",
        ),
        ("[screen]\ndim_percent = 0\n", "screen.dim_percent: 0 is not between 1 and 100"),
    ]
    for text, words in mistakes:
        with pytest.raises(ConfigError) as error:
            parse_config(text, "test.toml")
        assert words in str(error.value), text


# ----------------------------------------------------------------------------- missing devices


async def test_a_missing_backlight_is_reported_and_the_kiosk_carries_on(tmp_path: Path, caplog: Any) -> None:
    missing = tmp_path / "class" / "backlight" / "10-0045"
    with pytest.raises(HardwareError, match=rf"screen\.backlight: {missing} does not exist"):
        SysfsBacklight(missing)
    with pytest.raises(HardwareError, match="no backlight device in"):
        SysfsBacklight(root=tmp_path / "empty")
    # "auto" takes the backlight device when there is one, else DPMS (an HDMI monitor).
    assert isinstance(make_backlight(ScreenSection(), root=tmp_path / "empty", env={}), DpmsBacklight)
    device = backlight_dir(tmp_path / "present")
    chosen = make_backlight(ScreenSection(), root=device.parent)
    assert isinstance(chosen, SysfsBacklight) and chosen.directory == device

    # The whole start: the problem is logged and shown after what the home screen said already.
    config = parse_config(f"[screen]\nbackend = 'sysfs'\nbacklight = '{missing}'\nsleep_after = 0.1\n")
    controller = Controller()
    controller.report("No microphone (audio.capture).")
    caplog.set_level(logging.WARNING, "kiosk.hardware.screen")
    waker = await start_screen(config, controller)  # type: ignore[arg-type]
    assert waker is not None
    try:
        assert f"{missing} does not exist" in caplog.text
        assert controller.state.message.startswith("No microphone (audio.capture). screen.backlight:")
        assert "the screen stays on" in controller.state.message
        await wait_until(lambda: waker.level is Level.OFF, 5, "the waker going on without a backlight")
        assert waker.touched() is True
    finally:
        await waker.close()
    assert await start_screen(parse_config(""), controller) is None  # type: ignore[arg-type]


async def test_a_backlight_that_refuses_a_write_is_logged_and_the_rest_goes_on(
    tmp_path: Path, caplog: Any
) -> None:
    device = backlight_dir(tmp_path)
    (device / "brightness").unlink()
    (device / "brightness").mkdir()  # a write fails (EISDIR) as a driver's refusal would
    caplog.set_level(logging.WARNING, "kiosk.hardware.screen")
    waker = waker_on(ScreenSection(sleep_after=0.1), Controller(), SysfsBacklight(device))
    try:
        await wait_until(lambda: read(device, "bl_power") == 4, 5, "bl_power written all the same")
        assert f"cannot write {MAX} to {device / 'brightness'}" in caplog.text
    finally:
        await waker.close()
    assert read(device, "bl_power") == 0


async def test_a_pir_pin_that_cannot_be_used_is_reported_and_touches_still_wake(factory: MockFactory) -> None:
    holder = LED(PIR, pin_factory=factory)  # the pin is taken: gpiozero refuses a second device on it
    config = parse_config(f"[screen]\nbackend = 'emulated'\nsleep_after = 5\nmotion_pin = {PIR}\n")
    controller = Controller()
    try:
        waker = await start_screen(config, controller, pin_factory=factory)  # type: ignore[arg-type]
        assert waker is not None and waker.sensor is None
        assert controller.state.message.startswith(f"screen.motion_pin: cannot use GPIO {PIR}")
        await waker.close()
    finally:
        holder.close()


# ----------------------------------------------------------------------------- DPMS


STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
{body}
"""


def stand_ins(tmp: Path, **bodies: str) -> Path:
    """Commands on a directory put first on PATH, each writing its name and arguments to calls.log."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, body in bodies.items():
        path = bin_dir / name
        path.write_text(STAND_IN.format(log=tmp / "calls.log", body=body))
        path.chmod(0o755)
    return bin_dir


def calls_of(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


WLR_RANDR_LISTING = """if [ $# -eq 0 ]; then
cat <<'EOF'
HDMI-A-1 "Dell Inc. DELL P2419H 1234 (HDMI-A-1)"
  Enabled: yes
  Modes:
    1920x1080 px, 60.000000 Hz (preferred, current)
HDMI-A-2 "Unknown (HDMI-A-2)"
  Enabled: yes
EOF
fi"""


async def test_dpms_runs_the_display_servers_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    bin_dir = stand_ins(
        tmp_path, **{"wlr-randr": WLR_RANDR_LISTING, "xset": "", "vcgencmd": 'echo "display_power=$2"'}
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    wayland = DpmsBacklight(env={"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"})
    await wayland.show(Level.OFF)
    await wayland.show(Level.DIM)  # DPMS has no dim: on
    await wayland.show(Level.ON)  # already on: nothing run
    assert calls_of(tmp_path) == [
        "wlr-randr ",
        "wlr-randr --output HDMI-A-1 --off --output HDMI-A-2 --off",
        "wlr-randr ",
        "wlr-randr --output HDMI-A-1 --on --output HDMI-A-2 --on",
    ]
    (tmp_path / "calls.log").unlink()
    named = DpmsBacklight("HDMI-A-2", env={"WAYLAND_DISPLAY": "wayland-1"})
    await named.show(Level.OFF)
    assert calls_of(tmp_path) == ["wlr-randr --output HDMI-A-2 --off"]

    (tmp_path / "calls.log").unlink()
    x11 = DpmsBacklight(env={"DISPLAY": ":0"})
    await x11.show(Level.OFF)
    await x11.show(Level.ON)
    console = DpmsBacklight(env={})
    await console.show(Level.OFF)
    await console.show(Level.ON)
    assert calls_of(tmp_path) == [
        "xset dpms force off",
        "xset dpms force on",
        "vcgencmd display_power 0",
        "vcgencmd display_power 1",
    ]

    # A command that fails, or is not installed: logged, and the kiosk goes on.
    caplog.set_level(logging.WARNING, "kiosk.hardware.screen")
    (bin_dir / "xset").write_text('#!/bin/sh\necho "xset:  unable to open display" >&2\nexit 1\n')
    await DpmsBacklight(env={"DISPLAY": ":0"}).show(Level.OFF)
    assert "xset dpms force off failed: xset:  unable to open display" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    await DpmsBacklight(env={}).show(Level.OFF)
    assert "cannot run vcgencmd" in caplog.text


async def test_a_dpms_command_that_hangs_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    bin_dir = stand_ins(tmp_path, xset=f"echo $$ > {tmp_path / 'pid'}\nexec sleep 30")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    caplog.set_level(logging.WARNING, "kiosk.hardware.screen")
    hanging = DpmsBacklight(env={"DISPLAY": ":0"}, timeout=0.3)
    await asyncio.wait_for(hanging.show(Level.OFF), 10)
    assert "xset dpms force off did not finish" in caplog.text
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int((tmp_path / "pid").read_text()), 0)


# ----------------------------------------------------------------------------- the kiosk and its screen


async def test_the_kiosk_starts_its_screen_on_the_buttons_pin_factory_and_closes_it(tmp_path: Path) -> None:
    from kiosk.assembly import Kiosk, KioskOptions

    device = backlight_dir(tmp_path)
    config = parse_config(
        f"""
        [server]
        url = "http://127.0.0.1:9"
        auth_token = "t"
        [[cameras]]
        backend = "emulated"
        width = 160
        height = 120
        fps = 5
        [audio]
        backend = "emulated"
        echo_cancellation = false
        noise_suppression = false
        auto_gain_control = false
        volume_file = "{tmp_path}/volume.json"
        [buttons]
        pin_factory = "mock"
        mute = {{ pin = 17 }}
        [screen]
        backlight = "{device}"
        sleep_after = 0.3
        motion_pin = {PIR}
        [emulation]
        keyboard = false
        """
    )
    kiosk = Kiosk(config, KioskOptions(start_without_server=True))
    await kiosk.start()
    try:
        screen, controls = kiosk.screen, kiosk.controls
        assert screen is not None and controls is not None and controls.buttons is not None
        assert screen.sensor.pin_factory is controls.pin_factory  # one factory for every pin
        await wait_until(lambda: read(device, "bl_power") == 4, 5, "asleep")
        screen.sensor.pin.drive_high()
        await wait_until(shows(device, MAX, 0), 5, "woken by the PIR")
    finally:
        await kiosk.close()
    assert screen.sensor.closed and shows(device, MAX, 0)()


def test_a_touch_on_a_sleeping_screen_wakes_it_and_presses_nothing(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "KIVY_HOME"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(tmp_path), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    seen = json.loads(report.read_text())
    assert seen == {
        "asleep": "off",
        "after the first tap": {"pressed": [], "level": "on"},
        "after the second tap": {"pressed": ["desk"], "level": "on"},
    }


async def touch_scenario(tmp: Path) -> dict[str, Any]:
    """In the child: the kiosk app with a screen waker; a tap on "Call Desk" while the screen sleeps,
    then another once it is on. The taps go through Kivy's input dispatch, as a finger's would."""
    from kivy.tests.common import UnitTestTouch

    from kiosk.calls import Calls
    from kiosk.config import Contact
    from kiosk.controller import KioskController
    from kiosk.media.emulated import EmulatedDevices
    from kiosk.ui.kivy_app import KioskApp

    calls = Calls("http://127.0.0.1:9", auth_token="", devices=EmulatedDevices(width=160, height=120, fps=5))
    controller = KioskController(calls)
    pressed: list[str] = []
    controller.call = lambda uid, *args, **kwargs: pressed.append(uid)  # type: ignore[method-assign,assignment,return-value]
    backlight, clock = EmulatedBacklight(), Clock()
    waker = ScreenWaker(
        ScreenSection(sleep_after=10), controller, asyncio.get_running_loop(), backlight, monotonic=clock
    )
    app = KioskApp(controller, contacts=[Contact("desk", "Desk")], screen_touched=waker.touched)
    runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))
    seen: dict[str, Any] = {}
    try:
        await wait_until(lambda: getattr(app, "home", None) is not None, 20, "the app built")
        button = app.home.call_buttons["desk"]
        await wait_until(lambda: button.width > 100 and button.y > 0, 20, "the home screen laid out")
        clock.now += 11  # nobody for longer than sleep_after
        waker.update()
        await wait_until(lambda: backlight.level is Level.OFF, 20, "the screen asleep")
        seen["asleep"] = str(backlight.level)

        def tap(label: str) -> None:
            x, y = button.to_window(*button.center)
            touch = UnitTestTouch(x, y)
            touch.touch_down()
            touch.touch_up()
            seen[label] = {"pressed": list(pressed), "level": str(waker.level)}

        tap("after the first tap")
        await wait_until(lambda: backlight.level is Level.ON, 20, "the screen on")
        tap("after the second tap")
    finally:
        app.stop()
        await asyncio.wait_for(runner, 20)
        await waker.close()
        await calls.close()
    return seen


def _child(tmp: Path, report: Path) -> None:
    sys.path.insert(0, str(HERE))  # calls_support
    from kiosk.ui.env import prepare_kivy

    prepare_kivy(width=800, height=480, offscreen=True, kivy_home=tmp / "kivy-home")
    report.write_text(json.dumps(asyncio.run(touch_scenario(tmp))))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
