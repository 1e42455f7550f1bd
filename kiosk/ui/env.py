"""Kivy's environment, set before Kivy is first imported (it reads it at import time)."""

from __future__ import annotations

import os
from pathlib import Path


def has_display() -> bool:
    """True when a screen is there to draw on: X11, Wayland, or a Raspberry Pi's own console (KMS)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return True
    # On a Pi with no desktop, SDL2 draws on the DRM device; a plain server has no /dev/dri/card*.
    return Path("/proc/device-tree/model").exists() and any(Path("/dev/dri").glob("card*"))


def prepare_kivy(
    *,
    width: int = 800,
    height: int = 480,
    fullscreen: bool = False,
    offscreen: bool = False,
    kivy_home: Path | None = None,
) -> None:
    """Set what Kivy reads at import; call before anything imports kivy. Later calls change nothing
    that Kivy has already read."""
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our own command line is not Kivy's
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")  # the kiosk's logging goes through `logging`
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")  # leave the root logger alone
    if kivy_home is not None:
        os.environ["KIVY_HOME"] = str(kivy_home)
    if offscreen:
        os.environ["SDL_VIDEODRIVER"] = "offscreen"  # renders through EGL; screenshots work
    from kivy.config import Config

    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("graphics", "fullscreen", "auto" if fullscreen else "0")
    Config.set("graphics", "resizable", "0")
    Config.set("kivy", "exit_on_escape", "0")  # a kiosk is not closed by a key
    Config.set("input", "mouse", "mouse,disable_multitouch")  # no red multitouch dots on a click
