"""Inputs that used to get unclear answers: each is refused in one line naming what is wrong."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kiosk.cli import main
from kiosk.config import ConfigError, load_config, parse_config

RUNNABLE = "[server]\nurl = 'http://127.0.0.1:1'\nauth_token = 't'\n"


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- the server's URL


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("127.0.0.1:8080", "'127.0.0.1:8080' has no scheme: write it as http://127.0.0.1:8080"),
        ("http://", "'http://' has no host"),
        ("ftp://127.0.0.1:8080", "the scheme must be http, https, ws or wss, not ftp"),
        ("http://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
    ],
)
def test_a_bad_server_url_is_one_line_from_the_sdk_the_cli_and_the_config(
    url: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiosk.calls import Calls

    with pytest.raises(ValueError, match=f"^server_url: .*{words}"):
        Calls(url)
    with pytest.raises(ValueError, match=words):
        Calls(["http://127.0.0.1:8080", url])

    assert main(["endpoint", "--server", url, "--auth-token", "t", "--idle"]) == 2
    assert one_line_error(capsys).startswith(f"kiosk: --server: {url!r}")

    with pytest.raises(ConfigError, match=f"^server.url: .*{words}"):
        parse_config(f"[server]\nurl = '{url}'\n", check_devices=False)
    with pytest.raises(ConfigError, match=f"^server.urls\\[1\\]: .*{words}"):
        parse_config(f"[server]\nurls = ['http://a:1', '{url}']\n", check_devices=False)
    path = tmp_path / "kiosk.toml"
    path.write_text(f"[server]\nurl = '{url}'\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert one_line_error(capsys).startswith("kiosk: server.url: ")


def test_ws_and_wss_name_the_same_server_as_http_and_https() -> None:
    from kiosk.calls import Calls

    calls = Calls(["ws://a.example:8080/", "wss://b.example/kiosk/", "HTTPS://c.example:8443"])
    assert calls.server_urls == ["http://a.example:8080", "https://b.example/kiosk", "https://c.example:8443"]
    config = parse_config("[server]\nurl = 'wss://a.example'\nurls = ['ws://b:80/']\n", check_devices=False)
    assert config.server.addresses() == ["https://a.example", "http://b:80"]


async def test_the_embedded_servers_cors_origins_are_checked_and_reach_the_server(tmp_path: Path) -> None:
    import socket

    from kiosk.assembly import start_embedded_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = "[server]\nembedded = true\nurl = 'http://127.0.0.1:{p}'\ndata_dir = '{d}'\ncors_origins = {o}\n"
    config = parse_config(
        text.format(p=port, d=tmp_path, o="['HTTPS://Reception.example:443/', 'http://desk.local:8080']"),
        check_devices=False,
    )
    assert config.server.cors_origins == ["https://reception.example", "http://desk.local:8080"]
    server, _ = await start_embedded_server(config)
    try:
        assert server.config.cors_origins == config.server.cors_origins
    finally:
        await server.close()
    with pytest.raises(ConfigError, match=r"server.cors_origins\[1\]: CORS origin 'reception.example'"):
        parse_config(
            text.format(p=port, d=tmp_path, o="['https://a.example', 'reception.example']"),
            check_devices=False,
        )


# ----------------------------------------------------------------------------- check-config as run


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[ui]\nmode = 'GRID'\n", "ui: mode must be one of DEFAULT, SPOTLIGHT, SINGLE, not 'GRID'"),
        ("[ui]\navatar_mode = 'oval'\n", "ui: avatar_mode must be one of circle, square, fullscreen"),
        ("[ui]\nidle_timeout = -5\n", "ui: idle_timeout must be whole seconds from 1 to 86400, not -5"),
        ("[server]\nauth_token_file = '{tmp}/missing-token'\n", "server.auth_token_file: cannot read it"),
        ("[emulation]\ncontrol_socket = '{tmp}/no-dir/k.sock'\n", "emulation.control_socket: "),
        ("[server]\nauth_token = ''\n", "server.auth_token: this kiosk needs its user's token"),
    ],
)
def test_check_config_refuses_what_run_refuses_with_the_same_line(
    text: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kiosk.toml"
    body = text.replace("{tmp}", str(tmp_path))
    # The case's own [server] keys replace the runnable config's token.
    path.write_text(body if body.startswith("[server]") else RUNNABLE + body)
    assert main(["check-config", "--config", str(path)]) == 2
    checked = one_line_error(capsys)
    assert checked.startswith(f"kiosk: {words}"), checked
    assert main(["run", "--config", str(path)]) == 2
    assert one_line_error(capsys) == checked


def test_the_ui_choices_of_the_config_are_the_sdks() -> None:
    """The config checks `[ui]` without importing the SDK (and its media stack): the same rule."""
    from kiosk.calls import AvatarMode, CallSettingsBuilder, Mode, SettingsError
    from kiosk.calls.settings import MAX_IDLE_TIMEOUT_SECONDS
    from kiosk.config import AVATAR_MODES, MAX_IDLE_TIMEOUT, UI_MODES, check_runnable

    assert set(UI_MODES) == {m.value for m in Mode} and set(AVATAR_MODES) == {m.value for m in AvatarMode}
    assert MAX_IDLE_TIMEOUT == MAX_IDLE_TIMEOUT_SECONDS
    for key, setter in (("mode", "set_mode"), ("avatar_mode", "set_avatar_mode")):
        for spelling in ("spotlight", " MODE_SINGLE ", "Square", "AVATAR_MODE_CIRCLE", "grid", "", "MODE_"):
            try:
                getattr(CallSettingsBuilder(), setter)(spelling).build()
                sdk = True
            except SettingsError:
                sdk = False
            try:
                check_runnable(parse_config(f"{RUNNABLE}[ui]\n{key} = '{spelling}'\n"))
                config = True
            except ConfigError:
                config = False
            assert config == sdk, (key, spelling)


# ----------------------------------------------------------------------------- the file itself


def test_a_config_file_that_is_not_utf8_is_a_config_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_bytes(b"[identity]\nname = 'Entr\xe9e'\n")  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError, match=f"^{path}: not UTF-8"):
        load_config(path)
    assert main(["check-config", "--config", str(path)]) == 2
    assert one_line_error(capsys).startswith(f"kiosk: {path}: not UTF-8")


# ----------------------------------------------------------------------------- values no device can use


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "[buttons.mute]\npin = 17\nhold_s = nan\n",
            "buttons.mute.hold_s: expected a finite number, got nan",
        ),
        ("[ui]\nauto_answer_after = nan\n", "ui.auto_answer_after: expected a finite number"),
        ("[audio]\npoll_interval = inf\n", "audio.poll_interval: expected a finite number, got inf"),
        ("[audio]\ntone_hz = -inf\n", "audio.tone_hz: expected a finite number"),
        ("[ui]\nwidth = -800\n", "ui.width: -800 is not between 1 and 16384"),
        ("[ui]\nheight = 0\n", "ui.height: 0 is not between 1 and 16384"),
        ("[[cameras]]\nid = 'pi'\nbackend = 'picamera2'\ncamera_num = -1\n", "cameras[0].camera_num: -1"),
        ("[identity]\nuid = 'front door'\n", "identity.uid: 'front door' is not a uid"),
        ("[ui]\ncontacts = [{ uid = 'a/b' }]\n", "ui.contacts[0].uid: 'a/b' is not a uid"),
        (
            "[buttons.call]\npin = 4\ncontact = 'récéption'\n",
            "buttons.call.contact: 'récéption' is not a uid",
        ),
        ("[[cameras]]\nid = 'usb'\nbackend = 'v4l2'\ndevice = '/dev/null'\n", "cameras[0].device: /dev/null"),
        (
            "[[cameras]]\nid = 'usb'\nbackend = 'v4l2'\ndevice = '{tmp}/video0'\n",
            "cameras[0].device: {tmp}/video0 is not a video",
        ),
    ],
)
def test_values_no_device_or_server_can_use_name_their_key(text: str, words: str, tmp_path: Path) -> None:
    (tmp_path / "video0").write_bytes(b"")  # a regular file where a camera's node should be
    with pytest.raises(ConfigError) as error:
        parse_config(text.replace("{tmp}", str(tmp_path)), "test.toml")
    assert str(error.value).startswith(words.replace("{tmp}", str(tmp_path))), str(error.value)


def test_a_video4linux_node_is_a_camera_device(monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = os.stat

    def fake_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) == "/dev/video-kiosk-test":  # a character device of major 81, as udev makes it
            fields = (stat.S_IFCHR | 0o660, 0, 0, 1, 0, 44, 0, 0, 0, 0)
            return os.stat_result(fields, {"st_rdev": os.makedev(81, 0)})
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", fake_stat)
    text = "[[cameras]]\nid = 'usb'\nbackend = 'v4l2'\ndevice = '/dev/video-kiosk-test'\n"
    assert parse_config(text).cameras[0].device == "/dev/video-kiosk-test"
