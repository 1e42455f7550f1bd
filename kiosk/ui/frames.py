"""The SDK's `view`: keeps only the newest decoded frame of each participant, never a queue.

The session calls `render_frame` on the event loop for every decoded remote frame; the screen takes
the newest one when it next draws (told by `on_frame`), so a slow screen drops frames instead of
falling behind.
Nothing here imports Kivy, so the store can be used (and tested) without a window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av

LOCAL = "__local__"  # the uid under which the local camera preview is stored


@dataclass
class Slot:
    frame: av.VideoFrame | None = None
    received: int = 0  # frames handed to us
    version: int = 0  # bumps on every new frame, so a reader can tell a new one from one it has shown


@dataclass
class FrameStore:
    slots: dict[str, Slot] = field(default_factory=dict)
    mode: str = "DEFAULT"
    pip: bool = False
    # Told of a participant appearing or leaving, and of layout changes (not of every frame).
    on_layout: Callable[[], None] | None = None
    # Told of every new frame (with its uid), so the screen can show it at its next frame, not at a
    # clock of its own; it must only schedule work (the screen still takes the newest frame).
    on_frame: Callable[[str], None] | None = None

    # ----------------------------------------------------------------- the SDK's view hooks

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        slot = self.slots.get(uid)
        new = slot is None
        if slot is None:
            slot = self.slots[uid] = Slot()
        slot.frame = frame  # replaces any frame not yet shown: stale frames are dropped
        slot.received += 1
        slot.version += 1
        if new and uid != LOCAL:
            self._layout_changed()
        if self.on_frame is not None:
            self.on_frame(uid)

    def remove_participant(self, uid: str) -> None:
        if self.slots.pop(uid, None) is not None:
            self._layout_changed()

    def set_mode(self, mode: Any) -> None:
        self.mode = str(getattr(mode, "value", mode))
        self._layout_changed()

    def set_pip(self, pip: bool) -> None:
        self.pip = bool(pip)
        self._layout_changed()

    def close(self) -> None:
        self.slots.clear()
        self.pip = False  # the next call starts full size
        self._layout_changed()

    # ----------------------------------------------------------------- for the screen

    def latest(self, uid: str) -> tuple[av.VideoFrame | None, int]:
        slot = self.slots.get(uid)
        return (slot.frame, slot.version) if slot is not None else (None, 0)

    def remote_uids(self) -> list[str]:
        return [uid for uid in self.slots if uid != LOCAL]

    def _layout_changed(self) -> None:
        if self.on_layout is not None:
            self.on_layout()


SPEAKING_LEVEL = 0.01  # decoded audio RMS (full scale 1.0) above which a participant counts as speaking


def choose_speaker(levels: dict[str, float], talking: set[str]) -> str | None:
    """The active speaker for SPOTLIGHT: in a group call through the SFU, the loudest of those the
    room says are talking (its audio-level events, which smooth over a second); otherwise, or when
    nobody is talking there, the loudest decoded audio, if anyone is audible at all."""
    among = {uid: level for uid, level in levels.items() if uid in talking} or levels
    if not among:
        return None
    loudest = max(among, key=lambda uid: among[uid])
    return loudest if among[loudest] > SPEAKING_LEVEL or loudest in talking else None
