"""The door a kiosk releases: a relay driving a door strike or magnetic lock, and an optional door
contact (a reed switch) that sees the door open and close. gpiozero devices on the kiosk's pin factory,
so the same code runs on a Pi's pins and on gpiozero's mock pins.

`DoorRelay` is the SDK's `DoorOpener` (kiosk.calls.door): the Calls client calls `release()` for each
request the server passed on (the server has already checked who asked, in which call, and that the
request is not a replay). Pin writes are quick and happen on the loop; the pulse ends by a loop timer,
and the contact's edges, which gpiozero reports on its own thread, are handed to the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, OutputDevice
from gpiozero.pins import Factory

from kiosk.calls.door import DoorOutcome
from kiosk.config import DoorSection
from kiosk.hardware.buttons import HardwareError

log = logging.getLogger(__name__)


class DoorRelay:
    def __init__(
        self, config: DoorSection, loop: asyncio.AbstractEventLoop, pin_factory: Factory | None = None
    ) -> None:
        if config.pin is None:
            raise HardwareError("door.pin: no relay pin configured")
        self.config = config
        self._loop = loop
        self._pulse: asyncio.TimerHandle | None = None
        self.releases = 0  # how many times the strike was released
        self.released_by: list[str] = []  # who asked, in order (the call log has them too)
        # Door contact: called on the loop with True when the door opens, False when it closes.
        self.on_contact: Callable[[bool], None] | None = None
        self.contact: DigitalInputDevice | None = None
        try:
            self.relay = OutputDevice(
                config.pin, active_high=config.active_high, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:
            raise HardwareError(f"door.pin: cannot use GPIO {config.pin}: {exc}") from None
        if config.contact_pin is not None:
            try:
                # Pulled up: a contact closed to ground while the door is shut reads low.
                self.contact = DigitalInputDevice(config.contact_pin, pull_up=True, pin_factory=pin_factory)
            except Exception as exc:
                self.relay.close()
                raise HardwareError(
                    f"door.contact_pin: cannot use GPIO {config.contact_pin}: {exc}"
                ) from None
            self.contact.when_activated = lambda: self._hand_over()
            self.contact.when_deactivated = lambda: self._hand_over()

    @property
    def released(self) -> bool:
        """Whether the strike is released now (the relay is on)."""
        return bool(self.relay.value)

    @property
    def is_open(self) -> bool | None:
        """Whether the door stands open (None with no contact)."""
        if self.contact is None:
            return None
        high = not self.contact.is_active  # pulled up: inactive (high) when the contact is open
        return high if self.config.contact_open_level == "high" else not high

    async def release(self, requested_by: str) -> DoorOutcome:
        """Release the strike for pulse_s. A request while it is released already keeps it released
        from now on (a second press by someone at the door is not refused)."""
        if self._pulse is not None:
            self._pulse.cancel()
        self.relay.on()
        self.releases += 1
        self.released_by.append(requested_by)
        self._pulse = self._loop.call_later(self.config.pulse_s, self._end_pulse)
        log.info("door released for %.1f s (asked by %s)", self.config.pulse_s, requested_by)
        return DoorOutcome(True, "")

    def _end_pulse(self) -> None:
        self._pulse = None
        self.relay.off()

    def _hand_over(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._contact_changed)
        except RuntimeError:
            pass  # the loop is closed: the kiosk is stopping

    def _contact_changed(self) -> None:
        state = self.is_open
        log.info("door %s", "opened" if state else "closed")
        if self.on_contact is not None and state is not None:
            self.on_contact(state)

    def close(self) -> None:
        if self._pulse is not None:
            self._pulse.cancel()
            self._pulse = None
        for device in (self.relay, self.contact):
            if device is not None:
                try:
                    device.close()
                except Exception as exc:  # closing must not fail a shutdown
                    log.debug("closing %r: %r", device, exc)


def door_relay(config: DoorSection, loop: asyncio.AbstractEventLoop, pin_factory: Any) -> DoorRelay | None:
    """The configured door, or None when this kiosk has none."""
    return DoorRelay(config, loop, pin_factory) if config.pin is not None else None
