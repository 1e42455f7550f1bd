"""An emulated sound card for ALSA tests: real alsa-lib external plugins (tests/alsa_card/*.c) that behave
like a card behind `hw:` (one holder at a time, real-time pacing, underruns, a persistent volume control)
where alsa-lib's `file`/`null` plugins do not.

    card = EmulatedCard.in_dir(tmp_path, "spk", channels=(2,))
    card.add_to(alsa_config)          # an AlsaConfig from alsa_support; then alsa_config.write()
    pcm = alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, device="spk", channels=2, rate=48000, periodsize=960)
    ...
    played = card.played_frames(channels=2)   # what the card really played, silence for underruns
    alsaaudio.Mixer("PCM", device="spk")      # the card's volume (absent when mixer_state is None)

The plugins are compiled once per test session into a directory keyed by a hash of their sources (under
the system temporary directory), so a change to the C files rebuilds them and an unchanged tree reuses them.
See the header comments of the C files for what is modelled and what is not.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from alsa_support import AlsaConfig

PLUGIN_TYPE = "kiosk_card"
SOURCE_DIR = Path(__file__).resolve().parent / "alsa_card"
SOURCES = {"pcm": SOURCE_DIR / "pcm_kiosk_card.c", "ctl": SOURCE_DIR / "ctl_kiosk_card.c"}
CFLAGS = ("-shared", "-fPIC", "-DPIC", "-O2", "-Wall", "-Wextra")  # PIC: alsa-lib's plugin symbol macros
LIBS = ("-lasound", "-lm")


def library_name(kind: str) -> str:
    """alsa-lib's name for an external plugin: libasound_module_<pcm|ctl>_<type>.so."""
    return f"libasound_module_{kind}_{PLUGIN_TYPE}.so"


@functools.cache
def build_plugins() -> Path:
    """The directory holding both compiled plugins; compiles them if their sources changed."""
    digest = hashlib.sha256(" ".join(CFLAGS + LIBS).encode())
    for kind, source in sorted(SOURCES.items()):
        digest.update(kind.encode() + b"\0" + source.read_bytes())
    root = Path(tempfile.gettempdir()) / f"kiosk-alsa-card-{os.getuid()}"
    target = root / digest.hexdigest()[:16]
    if all((target / library_name(kind)).is_file() for kind in SOURCES):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        for kind, source in SOURCES.items():
            command = ["gcc", *CFLAGS, "-o", str(staging / library_name(kind)), str(source), *LIBS]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"building {source.name} failed:\n{result.stderr}")
        try:
            staging.rename(target)  # atomic: a concurrent session either wins or finds it built
        except OSError:
            if not all((target / library_name(kind)).is_file() for kind in SOURCES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _quote(value: str | Path) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def plugin_types_text(library_dir: Path) -> str:
    """Where alsa-lib finds the plugins' code: `pcm_type.kiosk_card` and `ctl_type.kiosk_card`."""
    return "".join(
        f"{kind}_type.{PLUGIN_TYPE} {{\n\tlib {_quote(library_dir / library_name(kind))}\n}}\n"
        for kind in ("pcm", "ctl")
    )


@dataclass(frozen=True)
class MixerState:
    """The volume control as stored in the state file (raw values, one per mixer channel)."""

    minimum: int
    maximum: int
    volume: list[int]
    switch: list[int]

    def gains(self) -> list[float]:
        """The amplitude factor the card applies per channel."""
        span = self.maximum - self.minimum
        return [
            (v - self.minimum) / span * (1 if on else 0)
            for v, on in zip(self.volume, self.switch, strict=True)
        ]


def read_mixer_state(path: Path) -> MixerState:
    values: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        key, *numbers = line.split()
        values[key] = [int(n) for n in numbers]
    return MixerState(values["min"][0], values["max"][0], values["volume"], values["switch"])


def read_played(path: Path, channels: int) -> np.ndarray:
    """A played file as int16 frames, shape (frames, channels); empty if nothing was played."""
    if not path.exists():
        return np.zeros((0, channels), dtype=np.int16)
    data = np.fromfile(path, dtype="<i2")
    return data[: len(data) - len(data) % channels].reshape(-1, channels).astype(np.int16)


@dataclass
class EmulatedCard:
    """One emulated card: `pcm.<name>` (playback and capture, each its own exclusive substream) and
    `ctl.<name>` (its volume control, unless `mixer_state` is None: a card with no volume control)."""

    name: str
    played: Path | None
    lock: Path
    mixer_state: Path | None = None
    mixer_control: str = "PCM"
    channels: tuple[int, ...] = (1, 2)
    capture_file: Path | None = None
    nonblock_open: bool | None = None  # None: alsa-lib's defaults.pcm.nonblock decides (1 in alsa.conf)
    rate: int = 48000
    capture_channels: int = 1
    mixer_range: tuple[int, int] = (0, 255)
    mixer_channels: int = 2
    mixer_switch: bool = True
    initial_volume: int | None = None  # None: the maximum
    extra_pcm_options: dict[str, str] = field(default_factory=dict)  # raw `key value` lines for pcm.<name>

    @classmethod
    def in_dir(cls, directory: Path, name: str, *, mixer: bool = True, **options: object) -> EmulatedCard:
        """A card whose files are `<directory>/<name>.played.raw`, `.lock.*` and `.mixer` (when `mixer`)."""
        defaults: dict[str, object] = {
            "played": directory / f"{name}.played.raw",
            "lock": directory / f"{name}.lock",
            "mixer_state": directory / f"{name}.mixer" if mixer else None,
        }
        return cls(name=name, **{**defaults, **options})  # type: ignore[arg-type]

    def pcm_text(self) -> str:
        lines = [f"type {PLUGIN_TYPE}", f"lock {_quote(self.lock)}", f"rate {self.rate}"]
        lines.append("channels [ " + " ".join(str(c) for c in self.channels) + " ]")
        if self.played is not None:
            lines.append(f"played {_quote(self.played)}")
        if self.mixer_state is not None:
            lines.append(f"mixer_state {_quote(self.mixer_state)}")
        if self.capture_file is not None:
            lines.append(f"capture_file {_quote(self.capture_file)}")
            lines.append(f"capture_channels {self.capture_channels}")
        if self.nonblock_open is not None:
            lines.append(f"nonblock_open {_bool(self.nonblock_open)}")
        lines.extend(f"{key} {value}" for key, value in self.extra_pcm_options.items())
        return f"pcm.!{self.name} {{\n" + "".join(f"\t{line}\n" for line in lines) + "}\n"

    def ctl_text(self) -> str:
        lines = [f"type {PLUGIN_TYPE}", f"card_id {_quote(self.name[:15])}"]
        if self.mixer_state is not None:
            low, high = self.mixer_range
            lines += [
                f"state {_quote(self.mixer_state)}",
                f"control {_quote(self.mixer_control)}",
                f"min {low}",
                f"max {high}",
                f"channels {self.mixer_channels}",
                f"switch {_bool(self.mixer_switch)}",
            ]
            if self.initial_volume is not None:
                lines.append(f"initial {self.initial_volume}")
        return f"ctl.!{self.name} {{\n" + "".join(f"\t{line}\n" for line in lines) + "}\n"

    def config_text(self, library_dir: Path | None = None) -> str:
        """A complete configuration fragment: the plugin types, then this card's PCM and control."""
        return plugin_types_text(library_dir or build_plugins()) + self.pcm_text() + self.ctl_text()

    def add_to(self, config: AlsaConfig) -> EmulatedCard:
        """Adds the plugin types (once) and this card to `config`; the caller writes it."""
        config.add_raw(f"{PLUGIN_TYPE}:types", plugin_types_text(build_plugins()))
        config.add_raw(f"{PLUGIN_TYPE}:{self.name}", self.pcm_text() + self.ctl_text())
        self.restore_mixer()
        return self

    def restore_mixer(self) -> None:
        """Like `alsactl restore` at boot: a card without a stored state starts at `initial_volume`, switched
        on, even before anything opens its control (the control plugin then keeps the stored state)."""
        if self.mixer_state is None or self.mixer_state.exists():
            return
        low, high = self.mixer_range
        volume = " ".join(
            [str(high if self.initial_volume is None else self.initial_volume)] * self.mixer_channels
        )
        switch = " ".join(["1"] * self.mixer_channels)
        self.mixer_state.write_text(f"min {low}\nmax {high}\nvolume {volume}\nswitch {switch}\n")

    def remove_from(self, config: AlsaConfig) -> None:
        """The card leaves the configuration (unplugged); the caller writes it."""
        config.raw.pop(f"{PLUGIN_TYPE}:{self.name}", None)

    def played_frames(self, channels: int) -> np.ndarray:
        """Everything the card played so far (all opens, appended), shape (frames, channels)."""
        if self.played is None:
            raise ValueError(f"card {self.name} does not record what it plays")
        return read_played(self.played, channels)

    def clear_played(self) -> None:
        if self.played is not None:
            self.played.unlink(missing_ok=True)

    def mixer_values(self) -> MixerState | None:
        """The stored volume control, or None if the card has none or its control was never opened."""
        if self.mixer_state is None or not self.mixer_state.exists():
            return None
        return read_mixer_state(self.mixer_state)
