"""The device configuration: the shipped files load, and every kind of mistake names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiosk.config import ConfigError, KioskConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_files_load():
    documented = load_config(ROOT / "config" / "kiosk.toml", check_devices=False)
    assert documented.audio.backend == "alsa" and set(documented.audio.modes) == {"SPEAKER", "HEADPHONES"}
    # On a stock Pi (4: a jack and HDMI, 5: HDMI only, neither a microphone) it picks from the cards.
    assert documented.audio.capture == "auto"
    assert {spec.playback for spec in documented.audio.modes.values()} == {"auto"}
    assert documented.buttons.end is not None and documented.buttons.end.hold_rejects
    assert documented.buttons.call is not None and documented.buttons.call.contact == "reception"
    emulated = load_config(ROOT / "config" / "emulated.toml")
    assert [c.facing for c in emulated.cameras] == ["front", "back"]
    assert emulated.buttons.pin_factory == "mock" and emulated.server.embedded


def test_documented_file_shows_every_key():
    """config/kiosk.toml is the documentation: every key of every section appears in it."""
    import dataclasses
    import typing

    text = (ROOT / "config" / "kiosk.toml").read_text()

    def keys(cls: type) -> set[str]:
        found = set()
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            found.add(f.name)
            for arg in typing.get_args(typing.get_type_hints(cls)[f.name]) or [
                typing.get_type_hints(cls)[f.name]
            ]:
                if dataclasses.is_dataclass(arg):
                    found |= keys(arg)
        return found

    missing = sorted(
        k
        for k in keys(KioskConfig)
        if not any(form in text for form in (f"{k} =", f"[{k}", f".{k}]", f".{k}."))
    )
    assert missing == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[audio]\nbackend = 'alsa'\nloudness = 3\n", "audio.loudness: unknown key"),
        ("[audio]\nvolume = 130\n", "audio.volume: 130 is not between 0 and 100"),
        ("[audio]\nvolume_step = 0\n", "audio.volume_step: 0 is not between 1 and 50"),
        ("[buttons.volume_up]\npin = 17\n[buttons.mute]\npin = 17\n", "pin 17 is also used"),
        ("[ui]\nfullscreen = 'yes'\n", "ui.fullscreen: expected true or false"),
        ("[[cameras]]\nid = 'a'\nfps = 'fast'\n", "cameras[0].fps: expected a whole number"),
        ("[[cameras]]\nid = 'a'\nbackend = 'kinect'\n", "cameras[0].backend: expected one of"),
        (
            "[buttons.mute]\npin = 17\n[buttons.end]\npin = 17\n",
            "buttons.end.pin: pin 17 is also used by buttons.mute.pin",
        ),
        (
            "[buttons.mute]\npin = 17\n[leds]\nmuted = 17\n",
            "leds.muted: pin 17 is also used by buttons.mute.pin",
        ),
        ("[buttons.mute]\npull_up = true\n", "buttons.mute.pin: missing"),
        ("[buttons.call]\npin = 4\n", "buttons.call.contact"),
        (
            "[[cameras]]\nid = 'usb'\nbackend = 'v4l2'\ndevice = '/dev/video97'\n",
            "cameras[0].device: /dev/video97 does not exist",
        ),
        ("[[cameras]]\nid = 'a'\n[[cameras]]\nid = 'a'\n", "cameras[1].id: camera id 'a' is used twice"),
        ("[audio]\ndefault_mode = 'LOUD'\n", "'LOUD' is not an audio mode"),
        ("[audio]\nbackend = 'alsa'\n", "audio.modes: the alsa backend needs at least one mode"),
        ("[audio.modes.SPEAKER]\nlabel = 'x'\n", "audio.modes.SPEAKER.playback: missing"),
        ("[server]\nurl = 'ftp://x'\n", "server.url"),
        ("[ui\n", "not valid TOML"),
        ("[leds]\nin_call = 99\n", "leds.in_call: GPIO 99 does not exist"),
    ],
)
def test_mistakes_name_their_key(text, words):
    with pytest.raises(ConfigError) as error:
        parse_config(text, "test.toml")
    assert words in str(error.value)


def test_missing_file_and_token_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")
    config = parse_config(f"[server]\nauth_token_file = '{tmp_path / 'token'}'\n")
    with pytest.raises(ConfigError, match="server.auth_token_file"):
        config.auth_token()
    (tmp_path / "token").write_text("abc123\n")
    assert config.auth_token() == "abc123"


def test_check_config_command_exits_non_zero_without_a_traceback(tmp_path):
    bad = tmp_path / "kiosk.toml"
    bad.write_text("[buttons.mute]\npin = 17\n[buttons.end]\npin = 17\n")
    done = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "buttons.end.pin: pin 17 is also used by buttons.mute.pin" in done.stderr
    assert "Traceback" not in done.stderr
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk.cli",
            "check-config",
            "--config",
            str(ROOT / "config" / "emulated.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "config ok" in good.stdout


def test_audio_modes_are_one_definition_the_config_reads_without_the_media_code():
    """The config, the media backends and the SDK share kiosk.audio_modes; loading a config imports none
    of kiosk.media (nor PyAV), so `kiosk check-config` needs no media stack."""
    from kiosk.audio_modes import AUDIO_MODES, AudioMode
    from kiosk.calls import AudioMode as SdkAudioMode
    from kiosk.calls.constants import parse_enum
    from kiosk.media import devices

    assert SdkAudioMode is AudioMode and devices.AUDIO_MODES is AUDIO_MODES
    assert AUDIO_MODES == ("SPEAKER", "EARPIECE", "HEADPHONES", "BLUETOOTH")
    assert parse_enum(AudioMode, "audio_mode_earpiece", "audio mode") is AudioMode.EARPIECE
    config = parse_config("[audio]\ndefault_mode = 'EARPIECE'\nfallback_order = ['HEADPHONES', 'SPEAKER']\n")
    assert config.audio.default_mode is AudioMode.EARPIECE
    assert config.audio.fallback_order == [AudioMode.HEADPHONES, AudioMode.SPEAKER]
    assert KioskConfig().audio.fallback_order == list(AUDIO_MODES)
    with pytest.raises(ConfigError, match=r"^audio.modes.LOUD: 'LOUD' is not an audio mode \(SPEAKER, "):
        parse_config("[audio.modes.LOUD]\nplayback = 'default'\n")
    with pytest.raises(ConfigError, match=r"^audio.fallback_order\[1\]: 'speaker' is not an audio mode"):
        parse_config("[audio]\nfallback_order = ['SPEAKER', 'speaker']\n")
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, kiosk.config; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert not [name for name in imported if name.startswith("kiosk.media") or name == "av"], imported
