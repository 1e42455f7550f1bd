"""Physical buttons on GPIO pins, driving the same `KioskController` actions as the touch screen.

gpiozero calls back on its own threads (on a device: the pin library's event thread, and a hold thread
for `when_held`). Those callbacks only take a timestamp and hand the edge to the asyncio loop with
`call_soon_threadsafe`; debouncing, press/hold logic and the controller all run on the loop.

Debouncing happens here as well as in the pin library: not every pin factory applies `bounce_time`
(the mock stores it and ignores it), and the ones that do differ in how. An edge within `bounce_ms` of
the last accepted edge of the same button is dropped; once the window has passed, the pin is read again
so a tap shorter than the window, or a burst that ended in the other state, is not lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero import Button, Device
from gpiozero.pins import Factory

from kiosk.config import ButtonSection, ButtonsSection, EndButtonSection
from kiosk.controller import KioskController

log = logging.getLogger(__name__)

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

# Pin-controller labels of the 40-pin header, newest board first (Pi 5's RP1, then Pi 4, then older).
_HEADER_CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")
# GPIO_GET_CHIPINFO_IOCTL: _IOR(0xB4, 0x01, struct gpiochip_info {char name[32]; char label[32]; u32 lines})
_GPIO_GET_CHIPINFO_IOCTL = 0x8044B401
_CHIPINFO_SIZE = 68


class HardwareError(Exception):
    """GPIO that cannot be used, in words a person can act on (shown instead of a traceback)."""


# ----------------------------------------------------------------------------- pin factories


def is_raspberry_pi_5(model_path: Path = DEVICE_TREE_MODEL) -> bool:
    """True on a Pi 5 board (Pi 5, Pi 500, Compute Module 5), from the device tree's model string."""
    try:
        model = model_path.read_bytes().rstrip(b"\0").decode("ascii", "replace")
    except OSError:
        return False
    return re.match(r"Raspberry Pi (5|500|Compute Module 5)\b", model) is not None


def gpiochip_label(path: Path) -> str:
    """The label the kernel gives a /dev/gpiochipN (e.g. "pinctrl-rp1"); "" when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        info = fcntl.ioctl(fd, _GPIO_GET_CHIPINFO_IOCTL, bytes(_CHIPINFO_SIZE))
    except OSError:
        return ""
    finally:
        os.close(fd)
    return info[32:64].split(b"\0", 1)[0].decode("ascii", "replace")


def header_gpiochip(dev_dir: Path = Path("/dev")) -> int | None:
    """Number of the gpiochip that drives the 40-pin header, found by its label, or None.

    Pi 5 kernels have moved it (gpiochip4, then gpiochip0, then other numbers), and gpiozero 2.0.1
    guesses 4 or 0, so on a Pi 5 the chip is looked up instead of guessed.
    """
    chips: dict[str, int] = {}
    for path in sorted(dev_dir.glob("gpiochip*")):
        number = path.name.removeprefix("gpiochip")
        if path.is_symlink() or not number.isdigit():
            continue  # compatibility links (gpiochip4 -> gpiochip0) name a chip already listed
        chips.setdefault(gpiochip_label(path), int(number))
    return next((chips[label] for label in _HEADER_CHIP_LABELS if label in chips), None)


def make_pin_factory(name: str, *, model_path: Path = DEVICE_TREE_MODEL) -> Factory:
    """The gpiozero pin factory the config names ("default", "lgpio", "rpigpio", "pigpio", "mock").

    "default" leaves the choice to gpiozero (which honours GPIOZERO_PIN_FACTORY and an already set
    `Device.pin_factory`), except on a Pi 5 where only lgpio works and auto-detection has picked others.
    Raises HardwareError with the reason when the factory cannot be made.
    """
    try:
        if name == "mock":
            from gpiozero.pins.mock import MockFactory

            return MockFactory()
        if name == "lgpio":
            return _lgpio_factory(model_path)
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        if name != "default":
            raise HardwareError(
                f"buttons.pin_factory: unknown pin factory {name!r} (default, lgpio, rpigpio, pigpio, mock)"
            )
        chosen_elsewhere = os.environ.get("GPIOZERO_PIN_FACTORY") or Device.pin_factory is not None
        if is_raspberry_pi_5(model_path) and not chosen_elsewhere:
            return _lgpio_factory(model_path)
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always")
            Device.ensure_pin_factory()
        for fallback in fallbacks:
            log.info("gpiozero: %s", fallback.message)
        assert Device.pin_factory is not None
        return Device.pin_factory
    except HardwareError:
        raise
    except Exception as exc:
        raise HardwareError(_factory_problem(name, exc)) from None


def _lgpio_factory(model_path: Path) -> Factory:
    from gpiozero.pins.lgpio import LGPIOFactory

    chip = header_gpiochip() if is_raspberry_pi_5(model_path) else None
    return LGPIOFactory() if chip is None else LGPIOFactory(chip=chip)


def _factory_problem(name: str, exc: Exception) -> str:
    reason = (str(exc) or type(exc).__name__).rstrip(".!")
    hints = {
        "lgpio": "Install python3-lgpio (apt) or lgpio (pip); it needs access to /dev/gpiochip* (the gpio"
        " group) and a writable working directory.",
        "rpigpio": "Install RPi.GPIO; it does not work on a Raspberry Pi 5 (use lgpio there).",
        "pigpio": "Install pigpio and start the pigpiod daemon; it does not work on a Raspberry Pi 5.",
        "default": 'Is this a Raspberry Pi? Set buttons.pin_factory, or "mock" to run without GPIO.',
    }
    if isinstance(exc, ModuleNotFoundError):
        reason = f"the {exc.name} module is not installed"
    message = f"buttons.pin_factory: cannot use the {name} pin factory: {reason}."
    return f"{message} {hints[name]}" if name in hints else message


# ----------------------------------------------------------------------------- buttons


@dataclass
class _Key:
    """One button's debounce and press/hold state, touched only on the event loop."""

    name: str
    config: ButtonSection
    device: Any  # gpiozero.Button
    on_press: Callable[[], object] | None = None  # acts at the press edge
    on_tap: Callable[[], object] | None = None  # acts at the release, unless the press became a hold
    on_hold: Callable[[], object] | None = None
    repeat: bool = False  # the hold action repeats every hold_s while held (volume buttons)
    pressed: bool = False
    held: bool = False
    last_edge: float = field(default=float("-inf"))
    settle: asyncio.TimerHandle | None = None

    @property
    def bounce(self) -> float:
        return self.config.bounce_ms / 1000.0


class ButtonPanel:
    """gpiozero Buttons for the configured buttons, wired to the controller's actions.

    mute: toggle_mute at the press. end: end_pressed at the release (a short press), end_held when held
    for hold_s (and then the release does nothing). audio_mode: cycle_audio_mode at the press.
    call: call(contact) at the press. volume_up / volume_down: one step at the press, and another
    every hold_s while held. door: open_door (the door kiosk in the call) at the press. Built on the
    loop's thread; `close()` releases the pins.
    """

    def __init__(
        self,
        config: ButtonsSection,
        controller: KioskController,
        loop: asyncio.AbstractEventLoop,
        pin_factory: Factory | None = None,
    ) -> None:
        self.config = config
        self.controller = controller
        self.loop = loop
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(config.pin_factory)
        # A factory made here (and not gpiozero's shared default) is closed with the panel.
        self._owns_factory = pin_factory is None and self.pin_factory is not Device.pin_factory
        self.keys: dict[str, _Key] = {}
        self._closed = False
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _build(self) -> None:
        cfg = self.config
        # Actions look the controller method up when they run, so a test or a wrapper may replace it.
        if cfg.mute is not None:
            self._add("mute", cfg.mute, on_press=lambda: self.controller.toggle_mute())
        if cfg.end is not None:
            end: EndButtonSection = cfg.end
            self._add(
                "end",
                end,
                on_tap=lambda: self.controller.end_pressed(press_answers=end.press_answers),
                on_hold=lambda: self.controller.end_held(hold_rejects=end.hold_rejects),
            )
        if cfg.audio_mode is not None:
            self._add("audio_mode", cfg.audio_mode, on_press=lambda: self.controller.cycle_audio_mode())
        if cfg.call is not None:
            contact = cfg.call.contact
            self._add("call", cfg.call, on_press=lambda: self.controller.call(contact))
        if cfg.volume_up is not None:
            up = lambda: self.controller.volume_up()  # noqa: E731
            self._add("volume_up", cfg.volume_up, on_press=up, on_hold=up, repeat=True)
        if cfg.volume_down is not None:
            down = lambda: self.controller.volume_down()  # noqa: E731
            self._add("volume_down", cfg.volume_down, on_press=down, on_hold=down, repeat=True)
        if cfg.door is not None:
            self._add("door", cfg.door, on_press=lambda: self.controller.open_door())

    def _add(
        self,
        name: str,
        config: ButtonSection,
        repeat: bool = False,
        *,
        on_press: Callable[[], object] | None = None,
        on_tap: Callable[[], object] | None = None,
        on_hold: Callable[[], object] | None = None,
    ) -> None:
        try:
            device = Button(
                config.pin,
                pull_up=config.pull_up,
                bounce_time=config.bounce_ms / 1000.0 if config.bounce_ms > 0 else None,
                hold_time=config.hold_s,
                hold_repeat=repeat,
                pin_factory=self.pin_factory,
            )
        except Exception as exc:
            raise HardwareError(f"buttons.{name}.pin: cannot use GPIO {config.pin}: {exc}") from None
        key = _Key(
            name,
            config,
            device,
            on_press=on_press,
            on_tap=on_tap,
            on_hold=on_hold,
            repeat=repeat,
            pressed=bool(device.is_pressed),
        )
        self.keys[name] = key
        # On gpiozero's threads: a timestamp and a hand-over, nothing more.
        device.when_pressed = lambda: self._hand_over(self._edge, key, True, time.monotonic())
        device.when_released = lambda: self._hand_over(self._edge, key, False, time.monotonic())
        if key.on_hold is not None:
            device.when_held = lambda: self._hand_over(self._held, key)

    @property
    def buttons(self) -> dict[str, Any]:
        """The gpiozero Button of each configured button, by name (mute, end, audio_mode, call,
        volume_up, volume_down, door)."""
        return {name: key.device for name, key in self.keys.items()}

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: the kiosk is shutting down, the edge no longer matters

    # ----------------------------------------------------------------- on the loop

    def _edge(self, key: _Key, pressed: bool, at: float) -> None:
        if self._closed or at - key.last_edge < key.bounce:
            return  # contact bounce (or a late edge after close)
        if pressed == key.pressed:
            return  # an edge whose opposite was lost: nothing changed for us
        key.last_edge, key.pressed = at, pressed
        if key.bounce > 0:
            if key.settle is not None:
                key.settle.cancel()
            key.settle = self.loop.call_later(max(0.0, at + key.bounce - time.monotonic()), self._settle, key)
        if pressed:
            key.held = False
            self._act(key, key.on_press)
        else:
            if not key.held:
                self._act(key, key.on_tap)
            key.held = False

    def _settle(self, key: _Key) -> None:
        # The bounce window is over: if the pin ended up in the other state, take that as an edge now.
        key.settle = None
        if self._closed:
            return
        try:
            actual = bool(key.device.is_pressed)
        except Exception:
            return  # closed under us
        if actual != key.pressed:
            self._edge(key, actual, time.monotonic())

    def _held(self, key: _Key) -> None:
        if self._closed or not key.pressed or (key.held and not key.repeat):
            return
        key.held = True
        self._act(key, key.on_hold)

    def _act(self, key: _Key, action: Callable[[], object] | None) -> None:
        if action is None:
            return
        log.debug("button %s: %s", key.name, "hold" if key.held else "press")
        try:
            action()
        except Exception:  # a button must never take the loop down
            log.exception("button %s failed", key.name)

    def close(self) -> None:
        """Release the pins (and the pin factory, if the panel made it)."""
        self._closed = True
        for key in self.keys.values():
            if key.settle is not None:
                key.settle.cancel()
            key.device.close()
        self.keys.clear()
        if self._owns_factory:
            self._owns_factory = False
            self.pin_factory.close()
