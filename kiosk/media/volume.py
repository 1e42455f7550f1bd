"""The device's playback volume: one level per audio mode, kept across restarts.

A level (0-100 %) applies to whatever output plays that mode: through the output's own volume control
(an ALSA mixer element) when it has one, else as a software gain in the playback path. Either way it
changes only what this device plays: the remote party hears the same, and the echo canceller's
reference is what is actually played (the software gain is applied before the reference tap).

The percent-to-loudness curve is cubic (gain = level**3: 50 % is about -18 dB), close to how loudness
is perceived, for the software gain and for mixers that report a dB range; a mixer with no dB range
is set in its own percent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import weakref
from pathlib import Path

from kiosk.media.devices import DeviceError, HardwareVolume, MediaDevices, SpeakerSink

log = logging.getLogger(__name__)

DEFAULT_LEVEL = 80
DEFAULT_STEP = 10


def level_to_gain(percent: int) -> float:
    """The amplitude factor of a level: cubic, 0 % silent, 100 % unchanged."""
    return (max(0, min(100, percent)) / 100) ** 3


def level_to_db(percent: int, floor_db: float) -> float:
    """The level as decibels (0 at 100 %), never below `floor_db` (a mixer's minimum)."""
    gain = level_to_gain(percent)
    return floor_db if gain <= 0 else max(floor_db, 20 * math.log10(gain))


def db_to_level(db: float) -> int:
    return round(100 * (10 ** (db / 20)) ** (1 / 3))


class VolumeLevels:
    """The level of each audio mode, saved to `path` (JSON) on every change, atomically."""

    def __init__(self, path: Path | None, default: int = DEFAULT_LEVEL) -> None:
        self.path = path
        self.default = default
        self._levels: dict[str, int] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
                self._levels = {str(m): max(0, min(100, int(v))) for m, v in dict(loaded).items()}
            except (OSError, ValueError, TypeError) as exc:
                log.warning("volume levels in %s unreadable (%s): starting from %d %%", path, exc, default)

    def get(self, mode: str) -> int:
        with self._lock:
            return self._levels.get(mode, self.default)

    def set(self, mode: str, percent: int) -> None:
        with self._lock:
            self._levels[mode] = max(0, min(100, percent))
            snapshot = dict(self._levels)
        self._save(snapshot)

    def _save(self, levels: dict[str, int]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
            fresh.write_text(json.dumps(levels, sort_keys=True))
            os.replace(fresh, self.path)  # never a half-written file after a power cut mid-write
        except OSError as exc:
            log.warning("cannot save volume levels to %s: %s", self.path, exc)


class OutputVolume:
    """Applies the levels to the open outputs of `devices` (the audio backend)."""

    def __init__(self, devices: MediaDevices, levels: VolumeLevels, step: int = DEFAULT_STEP) -> None:
        self.devices = devices
        self.levels = levels
        self.step_percent = step
        self._open: weakref.WeakSet[SpeakerSink] = weakref.WeakSet()
        self._controls: dict[str, HardwareVolume | None] = {}
        self._lock = threading.Lock()

    def attach(self, speaker: SpeakerSink) -> None:
        """A newly opened output: set it to its mode's level. Runs where the output was opened."""
        with self._lock:
            self._open.add(speaker)
        self._apply(speaker)

    def level(self, mode: str) -> int:
        return self.levels.get(mode)

    def set_level(self, mode: str, percent: int) -> int:
        """Set `mode`'s level (clamped to 0-100), apply it to the outputs playing it; the new level."""
        self.levels.set(mode, percent)
        with self._lock:
            playing = [s for s in self._open if s.device.audio_mode == mode]
        for speaker in playing:
            self._apply(speaker)
        return self.levels.get(mode)

    def step(self, mode: str, steps: int) -> int:
        """Up (steps > 0) or down by whole steps; the new level."""
        return self.set_level(mode, self.level(mode) + steps * self.step_percent)

    def _control(self, device_id: str) -> HardwareVolume | None:
        with self._lock:
            if device_id not in self._controls:
                try:
                    self._controls[device_id] = self.devices.hardware_volume(device_id)
                except DeviceError as exc:
                    log.warning("volume of %s: %s; using software gain", device_id, exc)
                    self._controls[device_id] = None
            return self._controls[device_id]

    def _apply(self, speaker: SpeakerSink) -> None:
        mode = speaker.device.audio_mode
        percent = self.levels.get(mode) if mode else self.levels.default
        control = self._control(speaker.device.device_id)
        if control is not None:
            try:
                control.set(percent)
                speaker.set_gain(1.0)
                return
            except DeviceError as exc:
                log.warning("%s: %s; using software gain", control.name, exc)
                with self._lock:
                    self._controls[speaker.device.device_id] = None
        speaker.set_gain(level_to_gain(percent))

    def close(self) -> None:
        with self._lock:
            controls, self._controls = list(self._controls.values()), {}
        for control in controls:
            if control is not None:
                control.close()
