"""The door kiosk's relay, end to end: a resident's SDK (and its GPIO button) asks the door kiosk in
its call to open; the relay pin pulses for its configured length on gpiozero's mock pins; both sides
get on_door_opened; refused outside a call and for a user without the permission."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import ADMIN_KEY, endpoints, new_session_id, running_server, wait_until
from gpiozero.pins.mock import MockFactory

from kiosk.calls import CallsError
from kiosk.calls.errors import SessionNotActiveError
from kiosk.config import ButtonSection, ButtonsSection, ConfigError, DoorSection, parse_config
from kiosk.controller import KioskController
from kiosk.hardware import ButtonPanel, DoorRelay

RELAY_PIN, CONTACT_PIN, DOOR_BUTTON_PIN = 5, 6, 22
PULSE_S = 0.4


def pulses(pin: Any) -> list[tuple[float, float]]:
    """(start, length) of each high period the mock pin recorded."""
    found, start = [], None
    for change in pin.states:
        if change.state and start is None:
            start = change.timestamp
        elif not change.state and start is not None:
            found.append((start, change.timestamp - start))
            start = None
    return found


async def allow_doors(server_url: str, uid: str, allowed: bool) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{server_url}/v1/users/{uid}/permissions",
            json={"openDoors": allowed},
            headers={"X-Admin-Key": ADMIN_KEY},
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def test_a_resident_opens_the_door_kiosk_it_is_talking_to(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    door_pins, resident_pins = MockFactory(), MockFactory()
    relay = DoorRelay(
        DoorSection(pin=RELAY_PIN, pulse_s=PULSE_S, contact_pin=CONTACT_PIN), loop, pin_factory=door_pins
    )
    contact_changes: list[bool] = []
    relay.on_contact = contact_changes.append
    relay_pin = door_pins.pin(RELAY_PIN)
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", door=relay) as (door,),
        endpoints(server.url, tmp_path, "amy", "bob") as (amy, bob),
    ):
        # Outside a call: no session to open a door in.
        with pytest.raises(SessionNotActiveError):
            await amy.calls.open_door()
        session_id = new_session_id()
        for endpoint in (door, amy, bob):
            await endpoint.join(session_id)
        await wait_until(lambda: len(amy.calls.session.participants) == 2, 10, "amy sees both")
        assert [u.uid for u in amy.calls.doors()] == ["door"]  # the door kiosk said it has a door

        # Without the permission: refused by the server, the relay untouched.
        with pytest.raises(CallsError) as refused:
            await bob.calls.open_door("door")
        assert refused.value.code == "FORBIDDEN"
        await allow_doors(server.url, "amy", True)
        relay_pin.clear_states()
        await amy.calls.open_door()
        for endpoint in (amy, door, bob):
            (result,) = await endpoint.events.wait_for("on_door_opened")
            assert result.opened and result.opened_by.uid == "amy" and result.door.uid == "door"
        await wait_until(lambda: len(pulses(relay_pin)) == 1, 5, "the relay pulse to end")
        ((_, length),) = pulses(relay_pin)
        # The pulse lasts its configured length (a loose upper bound: the loop may be busy).
        assert PULSE_S - 0.05 <= length < PULSE_S + 1.0, length
        assert relay.released_by == ["amy"] and not relay.released

        # The door contact (a reed switch to ground, pulled up): shut it reads low, open high. The
        # door swings open and shut; the door kiosk sees both.
        contact = door_pins.pin(CONTACT_PIN)
        contact.drive_low()
        await wait_until(lambda: contact_changes == [False], 5, "door shut seen")
        assert relay.is_open is False
        contact.drive_high()
        await wait_until(lambda: contact_changes == [False, True], 5, "door open seen")
        assert relay.is_open is True
        contact.drive_low()
        await wait_until(lambda: contact_changes == [False, True, False], 5, "door shut again seen")

        # The resident's GPIO door button does the same through its controller.
        controller = KioskController(amy.calls)
        panel = ButtonPanel(
            ButtonsSection(pin_factory="mock", door=ButtonSection(DOOR_BUTTON_PIN)),
            controller,
            loop,
            pin_factory=resident_pins,
        )
        try:
            button = resident_pins.pin(DOOR_BUTTON_PIN)
            button.drive_low()
            button.drive_high()
            await door.events.wait_for("on_door_opened", count=2)
            await wait_until(lambda: len(pulses(relay_pin)) == 2, 5, "the second pulse")
            await wait_until(lambda: "released" in controller.state.message, 5, "the resident told")
        finally:
            panel.close()
        # The permission taken away: the next request is refused at once.
        await allow_doors(server.url, "amy", False)
        with pytest.raises(CallsError) as refused:
            await amy.calls.open_door()
        assert refused.value.code == "FORBIDDEN"
        assert len(relay.released_by) == 2
    relay.close()


def test_the_door_config_is_checked() -> None:
    base = "[server]\nurl = 'http://127.0.0.1:1'\n"
    config = parse_config(base + "[door]\npin = 5\npulse_s = 2\ncontact_pin = 6\n", check_devices=False)
    assert config.door == DoorSection(pin=5, pulse_s=2.0, contact_pin=6)
    for text, words in (
        ("[door]\npin = 5\n[leds]\nin_call = 5\n", "door.pin"),
        ("[door]\ncontact_pin = 6\n", "door.contact_pin: a door contact needs the door's relay"),
        ("[door]\npin = 5\npulse_s = 0\n", "door.pulse_s"),
        ("[door]\npin = 5\npulse_s = nan\n", "door.pulse_s"),
        ("[door]\npin = 5\n[buttons]\ndoor = { pin = 5 }\n", "pin 5"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config(base + text, check_devices=False)
