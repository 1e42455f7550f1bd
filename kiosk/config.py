"""The device's configuration: one TOML file, checked at start.

`/etc/kiosk/kiosk.toml` on a device; `config/kiosk.toml` documents every key; `config/emulated.toml`
runs with no hardware. `load_config(path)` returns a `KioskConfig` or raises `ConfigError` whose
message names the offending key (`buttons.mute.pin: pin 17 is also used by buttons.end.pin`).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiosk.audio_modes import AUDIO_MODES, AudioMode
from kiosk.protocol import ID_PATTERN, is_valid_id
from kiosk.urls import ServerUrlError, normalise_origin, server_base_url

DEFAULT_PATH = Path("/etc/kiosk/kiosk.toml")
BUTTON_NAMES = ("mute", "end", "audio_mode", "call", "volume_up", "volume_down", "door")
V4L2_MAJOR = 81  # the character-device major number of every video4linux node (/dev/videoN)
MAX_SCREEN_SIDE = 16384
# The SDK's call settings (kiosk.calls.constants Mode and AvatarMode, kiosk.calls.settings'
# MAX_IDLE_TIMEOUT_SECONDS), spelled out so that checking a config does not import the SDK and its media
# stack; tests/test_inputs.py keeps them the same.
UI_MODES = ("DEFAULT", "SPOTLIGHT", "SINGLE")
AVATAR_MODES = ("circle", "square", "fullscreen")
MAX_IDLE_TIMEOUT = 24 * 3600
_CHOICE_PREFIXES = ("AUDIO_MODE_", "AVATAR_MODE_", "MODE_")  # the documents' spellings, as the SDK reads them
NO_TOKEN = "server.auth_token: this kiosk needs its user's token (or auth_token_file)"


class ConfigError(Exception):
    """A configuration problem, in words a person fixing the file can act on."""


@dataclass(frozen=True)
class ServerSection:
    # Written http, https, ws or wss; kept as its http(s) form (kiosk.urls), which the REST API is on.
    url: str = "http://127.0.0.1:8080"
    # More addresses of the same service (server processes sharing Redis, docs/scale-out.md): when
    # the one in use cannot be reached, the endpoint tries the next, in turn.
    urls: list[str] = field(default_factory=list)
    auth_token: str = ""  # this device's user auth token (`kiosk users add`)
    auth_token_file: str = ""  # or a file holding it (kept out of the config, mode 0600)
    embedded: bool = False  # run a call server inside this process (demo, a single kiosk)
    data_dir: str = "/var/lib/kiosk"
    # A PEM file of the CA(s) an https:// server's certificate must chain to (a private CA for a
    # fleet); empty: the system's CAs.
    ca_file: str = ""
    # The embedded server's CORS allow-list: origins ("https://reception.example") whose pages may
    # use its REST API and WebSocket (docs/protocol.md, "Cross-origin requests"); none: same origin.
    cors_origins: list[str] = field(default_factory=list)
    # A building with no server to install (docs/intercom.md). "host": this kiosk is the call server
    # of the building: an embedded server on all its addresses, port 8443, HTTPS with its own CA (in
    # data_dir), advertised over mDNS; `url` is not used. "member": a kiosk paired with a host
    # (`kiosk pair` writes url, auth_token_file and ca_file). "": neither.
    role: Literal["", "host", "member"] = ""

    @property
    def awaits_pairing(self) -> bool:
        """A new member of a building: no host, CA or token yet. `kiosk run` shows the pairing screen
        (nearby hosts, the code) instead of the kiosk; `kiosk pair` does the same from a console."""
        return self.role == "member" and not (
            self.ca_file or self.auth_token or self.auth_token_file or self.url.startswith("https://")
        )

    def addresses(self) -> list[str]:
        """`url`, then `urls` (each once): every address of the call service, in the order tried."""
        return list(dict.fromkeys([self.url, *self.urls]))


@dataclass(frozen=True)
class IdentitySection:
    uid: str = ""
    name: str = "Kiosk"


@dataclass(frozen=True)
class CameraSection:
    id: str = "camera"
    backend: Literal["emulated", "picamera2", "v4l2"] = "emulated"
    label: str = ""
    facing: Literal["front", "back", ""] = ""
    device: str = ""  # v4l2: /dev/video0
    camera_num: int = 0  # picamera2: which camera
    width: int = 640
    height: int = 480
    fps: int = 30
    h264_passthrough: bool = False  # picamera2: send the camera's own H.264, no re-encoding
    keyframe_interval: int = 60  # frames between keyframes (with headers repeated) in passthrough


@dataclass(frozen=True)
class AudioModeDevice:
    # ALSA PCM name for this mode's output; "auto": the best output among the sound cards present at
    # start (kiosk.media.soundcards)
    playback: str
    capture: str = ""  # optional ALSA PCM to capture from while in this mode (a headset's microphone)
    label: str = ""
    # The output's volume control: "auto" (the card's usual playback element, if it has one), "none"
    # (software gain), or a simple mixer element name ("PCM", "Speaker", "Digital", ...).
    mixer: str = "auto"
    # The control device holding that element; "": derived from the playback PCM (CARD=X -> hw:CARD=X).
    mixer_device: str = ""


@dataclass(frozen=True)
class AudioSection:
    backend: Literal["emulated", "alsa"] = "emulated"
    # ALSA capture PCM when the mode names none; "auto": the first sound card with a microphone at
    # start; "": none (the others do not hear this kiosk; it still hears them)
    capture: str = "default"
    period_ms: int = 20
    default_mode: AudioMode = AudioMode.SPEAKER  # the mode a call starts in, when its device is present
    fallback_order: list[AudioMode] = field(default_factory=lambda: list(AUDIO_MODES))
    poll_interval: float = 1.0
    modes: dict[AudioMode, AudioModeDevice] = field(default_factory=dict)
    echo_cancellation: bool = True
    noise_suppression: bool = True
    auto_gain_control: bool = True
    volume: int = 80  # percent: the level an audio mode starts at, before anyone changes it
    volume_step: int = 10  # percent per press of a volume button
    volume_file: str = ""  # where the level of each mode is kept; "": volume.json in server.data_dir
    tone_hz: float = 0.0  # emulated microphone: a tone of this frequency; 0: a synthetic voice
    sound_file: str = ""  # emulated microphone: play this file instead of a tone
    speaker_dir: str = ""  # emulated speakers: write what they play here as WAV


@dataclass(frozen=True)
class ButtonSection:
    pin: int
    pull_up: bool = True
    bounce_ms: int = 30
    hold_s: float = 1.0


@dataclass(frozen=True)
class EndButtonSection(ButtonSection):
    press_answers: bool = True  # while ringing, a press answers
    hold_rejects: bool = True  # while ringing, a hold rejects


@dataclass(frozen=True)
class CallButtonSection(ButtonSection):
    contact: str = ""  # uid to call


@dataclass(frozen=True)
class ButtonsSection:
    pin_factory: Literal["default", "lgpio", "rpigpio", "pigpio", "mock"] = "default"
    mute: ButtonSection | None = None
    end: EndButtonSection | None = None
    audio_mode: ButtonSection | None = None
    call: CallButtonSection | None = None
    volume_up: ButtonSection | None = None  # a press is one step; held, it repeats every hold_s
    volume_down: ButtonSection | None = None
    door: ButtonSection | None = None  # in a call with a door kiosk, a press asks it to release its door


@dataclass(frozen=True)
class DoorSection:
    """A door strike or magnetic lock this kiosk releases through a relay (kiosk.hardware.door)."""

    pin: int | None = None  # the relay's GPIO; none: this kiosk has no door
    active_high: bool = True  # the relay's input: high releases (false: a low-triggered relay board)
    pulse_s: float = 3.0  # how long the strike stays released
    contact_pin: int | None = None  # a door contact (reed switch), to see the door open and close
    contact_open_level: Literal["high", "low"] = "high"  # what it reads while the door is open (pulled up)


@dataclass(frozen=True)
class LedsSection:
    in_call: int | None = None
    muted: int | None = None
    ringing: int | None = None  # blinks while ringing
    active_high: bool = True


@dataclass(frozen=True)
class Contact:
    uid: str
    name: str = ""


@dataclass(frozen=True)
class UiSection:
    fullscreen: bool = True
    width: int = 800
    height: int = 480
    contacts: list[Contact] = field(default_factory=list)
    auto_answer_after: float = 0.0  # seconds; 0 = never (intercom use: answer by itself)
    avatar_mode: str = "circle"
    mode: str = "DEFAULT"
    idle_timeout: int = 180


@dataclass(frozen=True)
class RecordingSection:
    directory: str = "/var/lib/kiosk/recordings"
    auto_record: bool = False


@dataclass(frozen=True)
class ScreenSection:
    """Wake on approach (kiosk.hardware.screen): the defaults leave the screen alone, always on."""

    # "auto": the backlight device when there is one, else DPMS; "sysfs", "dpms", or "emulated".
    backend: Literal["auto", "sysfs", "dpms", "emulated"] = "auto"
    backlight: str = ""  # a /sys/class/backlight/<device> directory; "": the first one there
    dpms_output: str = ""  # Wayland (wlr-randr): the output to switch; "": every output
    dim_after: float = 0.0  # seconds without activity before the screen dims; 0: never
    sleep_after: float = 0.0  # seconds without activity before it sleeps; 0: never
    dim_percent: int = 20  # the dimmed brightness, percent of the maximum
    motion_pin: int | None = None  # a PIR sensor's output (gpiozero MotionSensor), BCM number
    asleep_from: str = ""  # "HH:MM": quiet hours start (the screen sleeps unless there is a call)
    asleep_until: str = ""  # "HH:MM": quiet hours end

    @property
    def active(self) -> bool:
        """Whether anything here asks for the screen to be managed at all."""
        return bool(self.dim_after or self.sleep_after or self.motion_pin is not None or self.asleep_from)


@dataclass(frozen=True)
class EmulationSection:
    keyboard: bool = True  # keys drive the buttons: m mute, e end (hold: E), a audio mode, c call
    control_socket: str = ""  # a Unix socket accepting the same commands, one per line


@dataclass(frozen=True)
class KioskConfig:
    server: ServerSection = field(default_factory=ServerSection)
    identity: IdentitySection = field(default_factory=IdentitySection)
    cameras: list[CameraSection] = field(default_factory=lambda: [CameraSection()])
    audio: AudioSection = field(default_factory=AudioSection)
    buttons: ButtonsSection = field(default_factory=ButtonsSection)
    leds: LedsSection = field(default_factory=LedsSection)
    door: DoorSection = field(default_factory=DoorSection)
    ui: UiSection = field(default_factory=UiSection)
    recording: RecordingSection = field(default_factory=RecordingSection)
    emulation: EmulationSection = field(default_factory=EmulationSection)
    screen: ScreenSection = field(default_factory=ScreenSection)
    source: str = ""  # the file it came from

    def volume_file(self) -> Path:
        """Where the volume of each audio mode is kept across restarts."""
        return Path(self.audio.volume_file or Path(self.server.data_dir) / "volume.json")

    def auth_token(self) -> str:
        if self.server.auth_token:
            return self.server.auth_token
        if self.server.auth_token_file:
            try:
                return Path(self.server.auth_token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"server.auth_token_file: cannot read it: {exc.strerror}") from None
        return ""


# ----------------------------------------------------------------------------- building from TOML


def _type_name(tp: Any) -> str:
    if tp is AudioMode:
        return f"an audio mode ({', '.join(AUDIO_MODES)})"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list,):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:  # Optional[X]: X's own message is the precise one
            return _convert(value, options[0], key)
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        name, item = typing.get_args(tp)
        return {_convert(k, name, f"{key}.{k}"): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is AudioMode:
        # The plain word only, as the documents write it ("SPEAKER", not "speaker" or "AUDIO_MODE_SPEAKER").
        if not isinstance(value, str) or value not in AUDIO_MODES:
            raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
        return AudioMode(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        return _finite(value, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # a bug in this module, not in the file


def _finite(value: Any, key: str) -> float:
    """Every number of the config: TOML allows nan and inf, which no duration or frequency is (a nan
    compares false with everything, so a range check would let it through)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _build(cls: Any, table: Any, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix or 'file'}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    values: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key}: unknown key (known here: {known})")
        values[name] = _convert(value, hints[name], key)
    for name, f in fields.items():
        if (
            name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{prefix}.{name}: missing (required)")
    return cls(**values)


# ----------------------------------------------------------------------------- checks across keys


def _check(config: KioskConfig, check_devices: bool) -> None:
    ids = [c.id for c in config.cameras]
    for i, camera in enumerate(config.cameras):
        key = f"cameras[{i}]"
        if camera.id in ids[:i]:
            raise ConfigError(f"{key}.id: camera id {camera.id!r} is used twice")
        if (
            not (16 <= camera.width <= 4096 and 16 <= camera.height <= 4096)
            or camera.width % 2
            or camera.height % 2
        ):
            raise ConfigError(f"{key}.width/height: {camera.width}x{camera.height} must be even, 16 to 4096")
        if not 1 <= camera.fps <= 120:
            raise ConfigError(f"{key}.fps: {camera.fps} is not between 1 and 120")
        if camera.backend == "v4l2":
            if not camera.device:
                raise ConfigError(f"{key}.device: a v4l2 camera needs its device, e.g. /dev/video0")
            if check_devices:
                _check_video_device(camera.device, f"{key}.device")
        if camera.camera_num < 0:
            raise ConfigError(f"{key}.camera_num: {camera.camera_num} is not a camera number (0 or more)")
        if camera.h264_passthrough and camera.backend != "picamera2":
            raise ConfigError(f"{key}.h264_passthrough: only the picamera2 backend has its own H.264 encoder")
        if camera.keyframe_interval < 1:
            raise ConfigError(f"{key}.keyframe_interval: must be at least 1")

    audio = config.audio
    if not 10 <= audio.period_ms <= 20:
        raise ConfigError(f"audio.period_ms: {audio.period_ms} is not between 10 and 20")
    if len(set(audio.fallback_order)) != len(audio.fallback_order):
        raise ConfigError("audio.fallback_order: a mode is listed twice")
    if audio.backend == "alsa":
        if not audio.modes:
            raise ConfigError(
                "audio.modes: the alsa backend needs at least one mode, e.g. [audio.modes.SPEAKER]"
            )
        if audio.default_mode not in audio.modes:
            raise ConfigError(
                f"audio.default_mode: {audio.default_mode} has no [audio.modes.{audio.default_mode}]"
            )
    if audio.poll_interval <= 0:
        raise ConfigError("audio.poll_interval: must be more than 0")
    if not 0 <= audio.volume <= 100:
        raise ConfigError(f"audio.volume: {audio.volume} is not between 0 and 100")
    if not 1 <= audio.volume_step <= 50:
        raise ConfigError(f"audio.volume_step: {audio.volume_step} is not between 1 and 50")

    pins: dict[int, str] = {}
    for name in BUTTON_NAMES:
        button = getattr(config.buttons, name)
        if button is not None:
            _claim_pin(pins, button.pin, f"buttons.{name}.pin")
            if button.bounce_ms < 0 or button.hold_s <= 0:
                raise ConfigError(f"buttons.{name}: bounce_ms must be 0 or more and hold_s more than 0")
    if config.buttons.call is not None and not config.buttons.call.contact:
        raise ConfigError("buttons.call.contact: the call button needs the uid to call")
    for name in ("in_call", "muted", "ringing"):
        pin = getattr(config.leds, name)
        if pin is not None:
            _claim_pin(pins, pin, f"leds.{name}")
    _check_screen(config.screen, pins)
    door = config.door
    if door.pin is not None:
        _claim_pin(pins, door.pin, "door.pin")
    if door.contact_pin is not None:
        if door.pin is None:
            raise ConfigError("door.contact_pin: a door contact needs the door's relay (door.pin)")
        _claim_pin(pins, door.contact_pin, "door.contact_pin")
    if not (math.isfinite(door.pulse_s) and 0.1 <= door.pulse_s <= 30):
        raise ConfigError(f"door.pulse_s: {door.pulse_s} is not between 0.1 and 30 seconds")

    if config.ui.auto_answer_after < 0:
        raise ConfigError("ui.auto_answer_after: must be 0 (off) or more")
    for side in ("width", "height"):
        if not 1 <= getattr(config.ui, side) <= MAX_SCREEN_SIDE:
            raise ConfigError(f"ui.{side}: {getattr(config.ui, side)} is not between 1 and {MAX_SCREEN_SIDE}")
    # A uid the server would refuse (kiosk.protocol's rule) could never log in, ring or be rung.
    uids = [("identity.uid", config.identity.uid)] if config.identity.uid else []
    uids += [(f"ui.contacts[{i}].uid", contact.uid) for i, contact in enumerate(config.ui.contacts)]
    if config.buttons.call is not None:
        uids.append(("buttons.call.contact", config.buttons.call.contact))
    for key, uid in uids:
        if not is_valid_id(uid):
            raise ConfigError(f"{key}: {uid!r} is not a uid (the server's rule: {ID_PATTERN.pattern})")
    _check_role(config.server)
    if config.server.ca_file and check_devices:
        ca_file = Path(config.server.ca_file)
        if not ca_file.is_file():
            raise ConfigError(f"server.ca_file: {ca_file} does not exist or is not a file")


def _check_role(server: ServerSection) -> None:
    if server.role == "host" and server.urls:
        raise ConfigError("server.urls: a host is the building's call server itself; leave urls empty")
    if server.role == "member" and not server.awaits_pairing:
        if server.embedded:
            raise ConfigError("server.embedded: a member uses its host's call server, not one of its own")
        if not server.url.startswith("https://"):
            raise ConfigError(
                f"server.url: a member reaches its host over https, not {server.url} (`kiosk pair` writes it)"
            )
        if not server.ca_file:
            raise ConfigError(
                "server.ca_file: a member verifies its host with the host's CA (`kiosk pair` writes it)"
            )


def time_of_day(text: str) -> datetime.time:
    """A time of day written HH:MM (24-hour clock); ValueError otherwise."""
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return datetime.time(int(match[1]), int(match[2]))


def _check_screen(screen: ScreenSection, pins: dict[int, str]) -> None:
    for name in ("dim_after", "sleep_after"):
        if getattr(screen, name) < 0:
            raise ConfigError(f"screen.{name}: must be 0 (never) or more seconds")
    if 0 < screen.sleep_after <= screen.dim_after:
        raise ConfigError("screen.sleep_after: must be more than screen.dim_after (it dims, then sleeps)")
    if not 1 <= screen.dim_percent <= 100:
        raise ConfigError(f"screen.dim_percent: {screen.dim_percent} is not between 1 and 100")
    if screen.motion_pin is not None:
        _claim_pin(pins, screen.motion_pin, "screen.motion_pin")
    if bool(screen.asleep_from) != bool(screen.asleep_until):
        raise ConfigError("screen.asleep_from/asleep_until: quiet hours need both, or neither")
    if screen.asleep_from:
        times = {}
        for name in ("asleep_from", "asleep_until"):
            try:
                times[name] = time_of_day(getattr(screen, name))
            except ValueError as exc:
                raise ConfigError(f"screen.{name}: {exc}") from None
        if times["asleep_from"] == times["asleep_until"]:
            raise ConfigError("screen.asleep_until: the same time as asleep_from (an empty schedule)")
    if screen.backlight and screen.backend not in ("auto", "sysfs"):
        raise ConfigError(f"screen.backlight: only the sysfs backend uses it, not {screen.backend!r}")
    # A backlight device that is missing is not a config mistake: the kiosk starts, says so, and
    # leaves the screen on (kiosk.hardware.screen), as it does for a missing sound card.


def _check_video_device(device: str, key: str) -> None:
    """`device` (a node or a udev link to one, /dev/v4l/by-id/...) is a video4linux device now."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {device} does not exist (is the camera plugged in?)") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot look at {device}: {exc.strerror}") from None
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != V4L2_MAJOR:
        raise ConfigError(f"{key}: {device} is not a video device (a camera is a node like /dev/video0)")


def _server_urls(server: ServerSection) -> ServerSection:
    """`server` with url and urls checked and in their http(s) form (the one rule of kiosk.urls, which
    the SDK and the command line use too)."""
    try:
        url = server_base_url(server.url, "server.url")
        urls = [server_base_url(u, f"server.urls[{i}]") for i, u in enumerate(server.urls)]
    except ServerUrlError as exc:
        raise ConfigError(str(exc)) from None
    origins = []
    for i, origin in enumerate(server.cors_origins):
        try:
            origins.append(normalise_origin(origin))
        except ValueError as exc:
            raise ConfigError(f"server.cors_origins[{i}]: {exc}") from None
    return dataclasses.replace(server, url=url, urls=urls, cors_origins=origins)


def _claim_pin(pins: dict[int, str], pin: int, key: str) -> None:
    if not 0 <= pin <= 53:
        raise ConfigError(f"{key}: GPIO {pin} does not exist (0 to 53)")
    if pin in pins:
        raise ConfigError(f"{key}: pin {pin} is also used by {pins[pin]}")
    pins[pin] = key


def parse_config(text: str, source: str = "<text>", check_devices: bool = True) -> KioskConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config = _build(KioskConfig, data, "")
    config = dataclasses.replace(config, server=_server_urls(config.server), source=source)
    _check(config, check_devices)
    return config


def load_config(path: str | Path | None = None, check_devices: bool = True) -> KioskConfig:
    """Read and check the config at `path` (default: $KIOSK_CONFIG, else /etc/kiosk/kiosk.toml)."""
    chosen = Path(path or os.environ.get("KIOSK_CONFIG") or DEFAULT_PATH)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; an editor may have saved Latin-1
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{chosen}: not UTF-8 text (line {line}): save the file as UTF-8") from None
    return parse_config(text, str(chosen), check_devices)


def check_runnable(config: KioskConfig, *, auth_token: str = "") -> None:
    """What a kiosk made from `config` needs beyond the file's own checks, which `kiosk run` (every entry
    point, through kiosk.assembly.plan_kiosk) would refuse: call settings the SDK accepts, this kiosk's
    token, and a directory for its control socket. `kiosk check-config` runs it too, so both give the same
    line. Apart from load_config because a command line can stand in for the config (`auth_token`: a
    token given there), and a config is also loaded to be looked at (`kiosk doctor`)."""
    ui = config.ui
    if not _is_choice(ui.mode, UI_MODES):
        raise ConfigError(f"ui: mode must be one of {', '.join(UI_MODES)}, not {ui.mode!r}")
    if not _is_choice(ui.avatar_mode, AVATAR_MODES):
        raise ConfigError(f"ui: avatar_mode must be one of {', '.join(AVATAR_MODES)}, not {ui.avatar_mode!r}")
    if not 1 <= ui.idle_timeout <= MAX_IDLE_TIMEOUT:
        raise ConfigError(
            f"ui: idle_timeout must be whole seconds from 1 to {MAX_IDLE_TIMEOUT}, not {ui.idle_timeout!r}"
        )
    # config.auth_token() reads auth_token_file: a file that cannot be read is refused here.
    token = auth_token or config.auth_token()
    if not token and not (
        config.server.embedded or config.server.role == "host" or config.server.awaits_pairing
    ):
        raise ConfigError(NO_TOKEN)
    socket = config.emulation.control_socket
    if socket and not Path(socket).parent.is_dir():
        raise ConfigError(f"emulation.control_socket: the directory of {socket} does not exist")


def _is_choice(value: str, choices: tuple[str, ...]) -> bool:
    """`value` names one of `choices` as the SDK reads it (kiosk.calls.constants.parse_enum): any case,
    with or without the documents' prefix (MODE_SPOTLIGHT)."""
    text = value.strip().upper()
    for prefix in _CHOICE_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    return text in (choice.upper() for choice in choices)
