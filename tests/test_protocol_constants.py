"""The browser client's copies of the Python side's constants.

kiosk/web/calls.js is served as it is (no build step), so the numbers it shares with the Python Calls
SDK, kiosk/janus.py and kiosk/protocol.py are written out there again. Each is checked here against the
Python constant it copies, units converted (JS milliseconds against Python seconds), and every
constant of calls.js and app.js is either such a copy or listed here as the browser's own, with why:
a new constant must say which it is.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import pytest

import kiosk
from kiosk.calls import client
from kiosk.calls.constants import AspectRatio, Mode, Position
from kiosk.protocol import CallType

WEB = Path(kiosk.__file__).parent / "web"

# Top-level UPPER_CASE constants: every one (names), and those on one line (their values' source).
_NAME = re.compile(r"^(?:export )?const ([A-Z][A-Z0-9_]*) =", re.MULTILINE)
_VALUE = re.compile(r"^(?:export )?const ([A-Z][A-Z0-9_]*) = (.+?);[ \t]*(?://.*)?$", re.MULTILINE)

MS = 1000  # JS milliseconds per Python second
ONE = 1  # the same unit on both sides

# calls.js name -> (the Python constant it copies, as "module:attribute", and the factor from it).
COPIES: dict[str, tuple[str, float]] = {
    # Keeping a call alive (docs/protocol.md, "Coming back").
    "MEDIA_STALL_MS": ("kiosk.calls.media:MEDIA_STALL_SECONDS", MS),
    "MEDIA_START_MS": ("kiosk.calls.media:MEDIA_START_SECONDS", MS),
    "REBUILD_INTERVAL_MS": ("kiosk.calls.media:REBUILD_INTERVAL_SECONDS", MS),
    "OFFER_ANSWER_MS": ("kiosk.calls.media:OFFER_ANSWER_SECONDS", MS),
    "MEDIA_WATCH_MS": ("kiosk.calls.liveness:MEDIA_WATCH_INTERVAL", MS),
    "PROBE_INTERVAL_MS": ("kiosk.calls.liveness:SIGNALING_PROBE_INTERVAL", MS),
    "PROBE_TIMEOUT_MS": ("kiosk.calls.liveness:SIGNALING_PROBE_TIMEOUT", MS),
    "SIGNALING_REFRESH_AFTER_MS": ("kiosk.calls.liveness:SIGNALING_REFRESH_AFTER", MS),
    "SIGNALING_REFRESH_INTERVAL_MS": ("kiosk.calls.liveness:SIGNALING_REFRESH_INTERVAL", MS),
    # Reconnecting: the backoff, and one attempt.
    "RECONNECT_FIRST_MS": ("kiosk.calls.client:RECONNECT_FIRST_SECONDS", MS),
    "RECONNECT_IN_CALL_MAX_MS": ("kiosk.calls.client:RECONNECT_IN_CALL_MAX_SECONDS", MS),
    "RECONNECT_MAX_MS": ("kiosk.calls.client:RECONNECT_MAX_SECONDS", MS),
    "RECONNECT_MIN_MS": ("kiosk.calls.client:RECONNECT_MIN_SECONDS", MS),
    "CONNECT_TIMEOUT_MS": ("kiosk.calls.signaling:CONNECT_TIMEOUT", MS),
    # The protocol's and the documents' defaults, until the server or the application says otherwise.
    "REJOIN_GRACE_MS": ("kiosk.protocol:DEFAULT_REJOIN_GRACE", MS),
    "IDLE_TIMEOUT_SECONDS": ("kiosk.calls.settings:CallSettings.idle_timeout_period", ONE),
    "IDLE_WARNING_SECONDS": ("kiosk.calls.idle:IDLE_WARNING_SECONDS", ONE),
    # Group calls through Janus (docs/protocol.md, "Group calls through the SFU").
    "SFU_RETRY_MS": ("kiosk.calls.sfu_media:SFU_RETRY_SECONDS", MS),
    "SFU_RESUBSCRIBE_MS": ("kiosk.calls.media:REBUILD_INTERVAL_SECONDS", MS),
    "SFU_REQUEST_TIMEOUT_MS": ("kiosk.janus:REQUEST_TIMEOUT", MS),
    "SFU_EVENT_TIMEOUT_MS": ("kiosk.janus:EVENT_TIMEOUT", MS),
    "SFU_KEEPALIVE_MS": ("kiosk.janus:KEEPALIVE_SECONDS", MS),
    "SFU_POLL_TIMEOUT_MS": ("kiosk.janus:POLL_TIMEOUT", MS),
    "SFU_POLL_MAX_EVENTS": ("kiosk.janus:POLL_MAX_EVENTS", ONE),
    "SFU_POLL_RETRY_MS": ("kiosk.janus:POLL_RETRY_SECONDS", MS),
    "SFU_DESTROY_TIMEOUT_MS": ("kiosk.janus:DESTROY_TIMEOUT", MS),
    "JANUS_NO_SUCH_ROOM": ("kiosk.janus:ERROR_NO_SUCH_ROOM", ONE),
    "JANUS_NO_SUCH_SESSION": ("kiosk.janus:ERROR_NO_SUCH_SESSION", ONE),
}

# Copies that are not numbers, each checked by a test of its own below.
LISTS = {"CALL_TYPE", "CALL_MODE", "VIDEO_CODECS", "ASPECT_RATIO", "POSITION"}

# The browser's own constants, with why each is not a copy.
OWN: dict[str, dict[str, str]] = {
    "calls.js": {
        "GATHER_TIMEOUT_MS": "the browser waits for ICE gathering before it offers; aiortc gathers "
        "within setLocalDescription, with no timeout of its own",
        "REQUEST_TIMEOUT_MS": "the page's wait for a signaling reply, 10 s; the Python SDK's "
        "(kiosk.calls.signaling.REQUEST_TIMEOUT) is 15 s, and the two have differed since both were "
        "written",
    },
    "app.js": {
        "SECTIONS": "the page's screens",
        "USERS_REFRESH_MS": "how often the page lists who is online; the kiosk's contacts come from its config",
        "DEVICE_ERRORS": "calls.js's device error codes the page keeps on screen",
        "RING_HZ": "the page's ringtone, a cadence of its own (kiosk/ringer.py rings a kiosk's speaker)",
        "RING_PERIOD_MS": "as RING_HZ",
        "NOTICE_MS": "how long the page shows a notice",
        "DEVICE_CHOICES": "the page's device pickers",
        "CAN_PICK_SPEAKER": "whether this browser can choose an audio output",
    },
}


def names(file: str) -> set[str]:
    return set(_NAME.findall((WEB / file).read_text()))


def values(file: str) -> dict[str, str]:
    """name -> the source text of its value, for the one-line constants of `file`."""
    return dict(_VALUE.findall((WEB / file).read_text()))


def python(source: str) -> object:
    """The value of "module:attribute.path"."""
    module, _, path = source.partition(":")
    value: object = importlib.import_module(module)
    for part in path.split("."):
        value = getattr(value, part)
    return value


def js_object(text: str) -> dict[str, str]:
    """`Object.freeze({ KEY: "value", ... })` as a dict."""
    return dict(re.findall(r'(\w+): "([^"]*)"', text))


def test_every_constant_is_a_checked_copy_or_the_browsers_own() -> None:
    for file in ("calls.js", "app.js"):
        found = names(file)
        known = set(OWN[file]) | (set(COPIES) | LISTS if file == "calls.js" else set())
        assert found - known == set(), (
            f"kiosk/web/{file} has constants this test does not know: {sorted(found - known)}. If one "
            f"copies a Python constant, add it to COPIES with its source; else to OWN with why it is the "
            f"browser's own"
        )
        assert known - found == set(), (
            f"kiosk/web/{file} no longer has {sorted(known - found)}: drop them here"
        )


@pytest.mark.parametrize("name", sorted(COPIES))
def test_each_copy_matches_the_python_constant(name: str) -> None:
    source, factor = COPIES[name]
    text = values("calls.js").get(name)
    assert text is not None, f"kiosk/web/calls.js: no one-line `const {name} = <number>;`"
    js = float(text.replace("_", ""))
    py = python(source)
    assert isinstance(py, int | float) and not isinstance(py, bool), f"{source} is not a number: {py!r}"
    unit = "" if factor == ONE else " ms" if factor == MS else f" x {factor}"
    assert math.isclose(js, py * factor), (
        f"kiosk/web/calls.js {name} = {text} does not match {source.replace(':', '.')} = {py!r} "
        f"({py * factor:g}{unit}): change one to match the other"
    )


def test_call_types_are_the_protocols() -> None:
    js = js_object(values("calls.js")["CALL_TYPE"])
    python_types = {t.name: t.value for t in CallType}
    assert js == python_types, (
        f"kiosk/web/calls.js CALL_TYPE = {js} but kiosk.protocol.CallType is {python_types}"
    )


def test_call_modes_are_modes_of_the_sdk() -> None:
    """The web page offers two of the layouts (no SINGLE); each as the Python SDK spells it."""
    js = js_object(values("calls.js")["CALL_MODE"])
    python_modes = {m.name: m.value for m in Mode}
    wrong = {key: value for key, value in js.items() if python_modes.get(key) != value}
    assert js and not wrong, (
        f"kiosk/web/calls.js CALL_MODE has {wrong}; kiosk.calls.constants.Mode is {python_modes}"
    )


def test_video_codecs_are_the_sdks() -> None:
    js = json.loads(values("calls.js")["VIDEO_CODECS"])
    assert js == list(client.VIDEO_CODECS), (
        f"kiosk/web/calls.js VIDEO_CODECS = {js} but kiosk.calls.client.VIDEO_CODECS = {client.VIDEO_CODECS}"
    )


@pytest.mark.parametrize("name, enum", [("ASPECT_RATIO", AspectRatio), ("POSITION", Position)])
def test_the_video_container_choices_are_the_sdks(
    name: str, enum: type[AspectRatio] | type[Position]
) -> None:
    js = js_object(values("calls.js")[name])
    python_values = {member.name: member.value for member in enum}
    assert js == python_values, (
        f"kiosk/web/calls.js {name} = {js} but kiosk.calls.constants.{enum.__name__} is {python_values}"
    )
