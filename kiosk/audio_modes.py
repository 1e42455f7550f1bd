"""The four audio modes of the reference documents, defined once for the whole kiosk.

The device's config (`[audio] default_mode`, `fallback_order`, `[audio.modes.X]`), the media backends
(which output serves which mode) and the Calls SDK (`kiosk.calls.AudioMode`, `set_audio_mode`) all use
this one enum. It imports nothing of the kiosk's, so any module can import it without a cycle.
"""

from __future__ import annotations

from enum import StrEnum


class AudioMode(StrEnum):
    """Where a call's sound plays. The value is the plain word, so `AudioMode.SPEAKER == "SPEAKER"`."""

    SPEAKER = "SPEAKER"
    EARPIECE = "EARPIECE"
    HEADPHONES = "HEADPHONES"
    BLUETOOTH = "BLUETOOTH"
    # The documents' prefixed spellings (Android's AUDIO_MODE_SPEAKER), as aliases of the same members.
    AUDIO_MODE_SPEAKER = "SPEAKER"
    AUDIO_MODE_EARPIECE = "EARPIECE"
    AUDIO_MODE_HEADPHONES = "HEADPHONES"
    AUDIO_MODE_BLUETOOTH = "BLUETOOTH"


# The four modes (aliases are not iterated), in the documents' default fallback order: when the output
# in use vanishes, playback moves to the first of these still present (`[audio] fallback_order`).
AUDIO_MODES: tuple[AudioMode, ...] = tuple(AudioMode)

__all__ = ["AUDIO_MODES", "AudioMode"]
