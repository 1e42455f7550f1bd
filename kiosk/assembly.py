"""One kiosk, assembled from its config: the one way `kiosk run`, `kiosk endpoint` and `kiosk demo` wire
the device, the Calls SDK, the call logic and the embedded call server together.

    kiosk = Kiosk(config, KioskOptions(...))   # decided here: a bad [ui] mode is a ConfigError now
    async with kiosk:                          # started: device, server, Calls, controller, login, controls
        kiosk.controller.call("reception")

`Kiosk(config, options)` decides everything from the config and the options (`plan_kiosk`), before
anything starts. `start()` then builds the device (`build_devices`; what it lacks is shown as the
controller's message), starts the embedded call server when `[server] embedded` asks for one (with this
kiosk's user and a visitor), makes the Calls client and the `KioskController` with the call settings of
the config (`settings_from_config`: `[ui] mode`, `avatar_mode`, `idle_timeout`, `[recording] auto_record`,
`[audio] default_mode`), the ringtone, logs in, and starts the buttons, LEDs, keyboard and control
socket. `close()` stops all of it.

Each entry point adds only its own part: the app its screen, the endpoint its command line's options
(`KioskOptions`, which override the config), the demo its own server and second endpoint. So a setting
of the config works the same in the three. With no config (`kiosk endpoint` or `kiosk demo` without
`--config`) the kiosk is a plain SDK endpoint on an emulated device: the SDK's call settings, and no
volume, ringtone or controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kiosk.calls import (
    Call,
    CallEventListener,
    Calls,
    CallsError,
    CallSettings,
    CallSettingsBuilder,
    CallType,
    RTCUser,
    SettingsError,
)
from kiosk.config import NO_TOKEN, ConfigError, KioskConfig, check_runnable
from kiosk.controller import KioskController, SettingsFactory
from kiosk.device import KioskDevices, build_devices
from kiosk.hardware import Controls, start_controls
from kiosk.hardware.screen import ScreenWaker, start_screen
from kiosk.lan import DEFAULT_HOST_PORT, host_ca_path
from kiosk.media.devices import MediaDevices
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.volume import OutputVolume
from kiosk.ringer import Ringer

if TYPE_CHECKING:
    # kiosk.server is imported only by a kiosk that runs one (start_embedded_server): a kiosk of a
    # remote call server never loads it.
    from kiosk.lan.codes import PairingCode
    from kiosk.server.app import RunningServer
    from kiosk.server.config import ServerConfig

__all__ = [
    "LOOPBACK",
    "TOKENS_FILE",
    "VISITOR_UID",
    "EmbeddedUsers",
    "Kiosk",
    "KioskOptions",
    "KioskPlan",
    "ensure_users",
    "plan_kiosk",
    "settings_from_config",
    "start_embedded_server",
]

log = logging.getLogger(__name__)

VISITOR_UID = "visitor"
TOKENS_FILE = "kiosk-ui-tokens.json"  # in the embedded server's data dir, mode 0600
LOOPBACK = ("127.0.0.1",)


@dataclass(frozen=True)
class KioskOptions:
    """What whoever starts a kiosk decides on top of its config (a command line's options, the demo's
    own server). A field left at its default leaves the config's setting; with no config, the SDK's."""

    # The call service's addresses, instead of server.url and server.urls (and of an embedded server).
    servers: tuple[str, ...] = ()
    auth_token: str = ""  # instead of the config's (or the embedded server's user's)
    ca_file: Path | None = None  # instead of server.ca_file
    recording_dir: Path | None = None  # instead of recording.directory
    auto_record: bool | None = None  # instead of recording.auto_record
    video_codec: str | None = None  # instead of the devices' ("H264" for a camera's own H.264)
    # Offer only these local addresses to ICE. None: with a config, only 127.0.0.1 when the call server
    # is on loopback (everyone in the call is on this machine then); else every address.
    ice_addresses: tuple[str, ...] | None = None
    audio_only: bool = False  # every call audio-only (else only a call rung as an audio call)
    devices: MediaDevices | None = None  # with no config: the device (default: EmulatedDevices())
    # Listening on the Calls client from before it logs in.
    listeners: Mapping[str, CallEventListener] = field(default_factory=dict)
    # A failed login is logged and the kiosk starts anyway (the app shows it and logs in again later);
    # else start() raises the CallsError.
    start_without_server: bool = False


@dataclass(frozen=True)
class KioskPlan:
    """What a kiosk will be, decided from its config and options before anything starts."""

    servers: tuple[str, ...]  # the addresses it logs in to, in the order tried (an embedded server's)
    embedded: bool  # start the config's embedded call server, with this kiosk's user and a visitor
    auth_token: str  # "" with an embedded server: its user's token, known once it is made
    ca_file: Path | None
    recording_dir: Path | None  # None: the SDK's ($KIOSK_RECORDING_DIR, else ./recordings)
    video_codec: str | None  # None: the devices' choice
    ice_addresses: tuple[str, ...] | None  # None: every address
    poll_interval: float  # seconds between checks for devices appearing or vanishing
    auto_answer_after: float  # seconds; 0: never
    settings_factory: SettingsFactory  # the CallSettings each call starts with


def settings_from_config(
    config: KioskConfig | None, *, audio_only: bool = False, auto_record: bool | None = None
) -> SettingsFactory:
    """The controller's settings factory: for each call, `[ui] mode`, `avatar_mode`, `idle_timeout`,
    `[recording] auto_record` and `[audio] default_mode` (the mode the call starts in); audio-only for
    an audio call, or for every call with `audio_only`. `auto_record` overrides the config's. With no
    config, the SDK's defaults."""

    def factory(call: Call | None) -> CallSettings:
        builder = CallSettingsBuilder().set_is_audio_only_call(
            audio_only or (call is not None and call.type == CallType.AUDIO)
        )
        record = auto_record
        if config is not None:
            builder = (
                builder.set_mode(config.ui.mode)
                .set_avatar_mode(config.ui.avatar_mode)
                .set_idle_timeout_period(config.ui.idle_timeout)
                .set_default_audio_mode(config.audio.default_mode)
            )
            record = config.recording.auto_record if record is None else record
        return builder.auto_record_on_call_start(bool(record)).build()

    return factory


def plan_kiosk(config: KioskConfig | None, options: KioskOptions | None = None) -> KioskPlan:
    """Everything the config and the options decide. Raises ConfigError naming the key for what would
    only fail later: a bad `[ui] mode`, `avatar_mode` or `idle_timeout` (at the first call otherwise), no
    token for a server that is not embedded. The config's own part is `check_runnable`, which
    `kiosk check-config` runs too."""
    options = options or KioskOptions()
    if config is not None:
        check_runnable(config, auth_token=options.auth_token)
    factory = settings_from_config(config, audio_only=options.audio_only, auto_record=options.auto_record)
    try:
        factory(None)
    except SettingsError as exc:
        raise ConfigError(f"ui: {exc.message}") from None
    if config is None:
        if not options.servers:
            raise ValueError("a kiosk with no config needs the call server's address (options.servers)")
        return KioskPlan(
            servers=options.servers,
            embedded=False,
            auth_token=options.auth_token,
            ca_file=options.ca_file,
            recording_dir=options.recording_dir,
            video_codec=options.video_codec,
            ice_addresses=options.ice_addresses,
            poll_interval=1.0,
            auto_answer_after=0.0,
            settings_factory=factory,
        )
    server = config.server
    # A building's host (docs/intercom.md): its own server, HTTPS with its CA, reached from here on loopback.
    host = server.role == "host" and not options.servers
    embedded = (server.embedded or host) and not options.servers
    servers: tuple[str, ...]
    if host:
        servers = (f"https://127.0.0.1:{DEFAULT_HOST_PORT}",)
    else:
        servers = options.servers or ((server.url,) if embedded else tuple(server.addresses()))
    token = options.auth_token or ("" if embedded else config.auth_token())
    if not token and not embedded:
        raise ConfigError(NO_TOKEN)  # an embedded config's, when the options name other servers
    ice = options.ice_addresses
    if ice is None and _is_loopback(servers[0]) and not host:  # a host's calls are with kiosks on its LAN
        ice = LOOPBACK
    return KioskPlan(
        servers=servers,
        embedded=embedded,
        auth_token=token,
        ca_file=options.ca_file
        or (host_ca_path(server.data_dir) if host else Path(server.ca_file) if server.ca_file else None),
        recording_dir=options.recording_dir or Path(config.recording.directory),
        video_codec=options.video_codec,
        ice_addresses=ice,
        poll_interval=config.audio.poll_interval,
        auto_answer_after=config.ui.auto_answer_after,
        settings_factory=factory,
    )


class Kiosk:
    """A kiosk assembled from its config (or, with none, an emulated SDK endpoint). Its parts exist once
    `start()` has run; `close()` stops them (also after a failed start, and more than once)."""

    def __init__(self, config: KioskConfig | None, options: KioskOptions | None = None) -> None:
        self.config = config
        self.options = options or KioskOptions()
        self.plan = plan_kiosk(config, self.options)
        self.server: RunningServer | None = None  # the embedded call server
        self.users: EmbeddedUsers | None = None  # with an embedded server: this kiosk's user and a visitor
        self.user: RTCUser | None = None  # who it logged in as; None when the login failed
        self.problems: tuple[str, ...] = ()  # devices the config names that are not there
        self.ringer: Ringer | None = None  # with a config
        self.controls: Controls | None = None  # with a config
        self.screen: ScreenWaker | None = None  # with a config whose [screen] asks for one
        self._devices: MediaDevices | None = None
        self._calls: Calls | None = None
        self._controller: KioskController | None = None
        self._started = False
        self._closed = False

    # ----------------------------------------------------------------- parts

    @property
    def devices(self) -> MediaDevices:
        if self._devices is None:
            raise RuntimeError("the kiosk has not been started")
        return self._devices

    @property
    def calls(self) -> Calls:
        if self._calls is None:
            raise RuntimeError("the kiosk has not been started")
        return self._calls

    @property
    def controller(self) -> KioskController:
        if self._controller is None:
            raise RuntimeError("the kiosk has not been started")
        return self._controller

    @property
    def volume(self) -> OutputVolume | None:
        """The playback volume per audio mode (a device built from a config has one)."""
        return self._devices.volume if isinstance(self._devices, KioskDevices) else None

    @property
    def server_url(self) -> str:
        """The call server address in use."""
        return self.calls.server_url

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> Kiosk:
        """Build and start every part. Raises ConfigError (a device or the embedded server cannot
        start), HardwareError (buttons, LEDs), or CallsError (the login, unless start_without_server);
        what had started is closed first."""
        if self._started:
            raise RuntimeError("a kiosk starts once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self) -> None:
        config, plan = self.config, self.plan
        codec = plan.video_codec
        if config is None:
            devices = self.options.devices if self.options.devices is not None else EmulatedDevices()
        else:
            devices, choices = build_devices(config)
            codec = codec or choices.video_codec
            self.problems = choices.problems
        self._devices = devices
        servers, token = list(plan.servers), plan.auth_token
        if plan.embedded:
            assert config is not None
            self.server, self.users = await start_embedded_server(config)
            servers, token = [_from_here(self.server.url)], token or self.users.kiosk_token
        calls = self._calls = Calls(
            servers,
            auth_token=token,
            devices=devices,
            video_codec=codec,
            recording_dir=plan.recording_dir,
            ice_host_addresses=list(plan.ice_addresses) if plan.ice_addresses is not None else None,
            device_poll_interval=plan.poll_interval,
            ca_file=plan.ca_file,
        )
        for listener_id, listener in self.options.listeners.items():
            calls.add_call_event_listener(listener_id, listener)
        controller = self._controller = KioskController(
            calls,
            auto_answer_after=plan.auto_answer_after,
            settings_factory=plan.settings_factory,
            volume=self.volume,
        )
        if self.problems:
            controller.report(" ".join(self.problems))  # on the home screen until the next message
        if config is not None:
            self.ringer = Ringer(controller, devices)  # the ring plays on the current output
        try:
            self.user = await calls.login()
        except CallsError as exc:
            if not self.options.start_without_server:
                raise
            log.warning("login failed: %s", exc)
        if config is not None:
            self.controls = await start_controls(config, controller)
            # A door kiosk: its sessions say it has a door, and requests the server passes on release it.
            calls.door_opener = self.controls.door
            # The PIR shares the buttons' pin factory; a screen problem is reported, never fatal.
            self.screen = await start_screen(config, controller, pin_factory=self.controls.pin_factory)

    async def close(self) -> None:
        """Stop the controls and the ringtone, close the Calls client (ending a call), then the server."""
        if self._closed:
            return
        self._closed = True
        if self.ringer is not None:
            self.ringer.close()
        if self.screen is not None:
            await self.screen.close()  # before the controls: they close the pin factory it shares
        if self.controls is not None:
            await self.controls.close()
        if self._calls is not None:
            await self._calls.close()
        if self.server is not None:
            await self.server.close()

    async def pairing_code(self, new: bool = False) -> PairingCode:
        """The pairing code for its screen: the valid one, or a fresh one (with `new`, always a fresh
        one; docs/intercom.md). A building host's pairs kiosks and browsers; a stand-alone kiosk's
        (its embedded server), browsers."""
        if not self.pairs:
            raise RuntimeError('only a building host (role = "host") or a stand-alone kiosk pairs')
        from kiosk.server.pairing import PAIRING

        assert self.server is not None
        codes = self.server.app[PAIRING].codes
        return await asyncio.to_thread(codes.new_code if new else codes.current_or_new)

    @property
    def is_host(self) -> bool:
        return self.server is not None and self.server.config.lan_ca is not None

    @property
    def pairs(self) -> bool:
        """Its server pairs devices by a code its screen shows (a host, or a stand-alone kiosk)."""
        config = self.server.config if self.server is not None else None
        return config is not None and (config.lan_ca is not None or config.pairs_browsers)

    async def host_fingerprint(self) -> str:
        """A building host's CA fingerprint (SHA-256, hex), shown next to its pairing code."""
        if self.server is None or self.server.config.lan_ca is None:
            raise RuntimeError('only a started building host (role = "host") has a CA')
        from kiosk.lan import fingerprint_of_pem

        return fingerprint_of_pem(await asyncio.to_thread(self.server.config.lan_ca.read_text))

    async def __aenter__(self) -> Kiosk:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


# ----------------------------------------------------------------------------- the embedded server


@dataclass(frozen=True)
class EmbeddedUsers:
    uid: str  # this kiosk's user
    kiosk_token: str
    visitor_token: str  # VISITOR_UID's: someone to call the kiosk with


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
    if config.door.pin is not None:
        # A stand-alone kiosk with a door: the visitor it offers to call it (the demo's other side)
        # may open it, so door release can be tried at once. A building's users get it from its admin.
        from kiosk.server.admin import set_door_permission

        set_door_permission(data_dir, VISITOR_UID, True)
    return EmbeddedUsers(uid, tokens[uid], tokens[VISITOR_UID])


async def start_embedded_server(config: KioskConfig) -> tuple[RunningServer, EmbeddedUsers]:
    """The call server `[server] embedded` asks for, on server.url's address with server.data_dir."""
    from kiosk.server.app import start_server
    from kiosk.server.config import ServerConfig

    parts = urlsplit(config.server.url)
    data_dir = Path(config.server.data_dir)
    users = await asyncio.to_thread(ensure_users, data_dir, config)
    if config.server.role == "host":
        server_config = await _host_server_config(config, data_dir)
        where = f"port {server_config.port} (a building host)"
    else:
        server_config = ServerConfig(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 8080,
            data_dir=data_dir,
            cors_origins=list(config.server.cors_origins),
            pairs_browsers=True,  # a tablet joins this stand-alone kiosk by the code on its screen
        )
        where = config.server.url
    try:
        server = await start_server(server_config)
    except OSError as exc:
        raise ConfigError(f"server.url: cannot serve on {where}: {exc.strerror or exc}") from None
    return server, users


async def _host_server_config(config: KioskConfig, data_dir: Path) -> ServerConfig:
    """A building host's server: every address, HTTPS with its own CA (made at its first start), its
    pairing routes, and its mDNS advertisement under the kiosk's name (docs/intercom.md)."""
    from kiosk.lan.ca import HostCAError, ensure_host_certificates
    from kiosk.lan.discovery import lan_addresses, this_hostname
    from kiosk.server.config import ServerConfig

    hostname = this_hostname()
    addresses = await asyncio.to_thread(lan_addresses)
    try:
        certs = await asyncio.to_thread(ensure_host_certificates, data_dir, hostname, addresses)
    except (HostCAError, OSError) as exc:
        raise ConfigError(f"server.data_dir: the building CA: {exc}") from None
    if certs.issued:
        log.info(
            "server certificate issued for %s and %s", hostname, ", ".join(addresses) or "no LAN address"
        )
    return ServerConfig(
        host="0.0.0.0",
        port=DEFAULT_HOST_PORT,
        data_dir=data_dir,
        cors_origins=list(config.server.cors_origins),
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        lan_ca=certs.ca_cert,
        lan_name=config.identity.name or hostname,
        lan_hostname=hostname,
        lan_addresses=addresses,
    )


def _from_here(url: str) -> str:
    """A server listening on every address is reached from its own process on loopback (which its
    certificate covers)."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:", 1)


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class HostPairing:
    """A building host's pairing as its screen shows it (kiosk.ui's PairingSource)."""

    def __init__(self, kiosk: Kiosk) -> None:
        self._kiosk = kiosk

    async def code(self, new: bool = False) -> tuple[str, float]:
        code = await self._kiosk.pairing_code(new)
        return code.code, code.expires_at

    async def fingerprint(self) -> str:
        """The host CA's; "" for a stand-alone kiosk's server (no CA)."""
        return await self._kiosk.host_fingerprint() if self._kiosk.is_host else ""

    def browser_links(self, code: str) -> list[str]:
        from kiosk.lan import DEFAULT_HOST_PORT
        from kiosk.lan.discovery import lan_addresses, this_hostname

        if not self._kiosk.is_host:
            return [f"{self._kiosk.server_url}/app/#pair={code}"]
        hosts = [f"{this_hostname()}.local", *lan_addresses()]
        return [f"https://{host}:{DEFAULT_HOST_PORT}/app/#pair={code}" for host in hosts]
