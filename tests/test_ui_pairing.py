"""A new kiosk's pairing screen (Kivy, offscreen, in a child process as in tests/test_ui.py): it lists
the building's hosts, shows the chosen host's fingerprint and a keypad, refuses a wrong code with the
host's reason, pairs with the right one against a real host server (its own CA, TLS), and leaves the
kiosk's config set to use the host."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kiosk.config import load_config, parse_config

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT = 60.0

MEMBER_TOML = """[server]
role = "member"

[identity]
uid = "flat-12"
name = "Flat 12"

[audio]
backend = "emulated"

[[cameras]]
backend = "emulated"
"""


def test_an_unpaired_member_is_runnable_and_awaits_pairing(tmp_path: Path) -> None:
    from kiosk.config import check_runnable

    config = parse_config(MEMBER_TOML, check_devices=False)
    assert config.server.awaits_pairing
    check_runnable(config)  # no token yet, and that is fine: `kiosk run` shows the pairing screen
    (tmp_path / "ca.pem").write_text("a CA")
    paired_server = (
        f'role = "member"\nurl = "https://lobby.local:8443"\nca_file = "{tmp_path}/ca.pem"\nauth_token = "t"'
    )
    paired = parse_config(MEMBER_TOML.replace('role = "member"', paired_server), check_devices=False)
    assert not paired.server.awaits_pairing


def test_a_new_kiosk_pairs_from_its_screen(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(tmp_path), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    seen: dict[str, Any] = json.loads(report.read_text())
    assert seen["hosts"] == ["Lobby"]
    assert seen["fingerprint_shown"] and "Not paired" in seen["wrong_code"]
    config = load_config(tmp_path / "kiosk.toml", check_devices=False)
    assert config.server.role == "member" and not config.server.awaits_pairing
    assert config.server.url == seen["host_url"] and Path(config.server.ca_file).read_text() == seen["ca_pem"]
    assert config.auth_token()  # the token it was given, in the file pairing wrote
    assert (tmp_path / "kiosk.toml.before-pair").exists()


# ----------------------------------------------------------------------------- the child process


async def scenario(tmp: Path) -> dict[str, Any]:
    from calls_support import wait_until
    from test_lan import host_server

    from kiosk.lan.codes import PairingCodes
    from kiosk.lan.discovery import HostAd
    from kiosk.ui.pairing_app import PairingApp

    seen: dict[str, Any] = {}
    config_path = tmp / "kiosk.toml"
    config_path.write_text(MEMBER_TOML)
    async with host_server(tmp / "host") as (server, certs):
        code = (await asyncio.to_thread(PairingCodes(tmp / "host").new_code)).code
        lobby = HostAd(
            instance="Lobby._kiosk-call._tcp.local.",
            name="Lobby",
            urls=(server.url,),
            fingerprint=certs.fingerprint,
            hostname="",
            version="1",
        )

        async def discover() -> list[HostAd]:
            return [lobby]

        app = PairingApp(config_path, "Flat 12", "flat-12", discover=discover)
        runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))
        try:
            await wait_until(lambda: getattr(app, "hosts", []), 10, "the hosts listed")
            seen["hosts"] = [host.name for host in app.hosts]
            button = app.hosts_box.children[0]
            button.dispatch("on_release")
            seen["fingerprint_shown"] = certs.fingerprint[:4].upper() in app.fingerprint.text

            def enter(digits: str) -> None:
                for digit in digits:
                    app.keys[digit].dispatch("on_release")
                app.keys["ok"].dispatch("on_release")

            wrong = "000000" if code != "000000" else "111111"
            enter(wrong)
            await wait_until(lambda: "Not paired" in app.message.text, 10, "the wrong code refused")
            seen["wrong_code"] = app.message.text
            enter(code)
            await wait_until(lambda: app.paired, 10, "paired")
            await asyncio.wait_for(runner, 15)  # it ends by itself, for systemd to start the kiosk again
        finally:
            if not runner.done():
                app.stop()
                await asyncio.wait_for(runner, 10)
        seen["host_url"] = server.url
        seen["ca_pem"] = certs.ca_pem
    return seen


def _child(tmp: Path, report: Path) -> None:
    sys.path.insert(0, str(HERE))  # calls_support, test_lan
    from kiosk.ui.env import prepare_kivy

    prepare_kivy(width=800, height=480, offscreen=True, kivy_home=tmp / "kivy-home")
    report.write_text(json.dumps(asyncio.run(scenario(tmp))))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
