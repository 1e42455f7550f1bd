"""`kiosk run`: the kiosk with its touch screen, on one asyncio loop shared by Kivy and aiortc.

`run_kiosk(config_path)` loads the config, assembles the kiosk from it (`kiosk.assembly.Kiosk`: the
device, an embedded call server when the config asks for one, the Calls client, the controller, the
ringtone, the GPIO buttons / LEDs / keyboard / control socket), and runs `KioskApp`, the screen, on its
controller until closed (or `duration`). With no display it draws offscreen and can save a screenshot of
every screen it shows.

This module does not import Kivy at the top: `prepare_kivy()` must run first. `KioskApp` is imported
from `kiosk.ui.kivy_app` on first use of `kiosk.ui.app.KioskApp`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kiosk import service
from kiosk.assembly import HostPairing, Kiosk, KioskOptions, plan_kiosk
from kiosk.config import ConfigError, KioskConfig, load_config
from kiosk.hardware import HardwareError
from kiosk.ui.env import has_display, prepare_kivy

if TYPE_CHECKING:
    from kiosk.ui.kivy_app import KioskApp

__all__ = ["APP_OPTIONS", "KioskApp", "run_kiosk"]

# The app's own part of the kiosk: it starts with no server too (the home screen says so, and the app
# logs in again later).
APP_OPTIONS = KioskOptions(start_without_server=True)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing run_kiosk does not import Kivy before its environment is set.
    if name == "KioskApp":
        from kiosk.ui.kivy_app import KioskApp

        return KioskApp
    raise AttributeError(name)


def run_kiosk(
    config_path: Path | None, *, screenshots_dir: Path | None = None, duration: float | None = None
) -> int:
    """The `kiosk run` command (`config_path` None: $KIOSK_CONFIG, else /etc/kiosk/kiosk.toml).
    0 when it ran and stopped normally, 2 for a config (or hardware) problem, printed as one line."""
    try:
        config = load_config(config_path)
        plan_kiosk(config, APP_OPTIONS)  # a bad ui.mode or a missing token stops it here, before Kivy
    except ConfigError as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2
    offscreen = not has_display()
    prepare_kivy(
        width=config.ui.width,
        height=config.ui.height,
        fullscreen=config.ui.fullscreen and not offscreen,
        offscreen=offscreen,
    )
    if config.server.awaits_pairing:
        # A new member of a building: its pairing screen first; systemd then starts it again, paired.
        return asyncio.run(run_pairing_async(config, duration=duration))
    try:
        return asyncio.run(run_kiosk_async(config, screenshots_dir=screenshots_dir, duration=duration))
    except (ConfigError, HardwareError) as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2


async def run_kiosk_async(
    config: KioskConfig,
    *,
    screenshots_dir: Path | None = None,
    duration: float | None = None,
    out: IO[str] = sys.stdout,
) -> int:
    from kiosk.ui.kivy_app import KioskApp

    kiosk = Kiosk(config, APP_OPTIONS)
    watchdog: asyncio.Task[None] | None = None
    try:
        await kiosk.start()
        app = KioskApp(
            kiosk.controller,
            device_name=config.identity.name,
            contacts=config.ui.contacts,
            avatar_mode=config.ui.avatar_mode,
            screen_touched=kiosk.screen.touched if kiosk.screen is not None else None,
            pairing=HostPairing(kiosk) if kiosk.pairs else None,
        )
        if kiosk.users is not None:
            url, visitor = kiosk.server_url, kiosk.users.visitor_token
            door = " --open-door-after 1" if config.door.pin is not None else ""
            out.write(
                "call this kiosk with:\n"
                f"  kiosk endpoint --server {url} --auth-token {visitor} --call {kiosk.users.uid} --loopback{door}\n"
                f"or from a browser: {url}/app/#token={visitor}\n"
            )
            if door:
                out.write(
                    "in the call, the visitor's Open door (or --open-door-after) releases this kiosk's door\n"
                )
            if kiosk.pairs:
                code = await kiosk.pairing_code()
                out.write(
                    "pair a browser with this kiosk, no token typed (the code is on its screen too, under "
                    f"Pair a device; valid 5 min): {url}/app/#pair={code.code}\n"
                )
            out.flush()
        # systemd (kiosk.service, Type=notify): ready once the window is up; the watchdog is fed from
        # this loop, so a blocked loop gets the kiosk restarted.
        watchdog = service.start_watchdog()
        app.bind(on_start=lambda *_: service.ready(f"{config.identity.name}: home screen"))
        runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))
        shooter = (
            asyncio.ensure_future(_screenshots(app, screenshots_dir))
            if screenshots_dir is not None and offscreen_now()
            else None
        )
        if duration is not None:
            done, _ = await asyncio.wait({runner}, timeout=duration)
            if not done:
                app.stop()
        await runner
        if shooter is not None:
            shooter.cancel()
        return 0
    finally:
        service.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await kiosk.close()


async def run_pairing_async(
    config: KioskConfig, *, duration: float | None = None, discover: Any = None
) -> int:
    """The pairing screen of a kiosk with `role = "member"` and no host yet (0 when it ends)."""
    from kiosk.ui.pairing_app import PairingApp, browse_hosts

    app = PairingApp(
        Path(config.source),
        config.identity.name,
        config.identity.uid or None,
        discover=discover or browse_hosts,
    )
    service.ready(f"{config.identity.name}: pairing screen")
    runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))
    if duration is not None:
        done, _ = await asyncio.wait({runner}, timeout=duration)
        if not done:
            app.stop()
    await runner
    return 0


def offscreen_now() -> bool:
    return os.environ.get("SDL_VIDEODRIVER") == "offscreen"


async def _screenshots(app: KioskApp, directory: Path) -> None:
    """Save each screen the first time it is shown (after it has been drawn)."""
    saved: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        manager = getattr(app, "manager", None)
        if manager is None:
            continue
        name = manager.current
        if name not in saved:
            await asyncio.sleep(0.3)  # let a frame or two be drawn
            if manager.current == name:
                app.save_screenshot(directory / f"{name}.png")
                saved.add(name)
