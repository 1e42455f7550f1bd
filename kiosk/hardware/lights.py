"""Status LEDs that follow the kiosk's state: in a call, muted, ringing (blinking).

The controller calls its observers on the event loop; switching an LED is a pin write, and blinking
runs on gpiozero's own blink thread, so nothing here blocks the loop.
"""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import LED
from gpiozero.pins import Factory

from kiosk.config import LedsSection
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.hardware.buttons import HardwareError

log = logging.getLogger(__name__)

_OFF, _ON, _BLINK = "off", "on", "blink"


class StatusLights:
    """in_call: on while Phase.IN_CALL; muted: follows state.muted; ringing: blinks while ringing in or out.

    `pin_factory` None means gpiozero's default (pass the one the buttons use, see make_pin_factory).
    """

    def __init__(
        self,
        config: LedsSection,
        controller: KioskController,
        pin_factory: Factory | None = None,
        *,
        blink_on_s: float = 0.3,
        blink_off_s: float = 0.3,
    ) -> None:
        self.config = config
        self.controller = controller
        self.blink_on_s = blink_on_s
        self.blink_off_s = blink_off_s
        self.leds: dict[str, Any] = {}  # gpiozero LEDs by name: in_call, muted, ringing
        self._modes: dict[str, str] = {}  # what each LED shows now, so a repeated state changes nothing
        self._closed = False
        try:
            for name in ("in_call", "muted", "ringing"):
                pin = getattr(config, name)
                if pin is None:
                    continue
                try:
                    self.leds[name] = LED(pin, active_high=config.active_high, pin_factory=pin_factory)
                except Exception as exc:
                    raise HardwareError(f"leds.{name}: cannot use GPIO {pin}: {exc}") from None
                self._modes[name] = _OFF
        except Exception:
            self.close()
            raise
        controller.add_observer(self._show)  # called at once with the current state

    def _show(self, state: KioskState) -> None:
        if self._closed:
            return
        ringing = state.phase in (Phase.RINGING_IN, Phase.RINGING_OUT)
        self._set("in_call", _ON if state.phase == Phase.IN_CALL else _OFF)
        self._set("muted", _ON if state.muted else _OFF)  # the controller clears it when a call ends
        self._set("ringing", _BLINK if ringing else _OFF)

    def _set(self, name: str, mode: str) -> None:
        led = self.leds.get(name)
        if led is None or self._modes.get(name) == mode:
            return  # restarting a blink on every state update would make it stutter
        self._modes[name] = mode
        if mode == _ON:
            led.on()
        elif mode == _BLINK:
            led.blink(on_time=self.blink_on_s, off_time=self.blink_off_s, background=True)
        else:
            led.off()

    def close(self) -> None:
        """Switch the LEDs off and release their pins."""
        self._closed = True
        self.controller.remove_observer(self._show)
        for led in self.leds.values():
            try:
                led.off()
            finally:
                led.close()
        self.leds.clear()
