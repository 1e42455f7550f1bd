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
    that Kivy has already read. The [input] lines set here are read when the app starts (kivy/base.py),
    so they win over a config.ini in KIVY_HOME even if Kivy was imported first."""
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
    # Kivy asks for 2x multisampling by default: an extra resolve pass over the whole window every
    # frame, for a screen of axis-aligned rectangles, video and text that gain nothing from it (and
    # with a software GL, as offscreen, a large share of each frame's drawing time).
    Config.set("graphics", "multisamples", "0")
    Config.set("kivy", "exit_on_escape", "0")  # a kiosk is not closed by a key
    # One source of touches (kivy/kivy#8494): SDL2 makes a mouse press of a touch on the screen and
    # Kivy's `mouse` provider a touch of that, so a provider reading the touchscreen as well (Kivy's
    # first-run `%(name)s = probesysfs` on Linux, the mtdev_/hid_ lines of Kivy's Pi docs, any from
    # config.ini) makes each tap two touches and a toggle such as Mute flips twice. Keep only `mouse`.
    for key in Config.options("input"):
        Config.remove_option("input", key)
    Config.set("input", "mouse", "mouse,disable_multitouch")  # no red multitouch dots on a click
