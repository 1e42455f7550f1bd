"""The kiosk's physical controls: GPIO buttons, status LEDs and a door relay, and their emulation
(keyboard, socket).

`start_controls(config, controller)` builds what the config asks for around one pin factory; each part
can also be used alone (ButtonPanel, StatusLights, KeyboardControl, ControlServer).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from gpiozero import Device
from gpiozero.pins import Factory

from kiosk.config import BUTTON_NAMES, KioskConfig
from kiosk.controller import KioskController
from kiosk.hardware.buttons import ButtonPanel, HardwareError, is_raspberry_pi_5, make_pin_factory
from kiosk.hardware.control import ControlServer, KeyboardControl, state_as_json
from kiosk.hardware.door import DoorRelay
from kiosk.hardware.lights import StatusLights

__all__ = [
    "ButtonPanel",
    "ControlServer",
    "Controls",
    "DoorRelay",
    "HardwareError",
    "KeyboardControl",
    "StatusLights",
    "is_raspberry_pi_5",
    "make_pin_factory",
    "start_controls",
    "state_as_json",
]


@dataclass
class Controls:
    """What start_controls started; any part may be None (not configured, or no terminal)."""

    pin_factory: Factory | None = None
    owns_pin_factory: bool = False  # made by start_controls: closed with the rest
    buttons: ButtonPanel | None = None
    lights: StatusLights | None = None
    door: DoorRelay | None = None
    keyboard: KeyboardControl | None = None
    control: ControlServer | None = None

    async def close(self) -> None:
        if self.door is not None:
            self.door.close()
        if self.keyboard is not None:
            self.keyboard.close()
        if self.control is not None:
            await self.control.close()
        if self.buttons is not None:
            self.buttons.close()
        if self.lights is not None:
            self.lights.close()
        if self.owns_pin_factory and self.pin_factory is not None:
            self.owns_pin_factory = False
            self.pin_factory.close()


async def start_controls(
    config: KioskConfig, controller: KioskController, *, pin_factory: Factory | None = None
) -> Controls:
    """Buttons and LEDs when configured (sharing one pin factory), the keyboard when
    emulation.keyboard is set and stdin is a terminal, the control socket when emulation.control_socket
    names one. Raises HardwareError, with the config key, when something cannot be used."""
    loop = asyncio.get_running_loop()
    buttons_cfg, leds_cfg, emulation = config.buttons, config.leds, config.emulation
    press_answers = buttons_cfg.end.press_answers if buttons_cfg.end is not None else True
    hold_rejects = buttons_cfg.end.hold_rejects if buttons_cfg.end is not None else True
    contact = buttons_cfg.call.contact if buttons_cfg.call is not None else ""
    if not contact and config.ui.contacts:
        contact = config.ui.contacts[0].uid

    controls = Controls()
    try:
        any_button = any(getattr(buttons_cfg, name) is not None for name in BUTTON_NAMES)
        any_led = any(p is not None for p in (leds_cfg.in_call, leds_cfg.muted, leds_cfg.ringing))
        has_door = config.door.pin is not None
        if any_button or any_led or has_door:
            controls.pin_factory = pin_factory or make_pin_factory(buttons_cfg.pin_factory)
            controls.owns_pin_factory = pin_factory is None and controls.pin_factory is not Device.pin_factory
        if any_button:
            controls.buttons = ButtonPanel(buttons_cfg, controller, loop, controls.pin_factory)
        if any_led:
            controls.lights = StatusLights(leds_cfg, controller, controls.pin_factory)
        if has_door:
            controls.door = DoorRelay(config.door, loop, controls.pin_factory)
            # The door kiosk's screen says when the door opens and closes (with a contact).
            controls.door.on_contact = lambda is_open: controller.report(
                "Door open" if is_open else "Door closed"
            )
        if emulation.keyboard:
            keyboard = KeyboardControl(
                controller, contact=contact, press_answers=press_answers, hold_rejects=hold_rejects
            )
            if keyboard.start():
                controls.keyboard = keyboard
        if emulation.control_socket:
            server = ControlServer(
                controller,
                emulation.control_socket,
                contact=contact,
                press_answers=press_answers,
                hold_rejects=hold_rejects,
            )
            await server.start()
            controls.control = server
    except BaseException:
        with contextlib.suppress(Exception):
            await controls.close()
        raise
    return controls
