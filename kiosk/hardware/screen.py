"""The screen: dim it and let it sleep when nobody is there, wake it on approach, a touch or a call.

A `Backlight` shows one of three levels (on, dim, off) and never raises: a screen that cannot be
switched is logged and left as it is, because a kiosk never stops for its screen. Backends:

- `SysfsBacklight`: the kernel's backlight class (/sys/class/backlight/<device>, the ABI in the Linux
  tree's Documentation/ABI/stable/sysfs-class-backlight): `brightness` (0 to `max_brightness`) for on
  and dim, `bl_power` (4 = FB_BLANK_POWERDOWN, 0 = FB_BLANK_UNBLANK) for sleep. The Raspberry Pi touch
  displays have one; the writes run on a worker thread, since a backlight driver may talk to the panel
  over I2C or the firmware mailbox.
- `DpmsBacklight`: a screen with no backlight device (an HDMI monitor), switched by DPMS through the
  display server the kiosk runs under: `wlr-randr` on Wayland (labwc, Raspberry Pi OS Bookworm),
  `xset` on X11, else `vcgencmd display_power` (the firmware's display stack; a full-KMS kiosk drawing
  on the console has no external switch). Commands run as asyncio subprocesses; a failure is logged.
- `EmulatedBacklight`: records its levels (the emulated device, and tests).

`ScreenWaker` decides the level from activity (a PIR `MotionSensor`, touches reported by the UI), the
controller's phase (ringing or in a call: always on), idle timers (`dim_after`, `sleep_after`) and quiet
hours (`asleep_from` to `asleep_until`). During quiet hours the screen sleeps; motion or a touch wakes it
dimmed (a visitor at night can still see it, without a bright flash), and it sleeps again after
`dim_after` seconds without activity (`sleep_after` if it never dims, else 30 s). A call wakes it fully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gpiozero import Device, MotionSensor
from gpiozero.pins import Factory

from kiosk.config import KioskConfig, ScreenSection, time_of_day
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.hardware.buttons import HardwareError, make_pin_factory

log = logging.getLogger(__name__)

BACKLIGHT_CLASS = Path("/sys/class/backlight")
BL_POWER_ON, BL_POWER_OFF = 0, 4  # FB_BLANK_UNBLANK, FB_BLANK_POWERDOWN (include/uapi/linux/fb.h)
COMMAND_TIMEOUT = 5.0  # seconds a DPMS command may take before it is killed
NIGHT_WAKE_S = 30.0  # quiet hours, with neither dim_after nor sleep_after: how long a wake lasts
SCHEDULE_CHECK_S = 30.0  # the schedule is checked at least this often (the clock may be set late: no RTC)


class Level(StrEnum):
    ON = "on"
    DIM = "dim"
    OFF = "off"  # asleep


class Backlight(Protocol):
    """A screen that shows a level. `show` never raises: what fails is logged."""

    name: str

    async def show(self, level: Level) -> None: ...


# ----------------------------------------------------------------------------- backends


def first_backlight(root: Path = BACKLIGHT_CLASS) -> Path | None:
    """The first backlight device (by name) under `root`, or None when there is none."""
    try:
        devices = sorted(root.iterdir())
    except OSError:
        return None
    return devices[0] if devices else None


class SysfsBacklight:
    """A backlight device of the kernel's backlight class. Raises HardwareError when it cannot be used;
    built off the loop (it reads `max_brightness`)."""

    def __init__(
        self, directory: str | Path | None = None, *, dim_percent: int = 20, root: Path = BACKLIGHT_CLASS
    ) -> None:
        found = Path(directory) if directory else first_backlight(root)
        if found is None:
            raise HardwareError(
                f'screen.backlight: no backlight device in {root} (an HDMI monitor has none: backend = "dpms")'
            )
        self.directory = found
        if not found.is_dir():
            raise HardwareError(
                f"screen.backlight: {found} does not exist (is the display connected, and its overlay in"
                " /boot/firmware/config.txt?)"
            )
        try:
            self.max_brightness = int((found / "max_brightness").read_text().strip())
        except (OSError, ValueError) as exc:
            raise HardwareError(f"screen.backlight: cannot read {found / 'max_brightness'}: {exc}") from None
        if self.max_brightness < 1:
            raise HardwareError(f"screen.backlight: {found} has no brightness range (max_brightness 0)")
        if not os.access(found / "brightness", os.W_OK):
            raise HardwareError(
                f"screen.backlight: cannot write {found / 'brightness'} (the kiosk's user needs write access:"
                " a udev rule, docs/device.md)"
            )
        self.has_power = (found / "bl_power").exists()  # a class attribute, but a driver may lack it
        self.dim_brightness = max(1, round(self.max_brightness * dim_percent / 100))  # 0 is off on some
        self.name = f"backlight {found}"
        self._failed: set[tuple[str, int | None]] = set()

    async def show(self, level: Level) -> None:
        await asyncio.to_thread(self._show, level)

    def _show(self, level: Level) -> None:
        if level is Level.OFF:
            if self.has_power:
                self._write("bl_power", BL_POWER_OFF)
            else:
                self._write("brightness", 0)
            return
        # Brightness first, so the panel powers up at the level it is meant to show.
        self._write("brightness", self.max_brightness if level is Level.ON else self.dim_brightness)
        if self.has_power:
            self._write("bl_power", BL_POWER_ON)

    def _write(self, name: str, value: int) -> None:
        path = self.directory / name
        try:
            # No O_CREAT: a sysfs attribute exists or the device is gone.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(fd, b"%d\n" % value)
            finally:
                os.close(fd)
        except OSError as exc:
            if (name, exc.errno) not in self._failed:  # once per kind of failure, not at every wake
                self._failed.add((name, exc.errno))
                log.warning("screen: cannot write %d to %s: %s", value, path, exc.strerror or exc)


class DpmsBacklight:
    """DPMS through the display server of `env` (default: this process's): wlr-randr on Wayland,
    xset on X11, else vcgencmd. DPMS has no dim: dim is on."""

    def __init__(
        self, output: str = "", *, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> None:
        env = os.environ if env is None else env
        if env.get("WAYLAND_DISPLAY"):
            self.method = "wlr-randr"
        elif env.get("DISPLAY"):
            self.method = "xset"
        else:
            self.method = "vcgencmd"
        self.output = output
        self.timeout = timeout
        self.name = f"DPMS ({self.method})"
        self._on: bool | None = None  # unknown at start: the first level is always sent
        self._failed: set[str] = set()

    async def show(self, level: Level) -> None:
        on = level is not Level.OFF
        if on == self._on:
            return
        if self.method == "xset":
            argv = ["xset", "dpms", "force", "on" if on else "off"]
        elif self.method == "vcgencmd":
            argv = ["vcgencmd", "display_power", "1" if on else "0"]
        else:
            outputs = [self.output] if self.output else await self._wayland_outputs()
            if not outputs:
                return
            argv = ["wlr-randr"]
            for output in outputs:
                argv += ["--output", output, "--on" if on else "--off"]
        if await self._run(argv) is not None:
            self._on = on

    async def _wayland_outputs(self) -> list[str]:
        # wlr-randr with no arguments lists each output as an unindented line: `HDMI-A-1 "Maker ..."`.
        listing = await self._run(["wlr-randr"])
        if listing is None:
            return []
        return [line.split()[0] for line in listing.splitlines() if line.strip() and not line[0].isspace()]

    async def _run(self, argv: list[str]) -> str | None:
        """The command's output, or None (logged) when it could not run or failed."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self._warn(
                argv[0],
                f"screen: cannot run {argv[0]}: {exc.strerror or exc} (install it, or set screen.backend)",
            )
            return None
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            log.warning("screen: %s did not finish in %g s", " ".join(argv), self.timeout)
            return None
        finally:
            if process.returncode is None:  # timed out, or the kiosk is closing: no stray child
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0:
            reason = err.decode(errors="replace").strip()[:200] or f"exit status {process.returncode}"
            log.warning("screen: %s failed: %s", " ".join(argv), reason)
            return None
        return out.decode(errors="replace")

    def _warn(self, key: str, message: str) -> None:
        if key not in self._failed:
            self._failed.add(key)
            log.warning("%s", message)


class EmulatedBacklight:
    """Records what it was told to show: `level` now, `levels` every change."""

    def __init__(self, name: str = "emulated backlight") -> None:
        self.name = name
        self.level: Level | None = None
        self.levels: list[Level] = []

    async def show(self, level: Level) -> None:
        self.level = level
        self.levels.append(level)


def make_backlight(
    config: ScreenSection, *, root: Path = BACKLIGHT_CLASS, env: Mapping[str, str] | None = None
) -> Backlight:
    """The backlight `config.backend` names ("auto": the sysfs device when there is one, else DPMS).
    Raises HardwareError (naming the key) when a backlight device cannot be used. Reads sysfs: call
    it off the loop."""
    backend = config.backend
    if backend == "emulated":
        return EmulatedBacklight()
    if backend == "auto":
        backend = "sysfs" if config.backlight or first_backlight(root) is not None else "dpms"
    if backend == "dpms":
        return DpmsBacklight(config.dpms_output, env=env)
    return SysfsBacklight(config.backlight or None, dim_percent=config.dim_percent, root=root)


# ----------------------------------------------------------------------------- the waker


class ScreenWaker:
    """Keeps the screen on while someone is there or a call is up, dims it and lets it sleep otherwise.

    Activity: the PIR (`config.motion_pin`, a gpiozero MotionSensor on `pin_factory`; its callbacks come
    on gpiozero's threads and are handed to the loop), `touched()` (the UI, on the loop), and the end of
    a call. Ringing in or out and being in a call keep it on, quiet hours or not. `now` (the time of day
    for the schedule) and `monotonic` (the idle timers) can be injected; `update()` decides again now.
    Built on the loop's thread; `close()` leaves the screen on and releases the pin.
    """

    def __init__(
        self,
        config: ScreenSection,
        controller: KioskController,
        loop: asyncio.AbstractEventLoop,
        backlight: Backlight,
        pin_factory: Factory | None = None,
        *,
        owns_pin_factory: bool = False,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
        monotonic: Callable[[], float] = time.monotonic,
        check_every: float = SCHEDULE_CHECK_S,
    ) -> None:
        self.config = config
        self.controller = controller
        self.loop = loop
        self.backlight = backlight
        self.pin_factory = pin_factory
        self._owns_factory = owns_pin_factory
        self._now = now
        self._monotonic = monotonic
        self._check_every = check_every
        self.level = Level.ON  # what the screen should show now (it follows within a write or a command)
        self.problems: tuple[str, ...] = ()  # what start_screen could not use
        self.quiet: tuple[datetime.time, datetime.time] | None = (
            (time_of_day(config.asleep_from), time_of_day(config.asleep_until))
            if config.asleep_from
            else None
        )
        self._night_wake = config.dim_after or config.sleep_after or NIGHT_WAKE_S
        self._last_activity = monotonic()  # starting counts as activity: the screen is on at start
        self._busy = False  # ringing or in a call
        self._motion = False  # the PIR sees someone now
        self._shown: Level | None = None  # unknown at start (a previous run may have left it off)
        self._applier: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.sensor: Any = None  # gpiozero MotionSensor
        if config.motion_pin is not None:
            try:
                self.sensor = MotionSensor(config.motion_pin, pin_factory=pin_factory)
            except Exception as exc:
                self._release_factory()
                raise HardwareError(
                    f"screen.motion_pin: cannot use GPIO {config.motion_pin}: {exc}"
                ) from None
            # On gpiozero's threads: a hand-over, nothing more.
            self.sensor.when_motion = lambda: self._hand_over(True)
            self.sensor.when_no_motion = lambda: self._hand_over(False)
            self._motion = bool(self.sensor.motion_detected)
        controller.add_observer(self._on_state)  # called at once with the current phase
        self.update()  # the first decision: on, whatever a previous run left

    # ----------------------------------------------------------------- activity

    def touched(self) -> bool:
        """A finger on the screen (the UI, on the loop). True when the screen was asleep: the touch only
        woke it, and should not also press what is under the finger, which nobody could see."""
        if self._closed:
            return False
        asleep = self.level is Level.OFF
        self._activity()
        return asleep

    def _hand_over(self, motion: bool) -> None:
        try:
            self.loop.call_soon_threadsafe(self._motion_changed, motion)
        except RuntimeError:
            pass  # the loop is closed: the kiosk is shutting down

    def _motion_changed(self, motion: bool) -> None:
        if self._closed:
            return
        self._motion = motion
        self._activity()  # the end of motion too: someone was there until now

    def _activity(self) -> None:
        self._last_activity = self._monotonic()
        self.update()

    def _on_state(self, state: KioskState) -> None:
        if self._closed:
            return
        busy = state.phase is not Phase.IDLE
        if busy != self._busy:
            self._busy = busy
            self._activity()  # a call's end counts too: the screen stays on a while after it

    # ----------------------------------------------------------------- deciding

    def in_quiet_hours(self) -> bool:
        if self.quiet is None:
            return False
        start, end = self.quiet
        now = self._now().time()
        return start <= now < end if start < end else (now >= start or now < end)

    def update(self) -> None:
        """Decide the level now, and when to look again."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        level, wait = self._decide()
        self._want(level)
        if self.quiet is not None:
            wait = min(wait if wait is not None else self._check_every, self._check_every)
        if wait is not None:
            self._timer = self.loop.call_later(wait, self.update)

    def _decide(self) -> tuple[Level, float | None]:
        """The level for now, and the seconds until it would change by itself (None: never)."""
        if self._busy:
            return Level.ON, None
        idle = 0.0 if self._motion else max(0.0, self._monotonic() - self._last_activity)
        stages: list[tuple[float, Level]]
        if self.in_quiet_hours():
            stages = [(0.0, Level.DIM), (self._night_wake, Level.OFF)]
        else:
            stages = [(0.0, Level.ON)]
            if self.config.dim_after:
                stages.append((self.config.dim_after, Level.DIM))
            if self.config.sleep_after:
                stages.append((self.config.sleep_after, Level.OFF))
        level = stages[0][1]
        for after, stage in stages[1:]:
            if idle < after:
                return level, after - idle
            level = stage
        return level, None

    def _want(self, level: Level) -> None:
        if level is not self.level:
            log.info("screen: %s", level)
        self.level = level
        if self._applier is None or self._applier.done():
            self._applier = self.loop.create_task(self._apply())

    async def _apply(self) -> None:
        # One change at a time, the newest wins: a wake during a slow sleep command follows it at once.
        while self._shown is not self.level:
            target = self.level
            try:
                await self.backlight.show(target)
            except Exception:  # a backend must not raise; if one does, the kiosk still carries on
                log.exception("screen: %s failed to show %s", self.backlight.name, target)
            self._shown = target

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        """Leave the screen on (whoever comes next must see it) and release the PIR's pin."""
        if self._closed:
            return
        self.controller.remove_observer(self._on_state)
        if self._timer is not None:
            self._timer.cancel()
        if self.sensor is not None:
            self.sensor.close()
        self._want(Level.ON)
        self._closed = True
        if self._applier is not None:
            try:
                await asyncio.wait_for(self._applier, COMMAND_TIMEOUT + 1)
            except Exception:
                log.warning("screen: could not switch it back on when closing")
        self._release_factory()

    def _release_factory(self) -> None:
        if self._owns_factory and self.pin_factory is not None:
            self._owns_factory = False
            self.pin_factory.close()


async def start_screen(
    config: KioskConfig,
    controller: KioskController,
    *,
    pin_factory: Factory | None = None,
    backlight: Backlight | None = None,
    root: Path = BACKLIGHT_CLASS,
) -> ScreenWaker | None:
    """The waker `[screen]` asks for, or None when it asks for nothing (the screen is left alone).

    `pin_factory`: the one the buttons and LEDs use (else one is made from buttons.pin_factory when a
    PIR is configured). What cannot be used (no backlight device, a PIR pin that cannot be opened) is
    logged and shown on the home screen, and the kiosk carries on with the rest: the screen then stays
    on, or wakes only on touches and calls."""
    screen = config.screen
    if not screen.active:
        return None
    problems: list[str] = []
    if backlight is None:
        try:
            backlight = await asyncio.to_thread(make_backlight, screen, root=root)
        except HardwareError as exc:
            problems.append(f"{exc}: the screen stays on.")
            backlight = EmulatedBacklight("no backlight")
    owns = False
    if screen.motion_pin is not None and pin_factory is None:
        try:
            pin_factory = make_pin_factory(config.buttons.pin_factory)
            owns = pin_factory is not Device.pin_factory
        except HardwareError as exc:
            problems.append(f"{exc} (for screen.motion_pin)")
            screen = dataclasses.replace(screen, motion_pin=None)
    loop = asyncio.get_running_loop()
    try:
        waker = ScreenWaker(screen, controller, loop, backlight, pin_factory, owns_pin_factory=owns)
    except HardwareError as exc:
        problems.append(f"{exc}: the screen wakes on touches and calls only.")
        waker = ScreenWaker(dataclasses.replace(screen, motion_pin=None), controller, loop, backlight)
    if problems:
        waker.problems = tuple(problems)
        for problem in problems:
            log.warning("%s", problem)
        # Added to what the home screen already says (devices missing at start), not in its place.
        controller.report(" ".join(filter(None, (controller.state.message, *problems))))
    log.info("screen: %s, %s", backlight.name, waker.level)
    return waker
