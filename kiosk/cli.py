"""The `kiosk` command: server, users, endpoint, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kiosk import __version__


def _endpoint(args: argparse.Namespace) -> int:
    from kiosk.config import ConfigError
    from kiosk.endpoint import EndpointOptions, run_endpoint
    from kiosk.hardware import HardwareError
    from kiosk.urls import ServerUrlError, server_base_url

    if args.config is None and not (args.server and args.auth_token):
        print("kiosk endpoint: give --server and --auth-token, or --config", file=sys.stderr)
        return 2
    try:  # before anything starts: the SDK would refuse it too, but as a ValueError mid-start
        for url in args.server or []:
            server_base_url(url, "--server")
    except ServerUrlError as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2
    options = EndpointOptions(
        server=list(args.server or []),
        auth_token=args.auth_token or "",
        config=args.config,
        idle=args.idle,
        session=args.session,
        call=args.call,
        answer=args.answer,
        audio_only=args.audio_only,
        duration=args.duration,
        report=args.report,
        codec=args.codec,
        loopback=args.loopback,
        ice_addresses=args.ice_address,
        ring_wait=args.ring_wait,
        record=args.record,
        recording_dir=args.recording_dir,
        ca_file=args.ca_file,
        stats_every=args.stats_every,
        open_door_after=args.open_door_after,
    )
    try:
        return asyncio.run(run_endpoint(options))
    except (ConfigError, HardwareError) as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from kiosk.config import ConfigError
    from kiosk.demo import run_demo
    from kiosk.hardware import HardwareError

    try:
        return asyncio.run(run_demo(duration=args.duration, config_path=args.config))
    except (ConfigError, HardwareError) as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2


def _check_config(args: argparse.Namespace) -> int:
    from kiosk.config import ConfigError, check_runnable, load_config

    try:
        config = load_config(args.config)
        check_runnable(config)  # what `kiosk run` would refuse, in the same words
    except ConfigError as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 2
    cameras = ", ".join(f"{c.id} ({c.backend})" for c in config.cameras) or "none"
    print(f"config ok: {config.source}\n  cameras: {cameras}\n  audio: {config.audio.backend}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kiosk.ui.app import run_kiosk

    return run_kiosk(args.config, screenshots_dir=args.screenshots, duration=args.duration)


def _doctor(args: argparse.Namespace) -> int:
    from kiosk.doctor import run_doctor

    return run_doctor(args.config)


def build_parser() -> argparse.ArgumentParser:
    from kiosk.server.cli import add_groups_parser, add_server_parser, add_users_parser

    parser = argparse.ArgumentParser(
        prog="kiosk", description="Call endpoint for Raspberry Pi kiosks and appliances"
    )
    parser.add_argument("--version", action="version", version=f"kiosk {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO for the server, else WARNING)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_server_parser(sub)
    add_users_parser(sub)
    add_groups_parser(sub)

    endpoint = sub.add_parser(
        "endpoint", help="a headless endpoint with emulated media, printing events as JSON lines"
    )
    endpoint.add_argument(
        "--server",
        action="append",
        default=None,
        help="call server URL, e.g. http://127.0.0.1:8080 (default: the config's); repeat it for several "
        "processes of one service (docs/scale-out.md): the next is tried when one cannot be reached",
    )
    endpoint.add_argument("--auth-token", help="this endpoint's user auth token (default: the config's)")
    endpoint.add_argument(
        "--config",
        type=Path,
        help="device config: the kiosk it describes, as `kiosk run` builds it (devices, call settings, buttons, "
        "LEDs, keyboard, control socket, an embedded server); the options given here override it",
    )
    what = endpoint.add_mutually_exclusive_group(required=True)
    what.add_argument("--idle", action="store_true", help="wait: calls come and go by buttons, keys, socket")
    what.add_argument("--session", metavar="ID", help="join this session directly")
    what.add_argument("--call", metavar="UID", help="ring this user and join when they accept")
    what.add_argument("--answer", action="store_true", help="wait for an incoming call and accept it")
    endpoint.add_argument("--audio-only", action="store_true", help="no video")
    endpoint.add_argument(
        "--duration", type=float, default=None, help="seconds to stay in the call (default: until it ends)"
    )
    endpoint.add_argument("--report", type=Path, help="write a JSON report with the session stats here")
    endpoint.add_argument("--codec", choices=["VP8", "H264"], help="video codec to prefer")
    endpoint.add_argument(
        "--loopback", action="store_true", help="offer only 127.0.0.1 to ICE (one-machine tests)"
    )
    endpoint.add_argument(
        "--ice-address",
        action="append",
        default=[],
        metavar="ADDR",
        help="offer only this local address to ICE (repeatable), e.g. the one a Janus SFU gathers on",
    )
    endpoint.add_argument(
        "--ring-wait", type=float, default=60.0, help="seconds to wait for an answer or a call"
    )
    endpoint.add_argument("--record", action="store_true", help="record the call from its start")
    endpoint.add_argument(
        "--recording-dir",
        type=Path,
        help="where recordings go (default $KIOSK_RECORDING_DIR or ./recordings)",
    )
    endpoint.add_argument(
        "--ca-file",
        type=Path,
        help="verify an https:// server's certificate against this PEM CA file only "
        "(default: the config's server.ca_file, else the system's CAs)",
    )
    endpoint.add_argument(
        "--open-door-after",
        type=float,
        metavar="SECONDS",
        help="in the call, ask the door kiosk in it to release its door after this long (needs the "
        "permission: kiosk users doors UID allow)",
    )
    endpoint.add_argument(
        "--stats-every",
        type=float,
        metavar="SECONDS",
        help="print the call's stats as a JSON line this often (bitrate, picture size, playout, losses)",
    )
    endpoint.set_defaults(func=_endpoint)

    check = sub.add_parser("check-config", help="check a device configuration file and say what is wrong")
    check.add_argument(
        "--config", type=Path, default=None, help="default: $KIOSK_CONFIG or /etc/kiosk/kiosk.toml"
    )
    check.set_defaults(func=_check_config)

    run = sub.add_parser(
        "run", help="the kiosk with its touch screen (offscreen, saving screenshots, with no display)"
    )
    run.add_argument(
        "--config", type=Path, help="device config (default: $KIOSK_CONFIG or /etc/kiosk/kiosk.toml)"
    )
    run.add_argument("--screenshots", type=Path, help="with no display: save a PNG of each screen here")
    run.add_argument("--duration", type=float, help="exit after this many seconds")
    run.set_defaults(func=_run)

    doctor = sub.add_parser(
        "doctor", help="check this device: config, cameras, sound, GPIO pins, server, token and clock"
    )
    doctor.add_argument(
        "--config", type=Path, default=None, help="default: $KIOSK_CONFIG or /etc/kiosk/kiosk.toml"
    )
    doctor.set_defaults(func=_doctor)

    demo = sub.add_parser(
        "demo", help="embedded server, two emulated endpoints, one call; exit 0 if media flowed"
    )
    demo.add_argument("--duration", type=float, default=5.0, help="seconds of call (default 5)")
    demo.add_argument(
        "--config",
        type=Path,
        help="device config for the front door (e.g. config/emulated.toml), on the demo's server: its devices "
        "and call settings, and its keys and buttons act",
    )
    demo.set_defaults(func=_demo)

    from kiosk.lan import cli as lan_cli

    lan_cli.add_parsers(sub)  # pair, pair-code: a building with no server to install (docs/intercom.md)

    from kiosk.netlab import cli as netlab_cli

    netlab_cli.add_parser(sub)
    sub.choices["netlab"].set_defaults(func=netlab_cli.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("INFO" if args.command in ("server", "run") else "WARNING")
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in ("run", "endpoint", "demo"):  # they make calls: aiortc's internals checked first
            from kiosk.calls.compat import exit_code_for

            if code := exit_code_for(args.command):
                return code
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a person at a terminal gets one line, the journal gets the detail
        logging.getLogger("kiosk").debug("failed", exc_info=True)
        print(f"kiosk {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
