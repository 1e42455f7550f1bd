"""One kiosk from one config, whichever command starts it: `kiosk run` (the app), `kiosk endpoint --config`
and `kiosk demo --config` read a setting of the config the same way (kiosk/assembly.py).

The first three tests run each entry point for real (the app with a stand-in for its Kivy screen, which
test_ui.py runs in a child process) against a real call server, and watch the KioskController each one
makes: the settings its factory gives a call, and the audio mode the call then starts in.
"""

from __future__ import annotations

import io
import socket
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from calls_support import make_user, running_server

from kiosk.calls import Call, CallSettings, Mode
from kiosk.config import ConfigError, KioskConfig, load_config, parse_config
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.demo import run_demo
from kiosk.device import KioskDevices
from kiosk.endpoint import EndpointOptions, run_endpoint
from kiosk.ui.app import run_kiosk, run_kiosk_async

if TYPE_CHECKING:
    from kiosk.assembly import KioskPlan

# An emulated kiosk whose call settings differ from the SDK's defaults: a spotlight layout, 42 s alone
# before a call ends, square avatars, and calls that start on the handset (EARPIECE) although the first
# mode of the fallback order (the default one) is SPEAKER.
CONFIG = """
[server]
url = "{url}"
embedded = {embedded}
data_dir = "{tmp}/data"
auth_token = "{token}"

[identity]
uid = "front-door"
name = "Front door"

[[cameras]]
id = "camera"
backend = "emulated"
width = 160
height = 120
fps = 10

[audio]
backend = "emulated"
default_mode = "EARPIECE"
echo_cancellation = false
noise_suppression = false
auto_gain_control = false
volume_file = "{tmp}/volume.json"

[ui]
fullscreen = false
mode = "SPOTLIGHT"
idle_timeout = 42
avatar_mode = "square"

[recording]
directory = "{tmp}/recordings"

[emulation]
keyboard = false
"""


def write_config(
    tmp: Path, *, url: str = "http://127.0.0.1:9", embedded: bool = False, token: str = "", **replace: str
) -> Path:
    text = CONFIG.format(url=url, embedded=str(embedded).lower(), tmp=tmp, token=token)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "kiosk.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Watched:
    """A KioskController an entry point made, with what its settings factory gave and the audio mode of
    each moment it was in a call."""

    controller: KioskController
    settings: list[CallSettings] = field(default_factory=list)
    modes_in_call: list[str] = field(default_factory=list)

    @property
    def started_in(self) -> str:
        """The audio mode the first call started in."""
        assert self.modes_in_call, "no call started"
        return self.modes_in_call[0]


@pytest.fixture
def controllers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Watched]]:
    """Every KioskController made while the test runs, however the entry point makes it."""
    made: list[Watched] = []
    original = KioskController.__init__

    def watching(self: KioskController, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        watched = Watched(self)
        factory = self.settings_factory

        def settings_factory(call: Call | None) -> CallSettings:
            settings = factory(call)
            watched.settings.append(settings)
            return settings

        def observe(state: KioskState) -> None:
            if state.phase == Phase.IN_CALL and state.audio_mode:
                watched.modes_in_call.append(state.audio_mode)

        self.settings_factory = settings_factory
        self.add_observer(observe)
        made.append(watched)

    monkeypatch.setattr(KioskController, "__init__", watching)
    yield made


def assert_config_settings(watched: Watched) -> None:
    """The config's settings reached the call, and the call started in [audio] default_mode (compared
    at once, so that a failure shows every setting that did not arrive)."""
    assert watched.settings, "no call asked for its settings"
    settings = watched.settings[-1]
    seen = {
        "[ui] mode": settings.mode,
        "[ui] idle_timeout": settings.idle_timeout_period,
        "[audio] default_mode": settings.default_audio_mode,
        "first mode of the fallback order": watched.controller.calls.devices.audio_modes()[0],
        "the call started in": watched.started_in,
    }
    assert seen == {
        "[ui] mode": Mode.SPOTLIGHT,
        "[ui] idle_timeout": 42,
        "[audio] default_mode": "EARPIECE",
        "first mode of the fallback order": "SPEAKER",
        "the call started in": "EARPIECE",
    }


class StandInApp:
    """In place of the Kivy app (one window per process): on start it joins a session through the
    controller, as a touch on the screen does, hangs up, and stops."""

    def __init__(self, controller: KioskController, **screen: Any) -> None:
        self.controller = controller

    def bind(self, **handlers: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    async def async_run(self, async_lib: str) -> None:
        await self.controller.join("assembly-app")
        await self.controller.hang_up()


async def test_the_app_starts_a_call_with_the_config_settings(
    tmp_path: Path, controllers: list[Watched], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = types.ModuleType("kiosk.ui.kivy_app")
    stand_in.KioskApp = StandInApp  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kiosk.ui.kivy_app", stand_in)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    config = load_config(write_config(tmp_path, url=f"http://127.0.0.1:{free_port()}", embedded=True))
    out = io.StringIO()

    assert await run_kiosk_async(config, duration=30, out=out) == 0
    assert "--call front-door --loopback" in out.getvalue()  # its embedded server and users
    (kiosk,) = controllers
    assert_config_settings(kiosk)


async def test_the_endpoint_starts_a_call_with_the_config_settings(
    tmp_path: Path, controllers: list[Watched]
) -> None:
    """`kiosk endpoint --config` with --server and --auth-token: those override the config's (whose
    server is not there and whose token is wrong), and the config's call settings apply."""
    async with running_server(tmp_path / "server") as server:
        token = await make_user(server.url, "front-door", "Front door")
        options = EndpointOptions(
            server=[server.url],
            auth_token=token,
            config=write_config(tmp_path, token="not-this-one"),
            session="assembly-endpoint",
            duration=0.5,
            loopback=True,
        )
        out = io.StringIO()
        assert await run_endpoint(options, out) == 1, out.getvalue()  # alone in the session: no media
    (kiosk,) = controllers
    assert_config_settings(kiosk)


async def test_the_demo_starts_a_call_with_the_config_settings(
    tmp_path: Path, controllers: list[Watched]
) -> None:
    out = io.StringIO()
    await run_demo(duration=1.0, data_dir=tmp_path / "demo", out=out, config_path=write_config(tmp_path))
    assert "front-door calls reception" in out.getvalue()
    (door,) = [w for w in controllers if isinstance(w.controller.calls.devices, KioskDevices)]
    assert_config_settings(door)


async def test_the_endpoint_runs_the_embedded_server_its_config_asks_for(
    tmp_path: Path, controllers: list[Watched]
) -> None:
    """`[server] embedded` works in the endpoint as in the app: it serves, and logs in as this kiosk."""
    config = write_config(tmp_path, url=f"http://127.0.0.1:{free_port()}", embedded=True)
    out = io.StringIO()
    options = EndpointOptions(config=config, session="assembly-embedded", duration=0.3)
    assert await run_endpoint(options, out) == 1, out.getvalue()
    assert '"status": "embedded_server"' in out.getvalue()
    assert '"uid": "front-door"' in out.getvalue()  # logged in as this kiosk's user
    (kiosk,) = controllers
    assert kiosk.started_in == "EARPIECE"


# ----------------------------------------------------------------------------- the plans, unstarted


def audio_call() -> Call:
    user = {"uid": "visitor", "name": "Visitor"}
    return Call.from_json(
        {"sessionId": "s", "type": "audio", "status": "initiated", "initiator": user, "receiver": user}
    )


def test_the_three_entry_points_plan_the_same_call_settings(tmp_path: Path) -> None:
    from kiosk.assembly import plan_kiosk
    from kiosk.demo import door_options
    from kiosk.endpoint import kiosk_options
    from kiosk.ui.app import APP_OPTIONS

    path = write_config(tmp_path, token="t", **{"[recording]\n": "[recording]\nauto_record = true\n"})
    config = load_config(path)
    endpoint = kiosk_options(EndpointOptions(server=["http://127.0.0.1:1"], config=path), {})
    demo = door_options(config, "http://127.0.0.1:1", "t", tmp_path, io.StringIO())
    for name, options in (("app", APP_OPTIONS), ("endpoint", endpoint), ("demo", demo)):
        factory = plan_kiosk(config, options).settings_factory
        video, audio = factory(None), factory(audio_call())
        for settings in (video, audio):
            assert settings.mode == Mode.SPOTLIGHT, name
            assert settings.avatar_mode == "square", name
            assert settings.idle_timeout_period == 42, name
            assert settings.default_audio_mode == "EARPIECE", name
            assert settings.auto_record_on_call_start, name
        assert not video.audio_only and audio.audio_only, name


def test_the_endpoint_command_line_overrides_the_config(tmp_path: Path) -> None:
    from kiosk.assembly import plan_kiosk
    from kiosk.endpoint import kiosk_options

    config = parse_config(
        CONFIG.format(url="http://127.0.0.1:8080", embedded="true", tmp=tmp_path, token="config-token")
        .replace("[server]\n", '[server]\nurls = ["http://127.0.0.1:8081"]\nca_file = "/config/ca.pem"\n')
        .replace("[recording]\n", "[recording]\nauto_record = false\n"),
        check_devices=False,
    )

    def plan(**cli: Any) -> KioskPlan:
        return plan_kiosk(config, kiosk_options(EndpointOptions(**cli), {}))

    from_config = plan()
    assert from_config.embedded and from_config.servers == ("http://127.0.0.1:8080",)
    assert from_config.auth_token == ""  # the embedded server's user's, made when it starts
    assert from_config.ca_file == Path("/config/ca.pem")
    assert from_config.recording_dir == tmp_path / "recordings"
    assert from_config.video_codec is None
    assert from_config.ice_addresses == ("127.0.0.1",)  # the kiosk's own server is on loopback
    assert not from_config.settings_factory(None).auto_record_on_call_start
    assert not from_config.settings_factory(None).audio_only

    given = plan(
        server=["https://a.example", "https://b.example"],
        auth_token="cli-token",
        ca_file=tmp_path / "cli-ca.pem",
        recording_dir=tmp_path / "cli-recordings",
        record=True,
        codec="H264",
        ice_addresses=["10.0.0.7"],
        audio_only=True,
    )
    assert not given.embedded and given.servers == ("https://a.example", "https://b.example")
    assert given.auth_token == "cli-token"
    assert given.ca_file == tmp_path / "cli-ca.pem"
    assert given.recording_dir == tmp_path / "cli-recordings"
    assert given.video_codec == "H264"
    assert given.ice_addresses == ("10.0.0.7",)
    settings = given.settings_factory(None)
    assert settings.auto_record_on_call_start and settings.audio_only
    assert settings.mode == Mode.SPOTLIGHT and settings.idle_timeout_period == 42  # still the config's
    assert plan(server=["https://a.example"], loopback=True).ice_addresses == ("127.0.0.1",)
    assert plan(server=["https://a.example"]).ice_addresses is None  # a remote server: every address
    # Without a config the endpoint is the SDK's: its settings, every address, the SDK's recordings.
    bare = plan_kiosk(None, kiosk_options(EndpointOptions(server="http://127.0.0.1:1", auth_token="t"), {}))
    assert bare.servers == ("http://127.0.0.1:1",) and bare.ice_addresses is None
    assert bare.recording_dir is None and bare.poll_interval == 1.0 and bare.auto_answer_after == 0.0
    defaults = bare.settings_factory(None)
    assert defaults.mode == Mode.DEFAULT and defaults.default_audio_mode is None
    assert defaults.idle_timeout_period == CallSettings().idle_timeout_period


def test_a_bad_ui_setting_stops_each_entry_point_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiosk.assembly import Kiosk
    from kiosk.demo import door_options
    from kiosk.endpoint import kiosk_options
    from kiosk.ui.app import APP_OPTIONS

    path = write_config(tmp_path, token="t", **{'mode = "SPOTLIGHT"': 'mode = "GRID"'})
    config: KioskConfig = load_config(path)
    endpoint = kiosk_options(EndpointOptions(config=path), {})
    demo = door_options(config, "http://127.0.0.1:1", "t", tmp_path, io.StringIO())
    for options in (APP_OPTIONS, endpoint, demo):
        with pytest.raises(ConfigError, match="^ui: mode must be one of DEFAULT, SPOTLIGHT, SINGLE"):
            Kiosk(config, options)
    assert run_kiosk(path) == 2
    assert capsys.readouterr().err.startswith("kiosk: ui: mode must be one of")
