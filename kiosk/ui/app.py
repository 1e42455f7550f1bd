"""`kiosk run`: the kiosk with its touch screen, on one asyncio loop shared by Kivy and aiortc.

`run_kiosk(config_path)` loads the config, builds the devices, starts an embedded call server when the
config asks for one (creating this kiosk's user and a visitor user on first start), logs in, starts the
GPIO buttons / LEDs / keyboard / control socket, and runs `KioskApp` until closed (or `duration`).
With no display it draws offscreen and can save a screenshot of every screen it shows.

This module does not import Kivy at the top: `prepare_kivy()` must run first. `KioskApp` is imported
from `kiosk.ui.kivy_app` on first use of `kiosk.ui.app.KioskApp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kiosk import service
from kiosk.calls import Call, Calls, CallsError, CallSettings, CallSettingsBuilder, CallType
from kiosk.config import ConfigError, KioskConfig, load_config
from kiosk.ui.env import has_display, prepare_kivy

if TYPE_CHECKING:
    from kiosk.server.app import RunningServer
    from kiosk.ui.kivy_app import KioskApp

__all__ = ["KioskApp", "run_kiosk", "settings_from_config", "VISITOR_UID"]

log = logging.getLogger(__name__)

VISITOR_UID = "visitor"
TOKENS_FILE = "kiosk-ui-tokens.json"  # in the embedded server's data dir, mode 0600


def __getattr__(name: str) -> Any:
    # Lazy, so that importing run_kiosk does not import Kivy before its environment is set.
    if name == "KioskApp":
        from kiosk.ui.kivy_app import KioskApp

        return KioskApp
    raise AttributeError(name)


def settings_from_config(config: KioskConfig) -> Callable[[Call | None], CallSettings]:
    """The controller's settings factory: the ui section's layout, avatar and idle timeout."""

    def factory(call: Call | None) -> CallSettings:
        return (
            CallSettingsBuilder()
            .set_is_audio_only_call(call is not None and call.type == CallType.AUDIO)
            .set_mode(config.ui.mode)
            .set_avatar_mode(config.ui.avatar_mode)
            .set_idle_timeout_period(config.ui.idle_timeout)
            .auto_record_on_call_start(config.recording.auto_record)
            .build()
        )

    return factory


@dataclass
class EmbeddedUsers:
    kiosk_token: str
    visitor_token: str


def ensure_users(data_dir: Path, config: KioskConfig) -> EmbeddedUsers:
    """This kiosk's user and a visitor user in the embedded server's database, made on first start.
    Their tokens are shown only when made, so they are kept (0600) next to the database."""
    from kiosk.server.admin import UserExistsError, add_user

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKENS_FILE
    tokens: dict[str, str] = {}
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            tokens = dict(json.loads(path.read_text()))
    uid = config.identity.uid or "kiosk"
    wanted = {uid: config.identity.name or uid, VISITOR_UID: "Visitor"}
    for user_id, name in wanted.items():
        if user_id in tokens:
            continue
        try:
            tokens[user_id] = add_user(data_dir, user_id, name)["authToken"]
        except UserExistsError:
            if user_id == uid and config.auth_token():
                tokens[user_id] = config.auth_token()
            else:
                raise ConfigError(
                    f"server.data_dir: user {user_id!r} exists but its token is unknown; "
                    f"set server.auth_token or remove the user"
                ) from None
    path.write_text(json.dumps(tokens))
    os.chmod(path, 0o600)
    return EmbeddedUsers(tokens[uid], tokens[VISITOR_UID])


def run_kiosk(
    config_path: Path | None, *, screenshots_dir: Path | None = None, duration: float | None = None
) -> int:
    """The `kiosk run` command (`config_path` None: $KIOSK_CONFIG, else /etc/kiosk/kiosk.toml).
    0 when it ran and stopped normally, 2 for a config (or hardware) problem, printed as one line."""
    from kiosk.calls import SettingsError
    from kiosk.hardware import HardwareError

    try:
        config = load_config(config_path)
        settings_from_config(config)(None)  # a bad ui.mode or ui.avatar_mode stops it here, not at a call
    except ConfigError as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"kiosk: ui: {exc}", file=sys.stderr)
        return 2
    offscreen = not has_display()
    prepare_kivy(
        width=config.ui.width,
        height=config.ui.height,
        fullscreen=config.ui.fullscreen and not offscreen,
        offscreen=offscreen,
    )
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
    from kiosk.controller import KioskController
    from kiosk.device import build_devices
    from kiosk.hardware import Controls, start_controls
    from kiosk.ringer import Ringer
    from kiosk.ui.kivy_app import KioskApp

    server: RunningServer | None = None
    calls: Calls | None = None
    controls: Controls | None = None
    ringer: Ringer | None = None
    watchdog: asyncio.Task[None] | None = None
    server_url, token = config.server.url, ""
    visitor_token = ""
    try:
        devices, choices = build_devices(config)
        if config.server.embedded:
            server, users = await _start_embedded(config)
            server_url, token, visitor_token = server.url, users.kiosk_token, users.visitor_token
        else:
            token = config.auth_token()
            if not token:
                raise ConfigError("server.auth_token: this kiosk needs its user's token (or auth_token_file)")
        calls = Calls(
            server_url if config.server.embedded else config.server.addresses(),
            auth_token=token,
            devices=devices,
            video_codec=choices.video_codec,
            recording_dir=choices.recording_dir,
            device_poll_interval=config.audio.poll_interval,
            ice_host_addresses=["127.0.0.1"] if _is_loopback(server_url) else None,
            ca_file=config.server.ca_file or None,
        )
        controller = KioskController(
            calls,
            auto_answer_after=config.ui.auto_answer_after,
            settings_factory=settings_from_config(config),
            volume=devices.volume,
        )
        if choices.problems:
            controller.report(" ".join(choices.problems))  # on the home screen until the next message
        ringer = Ringer(controller, devices)  # the ring plays on the current output while a call rings in
        app = KioskApp(
            controller,
            device_name=config.identity.name,
            contacts=config.ui.contacts,
            avatar_mode=config.ui.avatar_mode,
        )
        try:
            await calls.login()
        except CallsError as exc:
            # No server yet: the kiosk still starts, says so on the home screen, and keeps trying.
            log.warning("login failed: %s", exc)
        controls = await start_controls(config, controller)
        uid = config.identity.uid or "kiosk"
        if visitor_token:
            out.write(
                "call this kiosk with:\n"
                f"  kiosk endpoint --server {server_url} --auth-token {visitor_token} --call {uid} --loopback\n"
                f"or from a browser: {server_url}/app/?token={visitor_token}\n"
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
        if ringer is not None:
            ringer.close()
        if controls is not None:
            await controls.close()
        if calls is not None:
            await calls.close()
        if server is not None:
            await server.close()


def offscreen_now() -> bool:
    return os.environ.get("SDL_VIDEODRIVER") == "offscreen"


async def _start_embedded(config: KioskConfig) -> tuple[RunningServer, EmbeddedUsers]:
    from kiosk.server.app import start_server
    from kiosk.server.config import ServerConfig

    parts = urlsplit(config.server.url)
    data_dir = Path(config.server.data_dir)
    users = await asyncio.to_thread(ensure_users, data_dir, config)
    try:
        server = await start_server(
            ServerConfig(host=parts.hostname or "127.0.0.1", port=parts.port or 8080, data_dir=data_dir)
        )
    except OSError as exc:
        raise ConfigError(f"server.url: cannot serve on {config.server.url}: {exc.strerror or exc}") from None
    return server, users


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


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
