"""`kiosk doctor`: check a device the way a person setting one up needs, one line per check.

    OK    config: /etc/kiosk/kiosk.toml
    FAIL  camera usb-cam: /dev/video0 is not there
          fix: plug the camera in (ls /dev/video*), or correct cameras[1].device in /etc/kiosk/kiosk.toml

Checks: the config file; each configured camera is present; each audio device (the microphone and
every audio mode's playback and capture PCM) is present; each configured GPIO pin can be claimed; the
recordings directory (and an embedded server's data directory) is writable; the auth token is there; the server answers and accepts the token; the clock is sane (and agrees with the
server's). `run_doctor(path)` prints the report and returns 0 when everything is OK, else 1.

Run it as the kiosk's user with the kiosk stopped (the running kiosk holds the GPIO pins and the
sound cards): `sudo systemctl stop kiosk; sudo -u kiosk kiosk doctor`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import importlib.util
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kiosk.calls.errors import CallsError
from kiosk.calls.tls import client_ssl_context
from kiosk.config import BUTTON_NAMES, DEFAULT_PATH, ConfigError, KioskConfig, load_config
from kiosk.media.soundcards import SoundCard, propose_audio, read_cards

HTTP_TIMEOUT = 5.0
MAX_CLOCK_SKEW = 60.0  # seconds; call tokens are signed with expiry times, so a wrong clock breaks calls
MIN_YEAR = 2024  # a Pi without a real-time clock boots in the past until NTP has set the time


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # not a failure, but worth a look (an optional device that is away now)
    more: tuple[str, ...] = ()  # lines shown under it, indented (a proposed config section)

    def lines(self) -> list[str]:
        label = "WARN" if self.warning else "OK" if self.ok else "FAIL"
        lines = [f"{label:<5} {self.name}: {self.detail}"]
        if (not self.ok or self.warning) and self.fix:
            lines.append(f"      fix: {self.fix}")
        lines += [f"        {text}" if text else "" for text in self.more]
        return lines


def _ok(name: str, detail: str) -> Result:
    return Result(name, True, detail)


def _fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, False, detail, fix)


# ----------------------------------------------------------------------------- cameras


V4L_BY_ID = Path("/dev/v4l/by-id")


def usb_cameras(by_id: Path = V4L_BY_ID) -> list[Path]:
    """The stable names udev gives USB cameras' capture nodes (`...-video-index0`), which stay the
    same whatever else is plugged in; /dev/videoN numbers do not (with a Pi camera attached,
    /dev/video0 is its CSI capture node)."""
    try:
        return sorted(p for p in by_id.iterdir() if p.name.endswith("-video-index0"))
    except OSError:
        return []


def check_cameras(config: KioskConfig, by_id: Path = V4L_BY_ID) -> Iterator[Result]:
    from kiosk.media.cameras import CameraSet

    if not config.cameras:
        yield _ok("cameras", "none configured (audio-only kiosk)")
        return
    try:
        present = {d.device_id: d for d in CameraSet(config.cameras).list_devices()}
    except Exception as exc:  # a broken camera stack must not hide the other checks
        yield _fail("cameras", f"cannot list cameras: {exc}", "see the journal; check the camera cables")
        return
    stable = usb_cameras(by_id)
    for i, section in enumerate(config.cameras):
        name = f"camera {section.id}"
        if section.backend == "v4l2" and re.fullmatch(r"/dev/video\d+", section.device):
            choices = ", ".join(str(p) for p in stable) or "none plugged in now"
            yield Result(
                name,
                True,
                f"{section.device} is a number that changes with what is plugged in (with a Raspberry Pi "
                "camera attached, /dev/video0 is the Pi camera's capture node)",
                f"set cameras[{i}].device to the camera's stable name in /dev/v4l/by-id/: {choices}",
                warning=True,
            )
        if section.id in present:
            yield _ok(name, present[section.id].label)
        elif section.backend == "v4l2":
            yield _fail(
                name,
                f"{section.device} is not there",
                f"plug the camera in and look for it with `ls /dev/video*` (v4l2-ctl --list-devices names "
                f"them), then set cameras[{i}].device in {config.source}; the kiosk user needs the video group",
            )
        elif importlib.util.find_spec("picamera2") is None:
            yield _fail(
                name,
                "picamera2 is not importable",
                "install python3-picamera2 (apt) and use a venv made with --system-site-packages "
                "(scripts/install-pi.sh does both)",
            )
        else:
            yield _fail(
                name,
                f"no Raspberry Pi camera number {section.camera_num}",
                "check the ribbon cable (contacts facing the right way) and list cameras with "
                f"`rpicam-hello --list-cameras`; set cameras[{i}].camera_num in {config.source}",
            )


def check_picamera2(config: KioskConfig) -> Iterator[Result]:
    """For Raspberry Pi cameras: picamera2 new enough, and whether the camera can send its own H.264
    (a Pi 4's hardware encoder) or the kiosk encodes (a Pi 5 has no hardware encoder)."""
    from kiosk.media.picamera import MIN_PICAMERA2_VERSION, picamera2_version, picamera_passthrough_status

    sections = [(i, c) for i, c in enumerate(config.cameras) if c.backend == "picamera2"]
    if not sections:
        return
    version, problem = picamera2_version()
    if problem is not None:
        yield _fail(
            "picamera2",
            problem,
            f"sudo apt update && sudo apt install python3-picamera2 (the kiosk needs {MIN_PICAMERA2_VERSION} "
            "or newer: older ones block for good when a camera stops)",
        )
        return
    yield _ok("picamera2", f"version {version}")
    passthrough, reason = picamera_passthrough_status()
    for i, section in sections:
        if not section.h264_passthrough or passthrough is None:
            continue
        name = f"camera {section.id} H.264"
        if passthrough:
            yield _ok(name, f"the camera's own hardware encoder ({reason})")
        else:
            yield Result(
                name,
                True,
                f"h264_passthrough is set, but {reason}",
                f"set cameras[{i}].h264_passthrough = false in {config.source} (the same result, said plainly)",
                warning=True,
            )


# ----------------------------------------------------------------------------- audio


def check_audio(config: KioskConfig, cards: list[SoundCard] | None = None) -> Iterator[Result]:
    """The sound cards present, each configured audio device, and (when something is missing or
    "auto") the audio section that suits the cards, ready to paste. `cards`: the kernel's by default."""
    section = config.audio
    if section.backend != "alsa":
        yield _ok("audio", f"{section.backend} backend (no sound card used)")
        return
    cards = read_cards() if cards is None else cards
    if cards:
        yield _ok("sound cards", "; ".join(card.describe() for card in cards))
    else:
        yield _fail(
            "sound cards",
            "the kernel lists none (/proc/asound/cards)",
            "plug in a USB speakerphone, or enable the jack/HDMI audio or your HAT's overlay in "
            "/boot/firmware/config.txt (dtparam=audio=on, dtoverlay=...), then reboot",
        )
    try:
        from kiosk.media.alsa import AlsaAudio

        audio = AlsaAudio(section, cards)
        present = {d.device_id for d in audio.list_devices()}
    except Exception as exc:
        yield _fail("audio", f"cannot use ALSA: {exc}", "install libasound2 and pyalsaaudio (install-pi.sh)")
        return
    resolved = audio.section
    fix = (
        "list the PCM names with `arecord -L` / `aplay -L` (cards: `aplay -l`), check the card is plugged "
        f"in and nothing else holds it, and correct the name in {config.source}; the kiosk user needs "
        "the audio group"
    )
    problems = 0

    def shown(configured: str, used: str) -> str:
        return f"{used} (auto)" if configured == "auto" else used

    # The microphone and the default mode's output must be there; the other modes' devices (a headset,
    # a Bluetooth earpiece) may come and go, so their absence is a warning.
    wanted = []
    if resolved.capture:
        wanted.append(
            (
                "microphone",
                "audio.capture",
                shown(section.capture, resolved.capture),
                audio.input_id(resolved.capture),
                True,
            )
        )
    else:
        problems += 1
        yield _fail(
            "audio microphone",
            "none found" if section.capture == "auto" else "none configured (audio.capture is empty)",
            "plug in a USB microphone or speakerphone (or a HAT with one): until then nobody hears this "
            "kiosk",
        )
    for mode, spec in section.modes.items():
        needed = mode == section.default_mode
        used = resolved.modes.get(mode)
        if used is None:
            problems += needed
            result = Result(f"audio {mode} playback", not needed, "auto: no sound card for it now", fix)
            yield dataclasses.replace(result, warning=not needed)
            continue
        wanted.append(
            (
                f"{mode} playback",
                f"audio.modes.{mode}.playback",
                shown(spec.playback, used.playback),
                audio.output_id(mode),
                needed,
            )
        )
        if used.capture and used.capture != resolved.capture:
            key = f"audio.modes.{mode}.capture"
            wanted.append(
                (
                    f"{mode} microphone",
                    key,
                    shown(spec.capture, used.capture),
                    audio.input_id(used.capture),
                    needed,
                )
            )
    for what, key, pcm, device_id, needed in wanted:
        if device_id in present:
            yield _ok(f"audio {what}", pcm)
        elif needed:
            problems += 1
            yield _fail(f"audio {what}", f"ALSA device {pcm!r} ({key}) is not present", fix)
        else:
            problems += 1
            detail = f"ALSA device {pcm!r} ({key}) is not present now (used when it is plugged in)"
            yield Result(f"audio {what}", True, detail, fix, warning=True)
    if (
        problems
        or any(spec.playback == "auto" for spec in section.modes.values())
        or section.capture == "auto"
    ):
        proposal = propose_audio(cards)
        notes = tuple(f"# {note}" for note in proposal.notes)
        yield Result(
            "audio proposal",
            True,
            f"for the sound cards present, {config.source} could say:",
            warning=bool(problems),
            more=(*proposal.toml().splitlines(), *notes),
        )


# ----------------------------------------------------------------------------- GPIO


def _configured_pins(config: KioskConfig) -> list[tuple[str, int, bool | None]]:
    """(config key, BCM pin, pull_up) of every button and LED; pull_up None for outputs."""
    pins: list[tuple[str, int, bool | None]] = []
    for name in BUTTON_NAMES:
        button = getattr(config.buttons, name)
        if button is not None:
            pins.append((f"buttons.{name}.pin", button.pin, button.pull_up))
    for name in ("in_call", "muted", "ringing"):
        pin = getattr(config.leds, name)
        if pin is not None:
            pins.append((f"leds.{name}", pin, None))
    return pins


def check_gpio(config: KioskConfig, pin_factory: Any = None) -> Iterator[Result]:
    pins = _configured_pins(config)
    if not pins:
        yield _ok("gpio", "no buttons or LEDs configured")
        return
    from gpiozero import Device, DigitalInputDevice

    from kiosk.hardware.buttons import HardwareError, make_pin_factory

    factory = pin_factory
    if factory is None:
        try:
            factory = make_pin_factory(config.buttons.pin_factory)
        except HardwareError as exc:
            message = str(exc)
            yield _fail("gpio", message.split(". ", 1)[0], message.split(". ", 1)[-1])
            return
    try:
        for key, pin, pull_up in pins:
            try:
                # Claimed as an input even for LEDs: driving an output here could click a door relay.
                device = DigitalInputDevice(
                    pin,
                    pull_up=pull_up,
                    active_state=None if pull_up is not None else True,
                    pin_factory=factory,
                )
            except Exception as exc:
                yield _fail(
                    f"gpio {pin} ({key})",
                    f"cannot claim it: {exc}",
                    "another program holds this pin: stop the kiosk first (sudo systemctl stop kiosk), find "
                    "others with `gpioinfo`; or choose a free pin in " + config.source,
                )
                continue
            device.close()
            yield _ok(f"gpio {pin} ({key})", f"free ({type(factory).__name__})")
    finally:
        # gpiozero's shared default factory stays open for whoever uses it next; our own is closed.
        if pin_factory is None and factory is not Device.pin_factory:
            factory.close()


# ----------------------------------------------------------------------------- storage


def _writable(path: Path) -> bool:
    """Whether the kiosk could write in `path`, creating it (and missing parents) if needed."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def check_storage(config: KioskConfig) -> Iterator[Result]:
    wanted = [("recordings", "recording.directory", config.recording.directory)]
    if config.server.embedded:
        wanted.append(("server data", "server.data_dir", config.server.data_dir))
    for name, key, directory in wanted:
        if _writable(Path(directory)):
            yield _ok(name, f"{directory} is writable")
        else:
            yield _fail(
                name,
                f"cannot write in {directory} ({key})",
                f"sudo install -d -o kiosk -g kiosk {directory}; the service may write only in "
                "/var/lib/kiosk unless `systemctl edit kiosk` adds ReadWritePaths=" + directory,
            )


# ----------------------------------------------------------------------------- server, token, clock


@dataclass
class _Reply:
    status: int
    body: bytes
    date: str | None


def _get(url: str, token: str, ca_file: str | None = None) -> _Reply:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    # No proxies from the environment: the kiosk's own client (aiohttp) does not use them either. The
    # certificate is checked as the kiosk checks it (the config's CA file, else the system's CAs).
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=client_ssl_context(ca_file))
    )
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            return _Reply(response.status, response.read(), response.headers.get("Date"))
    except urllib.error.HTTPError as exc:  # a reply all the same: the server is reachable
        return _Reply(exc.code, exc.read(), exc.headers.get("Date"))


def check_server(config: KioskConfig) -> Iterator[Result]:
    """Token, server and clock, which depend on one another."""
    token = ""
    try:
        token = config.auth_token()
    except ConfigError as exc:
        path = config.server.auth_token_file
        yield _fail(
            "auth token",
            str(exc),
            f"put the kiosk's token in {path} (from `kiosk users add` on the server), readable by the "
            f"kiosk user: sudo chgrp kiosk {path}; sudo chmod 0640 {path}",
        )
    else:
        if token:
            where = "server.auth_token" if config.server.auth_token else config.server.auth_token_file
            yield _ok("auth token", f"present ({where})")
        elif config.server.embedded:
            yield _ok("auth token", "none needed with the embedded server")
        else:
            yield _fail(
                "auth token",
                "none configured",
                "create this kiosk's user on the server (`kiosk users add UID --name NAME`) and put the "
                f"token it prints in {config.server.auth_token_file or '/etc/kiosk/auth-token'} "
                "(chgrp kiosk, chmod 0640) or in server.auth_token",
            )

    server_date: float | None = None
    if config.server.embedded:
        yield _ok("server", f"embedded in the kiosk (data in {config.server.data_dir})")
    else:
        url = config.server.url.rstrip("/") + "/v1/me"
        try:
            reply = _get(url, token, config.server.ca_file or None)
        except (OSError, ValueError, CallsError) as exc:
            reason = getattr(exc, "reason", exc)
            yield _fail(
                "server",
                f"cannot reach {config.server.url}: {reason}",
                f"check server.url in {config.source}, the network (ping the host), and that the call "
                "server runs there (systemctl status kiosk-server)",
            )
        else:
            yield _ok("server", f"{config.server.url} answers")
            if reply.date:
                parsed = email.utils.parsedate_to_datetime(reply.date)
                server_date = parsed.timestamp()
            if reply.status == 200:
                me = json.loads(reply.body or b"{}")
                yield _ok("login", f"accepted as {me.get('uid')} ({me.get('name')})")
            elif reply.status == 401 and token:
                yield _fail(
                    "login",
                    "the server refused the auth token (401: token invalid)",
                    "the token is not one this server issued, or its user was removed: create the user "
                    "again (`kiosk users add`) and put the new token in place",
                )
            elif reply.status != 401:
                yield _fail(
                    "login",
                    f"GET {url} answered HTTP {reply.status}",
                    "is server.url the call server (not a proxy or another service)? see its journal",
                )

    yield from check_clock(server_date)


def check_clock(server_date: float | None, now: float | None = None) -> Iterator[Result]:
    now = time.time() if now is None else now
    year = time.gmtime(now).tm_year
    fix = (
        "turn on network time (sudo timedatectl set-ntp true) and let the kiosk reach an NTP server; "
        "`timedatectl` shows whether the clock is synchronised"
    )
    if year < MIN_YEAR:
        yield _fail("clock", f"the year is {year}: the clock has not been set", fix)
        return
    if server_date is None:
        yield _ok("clock", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))
        return
    skew = now - server_date
    if abs(skew) > MAX_CLOCK_SKEW:
        yield _fail("clock", f"{skew:+.0f} s off the server's clock (call tokens would be refused)", fix)
    else:
        yield _ok("clock", f"within {abs(skew):.0f} s of the server's")


# ----------------------------------------------------------------------------- the report


def run_checks(config_path: str | Path | None, pin_factory: Any = None) -> Iterator[Result]:
    """Each check's result, as soon as it is known (a slow server does not hold back the first lines)."""
    try:
        # Missing devices are reported one by one below rather than stopping at the first.
        config = load_config(config_path, check_devices=False)
    except ConfigError as exc:
        yield _fail(
            "config",
            str(exc),
            f"edit {config_path or DEFAULT_PATH} (config/kiosk.toml documents every key), then run "
            "`kiosk check-config`",
        )
        return
    yield _ok("config", config.source)
    yield from check_cameras(config)
    yield from check_picamera2(config)
    yield from check_audio(config)
    yield from check_gpio(config, pin_factory)
    yield from check_storage(config)
    yield from check_server(config)


def run_doctor(
    config_path: str | Path | None = None, out: TextIO | None = None, pin_factory: Any = None
) -> int:
    """Print one line per check (and the fix for each failure); 0 if all passed, else 1.

    `pin_factory`: a gpiozero factory to claim the pins with instead of the configured one (tests).
    """
    out = out or sys.stdout
    failed = 0
    for result in run_checks(config_path, pin_factory):
        failed += not result.ok
        for line in result.lines():
            print(line, file=out, flush=True)
    print(f"{failed} problem(s) found" if failed else "all checks passed", file=out)
    return 1 if failed else 0
