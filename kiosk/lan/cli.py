"""`kiosk pair` (a new kiosk joins the building's host) and `kiosk pair-code` (on the host: a code
for it). docs/intercom.md, "A building with no server to install"."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiosk.lan import DEFAULT_HOST_PORT, is_fingerprint, show_fingerprint

if TYPE_CHECKING:
    from kiosk.lan.discovery import HostAd


def add_parsers(sub: Any) -> None:
    pair = sub.add_parser(
        "pair",
        help="pair this kiosk with the building's host: find it on the network, enter the code it shows",
    )
    pair.add_argument(
        "--config",
        type=Path,
        help="the config to point at the host (default: $KIOSK_CONFIG or /etc/kiosk/kiosk.toml); the "
        "token and CA files are written next to it",
    )
    pair.add_argument(
        "--list", action="store_true", help="only list the hosts found, with their CA fingerprints"
    )
    pair.add_argument(
        "--host",
        metavar="WHICH",
        help="the host to pair with: its name, an address or the start of its fingerprint (default: the "
        "only one found; asked when there are several)",
    )
    pair.add_argument("--code", help="the code the host shows (default: asked)")
    pair.add_argument("--name", help="this kiosk's name for the others (default: the config's identity.name)")
    pair.add_argument(
        "--uid",
        help="this kiosk's uid (default: the config's identity.uid, else one the host makes from the name)",
    )
    pair.add_argument("--wait", type=float, default=3.0, help="seconds to look for hosts (default 3)")
    pair.add_argument(
        "--url",
        help="pair with the host at this address instead of looking for it (a network that drops "
        "mDNS), e.g. https://192.168.1.20:8443; needs --fingerprint",
    )
    pair.add_argument("--fingerprint", help="with --url: the CA fingerprint the host shows (SHA-256, hex)")
    pair.add_argument(
        "--print-only",
        action="store_true",
        help="write the token and CA files, but print the config lines instead of editing the config",
    )
    pair.set_defaults(func=run_pair)

    code = sub.add_parser(
        "pair-code", help="on the building's host: a one-time code that pairs a kiosk or browser"
    )
    code.add_argument(
        "--config", type=Path, help="the host's config (default: $KIOSK_CONFIG or /etc/kiosk/kiosk.toml)"
    )
    code.add_argument(
        "--data-dir", type=Path, help="the host's data directory (default: the config's server.data_dir)"
    )
    code.add_argument(
        "--new", action="store_true", help="a fresh code even while one is valid (that one stops working)"
    )
    code.set_defaults(func=run_pair_code)


def _fail(command: str, message: object) -> int:
    print(f"kiosk {command}: {message}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- kiosk pair-code


def run_pair_code(args: argparse.Namespace) -> int:
    from kiosk.config import ConfigError, load_config
    from kiosk.lan import fingerprint_of_pem
    from kiosk.lan.ca import read_ca_pem
    from kiosk.lan.codes import CODE_ATTEMPTS, PairingCodes, show_code
    from kiosk.lan.discovery import lan_addresses, this_hostname

    data_dir = args.data_dir
    if data_dir is None:
        try:
            data_dir = Path(load_config(args.config, check_devices=False).server.data_dir)
        except ConfigError as exc:
            return _fail("pair-code", exc)
    try:
        pem = read_ca_pem(data_dir)
        if pem is None:
            return _fail(
                "pair-code",
                f'no building CA in {data_dir}: start the host first ([server] role = "host"), or give its --data-dir',
            )
        codes = PairingCodes(data_dir)
        code = codes.new_code() if args.new else codes.current_or_new()
    except OSError as exc:
        return _fail(
            "pair-code", f"{data_dir}: {exc.strerror or exc} (run it as the kiosk's user, or as root)"
        )
    minutes = max(1, round(code.seconds_left(time.time()) / 60))
    print(f"Pairing code: {show_code(code.code)}")
    print(f"  valid {minutes} min, for one kiosk or browser; {CODE_ATTEMPTS} wrong tries make it void")
    print(f"Host CA fingerprint (SHA-256): {show_fingerprint(fingerprint_of_pem(pem))}")
    print("A kiosk: run `kiosk pair` on it, check the fingerprint it shows, and enter the code.")
    links = [f"https://{this_hostname()}.local:{DEFAULT_HOST_PORT}"]
    links += [f"https://{address}:{DEFAULT_HOST_PORT}" for address in lan_addresses()]
    print("A browser: open one of")
    for link in links:
        print(f"  {link}/app/#pair={code.code}")
    return 0


# ----------------------------------------------------------------------------- kiosk pair


def run_pair(args: argparse.Namespace) -> int:
    from kiosk.config import ConfigError
    from kiosk.lan.discovery import DiscoveryError
    from kiosk.lan.pairing import PairingError

    if (args.url is None) != (args.fingerprint is None):
        print("kiosk pair: --url and --fingerprint go together", file=sys.stderr)
        return 2
    if args.fingerprint is not None and not is_fingerprint(
        args.fingerprint.replace(" ", "").replace(":", "").lower()
    ):
        print("kiosk pair: --fingerprint must be the 64 hex digits of a SHA-256", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_pair(args))
    except (ConfigError, PairingError, DiscoveryError) as exc:
        return _fail("pair", exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail("pair", f"{where}{exc.strerror or exc} (run it as root: sudo kiosk pair)")
    except EOFError:
        return _fail("pair", "no answer (standard input closed): give --host and --code")


async def _ask(prompt: str) -> str:
    # input() blocks: off the event loop.
    return (await asyncio.to_thread(input, prompt)).strip()


async def _pair(args: argparse.Namespace) -> int:
    from kiosk.config import DEFAULT_PATH, load_config
    from kiosk.lan.discovery import HostAd, browse
    from kiosk.lan.pairing import apply_pairing, pair, pick_code
    from kiosk.urls import ServerUrlError, server_base_url

    if args.url is not None:
        try:
            url = server_base_url(args.url, "--url")
        except ServerUrlError as exc:
            return _fail("pair", exc)
        fingerprint = args.fingerprint.replace(" ", "").replace(":", "").lower()
        host = HostAd(instance="", name=url, urls=(url,), fingerprint=fingerprint, hostname="", version="")
    else:
        print(f"Looking for building hosts ({args.wait:g} s)...", flush=True)
        # Looking for a given host stops at the first answer from it.
        hosts = await browse(args.wait, until=(lambda ad: _matches(ad, args.host)) if args.host else None)
        if args.list:
            if not hosts:
                return _fail("pair", "no building host answered (is it running, on this network?)")
            for n, ad in enumerate(hosts, 1):
                _print_host(n, ad)
            return 0
        host = await _choose(hosts, args.host)
    config_path = Path(args.config or os.environ.get("KIOSK_CONFIG") or DEFAULT_PATH)
    config = load_config(config_path, check_devices=False)
    name = args.name or config.identity.name
    uid = args.uid or config.identity.uid or None
    print(f"Pairing with {host.name} ({host.url})")
    print(f"  CA fingerprint (SHA-256): {show_fingerprint(host.fingerprint)}")
    print("  Pair only if the host shows the same fingerprint.", flush=True)
    code = pick_code(args.code if args.code is not None else await _ask("Code shown on the host: "))
    paired = await pair(list(host.urls), host.fingerprint, code, name, uid)
    applied = await apply_pairing(config_path, paired, host.hostname, edit=not args.print_only)
    files = applied.files
    print(f"Paired as {paired.uid} ({paired.name}); wrote {files.token_file} and {files.ca_file}.")
    if args.print_only:
        print(f"Put these lines in the [server] table of {config_path}:\n{applied.lines}", end="")
        return 0
    if applied.backup is None:
        print(
            f"{config_path} was not changed ({applied.why_not}). Put these lines in its [server] table:\n"
            f"{applied.lines}",
            end="",
        )
        return 0
    print(f"{config_path} now uses the host (as it was before: {applied.backup}).")
    print("Restart the kiosk to use it: sudo systemctl restart kiosk")
    return 0


def _matches(ad: HostAd, which: str) -> bool:
    """`which` (from --host) names `ad`: its name, its host name, an address, or its fingerprint's start."""
    text = which.lower()
    fingerprint = text.replace(" ", "").replace(":", "")
    return (
        text in (ad.name.lower(), ad.instance.lower(), ad.hostname, ad.hostname.removesuffix(".local"))
        or (len(fingerprint) >= 4 and ad.fingerprint.startswith(fingerprint))
        or any(f"//{text}:" in url for url in ad.urls)
    )


def _print_host(n: int, ad: HostAd) -> None:
    print(f"  {n}. {ad.name}  {'  '.join(ad.urls)}")
    print(f"     CA fingerprint (SHA-256): {show_fingerprint(ad.fingerprint)}")


async def _choose(hosts: list[HostAd], which: str | None) -> HostAd:
    from kiosk.lan.pairing import PairingError

    if which:
        hosts = [ad for ad in hosts if _matches(ad, which)]
        if not hosts:
            raise PairingError(f"no building host called {which!r} answered")
    if not hosts:
        raise PairingError("no building host answered (is it running, on this network?)")
    if len(hosts) == 1:
        return hosts[0]
    print("Building hosts on this network:")
    for n, ad in enumerate(hosts, 1):
        _print_host(n, ad)
    if not sys.stdin.isatty():
        raise PairingError("several hosts answered: choose one with --host")
    answer = await _ask(f"Which one (1 to {len(hosts)})? ")
    if not answer.isdigit() or not 1 <= int(answer) <= len(hosts):
        raise PairingError(f"{answer!r} is not one of 1 to {len(hosts)}")
    return hosts[int(answer) - 1]
