"""`kiosk doctor` against the emulated device and a real call server: all OK, then each problem a person
setting up a kiosk meets (wrong token, unreachable server, missing camera, busy pin, missing sound
device, wrong clock) reported as FAIL with its fix."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path
from typing import Any

from alsa_support import AlsaConfig
from calls_support import make_user, running_server
from gpiozero import Button
from gpiozero.pins.mock import MockFactory

from kiosk.doctor import check_clock, run_doctor

ROOT = Path(__file__).resolve().parent.parent
EMULATED = (ROOT / "config" / "emulated.toml").read_text()
EMBEDDED_SERVER = 'url = "http://127.0.0.1:8080"\nembedded = true\ndata_dir = "data"\n'


def write_config(tmp_path: Path, url: str, token: str, extra: str = "") -> Path:
    """config/emulated.toml, talking to `url` with `token` instead of running its own server."""
    assert EMBEDDED_SERVER in EMULATED, "config/emulated.toml's [server] table changed; update this test"
    text = EMULATED.replace(EMBEDDED_SERVER, f'url = "{url}"\nauth_token = "{token}"\nembedded = false\n')
    path = tmp_path / "kiosk.toml"
    path.write_text(text + extra)
    return path


async def doctor(path: Path, **options: Any) -> tuple[int, str]:
    # In a thread: the doctor's HTTP request is answered by the server running on this test's loop.
    out = io.StringIO()
    code = await asyncio.to_thread(run_doctor, path, out, **options)
    return code, out.getvalue()


def line(report: str, start: str) -> str:
    found = [text for text in report.splitlines() if text.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{report}"
    return found[0]


def fix_after(report: str, start: str) -> str:
    lines = report.splitlines()
    index = lines.index(line(report, start))
    assert lines[index + 1].strip().startswith("fix: "), report
    return lines[index + 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_good_emulated_kiosk_passes_every_check(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as server:
        token = await make_user(server.url, "front-door", "Front door")
        code, report = await doctor(write_config(tmp_path, server.url, token))
    assert code == 0, report
    assert "FAIL" not in report and "WARN" not in report
    for start in (
        "OK    config:",
        "OK    camera emulated-front:",
        "OK    camera emulated-back:",
        "OK    audio:",
        "OK    gpio 17 (buttons.mute.pin): free",
        "OK    gpio 13 (leds.ringing): free",
        "OK    recordings:",
        "OK    auth token: present",
        "OK    server:",
        "OK    login: accepted as front-door (Front door)",
        "OK    clock: within",
    ):
        line(report, start)
    assert report.rstrip().endswith("all checks passed")


async def test_each_problem_is_a_fail_with_its_fix(tmp_path: Path) -> None:
    # TOML lets an array of tables continue at the end of the file: a third camera, not plugged in.
    missing_camera = '\n[[cameras]]\nid = "usb"\nbackend = "v4l2"\ndevice = "/dev/video-kiosk-test-missing"\n'
    async with running_server(tmp_path / "data") as server:
        await make_user(server.url, "front-door")
        # The pin is held by someone else: as if the kiosk were still running.
        factory = MockFactory()
        holder = Button(17, pin_factory=factory)
        try:
            config = write_config(tmp_path, server.url, "not-a-token", missing_camera)
            code, report = await doctor(config, pin_factory=factory)
        finally:
            holder.close()
    assert code == 1

    assert "token invalid" in line(report, "FAIL  login:")
    assert "kiosk users add" in fix_after(report, "FAIL  login:")

    assert "/dev/video-kiosk-test-missing is not there" in line(report, "FAIL  camera usb:")
    assert "ls /dev/video*" in fix_after(report, "FAIL  camera usb:")
    line(report, "OK    camera emulated-front:")

    assert "cannot claim it" in line(report, "FAIL  gpio 17 (buttons.mute.pin):")
    assert "systemctl stop kiosk" in fix_after(report, "FAIL  gpio 17")
    line(report, "OK    gpio 27 (buttons.end.pin): free")
    assert report.rstrip().endswith("3 problem(s) found")


async def test_an_unreachable_server_is_a_fail_with_its_fix(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, report = await doctor(write_config(tmp_path, url, "some-token"))
    assert code == 1
    assert f"cannot reach {url}" in line(report, "FAIL  server:")
    assert "systemctl status kiosk-server" in fix_after(report, "FAIL  server:")
    assert "login" not in report  # nothing to log in to
    line(report, "OK    clock:")  # still checked, without the server's Date


async def test_missing_token_and_broken_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:1", "")
    path.write_text(path.read_text().replace('auth_token = ""', 'auth_token_file = "/nonexistent/token"'))
    code, report = await doctor(path)
    assert code == 1
    assert "chmod 0640 /nonexistent/token" in fix_after(report, "FAIL  auth token:")

    # A recordings directory the kiosk cannot write (a file stands where its parent should be).
    (tmp_path / "not-a-dir").write_text("")
    path.write_text(path.read_text() + f'\n[recording]\ndirectory = "{tmp_path}/not-a-dir/rec"\n')
    path.write_text(path.read_text().replace('\n[recording]\ndirectory = "recordings"\n', "\n"))
    code, report = await doctor(path)
    assert "not-a-dir/rec" in line(report, "FAIL  recordings:")
    assert "ReadWritePaths=" in fix_after(report, "FAIL  recordings:")

    path.write_text("[buttons]\npin_factory = 'wiringpi'\n")
    code, report = await doctor(path)
    assert code == 1
    assert "buttons.pin_factory" in line(report, "FAIL  config:")
    assert "kiosk check-config" in fix_after(report, "FAIL  config:")


async def test_sound_devices_per_mode(tmp_path: Path, monkeypatch: Any) -> None:
    alsa = AlsaConfig(tmp_path / "asound.conf")
    raw = tmp_path / "mic.raw"
    raw.write_bytes(bytes(3200))
    alsa.add_capture("kiosk_mic", raw)
    alsa.add_playback("kiosk_speaker", tmp_path / "speaker.raw")
    alsa.write()
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa.env_value)
    audio = (
        '\n[audio]\nbackend = "alsa"\ncapture = "kiosk_mic"\ndefault_mode = "SPEAKER"\n'
        "echo_cancellation = false\nnoise_suppression = false\nauto_gain_control = false\n"
        '[audio.modes.SPEAKER]\nplayback = "kiosk_speaker"\n'
        '[audio.modes.HEADPHONES]\nplayback = "kiosk_headset_unplugged"\n'
    )
    text = write_config(tmp_path, "http://127.0.0.1:1", "t").read_text()
    text = text.replace('\n[audio]\nbackend = "emulated"\n', audio)
    assert 'backend = "alsa"' in text
    path = tmp_path / "alsa.toml"
    path.write_text(text)
    _, report = await doctor(path)
    line(report, "OK    audio microphone: kiosk_mic")
    line(report, "OK    audio SPEAKER playback: kiosk_speaker")
    # A headset that is not plugged in now is worth a look, not a failure.
    assert "kiosk_headset_unplugged" in line(report, "WARN  audio HEADPHONES playback:")
    assert "aplay -L" in fix_after(report, "WARN  audio HEADPHONES playback:")

    path.write_text(text.replace('playback = "kiosk_speaker"', 'playback = "kiosk_no_such_card"'))
    _, report = await doctor(path)
    assert "kiosk_no_such_card" in line(report, "FAIL  audio SPEAKER playback:")


def test_clock_checks() -> None:
    (result,) = check_clock(None, now=1_000_000_000.0)  # 2001: a Pi that booted without network time
    assert not result.ok and "2001" in result.detail and "timedatectl" in result.fix
    (result,) = check_clock(1_800_000_000.0, now=1_800_000_090.0)
    assert not result.ok and "+90 s" in result.detail
    (result,) = check_clock(1_800_000_000.0, now=1_800_000_020.0)
    assert result.ok
