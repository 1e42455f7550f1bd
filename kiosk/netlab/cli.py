"""`kiosk netlab`: the network lab from the command line (root), for a person checking a kiosk on a bad
network, in the lab or on their own router.

    kiosk netlab profiles                       the profiles and what each does
    kiosk netlab probe --profile wifi           a lab with that profile; UDP probes both ways; figures
    kiosk netlab lab --profile bad-wifi         a lab kept up until Ctrl-C, with the commands to use it
    kiosk netlab impair --profile wifi --interface eth1 --kiosk-net 192.168.50.0/24
                                                this Linux machine routes a real kiosk (eth1 faces it):
                                                its traffic through the impairer until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kiosk.netlab.lab import KIOSK_NET, SIDES, Lab, LabError, address
from kiosk.netlab.profiles import PROFILES, profile

_ROUTE_TABLE = "101"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    netlab = commands.add_parser("netlab", help="the network lab: impaired links for trying calls (root)")
    sub = netlab.add_subparsers(dest="netlab_command", required=True)
    sub.add_parser("profiles", help="list the network profiles")
    probe = sub.add_parser("probe", help="a lab with a profile; UDP probes both ways; the figures")
    probe.add_argument("--profile", required=True)
    probe.add_argument("--seed", type=int, default=0)
    lab = sub.add_parser("lab", help="a lab kept up until Ctrl-C")
    lab.add_argument("--profile", required=True)
    lab.add_argument("--seed", type=int, default=0)
    impair = sub.add_parser("impair", help="impair the traffic a router forwards for a real kiosk")
    impair.add_argument("--profile", required=True)
    impair.add_argument("--interface", action="append", required=True, help="faces the kiosk (repeatable)")
    impair.add_argument("--kiosk-net", required=True, help="the kiosk's network, e.g. 192.168.50.0/24")
    impair.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        if args.netlab_command == "profiles":
            for p in PROFILES.values():
                print(f"{p.name:<12} {p.description}")
            return 0
        chosen = profile(args.profile)
        if args.netlab_command == "probe":
            return _probe(chosen.name, args.seed)
        if args.netlab_command == "lab":
            return _keep_lab(chosen.name, args.seed)
        return _impair(chosen.name, args.interface, args.kiosk_net, args.seed)
    except (LabError, ValueError) as exc:
        print(f"kiosk netlab: {exc}", file=sys.stderr)
        return 2


def _probe(name: str, seed: int) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="netlab-") as tmp,
        Lab(profile(name), Path(tmp), seed=seed) as lab,
    ):
        for sender, receiver, label in (("a", "b", "kiosk sends"), ("b", "a", "kiosk receives")):
            report = _one_probe(lab, sender, receiver)
            print(
                f"{label:<15} lost {report['lost']}/1000, reordered {report['reordered']}, "
                f"duplicated {report['duplicates']}, delay p50 {_ms(report['delay_p50_ms'])} "
                f"p95 {_ms(report['delay_p95_ms'])}"
            )
        print(json.dumps(lab.stats()))
    return 0


def _ms(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, float) else "-"


def _one_probe(lab: Lab, sender: str, receiver: str) -> dict[str, object]:
    listen = subprocess.Popen(
        lab.command(
            receiver,
            [
                sys.executable,
                "-m",
                "kiosk.netlab.probe",
                "receive",
                "--port",
                "9000",
                "--seconds",
                "6",
                "--expect",
                "1000",
            ],
        ),
        stdout=subprocess.PIPE,
    )
    time.sleep(0.3)
    subprocess.run(
        lab.command(
            sender,
            [
                sys.executable,
                "-m",
                "kiosk.netlab.probe",
                "send",
                "--to",
                f"{address(receiver)}:9000",
                "--count",
                "1000",
                "--interval",
                "0.004",
            ],
        ),
        check=True,
    )
    out, _ = listen.communicate()
    return dict(json.loads(out))


def _keep_lab(name: str, seed: int) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        tempfile.TemporaryDirectory(prefix="netlab-") as tmp,
        Lab(profile(name), Path(tmp), seed=seed) as lab,
    ):
        print(f"lab up with profile {name}: the kiosk's side is impaired; run commands with")
        for side, what in zip(SIDES, ("the kiosk", "the other side", "the servers"), strict=True):
            print(f"  sudo ip netns exec {lab.ns(side)} COMMAND   # {what}, {address(side)}")
        print("Ctrl-C removes it.", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


def _impair(name: str, interfaces: list[str], kiosk_net: str, seed: int) -> int:
    Lab.check_host()
    commands = [
        ["ip", "tuntap", "add", "dev", "kimpair0", "mode", "tun"],
        ["ip", "link", "set", "kimpair0", "up"],
    ]
    commands += [["ip", "rule", "add", "iif", i, "table", _ROUTE_TABLE] for i in interfaces]
    commands += [["ip", "rule", "add", "to", kiosk_net, "iif", "kimpair0", "lookup", "main"]]
    commands += [["ip", "route", "add", "default", "dev", "kimpair0", "table", _ROUTE_TABLE]]
    done: list[list[str]] = []
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
            done.append(command)
        print(f"impairing {', '.join(interfaces)} with profile {name}; Ctrl-C stops", flush=True)
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "kiosk.netlab.forwarder",
                "--tun",
                "kimpair0",
                "--profile",
                name,
                "--kiosk-net",
                kiosk_net,
                "--seed",
                str(seed),
            ]
        )
    except KeyboardInterrupt:
        return 0
    finally:
        for command in reversed(done):
            if command[:2] == ["ip", "rule"]:
                subprocess.run(["ip", "rule", "del", *command[3:]], capture_output=True)
            elif command[:2] == ["ip", "route"]:
                subprocess.run(["ip", "route", "del", *command[3:]], capture_output=True)
        subprocess.run(["ip", "tuntap", "del", "dev", "kimpair0", "mode", "tun"], capture_output=True)


__all__ = ["KIOSK_NET", "add_parser", "run"]
