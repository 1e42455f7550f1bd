"""Constants of the reference documents, under Python naming.

The documents spell these as `MODE_DEFAULT`, `AUDIO_MODE_SPEAKER`, `AVATAR_MODE_CIRCLE` (Android),
`Mode.MODE_SPOTLIGHT` (Flutter) or plain `"SPOTLIGHT"` (React Native). Here each is a `StrEnum`
whose value is the plain word, so `Mode.SPOTLIGHT == "SPOTLIGHT"` and either form is accepted.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from kiosk.audio_modes import AudioMode  # defined once for the config, the devices and the SDK
from kiosk.protocol import CallStatus, CallType, SessionType

E = TypeVar("E", bound=StrEnum)


class Mode(StrEnum):
    DEFAULT = "DEFAULT"  # grid
    SPOTLIGHT = "SPOTLIGHT"  # active speaker large
    SINGLE = "SINGLE"  # one participant
    # The documents' prefixed spellings, as aliases of the same members.
    MODE_DEFAULT = "DEFAULT"
    MODE_SPOTLIGHT = "SPOTLIGHT"
    MODE_SINGLE = "SINGLE"


class AvatarMode(StrEnum):
    CIRCLE = "circle"
    SQUARE = "square"
    FULLSCREEN = "fullscreen"
    AVATAR_MODE_CIRCLE = "circle"
    AVATAR_MODE_SQUARE = "square"
    AVATAR_MODE_FULLSCREEN = "fullscreen"


class AspectRatio(StrEnum):
    CONTAIN = "contain"
    COVER = "cover"


class Position(StrEnum):
    TOP_LEFT = "top-left"
    TOP_RIGHT = "top-right"
    BOTTOM_LEFT = "bottom-left"
    BOTTOM_RIGHT = "bottom-right"


# Module-level spellings, for code ported from the documents.
MODE_DEFAULT, MODE_SPOTLIGHT, MODE_SINGLE = Mode.DEFAULT, Mode.SPOTLIGHT, Mode.SINGLE
AUDIO_MODE_SPEAKER, AUDIO_MODE_EARPIECE = AudioMode.SPEAKER, AudioMode.EARPIECE
AUDIO_MODE_HEADPHONES, AUDIO_MODE_BLUETOOTH = AudioMode.HEADPHONES, AudioMode.BLUETOOTH
AVATAR_MODE_CIRCLE, AVATAR_MODE_SQUARE = AvatarMode.CIRCLE, AvatarMode.SQUARE
AVATAR_MODE_FULLSCREEN = AvatarMode.FULLSCREEN

__all__ = [
    "AUDIO_MODE_BLUETOOTH",
    "AUDIO_MODE_EARPIECE",
    "AUDIO_MODE_HEADPHONES",
    "AUDIO_MODE_SPEAKER",
    "AVATAR_MODE_CIRCLE",
    "AVATAR_MODE_FULLSCREEN",
    "AVATAR_MODE_SQUARE",
    "MODE_DEFAULT",
    "MODE_SINGLE",
    "MODE_SPOTLIGHT",
    "AspectRatio",
    "AudioMode",
    "AvatarMode",
    "CallStatus",
    "CallType",
    "Mode",
    "Position",
    "SessionType",
]


_PREFIXES = ("AUDIO_MODE_", "AVATAR_MODE_", "MODE_")


def parse_enum(enum: type[E], value: object, what: str) -> E:
    """Accept `Mode.SPOTLIGHT`, "SPOTLIGHT", "spotlight" or "MODE_SPOTLIGHT"; raise ValueError otherwise."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        text = value.strip().upper()
        for prefix in _PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        for member in enum:
            if text in (member.value.upper(), member.name):
                return member
    choices = ", ".join(m.value for m in enum)
    raise ValueError(f"{what} must be one of {choices}, not {value!r}")
