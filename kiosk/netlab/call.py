"""A call through the network lab: a call server (and, where asked, coturn) in the lab's server
namespace, and two `kiosk endpoint` processes, the kiosk on the impaired side calling the other. The
network-profile tests and the network bench both run it.

    report = run_lab_call(tmp_path, profile("wifi"), seconds=12)
    report.kiosk["stats"]["participants"]["desk"]   # what the kiosk received, and its playout
    report.desk["stats"]["participants"]["door"]    # what the other side received

Needs what the lab needs (root, iproute2, /dev/net/tun) and, for TURN, Debian's coturn. The
children run from the directory that holds the kiosk package (a checkout).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.netlab.lab import Lab, address
from kiosk.netlab.profiles import Profile

ROOT = Path(__file__).resolve().parent.parent
KIOSK = [sys.executable, "-m", "kiosk.cli"]
SERVER_PORT = 8080
TURN_SECRET = "lab-turn-secret"
TURN_TCP_PORT = 443
TURN_PLAIN_PORT = 3478  # with TLS on 443, plain TURN (UDP and TCP) listens here


@dataclass
class LabCallReport:
    kiosk: dict[str, Any]
    desk: dict[str, Any]
    impairer: dict[str, Any]
    kiosk_events: list[dict[str, Any]] = field(default_factory=list)
    desk_events: list[dict[str, Any]] = field(default_factory=list)
    coturn_log: str = ""

    def received_by_kiosk(self) -> dict[str, Any]:
        return dict(self.kiosk["stats"]["participants"]["desk"])

    def received_by_desk(self) -> dict[str, Any]:
        return dict(self.desk["stats"]["participants"]["door"])


def add_user(data_dir: Path, uid: str) -> str:
    done = subprocess.run(
        [*KIOSK, "users", "add", uid, "--name", uid.title(), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.split()[0]


def wait_for_port(lab: Lab, side: str, host: str, port: int, what: str, timeout: float = 20.0) -> None:
    probe = f"import socket; socket.create_connection(('{host}', {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            subprocess.run(lab.command(side, [sys.executable, "-c", probe]), capture_output=True).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start listening on {host}:{port}")


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for the TURN server's address, its own CA (openssl, as on any Debian)."""
    cert, key = workdir / "turn-cert.pem", workdir / "turn-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=turn.lab",
            "-addext", f"subjectAltName=IP:{address('s')}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def start_coturn(lab: Lab, workdir: Path, tls: bool = False) -> subprocess.Popen[bytes]:
    """coturn in the server's namespace on port 443 (UDP and TCP; with `tls`, TLS on 443 and plain
    TURN on 3478), logging to workdir/coturn.log (a config file: coturn ignores --log-file given on
    its command line)."""
    turnserver = shutil.which("turnserver")
    assert turnserver, "coturn's turnserver is missing: scripts/setup.sh --tests installs it"
    conf = workdir / "turnserver.conf"
    conf.write_text(
        "\n".join(
            [
                "no-cli",
                *(
                    (
                        f"cert={_self_signed(workdir)[0]}",
                        f"pkey={workdir / 'turn-key.pem'}",
                        f"tls-listening-port={TURN_TCP_PORT}",
                    )
                    if tls
                    else ("no-tls",)
                ),
                "no-dtls",
                "fingerprint",
                "lt-cred-mech",
                "use-auth-secret",
                f"static-auth-secret={TURN_SECRET}",
                "realm=kiosk.lab",
                f"listening-ip={address('s')}",
                f"relay-ip={address('s')}",
                f"listening-port={TURN_PLAIN_PORT if tls else TURN_TCP_PORT}",
                "min-port=49160",
                "max-port=49200",
                "no-multicast-peers",
                "allow-loopback-peers",
                f"userdb={workdir / 'turndb'}",
                f"pidfile={workdir / 'turnserver.pid'}",
                f"log-file={workdir / 'coturn.log'}",
                "simple-log",
                "verbose",
                "denied-peer-ip=0.0.0.0-0.255.255.255",
                "",
            ]
        )
    )
    return subprocess.Popen(
        lab.command("s", [turnserver, "-c", str(conf)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_lab_call(
    tmp: Path,
    profile: Profile,
    *,
    seconds: float,
    seed: int = 0,
    turn_tcp: bool = False,
    turn_tls: bool = False,
    kiosk_args: list[str] | None = None,
    desk_args: list[str] | None = None,
    log_level: str = "WARNING",
) -> LabCallReport:
    """The kiosk (ns a, the impaired side) calls the desk (ns b) for `seconds` through the lab.
    `turn_tcp`: coturn offers TURN over UDP and TCP on 443; `turn_tls`: over UDP on 3478 and TLS on
    443 (a self-signed certificate the endpoints are given as their CA)."""
    data = tmp / "server-data"
    door, desk = add_user(data, "door"), add_user(data, "desk")
    server_url = f"http://{address('s')}:{SERVER_PORT}"
    procs: list[subprocess.Popen[bytes]] = []
    with Lab(profile, tmp / "lab", seed=seed) as lab:
        try:
            server_cmd = [
                *KIOSK,
                "server",
                "--host",
                address("s"),
                "--port",
                str(SERVER_PORT),
                "--data-dir",
                str(data),
                "--admin-key",
                "lab-admin-key",
            ]
            env = None
            trust: list[str] = []  # what the endpoints run under: the TURN certificate as a CA
            if turn_tls:
                procs.append(start_coturn(lab, tmp, tls=True))
                wait_for_port(lab, "s", address("s"), TURN_TCP_PORT, "coturn")
                server_cmd += [
                    "--turn-url",
                    f"turn:{address('s')}:{TURN_PLAIN_PORT}?transport=udp",
                    "--turn-url",
                    f"turns:{address('s')}:{TURN_TCP_PORT}?transport=tcp",
                ]
                env = {"KIOSK_TURN_SECRET": TURN_SECRET}
                trust = ["env", f"SSL_CERT_FILE={tmp / 'turn-cert.pem'}"]
            elif turn_tcp:
                procs.append(start_coturn(lab, tmp))
                wait_for_port(lab, "s", address("s"), TURN_TCP_PORT, "coturn")
                # Both transports offered, UDP first, as a real server would: the SDK must find
                # that UDP does not get through and relay over TCP.
                server_cmd += [
                    "--turn-url",
                    f"turn:{address('s')}:{TURN_TCP_PORT}?transport=udp",
                    "--turn-url",
                    f"turn:{address('s')}:{TURN_TCP_PORT}?transport=tcp",
                ]
                env = {"KIOSK_TURN_SECRET": TURN_SECRET}
            server_log = open(tmp / "server.log", "wb")  # noqa: SIM115  (the child keeps it)
            procs.append(
                subprocess.Popen(
                    lab.command("s", ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *server_cmd]),
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
            server_log.close()
            wait_for_port(lab, "a", address("s"), SERVER_PORT, "the call server")
            reports = {"kiosk": tmp / "kiosk.json", "desk": tmp / "desk.json"}
            desk_log = open(tmp / "desk.log", "wb")  # noqa: SIM115
            desk_proc = subprocess.Popen(
                lab.command(
                    "b",
                    [
                        *trust,
                        *KIOSK,
                        "--log-level",
                        log_level,
                        "endpoint",
                        "--server",
                        server_url,
                        "--auth-token",
                        desk,
                        "--answer",
                        "--duration",
                        str(seconds + 10),
                        "--report",
                        str(reports["desk"]),
                        *(desk_args or []),
                    ],
                ),
                stdout=desk_log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            desk_log.close()
            procs.append(desk_proc)
            time.sleep(1.0)  # the desk logged in and waits
            kiosk_log = tmp / "kiosk.log"
            with open(kiosk_log, "wb") as out:
                kiosk = subprocess.run(
                    lab.command(
                        "a",
                        [
                            *trust,
                            *KIOSK,
                            "--log-level",
                            log_level,
                            "endpoint",
                            "--server",
                            server_url,
                            "--auth-token",
                            door,
                            "--call",
                            "desk",
                            "--duration",
                            str(seconds),
                            "--report",
                            str(reports["kiosk"]),
                            *(kiosk_args or []),
                        ],
                    ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=seconds + 60,
                )
            desk_proc.wait(timeout=30)
            impairer = lab.stats()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    kiosk_report = _read(reports["kiosk"], tmp / "kiosk.log", kiosk.returncode)
    events = _json_lines(kiosk_log)
    coturn_log = (tmp / "coturn.log").read_text(errors="replace") if (tmp / "coturn.log").exists() else ""
    return LabCallReport(
        kiosk_report,
        _read(reports["desk"], tmp / "desk.log", desk_proc.returncode),
        impairer,
        events,
        _json_lines(tmp / "desk.log"),
        coturn_log,
    )


def _json_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines an endpoint printed (its events, states and stats), among its log lines."""
    found: list[dict[str, Any]] = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass  # a log line that happens to start with a brace
    return found


def _read(path: Path, log: Path, code: int | None) -> dict[str, Any]:
    assert path.exists(), f"no report ({code}); its log:\n{log.read_text(errors='replace')[-3000:]}"
    return dict(json.loads(path.read_text()))
