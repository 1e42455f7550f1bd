"""A lab of network namespaces: the kiosk's side, the other side and the servers, joined by a router
whose forwarding goes through the impairer.

    ns a  10.77.1.2 --veth-- +----------------------+
    ns b  10.77.2.2 --veth-- | ns r  router, tun0   | every forwarded packet: veth -> tun0 ->
    ns s  10.77.3.2 --veth-- | (10.77.x.1 each side)| impairer -> tun0 -> the other veth
                             +----------------------+

The router's policy routing sends everything arriving on a veth into `tun0`, where the impairer
(kiosk.netlab.forwarder, in ns r) reads it; what it writes back is routed on by the main table. The
kiosk's network is 10.77.1.0/24: its up direction is what leaves it. Rate caps are the `tbf` qdisc on
the kiosk's veth (its sending), changed at the profile's times.

Every name is prefixed with a lab id, so labs of parallel runs do not meet; addresses may repeat, as
namespaces do not share routes. Needs root, `ip` (iproute2), `tc`, and /dev/net/tun.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiosk.netlab.profiles import Profile

SIDES = ("a", "b", "s")
SUBNET = {"a": 1, "b": 2, "s": 3}
ROUTE_TABLE = 100
TBF_BURST = "16kbit"
TBF_LATENCY = "200ms"


class LabError(Exception):
    """The lab cannot be built here (no root, no ip, no tun): said in one line."""


def address(side: str) -> str:
    """The address of a side's host: 10.77.1.2 for the kiosk's (a)."""
    return f"10.77.{SUBNET[side]}.2"


def gateway(side: str) -> str:
    return f"10.77.{SUBNET[side]}.1"


KIOSK_NET = "10.77.1.0/24"


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
    return result


@dataclass
class Lab:
    """`with Lab(profile, workdir) as lab:` builds it and starts the impairer; leaving removes it."""

    profile: Profile
    workdir: Path
    seed: int = 0
    lab_id: str = ""

    def __post_init__(self) -> None:
        self.lab_id = self.lab_id or secrets.token_hex(3)
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.stats_file = self.workdir / "impairer.json"
        self._timers: list[threading.Timer] = []
        self._started_at = 0.0
        self._built = False

    def ns(self, side: str) -> str:
        return f"nl{self.lab_id}{side}"

    @property
    def router(self) -> str:
        return f"nl{self.lab_id}r"

    # ----------------------------------------------------------------- building

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def check_host() -> None:
        if os.geteuid() != 0:
            raise LabError("the network lab needs root (network namespaces, veths, a TUN device)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise LabError(f"the network lab needs `{tool}` (apt-get install iproute2)")
        if not os.path.exists("/dev/net/tun"):
            raise LabError("the network lab needs /dev/net/tun (the tun kernel module)")

    def build(self) -> None:
        self.check_host()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._built = True
        r = self.router
        _run("ip", "netns", "add", r)
        _run("ip", "-n", r, "link", "set", "lo", "up")
        for key in (
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ):
            _run("ip", "netns", "exec", r, "sysctl", "-qw", key)
        for side in SIDES:
            ns = self.ns(side)
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run(
                "ip",
                "link",
                "add",
                f"{side}0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"r{side}",
                "netns",
                r,
            )
            _run("ip", "-n", ns, "addr", "add", f"{address(side)}/24", "dev", f"{side}0")
            _run("ip", "-n", ns, "link", "set", f"{side}0", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", gateway(side))
            _run("ip", "-n", r, "addr", "add", f"{gateway(side)}/24", "dev", f"r{side}")
            _run("ip", "-n", r, "link", "set", f"r{side}", "up")
            _run("ip", "netns", "exec", r, "sysctl", "-qw", f"net.ipv4.conf.r{side}.rp_filter=0")
            # Everything that arrives from a side goes to the impairer first.
            _run("ip", "-n", r, "rule", "add", "iif", f"r{side}", "table", str(ROUTE_TABLE))
        _run("ip", "-n", r, "tuntap", "add", "dev", "tun0", "mode", "tun")
        _run("ip", "-n", r, "link", "set", "tun0", "up")
        for key in ("rp_filter=0", "forwarding=1", "accept_local=1"):
            _run("ip", "netns", "exec", r, "sysctl", "-qw", f"net.ipv4.conf.tun0.{key}")
        _run("ip", "-n", r, "route", "add", "default", "dev", "tun0", "table", str(ROUTE_TABLE))
        self._start_forwarder()
        self._shape_uplink()

    def _start_forwarder(self) -> None:
        ready = self.workdir / "impairer.ready"
        ready.unlink(missing_ok=True)
        profile_file = self.workdir / "profile.json"
        profile_file.write_text(self.profile.to_json())
        log = open(self.workdir / "impairer.log", "wb")  # noqa: SIM115  (the child keeps it)
        self.forwarder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.router,
                sys.executable,
                "-m",
                "kiosk.netlab.forwarder",
                "--tun",
                "tun0",
                "--profile-file",
                str(profile_file),
                "--kiosk-net",
                KIOSK_NET,
                "--seed",
                str(self.seed),
                "--stats",
                str(self.stats_file),
                "--ready",
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        log.close()
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self.forwarder.poll() is not None or time.monotonic() > deadline:
                text = (self.workdir / "impairer.log").read_text(errors="replace")[-2000:]
                raise LabError(f"the impairer did not start: {text.strip()}")
            time.sleep(0.02)
        self._started_at = time.monotonic()

    def _shape_uplink(self) -> None:
        """The profile's rate steps as tbf on the kiosk's veth (its sending), at their times."""
        steps = self.profile.up.rate
        if not steps:
            return
        for step in steps:
            action = "add" if step is steps[0] else "change"
            timer = threading.Timer(step.at, self._set_rate, (action, step.bits_per_second))
            timer.daemon = True
            self._timers.append(timer)
            if step.at <= 0:
                self._set_rate(action, step.bits_per_second)
            else:
                timer.start()

    def _set_rate(self, action: str, bits_per_second: int) -> None:
        command = ["ip", "netns", "exec", self.ns("a"), "tc", "qdisc", action, "dev", "a0", "root"]
        if bits_per_second > 0:
            command += [
                "tbf",
                "rate",
                f"{bits_per_second // 1000}kbit",
                "burst",
                TBF_BURST,
                "latency",
                TBF_LATENCY,
            ]
            _run(*command, check=action == "add")
        elif action == "change":
            _run("ip", "netns", "exec", self.ns("a"), "tc", "qdisc", "del", "dev", "a0", "root", check=False)

    # ----------------------------------------------------------------- using

    def command(self, side: str, argv: Sequence[str]) -> list[str]:
        """`argv` run in a side's namespace."""
        return ["ip", "netns", "exec", self.ns(side), *argv]

    def seconds(self) -> float:
        """Seconds since the impairer started (the profile's clock: blackouts, rate steps)."""
        return time.monotonic() - self._started_at

    def stats(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}

    # ----------------------------------------------------------------- the end

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.forwarder is not None and self.forwarder.poll() is None:
            self.forwarder.terminate()
            try:
                self.forwarder.wait(5)
            except subprocess.TimeoutExpired:
                self.forwarder.kill()
        if not self._built:
            return
        for ns in [self.router, *(self.ns(side) for side in SIDES)]:
            _run("ip", "netns", "pids", ns, check=False)
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            _run("ip", "netns", "del", ns, check=False)
        self._built = False
