"""Sound cards as a Raspberry Pi's kernel lists them, and the audio section the kiosk proposes and
uses ("auto") for them: a stock Pi 4 (jack and HDMI, no microphone), a stock Pi 5 (HDMI only), a Pi 4
with a USB speakerphone, a Pi 5 with an I2S HAT.

The /proc/asound trees are written as the kernel does (sound/core/init.c: ` N [id             ]:
driver - short name` then the long name; sound/core/pcm.c: a pcmDp / pcmDc directory per playback
/ capture device), with the card ids and drivers those boards show.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kiosk.config import KioskConfig, load_config, parse_config
from kiosk.doctor import check_audio, check_cameras, run_doctor
from kiosk.media.alsa import ctl_for_pcm, resolve_auto
from kiosk.media.soundcards import SoundCard, propose_audio, read_cards

ROOT = Path(__file__).resolve().parent.parent

# (id, driver, short name, long name, playback devices, capture devices)
Card = tuple[str, str, str, str, tuple[int, ...], tuple[int, ...]]
JACK: Card = ("Headphones", "bcm2835_headpho", "bcm2835 Headphones", "bcm2835 Headphones", (0,), ())
HDMI0: Card = ("vc4hdmi0", "vc4-hdmi", "vc4-hdmi-0", "vc4-hdmi-0", (0,), ())
HDMI1: Card = ("vc4hdmi1", "vc4-hdmi", "vc4-hdmi-1", "vc4-hdmi-1", (0,), ())
SPEAKERPHONE: Card = (
    "SPEAK510",
    "USB-Audio",
    "Jabra SPEAK 510 USB",
    "Jabra SPEAK 510 USB at usb-0000:01:00.0-1.3, full speed",
    (0,),
    (0,),
)
WM8960: Card = ("wm8960soundcard", "simple-card", "wm8960-soundcard", "wm8960-soundcard", (0,), (0,))

BOARDS = {
    "pi4": [JACK, HDMI0, HDMI1],
    "pi5": [HDMI0, HDMI1],
    "pi4+speakerphone": [JACK, HDMI0, HDMI1, SPEAKERPHONE],
    "pi5+hat": [HDMI0, HDMI1, WM8960],
}


def write_asound(root: Path, cards: list[Card]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (card_id, driver, short, long, playback, capture) in enumerate(cards):
        lines.append(f"{index:2d} [{card_id:<15s}]: {driver} - {short}")
        lines.append(f"                      {long}")
        for device in playback:
            (root / f"card{index}" / f"pcm{device}p").mkdir(parents=True, exist_ok=True)
        for device in capture:
            (root / f"card{index}" / f"pcm{device}c").mkdir(parents=True, exist_ok=True)
    (root / "cards").write_text("\n".join(lines) + "\n" if lines else "--- no soundcards ---\n")
    return root


def cards_of(tmp_path: Path, board: str) -> list[SoundCard]:
    return read_cards(write_asound(tmp_path / board, BOARDS[board]))


def test_cards_are_read_as_the_kernel_lists_them(tmp_path: Path) -> None:
    cards = cards_of(tmp_path, "pi4+speakerphone")
    assert [(c.index, c.id, c.kind, c.playback, c.capture) for c in cards] == [
        (0, "Headphones", "jack", (0,), ()),
        (1, "vc4hdmi0", "hdmi", (0,), ()),
        (2, "vc4hdmi1", "hdmi", (0,), ()),
        (3, "SPEAK510", "usb", (0,), (0,)),
    ]
    assert cards[3].name == "Jabra SPEAK 510 USB"
    assert read_cards(write_asound(tmp_path / "none", [])) == []
    assert read_cards(tmp_path / "no-sound-support") == []


@pytest.mark.parametrize(
    ("board", "speaker", "headphones", "capture"),
    [
        ("pi4", "plughw:CARD=Headphones,DEV=0", None, ""),
        # HDMI takes IEC958 frames: plughw would be refused; the hdmi: PCM formats them.
        ("pi5", "hdmi:CARD=vc4hdmi0,DEV=0", None, ""),
        (
            "pi4+speakerphone",
            "plughw:CARD=SPEAK510,DEV=0",
            "plughw:CARD=Headphones,DEV=0",
            "plughw:CARD=SPEAK510,DEV=0",
        ),
        ("pi5+hat", "plughw:CARD=wm8960soundcard,DEV=0", None, "plughw:CARD=wm8960soundcard,DEV=0"),
    ],
)
def test_the_proposal_suits_each_board(
    tmp_path: Path, board: str, speaker: str, headphones: str | None, capture: str
) -> None:
    proposal = propose_audio(cards_of(tmp_path, board))
    assert proposal.modes["SPEAKER"].playback == speaker
    assert (proposal.modes["HEADPHONES"].playback if "HEADPHONES" in proposal.modes else None) == headphones
    assert proposal.capture == capture
    if not capture:
        assert any("no microphone" in note for note in proposal.notes)
    if board == "pi5":
        assert any("no headphone jack" in note for note in proposal.notes)
    # What the doctor prints is a section the kiosk loads as it is.
    config = parse_config(proposal.toml(), "proposal.toml", check_devices=False)
    assert config.audio.modes["SPEAKER"].playback == speaker and config.audio.capture == capture


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_shipped_config_resolves_on_a_stock_or_extended_pi(tmp_path: Path, board: str) -> None:
    shipped = load_config(ROOT / "config" / "kiosk.toml", check_devices=False).audio
    resolved = resolve_auto(shipped, cards_of(tmp_path, board))
    proposal = propose_audio(cards_of(tmp_path, board))
    assert resolved.modes["SPEAKER"].playback == proposal.modes["SPEAKER"].playback
    assert resolved.capture == proposal.capture
    # The HEADPHONES mode exists only where there is a jack besides the loudspeaker.
    assert ("HEADPHONES" in resolved.modes) == ("HEADPHONES" in proposal.modes)
    assert all(spec.playback != "auto" for spec in resolved.modes.values())


def test_control_devices_follow_the_playback_pcm() -> None:
    assert ctl_for_pcm("plughw:CARD=Headphones,DEV=0") == "hw:CARD=Headphones"
    assert ctl_for_pcm("hdmi:CARD=vc4hdmi0,DEV=0") == "hw:CARD=vc4hdmi0"
    assert ctl_for_pcm("hw:1,0") == "hw:1"
    assert ctl_for_pcm("default") == "default"
    assert ctl_for_pcm("bluealsa:PROFILE=sco") is None


def test_the_doctor_shows_the_cards_and_a_section_for_them(tmp_path: Path) -> None:
    shipped = load_config(ROOT / "config" / "kiosk.toml", check_devices=False)
    results = list(check_audio(shipped, cards_of(tmp_path, "pi5")))
    by_name = {r.name: r for r in results}
    assert "card 0 vc4hdmi0 (vc4-hdmi-0)" in by_name["sound cards"].detail
    microphone = by_name["audio microphone"]
    assert not microphone.ok and microphone.detail == "none found"
    proposal = by_name["audio proposal"]
    text = "\n".join(proposal.lines())
    assert 'playback = "hdmi:CARD=vc4hdmi0,DEV=0"' in text and "no headphone jack" in text
    assert "(auto)" in by_name["audio SPEAKER playback"].detail  # what "auto" chose is shown


def test_the_doctor_says_when_the_kernel_has_no_sound_card(tmp_path: Path) -> None:
    config = KioskConfig(audio=load_config(ROOT / "config" / "kiosk.toml", check_devices=False).audio)
    results = list(check_audio(config, read_cards(write_asound(tmp_path / "none", []))))
    cards = next(r for r in results if r.name == "sound cards")
    assert not cards.ok and "dtoverlay" in cards.fix


def test_the_doctor_recommends_stable_names_for_usb_cameras(tmp_path: Path) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    for name in (
        "usb-046d_HD_Pro_Webcam_C920_ABCD-video-index0",
        "usb-046d_HD_Pro_Webcam_C920_ABCD-video-index1",
    ):
        (by_id / name).touch()
    config = parse_config(
        '[[cameras]]\nid = "usb"\nbackend = "v4l2"\ndevice = "/dev/video0"\n', "k.toml", check_devices=False
    )
    results = list(check_cameras(config, by_id))
    warning = next(r for r in results if r.warning)
    assert "/dev/video0 is the Pi camera's capture node" in warning.detail
    assert warning.fix.endswith(f"{by_id}/usb-046d_HD_Pro_Webcam_C920_ABCD-video-index0")
    stable = parse_config(
        f'[[cameras]]\nid = "usb"\nbackend = "v4l2"\ndevice = "{by_id}/x-video-index0"\n',
        "k.toml",
        check_devices=False,
    )
    assert not any(r.warning for r in check_cameras(stable, by_id))


def test_run_doctor_prints_the_proposal_under_its_line(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text(
        '[audio]\nbackend = "alsa"\ncapture = "nomic"\n[audio.modes.SPEAKER]\nplayback = "nothere"\n'
        '[buttons]\npin_factory = "mock"\n[recording]\ndirectory = "' + str(tmp_path / "rec") + '"\n'
    )
    out = io.StringIO()
    run_doctor(path, out)
    lines = out.getvalue().splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith("WARN  audio proposal"))
    assert lines[start + 1].strip() == "[audio]"
