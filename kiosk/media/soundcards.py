"""The sound cards present, and the audio section that suits them.

The kernel lists its cards in /proc/asound/cards (sound/core/init.c: a line
` N [id             ]: driver - short name` and an indented long name per card) and each PCM device
as a directory /proc/asound/cardN/pcmDp (playback) or pcmDc (capture) (sound/core/pcm.c). What a
Raspberry Pi shows there:

- Pi 4 and older: `Headphones` (driver bcm2835_headpho), the 3.5 mm jack, playback only, with a `PCM`
  volume (`Headphone` on older kernels); `vc4hdmi0`/`vc4hdmi1` (vc4-hdmi), HDMI, which takes IEC958
  frames, so it must be opened as `hdmi:CARD=vc4hdmi0,DEV=0`, and has no volume control.
- Pi 5: only the two HDMI cards: it has no analogue jack.
- A USB speakerphone or headset (USB-Audio): playback and capture on device 0, usually a `PCM` or
  `Speaker`/`Headset` volume and a `Mic` capture control.
- An I2S HAT (its own driver name, e.g. snd_rpi_hifiberry_dac, wm8960-soundcard): playback, some
  with capture; `Digital`, `Speaker` or `Playback` volumes, or none.

None of them has a capture device on a stock Pi: no microphone until one is plugged in.

`propose_audio(cards)` picks the modes and the microphone the way a person setting a kiosk up would;
`kiosk doctor` prints it as TOML, and `"auto"` in the config resolves to it at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PROC_ASOUND = Path("/proc/asound")

CardKind = Literal["jack", "hdmi", "usb", "hat"]

# Simple mixer elements that usually set a card's output level, most likely first.
PLAYBACK_CONTROLS = ("PCM", "Master", "Speaker", "Headphone", "Headset", "Digital", "Playback")

_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[(\S+)\s*\]:\s*(\S+)\s+-\s+(.*)$")


@dataclass(frozen=True)
class SoundCard:
    index: int
    id: str  # ALSA's card id: what CARD= takes ("Headphones", "vc4hdmi0", "Device")
    driver: str
    name: str
    playback: tuple[int, ...] = ()  # PCM device numbers that play
    capture: tuple[int, ...] = ()  # PCM device numbers that record

    @property
    def kind(self) -> CardKind:
        if self.driver == "vc4-hdmi" or self.id.startswith("vc4hdmi"):
            return "hdmi"
        if self.id == "Headphones" or self.driver.startswith("bcm2835"):
            return "jack"
        if self.driver == "USB-Audio":
            return "usb"
        return "hat"

    def playback_pcm(self) -> str:
        device = self.playback[0] if self.playback else 0
        if self.kind == "hdmi":
            return f"hdmi:CARD={self.id},DEV={device}"  # IEC958 framing: plughw would be refused
        return f"plughw:CARD={self.id},DEV={device}"

    def capture_pcm(self) -> str:
        return f"plughw:CARD={self.id},DEV={self.capture[0] if self.capture else 0}"

    def describe(self) -> str:
        return f"card {self.index} {self.id} ({self.name})"


def read_cards(root: Path = PROC_ASOUND) -> list[SoundCard]:
    """The cards the kernel has now; none where there is no sound support."""
    try:
        lines = (root / "cards").read_text().splitlines()
    except OSError:
        return []
    cards = []
    for line in lines:
        match = _CARD_LINE.match(line)
        if match is None:
            continue  # the long-name line, or "--- no soundcards ---"
        index, card_id, driver, name = int(match[1]), match[2], match[3], match[4].strip()
        card_dir = root / f"card{index}"
        playback: list[int] = []
        capture: list[int] = []
        for entry in sorted(card_dir.glob("pcm*")):
            found = re.fullmatch(r"pcm(\d+)([pc])", entry.name)
            if found:
                (playback if found[2] == "p" else capture).append(int(found[1]))
        cards.append(SoundCard(index, card_id, driver, name, tuple(sorted(playback)), tuple(sorted(capture))))
    return cards


@dataclass(frozen=True)
class ProposedMode:
    playback: str
    label: str
    capture: str = ""


@dataclass
class AudioProposal:
    """Modes and microphone for the cards present, with what a person should know about them."""

    modes: dict[str, ProposedMode] = field(default_factory=dict)
    capture: str = ""
    notes: list[str] = field(default_factory=list)

    def toml(self) -> str:
        lines = ["[audio]", 'backend = "alsa"', f'capture = "{self.capture}"']
        if self.modes:
            lines.append(f'default_mode = "{next(iter(self.modes))}"')
        for mode, spec in self.modes.items():
            lines += ["", f"[audio.modes.{mode}]", f'playback = "{spec.playback}"']
            if spec.capture:
                lines.append(f'capture = "{spec.capture}"')
            lines.append(f'label = "{spec.label}"')
        return "\n".join(lines) + "\n"


_LABELS: dict[CardKind, str] = {
    "usb": "USB speaker",
    "hat": "Speaker",
    "jack": "Headphone jack",
    "hdmi": "HDMI screen",
}


def _speaker_rank(card: SoundCard) -> tuple[int, int]:
    # A speakerphone (plays and records) first, then a HAT, then other USB, the jack, HDMI.
    if card.kind == "usb" and card.capture:
        rank = 0
    else:
        rank = {"hat": 1, "usb": 2, "jack": 3, "hdmi": 4}[card.kind]
    return rank, card.index


def propose_audio(cards: list[SoundCard]) -> AudioProposal:
    proposal = AudioProposal()
    players = sorted((c for c in cards if c.playback), key=_speaker_rank)
    recorders = sorted((c for c in cards if c.capture), key=_speaker_rank)
    if players:
        speaker = players[0]
        label = "Speakerphone" if speaker.kind == "usb" and speaker.capture else _LABELS[speaker.kind]
        proposal.modes["SPEAKER"] = ProposedMode(speaker.playback_pcm(), label)
        jack = next((c for c in players if c.kind == "jack"), None)
        if jack is not None and jack is not speaker:
            proposal.modes["HEADPHONES"] = ProposedMode(jack.playback_pcm(), "Headphones")
        if speaker.kind == "hdmi":
            proposal.notes.append(
                f"the only output is HDMI ({speaker.describe()}): the screen's speakers play the call; "
                "HDMI has no volume control, so the kiosk uses software volume"
            )
    else:
        proposal.notes.append("no sound card plays: plug in a USB speaker or speakerphone, or add an I2S HAT")
    if not any(c.kind == "jack" for c in cards) and any(c.kind == "hdmi" for c in cards):
        proposal.notes.append("no headphone jack (a Raspberry Pi 5 has none): use USB, I2S or HDMI audio")
    if recorders:
        proposal.capture = recorders[0].capture_pcm()
    else:
        proposal.notes.append(
            "no microphone: until one is plugged in (a USB microphone or speakerphone), the kiosk calls "
            "but nobody hears it"
        )
    return proposal
