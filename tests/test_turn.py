"""TURN: the server hands out coturn shared-secret credentials, and two endpoints with no route to each
other connect through Debian's coturn.

The end-to-end tests build three network namespaces, unique to the run:

    ns a (10.71.1.2) --veth-- ns m (10.71.1.1, 10.71.2.1) --veth-- ns b (10.71.2.2)

ns m holds coturn and the call server and does not forward IP, so a and b each reach m but never each
other: the only media path is coturn's relay. They need root, `ip netns` and `turnserver` (the coturn
package, installed by scripts/setup.sh --tests); without them they fail and say why rather than skipping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CreateUser, ServerFactory, WsConnect

from kiosk.server.config import DEFAULT_TURN_TTL, ServerConfig
from kiosk.server.turn import ice_servers_for, turn_credentials

KIOSK = [sys.executable, "-m", "kiosk.cli"]
REALM = "kiosk.test"
A_ADDR, A_GW = "10.71.1.2", "10.71.1.1"  # ns a and its side of ns m
B_ADDR, B_GW = "10.71.2.2", "10.71.2.1"  # ns b and its side of ns m
# coturn's port inside ns m. The namespace is created by this test and holds nothing else, so no other
# process can have taken it (the call server, which can, is started on port 0).
TURN_PORT = 3478
TURN_URL = f"turn:{A_GW}:{TURN_PORT}?transport=udp"
# Usage coturn logs when an allocation closes: the relayed (peer) packets of one TURN user.
PEER_USAGE = re.compile(r"peer usage: realm=<[^>]*>, username=<(\d+):([^>]+)>, rp=(\d+), rb=\d+, sp=(\d+)")


# ----------------------------------------------------------------------------- credentials


def _expected_credential(secret: str, username: str) -> str:
    # coturn's use-auth-secret: the password of "<expiry>:<user>" is base64(HMAC-SHA1(secret, username)).
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_credentials_follow_coturn_shared_secret_scheme() -> None:
    username, credential = turn_credentials("s3cret", "door", ttl=600, now=1_700_000_000.7)
    assert username == "1700000600:door"
    assert credential == _expected_credential("s3cret", "1700000600:door")
    assert credential == "Y+fNXdS7c1cZFlJkgg7myKcIx38="  # computed once with `openssl dgst -sha1 -hmac`


def test_ice_servers_for_adds_turn_with_fresh_credentials(tmp_path: Path) -> None:
    config = ServerConfig(
        data_dir=tmp_path,
        ice_servers=[{"urls": ["stun:stun.example.org"]}],
        turn_urls=[TURN_URL, "turns:turn.example.org:5349?transport=tcp"],
        turn_secret="s3cret",
        turn_ttl=300,
    )
    before = int(time.time())
    stun, turn = ice_servers_for(config, "desk")
    assert stun == {"urls": ["stun:stun.example.org"]}
    assert turn["urls"] == [TURN_URL, "turns:turn.example.org:5349?transport=tcp"]
    expiry, uid = turn["username"].split(":")
    assert uid == "desk" and before + 300 <= int(expiry) <= int(time.time()) + 300
    assert turn["credential"] == _expected_credential("s3cret", turn["username"])
    # Each call hands out its own list: changing it does not change the configuration.
    stun["urls"].append("stun:changed.example.org")
    assert config.ice_servers == [{"urls": ["stun:stun.example.org"]}]


def test_no_turn_entry_without_turn_config(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path, ice_servers=[{"urls": ["stun:stun.example.org"]}])
    assert ice_servers_for(config, "door") == [{"urls": ["stun:stun.example.org"]}]
    assert ServerConfig(data_dir=tmp_path).turn_ttl == DEFAULT_TURN_TTL


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"turn_urls": [TURN_URL]}, "shared secret"),
        ({"turn_secret": "s3cret"}, "no TURN URL"),
        ({"turn_urls": ["stun:x.org"], "turn_secret": "s3cret"}, "must start with turn:"),
        ({"turn_urls": [TURN_URL], "turn_secret": "s3cret", "turn_ttl": 10}, "at least 60"),
    ],
)
def test_turn_config_is_checked(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(data_dir=tmp_path, **settings)


def test_secret_is_not_in_the_config_repr(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path, turn_urls=[TURN_URL], turn_secret="do-not-print-me")
    assert "do-not-print-me" not in repr(config)


async def test_token_and_joined_replies_carry_turn_credentials(
    start_call_server: ServerFactory, create_user: CreateUser, ws_connect: WsConnect
) -> None:
    server = await start_call_server(turn_urls=[TURN_URL], turn_secret="s3cret", turn_ttl=120)
    user = await create_user("door")
    client = await ws_connect(user)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/v1/calls/token", json={"sessionId": "hall"}, headers=user.headers) as r,
    ):
        assert r.status == 200
        token_reply = await r.json()
    joined = await client.join("hall", token=token_reply["token"])
    assert joined["type"] == "joined"
    for servers in (token_reply["iceServers"], joined["iceServers"]):
        (turn,) = servers
        assert turn["urls"] == [TURN_URL]
        assert turn["username"].endswith(":door")
        assert turn["credential"] == _expected_credential("s3cret", turn["username"])


def _kiosk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KIOSK, *args], capture_output=True, text=True, timeout=60, check=False, env=env or dict(os.environ)
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--turn-url", TURN_URL], "shared secret"),
        (["--turn-url", "http://x.org", "--turn-secret", "s"], "must start with turn:"),
        (["--turn-url", TURN_URL, "--turn-secret", "s", "--turn-ttl", "5"], "at least 60"),
    ],
)
def test_server_cli_refuses_bad_turn_settings(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KIOSK_TURN_SECRET"}
    done = _kiosk("server", "--port", "0", "--data-dir", str(tmp_path / "data"), *args, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the namespace lab


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _require_lab() -> None:
    """These tests must run where CI runs them (root, Debian 12, after scripts/setup.sh --tests): fail, not skip."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (network namespaces and veth pairs need root)")
    if shutil.which("ip") is None:
        problems.append("no `ip` command (iproute2)")
    if shutil.which("turnserver") is None:
        problems.append(
            "no `turnserver`: install coturn (scripts/setup.sh --tests does: apt-get install coturn)"
        )
    if problems:
        pytest.fail("TURN test cannot run: " + "; ".join(problems), pytrace=False)


@dataclass
class Lab:
    tag: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, which: str) -> str:
        return f"kt{self.tag}{which}"

    def exec_in(self, which: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(which), *cmd]

    def start(self, which: str, name: str, *cmd: str, env: dict[str, str] | None = None) -> Path:
        """Start `cmd` in a namespace with stdout and stderr in tmp/<name>.log; returns that file."""
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.exec_in(which, *cmd), stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ)
            )
        self.procs.append(proc)
        return log

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _build_lab(lab: Lab) -> None:
    for which in "abm":
        _ip("netns", "add", lab.ns(which))
        _ip("-n", lab.ns(which), "link", "set", "lo", "up")
    for side, addr, gw in (("a", A_ADDR, A_GW), ("b", B_ADDR, B_GW)):
        inner, outer = f"kt{lab.tag}{side.upper()}", f"kt{lab.tag}{side.upper()}m"
        # Created in ns m and moved, so nothing of the lab is ever in the root namespace.
        _ip("-n", lab.ns("m"), "link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("-n", lab.ns("m"), "link", "set", inner, "netns", lab.ns(side))
        _ip("-n", lab.ns(side), "addr", "add", f"{addr}/24", "dev", inner)
        _ip("-n", lab.ns(side), "link", "set", inner, "up")
        _ip("-n", lab.ns(side), "route", "add", "default", "via", gw)  # reach all of m's addresses
        _ip("-n", lab.ns("m"), "addr", "add", f"{gw}/24", "dev", outer)
        _ip("-n", lab.ns("m"), "link", "set", outer, "up")
    # No forwarding in m: a and b reach m's two addresses but not each other.
    subprocess.run(lab.exec_in("m", "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"), check=True, timeout=10)
    forwarding = subprocess.run(
        lab.exec_in("m", "sysctl", "-n", "net.ipv4.ip_forward"), capture_output=True, text=True, check=True
    )
    assert forwarding.stdout.strip() == "0"


def _delete_lab(lab: Lab) -> None:
    for which in "abm":
        _ip("netns", "del", lab.ns(which), check=False)  # takes its veth ends with it
    left = _ip("netns", "list", check=False).stdout
    assert f"kt{lab.tag}" not in left, f"namespaces left behind: {left}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    _require_lab()
    the_lab = Lab(tag=secrets.token_hex(3), tmp=tmp_path)
    try:
        try:
            _build_lab(the_lab)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"TURN test cannot build its network namespaces: {exc.stderr or exc}", pytrace=False)
        yield the_lab
    finally:
        the_lab.stop_all()
        _delete_lab(the_lab)


def _wait_for_text(log: Path, pattern: str, what: str, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {pattern!r} not seen within {timeout} s in {log}:\n{text[-3000:]}")
        time.sleep(0.1)


def _start_coturn(lab: Lab, secret: str) -> Path:
    conf = lab.tmp / "turnserver.conf"
    log = lab.tmp / "turn.log"
    conf.write_text(
        "\n".join(
            [
                f"listening-ip={A_GW}",
                f"listening-ip={B_GW}",
                f"listening-port={TURN_PORT}",
                f"relay-ip={A_GW}",
                "min-port=49152",
                "max-port=49252",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                f"realm={REALM}",
                "no-tls",
                "no-dtls",
                "no-tcp-relay",
                "no-cli",
                "no-rfc5780",
                "no-multicast-peers",
                "no-software-attribute",
                "fingerprint",
                f"userdb={lab.tmp / 'turndb'}",
                f"pidfile={lab.tmp / 'turnserver.pid'}",
                f"log-file={log}",
                "simple-log",
                "verbose",
                "",
            ]
        )
    )
    lab.start("m", "turnserver.stdout", "turnserver", "-c", str(conf))
    for address in (A_GW, B_GW):
        _wait_for_text(log, rf"UDP listener opened on: {re.escape(address)}:{TURN_PORT}", "coturn")
    return log


def _start_call_server(lab: Lab, secret: str) -> tuple[int, Path]:
    env = {**os.environ, "KIOSK_TURN_SECRET": secret, "KIOSK_ADMIN_KEY": "turn-test-admin-key"}
    data = lab.tmp / "data"
    log = lab.start(
        "m",
        "server",
        *KIOSK,
        "server",
        "--host",
        "0.0.0.0",  # inside ns m only: its two veth addresses
        "--port",
        "0",
        "--data-dir",
        str(data),
        "--turn-url",
        TURN_URL,
        "--turn-ttl",
        "600",
        env=env,
    )
    port = int(_wait_for_text(log, r"listening on http://0\.0\.0\.0:(\d+)", "call server").group(1))
    return port, data


def _add_user(data: Path, uid: str) -> str:
    done = _kiosk("users", "add", uid, "--name", uid.title(), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _run_endpoints(lab: Lab, port: int, data: Path, duration: float) -> dict[str, tuple[int, str, Path]]:
    """door in ns a and desk in ns b join one session; returns uid -> (exit code, output, report)."""
    session = f"turn-{lab.tag}"
    started: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
    for uid, which, server_addr in (("door", "a", A_GW), ("desk", "b", B_GW)):
        report = lab.tmp / f"{uid}.json"
        log = lab.start(
            which,
            uid,
            *KIOSK,
            "endpoint",
            "--server",
            f"http://{server_addr}:{port}",
            "--auth-token",
            _add_user(data, uid),
            "--session",
            session,
            "--report",
            str(report),
            "--duration",
            str(duration),
        )
        started[uid] = (lab.procs[-1], log, report)
    results = {}
    for uid, (proc, log, report) in started.items():
        try:
            code = proc.wait(duration + 45)
        except subprocess.TimeoutExpired:
            code = -1
        results[uid] = (code, log.read_text(errors="replace"), report)
    return results


def _assert_unreachable(lab: Lab) -> None:
    """A TCP listener in ns b answers from ns m but not from ns a: there is no a-to-b path."""
    listener = lab.start(
        "b",
        "listener",
        sys.executable,
        "-c",
        "import socket, time; s = socket.create_server(('0.0.0.0', 9999)); print('up', flush=True); "
        "time.sleep(120)",
    )
    _wait_for_text(listener, "up", "listener in ns b")
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 9999), timeout=2); print('reached')"
    from_m = subprocess.run(
        lab.exec_in("m", sys.executable, "-c", probe, B_ADDR), capture_output=True, text=True, timeout=20
    )
    assert "reached" in from_m.stdout, from_m.stderr
    from_a = subprocess.run(
        lab.exec_in("a", sys.executable, "-c", probe, B_ADDR), capture_output=True, text=True, timeout=20
    )
    assert "reached" not in from_a.stdout and from_a.returncode != 0, "ns a can reach ns b directly"
    lab.procs[-1].terminate()


def _peer_usage(log: Path) -> dict[str, tuple[int, int]]:
    """uid -> (packets relayed from peers, packets relayed to peers), summed over its allocations."""
    usage: dict[str, tuple[int, int]] = {}
    for _, uid, received, sent in PEER_USAGE.findall(log.read_text(errors="replace")):
        before = usage.get(uid, (0, 0))
        usage[uid] = (before[0] + int(received), before[1] + int(sent))
    return usage


def test_endpoints_without_a_route_connect_through_coturn(lab: Lab) -> None:
    secret = secrets.token_urlsafe(24)
    turn_log = _start_coturn(lab, secret)
    port, data = _start_call_server(lab, secret)
    _assert_unreachable(lab)

    results = _run_endpoints(lab, port, data, duration=6)

    for uid, other in (("door", "desk"), ("desk", "door")):
        code, output, report_file = results[uid]
        assert code == 0, f"{uid} exited {code}:\n{output[-4000:]}"
        assert "Traceback" not in output
        report = json.loads(report_file.read_text())
        assert report["ok"] is True, report
        received = report["stats"]["participants"][other]
        assert received["video_frames_decoded"] > 10, received
        assert received["audio_frames_decoded"] > 10, received
        # ICE selected a pair with coturn's relay (on its relay-ip) on one end.
        pair = report["ice"][other]
        assert "relay" in (pair["local"], pair["remote"]), pair
        relay_end = pair["localAddress"] if pair["local"] == "relay" else pair["remoteAddress"]
        assert relay_end.startswith(f"{A_GW}:"), pair

    # coturn relayed the media, for users authenticated with the server's short-lived credentials.
    _wait_for_text(turn_log, r"peer usage: .*:desk>", "coturn's usage for desk", timeout=15)
    _wait_for_text(turn_log, r"peer usage: .*:door>", "coturn's usage for door", timeout=15)
    usage = _peer_usage(turn_log)
    # Both directions crossed coturn: through one allocation (one side's local candidate is its relay:
    # packets both from and to its peer), or through both (each side sent from its host address to
    # the other's relay address, which coturn counts as received from the peer on each allocation).
    one_carries_both = any(received > 100 and sent > 100 for received, sent in usage.values())
    each_receives = len(usage) == 2 and all(received > 100 for received, _ in usage.values())
    assert one_carries_both or each_receives, usage
    expiries = [int(e) for e, *_ in PEER_USAGE.findall(turn_log.read_text())]
    assert all(time.time() < e <= time.time() + 600 for e in expiries), expiries
    # The shared secret is never logged by the call server.
    assert secret not in (lab.tmp / "server.log").read_text()


def test_wrong_shared_secret_is_refused_by_coturn(lab: Lab) -> None:
    """The server and coturn disagree on the secret: coturn refuses the allocations (401), so with no
    route between them the endpoints cannot connect, and each says so instead of hanging."""
    _start_coturn(lab, "the-real-secret")
    port, data = _start_call_server(lab, "a-different-secret")

    results = _run_endpoints(lab, port, data, duration=8)

    turn_log = (lab.tmp / "turn.log").read_text(errors="replace")
    assert re.search(r"user <\d+:(door|desk)>.*error 401", turn_log), turn_log[-3000:]
    for uid in ("door", "desk"):
        code, output, report_file = results[uid]
        assert code == 1, f"{uid} exited {code}:\n{output[-4000:]}"
        assert "Traceback" not in output
        report = json.loads(report_file.read_text())
        assert report["ok"] is False
        for received in report.get("stats", {}).get("participants", {}).values():
            assert received["video_frames_decoded"] == 0 and received["audio_frames_decoded"] == 0
