"""The impairer: a TUN device's reader that applies the link models and writes the packets back.

The lab (or a Linux machine routing a real kiosk) sends the traffic to impair into a TUN device with
policy routing; this process reads each IPv4 packet, asks the model of its direction what happens to
it, and writes the surviving copies back into the same device at their time, from where the kernel
routes them on. A packet whose source is on the kiosk's network goes "up", one whose destination is
there goes "down"; anything else passes untouched.

    python -m kiosk.netlab.forwarder --tun tun0 --profile bad-wifi --kiosk-net 10.77.1.0/24 \\
        --seed 7 --stats stats.json

It runs until SIGTERM or SIGINT, then writes the counters of both directions to `--stats` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import ipaddress
import json
import os
import signal
import struct
import sys
from pathlib import Path

from kiosk.netlab.model import DirectionStats, Impairment, LinkModel
from kiosk.netlab.profiles import Profile, profile

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PROTO_UDP = 17
_MAX_PACKET = 65535


def open_tun(name: str) -> int:
    """A file descriptor of the TUN device `name` (made by `ip tuntap add` or made here)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def parse_ipv4(packet: bytes) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, int] | None:
    """(source, destination, protocol) of an IPv4 packet, or None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20]), packet[9]


class Impairer:
    """Applies `up` to packets from `kiosk_net` and `down` to packets to it."""

    def __init__(
        self,
        fd: int,
        kiosk_net: ipaddress.IPv4Network,
        up: Impairment,
        down: Impairment,
        seed: int = 0,
    ) -> None:
        self.fd = fd
        self.kiosk_net = kiosk_net
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        # Each direction its own generator, so one direction's traffic does not change the other's fate.
        self.up = LinkModel(up, seed=seed * 2 + 1, started_at=now)
        self.down = LinkModel(down, seed=seed * 2 + 2, started_at=now)
        self.passed = DirectionStats()
        self.write_errors = 0

    def start(self) -> None:
        self._loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        self._loop.remove_reader(self.fd)

    def _readable(self) -> None:
        for _ in range(64):  # a burst at a time, then let the loop deliver what is due
            try:
                packet = os.read(self.fd, _MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                return
            self.handle(packet)

    def handle(self, packet: bytes) -> None:
        header = parse_ipv4(packet)
        if header is None:
            self._write(packet)
            return
        source, destination, protocol = header
        if source in self.kiosk_net:
            model = self.up
        elif destination in self.kiosk_net:
            model = self.down
        else:
            self.passed.packets += 1
            self._write(packet)
            return
        now = self._loop.time()
        for at in model.fate(now, len(packet), protocol == _PROTO_UDP):
            # Always through the timer heap (a time already past runs at once, in its turn), so a
            # packet due now never overtakes an earlier one still waiting.
            self._loop.call_at(at, self._write, packet)

    def _write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except OSError:
            self.write_errors += 1

    def stats(self) -> dict[str, object]:
        return {
            "up": self.up.stats.to_json(),
            "down": self.down.stats.to_json(),
            "passed": self.passed.packets,
            "write_errors": self.write_errors,
        }


async def _run(args: argparse.Namespace, chosen: Profile) -> None:
    fd = open_tun(args.tun)
    impairer = Impairer(fd, ipaddress.IPv4Network(args.kiosk_net), chosen.up, chosen.down, seed=args.seed)
    impairer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready:
        _write_stats(Path(args.ready), {"ready": True})  # the lab waits for this before it routes through us
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            if args.stats:
                _write_stats(Path(args.stats), impairer.stats())
    finally:
        impairer.stop()
        os.close(fd)
        if args.stats:
            _write_stats(Path(args.stats), impairer.stats())


def _write_stats(path: Path, stats: dict[str, object]) -> None:
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(json.dumps(stats))
    os.replace(fresh, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiosk.netlab.forwarder", description=__doc__)
    parser.add_argument("--tun", required=True, help="the TUN device to read and write")
    parser.add_argument("--profile", help="a network profile by name (kiosk.netlab.profiles)")
    parser.add_argument("--profile-file", help="... or one written as JSON (Profile.to_json)")
    parser.add_argument("--kiosk-net", required=True, help="the kiosk side's network, e.g. 10.77.1.0/24")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", help="write the counters here (JSON), every second and at the end")
    parser.add_argument("--ready", help="touch this file once the device is open")
    args = parser.parse_args(argv)
    try:
        if args.profile_file:
            chosen = Profile.from_json(Path(args.profile_file).read_text())
        elif args.profile:
            chosen = profile(args.profile)
        else:
            raise ValueError("give --profile or --profile-file")
        asyncio.run(_run(args, chosen))
    except (ValueError, OSError) as exc:
        print(f"netlab forwarder: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
