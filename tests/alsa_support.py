"""Helpers for ALSA tests: a generated alsa-lib configuration of `file`/`null` PCMs, test signals, and a
MediaDevices taking cameras from the emulated backend and audio from ALSA.

alsa-lib loads `ALSA_CONFIG_PATH` (alsa.conf first, then ours) and re-reads it in snd_pcm_open when a
file's device, inode or mtime (whole seconds) changed. `AlsaConfig.write()` therefore renames a new
file over the old one: a rewrite in place within the same second would go unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from kiosk.config import AudioModeDevice, AudioSection
from kiosk.media.devices import (
    AUDIO_SAMPLE_RATE,
)

SYSTEM_CONFIG = "/usr/share/alsa/alsa.conf"


class AlsaConfig:
    """PCM definitions kept in memory and written, whole, to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pcms: dict[str, str] = {}
        self.raw: dict[str, str] = {}  # key -> top-level configuration text, written before the PCMs

    @property
    def env_value(self) -> str:
        return f"{SYSTEM_CONFIG}:{self.path}"

    def add_playback(self, name: str, out: Path) -> Path:
        """A PCM whose playback lands, raw, in `out` (the null PCM takes it at any speed)."""
        self.pcms[name] = f'type file\nslave.pcm "null"\nfile "{out}"\nformat raw'
        return out

    def add_capture(self, name: str, infile: Path) -> Path:
        """A PCM whose capture reads `infile` (raw s16le; past its end it returns stale samples)."""
        self.pcms[name] = f'type file\nslave.pcm "null"\nfile "/dev/null"\ninfile "{infile}"\nformat raw'
        return infile

    def remove(self, name: str) -> None:
        del self.pcms[name]

    def add_raw(self, key: str, text: str) -> None:
        """Top-level text of any kind (`ctl.x { ... }`, `pcm_type.y { ... }`, `defaults...`), replacing what
        was added under the same `key`."""
        self.raw[key] = text if text.endswith("\n") else text + "\n"

    def write(self) -> None:
        text = "".join(self.raw.values())
        text += "".join(f"pcm.{name} {{\n{body}\n}}\n" for name, body in self.pcms.items())
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text(text)
        os.replace(fresh, self.path)  # a new inode: alsa-lib notices at once


def audio_section(
    modes: dict[str, tuple[str, str]], capture: str = "mic", period_ms: int = 20, **options: object
) -> AudioSection:
    """`modes`: mode -> (playback PCM, capture PCM or "")."""
    return AudioSection(
        backend="alsa",
        capture=capture,
        period_ms=period_ms,
        modes={mode: AudioModeDevice(playback, cap, "") for mode, (playback, cap) in modes.items()},
        **options,  # type: ignore[arg-type]
    )


def tone(frequency: float, seconds: float, amplitude: float = 0.3, start: int = 0) -> np.ndarray:
    t = (start + np.arange(int(seconds * AUDIO_SAMPLE_RATE))) / AUDIO_SAMPLE_RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def audio_frame(mono: np.ndarray, stereo: bool = False) -> av.AudioFrame:
    """A frame as aiortc's decoder hands it over: s16 packed, mono or stereo, 48 kHz."""
    if stereo:
        data = np.repeat(mono, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
    else:
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = AUDIO_SAMPLE_RATE
    return frame


def read_raw(path: Path, channels: int) -> np.ndarray:
    """The first channel of a raw s16le file written by a playback PCM."""
    data = np.fromfile(path, dtype="<i2")
    return data[: len(data) - len(data) % channels].reshape(-1, channels)[:, 0]


def spectrum_peaks(samples: np.ndarray, count: int) -> list[float]:
    """The `count` strongest frequencies (Hz), at least 50 Hz apart."""
    window = samples.astype(np.float64) * np.hanning(len(samples))
    magnitude = np.abs(np.fft.rfft(window))
    freqs = np.fft.rfftfreq(len(samples), 1 / AUDIO_SAMPLE_RATE)
    peaks: list[float] = []
    for index in np.argsort(magnitude)[::-1]:
        if all(abs(freqs[index] - p) >= 50 for p in peaks):
            peaks.append(float(freqs[index]))
        if len(peaks) == count:
            break
    return peaks


def sound(samples: np.ndarray) -> np.ndarray:
    """From the first to the last non-zero sample: the part that is not leading or trailing silence."""
    nonzero = np.flatnonzero(samples)
    return samples[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else samples[:0]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0
