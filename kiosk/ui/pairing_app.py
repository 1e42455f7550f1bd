"""A new kiosk's first screen: the building hosts nearby, and the pairing code (docs/intercom.md).

`kiosk run` shows it instead of the kiosk while `[server] role = "member"` has no host yet. A touch on
a host shows its CA fingerprint (the host's own screen shows the same one) and a keypad; the code
entered pairs the kiosk (kiosk.lan.pairing: the token and the CA next to the config, the config's
[server] table set), and the app ends, for systemd to start the kiosk again as a member.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.gridlayout import GridLayout
from kivy.uix.widget import Widget

from kiosk.lan import show_fingerprint
from kiosk.lan.discovery import HostAd
from kiosk.lan.pairing import PairingError, apply_pairing, pair
from kiosk.ui.widgets import AMBER, BLUE, GREEN, GREY, RED, BigButton, Text, paint_background

log = logging.getLogger(__name__)

Discover = Callable[[], Awaitable[list[HostAd]]]
CODE_DIGITS = 6
LOOK_AGAIN_SECONDS = 5.0  # hosts come and go: look again this often while none is chosen
RESTART_AFTER_SECONDS = 3.0  # the "paired" screen stays this long before the app ends


async def browse_hosts() -> list[HostAd]:
    from kiosk.lan.discovery import browse

    return await browse(3.0)


class PairingApp(App):
    """`discover` finds the hosts (mDNS by default); `config_path` is the kiosk's config, which pairing
    edits; `name` and `uid` are what the host is asked to call this kiosk."""

    def __init__(
        self, config_path: Path, name: str, uid: str | None, discover: Discover = browse_hosts, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.title = "Pair with the building"
        self.config_path = config_path
        self.device_name = name
        self.member_uid = uid
        self.discover = discover
        self.hosts: list[HostAd] = []
        self.chosen: HostAd | None = None
        self.code = ""
        self.paired = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def build(self) -> Widget:
        root = BoxLayout(orientation="vertical", padding=20, spacing=10)
        paint_background(root)
        root.add_widget(Text("Pair with the building", font_size=34, bold=True, size_hint_y=None, height=48))
        self.message = Text("Looking for the building's host…", font_size=22, size_hint_y=None, height=34)
        root.add_widget(self.message)
        self.hosts_box = BoxLayout(orientation="vertical", spacing=8)
        root.add_widget(self.hosts_box)
        self.code_box = BoxLayout(orientation="vertical", spacing=6, opacity=0, disabled=True)
        self.fingerprint = Text("", font_size=18, size_hint_y=None, height=50)
        self.code_label = Text("", font_size=44, bold=True, size_hint_y=None, height=56)
        self.code_box.add_widget(self.fingerprint)
        self.code_box.add_widget(self.code_label)
        pad = GridLayout(cols=6, spacing=6)
        self.keys: dict[str, BigButton] = {}
        for key in [*"123456", *"7890"]:
            self.keys[key] = BigButton(
                key, action=functools.partial(self.press, key), colour=GREY, font_size=30
            )
            pad.add_widget(self.keys[key])
        self.keys["back"] = BigButton(
            "⌫", action=functools.partial(self.press, "back"), colour=AMBER, font_size=28
        )
        self.keys["ok"] = BigButton(
            "Pair", action=functools.partial(self.press, "ok"), colour=GREEN, font_size=28
        )
        pad.add_widget(self.keys["back"])
        pad.add_widget(self.keys["ok"])
        self.code_box.add_widget(pad)
        root.add_widget(self.code_box)
        self._spawn(self._look())
        return root

    # ----------------------------------------------------------------- finding hosts

    async def _look(self) -> None:
        while self.chosen is None and not self.paired:
            try:
                hosts = await self.discover()
            except Exception as exc:  # no network yet: say so and look again
                log.info("looking for hosts: %s", exc)
                hosts = []
            if self.chosen is None:
                self._show_hosts(hosts)
            await asyncio.sleep(LOOK_AGAIN_SECONDS)

    def _show_hosts(self, hosts: list[HostAd]) -> None:
        self.hosts = hosts
        self.hosts_box.clear_widgets()
        if not hosts:
            self.message.text = "No building host found yet: is it on, on this network? Looking again…"
            return
        self.message.text = "Touch the building's host:"
        for host in hosts[:4]:
            self.hosts_box.add_widget(
                BigButton(host.name, action=functools.partial(self.choose, host), colour=BLUE, font_size=28)
            )

    def choose(self, host: HostAd) -> None:
        """Show the host's fingerprint and the keypad."""
        self.chosen = host
        self.hosts_box.clear_widgets()
        self.hosts_box.size_hint_y = 0
        self.code_box.opacity, self.code_box.disabled = 1, False
        self.fingerprint.text = (
            f"{host.name}: its screen shows this fingerprint?\n{show_fingerprint(host.fingerprint)}"
        )
        self.message.text = "Enter the code shown on the host (Pair a device)"
        self._show_code()

    # ----------------------------------------------------------------- the code

    def press(self, key: str) -> None:
        if self.paired:
            return
        if key == "back":
            self.code = self.code[:-1]
        elif key == "ok":
            if len(self.code) == CODE_DIGITS and self.chosen is not None:
                self._spawn(self._pair(self.chosen, self.code))
            return
        elif len(self.code) < CODE_DIGITS:
            self.code += key
        self._show_code()

    def _show_code(self) -> None:
        shown = self.code.ljust(CODE_DIGITS, "·")
        self.code_label.text = f"{shown[:3]} {shown[3:]}"

    async def _pair(self, host: HostAd, code: str) -> None:
        self.message.text = f"Pairing with {host.name}…"
        self.message.color = (1, 1, 1, 1)
        try:
            paired = await pair(list(host.urls), host.fingerprint, code, self.device_name, self.member_uid)
            applied = await apply_pairing(self.config_path, paired, host.hostname)
        except (PairingError, OSError) as exc:
            self.code = ""
            self._show_code()
            self.message.text = f"Not paired: {exc}"
            self.message.color = RED
            return
        self.paired = True
        if applied.backup is None:
            # The config was laid out in a way the edit does not follow: someone must add the lines.
            self.message.text = f"Paired as {paired.name}; add to the config's [server]: {applied.lines}"
            return
        self.message.text = f"Paired as {paired.name}. Starting as a member of {host.name}…"
        self.message.color = GREEN
        Clock.schedule_once(lambda dt: self.stop(), RESTART_AFTER_SECONDS)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
