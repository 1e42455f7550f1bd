"""A building with no server to install (docs/intercom.md): one kiosk is the host, with its own CA,
advertised over mDNS; the others find it, pair with the code it shows, and call each other through it.

The first tests run in this process: the CA and its files, the pairing codes, the pairing routes over
real TLS on loopback (with no advertisement: this machine's own network is never multicast to), the
config edit, the browser's pairing link. The building tests build network namespaces on one bridge (a
switch of their own, in its own namespace), run each kiosk as a separate process in its namespace
(`kiosk endpoint --config`, `kiosk pair`, `kiosk pair-code`), with real mDNS between them; they need
root and iproute2, and fail, not skip, without them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kiosk.config import ConfigError, check_runnable, parse_config
from kiosk.lan import fingerprint_of_pem, host_ca_path
from kiosk.lan.ca import HostCAError, ensure_host_certificates
from kiosk.lan.codes import PairingCodes, Verdict
from kiosk.lan.pairing import (
    ConfigEditError,
    PairingError,
    edit_member_config,
    member_lines,
    pair,
)
from kiosk.server.app import RunningServer, start_server
from kiosk.server.config import ServerConfig
from kiosk.server.pairing import PAIRING

ROOT = Path(__file__).resolve().parent.parent
KIOSK = [sys.executable, "-m", "kiosk.cli"]


# ----------------------------------------------------------------------------- the CA


async def _handshake(certs: Any, server_hostname: str) -> str:
    """A real TLS handshake on loopback: the host's server certificate, verified by a client that
    trusts only the host's CA; returns what the server said."""
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(certs.server_cert, certs.server_key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cafile=str(certs.ca_cert))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=server_hostname
        )
        line = await reader.readline()
        writer.close()
        return line.decode().strip()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_host_ca_signs_a_server_certificate_that_verifies(tmp_path: Path) -> None:
    certs = await asyncio.to_thread(ensure_host_certificates, tmp_path, "lobby", ["192.168.7.20"])
    # Verified with the ssl module against the CA alone, for each name and address a kiosk may use.
    for name in ("lobby.local", "127.0.0.1", "localhost"):
        assert await _handshake(certs, name) == "hello"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _handshake(certs, "another-host.local")
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.168.7.20" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    # The fingerprint people compare is the CA certificate's SHA-256.
    assert certs.fingerprint == ca.fingerprint(hashes.SHA256()).hex() == fingerprint_of_pem(certs.ca_pem)
    # A clock months behind (a Pi with no RTC and no internet) still finds it valid.
    assert ca.not_valid_before_utc.year <= 2020 and server.not_valid_before_utc.year <= 2020


def test_the_ca_files_are_private_and_a_restart_reuses_them(tmp_path: Path) -> None:
    first = ensure_host_certificates(tmp_path, "lobby", ["192.168.7.20"])
    directory = tmp_path / "lan"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    files = {p.name: p.read_bytes() for p in directory.iterdir()}

    again = ensure_host_certificates(tmp_path, "lobby", ["192.168.7.20"])
    assert not again.issued and again.fingerprint == first.fingerprint
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files

    # A new DHCP lease: a new server certificate for it, from the same CA (paired kiosks keep trusting it).
    moved = ensure_host_certificates(tmp_path, "lobby", ["192.168.7.31"])
    assert moved.issued and moved.fingerprint == first.fingerprint
    assert (directory / "ca-key.pem").read_bytes() == files["ca-key.pem"]
    san = x509.load_pem_x509_certificate((directory / "server.pem").read_bytes()).extensions
    ips = san.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert "192.168.7.31" in [str(ip) for ip in ips]


def test_a_lost_ca_key_stops_the_host_instead_of_a_new_ca(tmp_path: Path) -> None:
    ensure_host_certificates(tmp_path, "lobby", [])
    (tmp_path / "lan" / "ca-key.pem").unlink()
    with pytest.raises(HostCAError, match="ca-key.pem is missing"):
        ensure_host_certificates(tmp_path, "lobby", [])


# ----------------------------------------------------------------------------- pairing codes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_code_pairs_once_and_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    codes = PairingCodes(tmp_path, ttl=300, clock=clock)
    code = codes.new_code()
    assert re.fullmatch(r"\d{6}", code.code)
    assert stat.S_IMODE(codes.path.stat().st_mode) == 0o600
    # What another process (`kiosk pair-code`, the host's screen) reads is the same code.
    assert PairingCodes(tmp_path, clock=clock).current_or_new() == code
    assert codes.check(code.code).verdict is Verdict.ACCEPTED
    assert codes.use(code.code)
    assert codes.check(code.code).verdict is Verdict.NO_CODE  # single use

    late = codes.new_code()
    clock.now += 301
    assert codes.check(late.code).verdict is Verdict.NO_CODE
    assert codes.current() is None


def test_five_wrong_tries_void_the_code(tmp_path: Path) -> None:
    codes = PairingCodes(tmp_path)
    code = codes.new_code()
    wrong = f"{(int(code.code) + 1) % 1_000_000:06d}"
    left = [codes.check(wrong).attempts_left for _ in range(5)]
    assert left == [4, 3, 2, 1, 0]
    assert codes.check(code.code).verdict is Verdict.NO_CODE  # the right one is too late now
    assert codes.new_code().code  # a new one is needed, and works
    assert codes.check(codes.current().code).verdict is Verdict.ACCEPTED  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- the pairing routes


@asynccontextmanager
async def host_server(data_dir: Path) -> AsyncIterator[tuple[RunningServer, Any]]:
    """A host's server on loopback, with its CA and no advertisement."""
    certs = await asyncio.to_thread(ensure_host_certificates, data_dir, "lobby", [])
    server = await start_server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            admin_key="test-admin-key-0123456789",
            tls_cert=certs.server_cert,
            tls_key=certs.server_key,
            lan_ca=certs.ca_cert,
            lan_name="Lobby",
            lan_advertise=False,
        )
    )
    try:
        yield server, certs
    finally:
        await server.close()


async def _post_pair(
    http: aiohttp.ClientSession, server: RunningServer, ca: ssl.SSLContext, **body: Any
) -> Any:
    async with http.post(f"{server.url}/v1/pair", json=body, ssl=ca) as response:
        return response.status, await response.json()


async def test_pairing_routes_give_a_user_for_the_right_code_only(tmp_path: Path) -> None:
    async with host_server(tmp_path) as (server, certs), aiohttp.ClientSession() as http:
        ca = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with http.get(f"{server.url}/v1/pair/ca", ssl=ca) as response:
            assert response.status == 200
            body = await response.json()
        assert body["caPem"] == certs.ca_pem and body["fingerprint"] == certs.fingerprint

        codes = server.app[PAIRING].codes
        code = (await asyncio.to_thread(codes.new_code)).code
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        status, refused = await _post_pair(http, server, ca, code=wrong, name="Flat 12")
        assert status == 403 and refused["error"]["code"] == "FORBIDDEN"
        assert "wrong pairing code; 4 more tries" in refused["error"]["message"]

        # The client as `kiosk pair` runs it: checks the CA against the fingerprint, pairs over verified TLS.
        paired = await pair([server.url], certs.fingerprint, code, "Flat 12")
        assert paired.uid == "flat-12" and paired.ca_pem == certs.ca_pem
        async with http.get(
            f"{server.url}/v1/me", ssl=ca, headers={"Authorization": f"Bearer {paired.auth_token}"}
        ) as response:
            assert (await response.json())["name"] == "Flat 12"

        # Used once; a second "Flat 12" gets its own uid; a uid asked for and taken keeps the code.
        status, again = await _post_pair(http, server, ca, code=code, name="Flat 12")
        assert status == 409 and again["error"]["code"] == "INVALID_STATE"
        code = (await asyncio.to_thread(codes.new_code)).code
        status, taken = await _post_pair(http, server, ca, code=code, name="Flat 12", uid="flat-12")
        assert status == 409 and taken["error"]["code"] == "USER_EXISTS"
        status, second = await _post_pair(http, server, ca, code=code, name="Flat 12")
        assert status == 201 and second["uid"] == "flat-12-2"

        # A malformed code is a 400, not a try.
        status, bad = await _post_pair(http, server, ca, code="12345", name="x")
        assert status == 400 and bad["error"]["code"] == "BAD_REQUEST"

        # What the host's own screen shows: the running server's code, the same until it is used.
        from kiosk.assembly import Kiosk

        kiosk = Kiosk(parse_config('[server]\nrole = "host"\n', check_devices=False))
        kiosk.server = server  # as start() leaves it on a host
        shown = await kiosk.pairing_code()
        assert shown == await kiosk.pairing_code() and await kiosk.host_fingerprint() == certs.fingerprint
        status, body = await _post_pair(http, server, ca, code=shown.code, name="Lift")
        assert status == 201 and (await kiosk.pairing_code()).code != shown.code


async def test_the_client_refuses_a_ca_that_is_not_the_advertised_one(tmp_path: Path) -> None:
    async with host_server(tmp_path) as (server, certs):
        code = (await asyncio.to_thread(server.app[PAIRING].codes.new_code)).code
        impostor = "0" * 64
        with pytest.raises(PairingError, match="not the one the host advertises"):
            await pair([server.url], impostor, code, "Flat 3")
        # Nothing was sent: the code is still good.
        assert (await pair([server.url], certs.fingerprint, code, "Flat 3")).uid == "flat-3"


async def test_wrong_codes_are_also_limited_per_address(tmp_path: Path) -> None:
    async with host_server(tmp_path) as (server, certs), aiohttp.ClientSession() as http:
        ca = ssl.create_default_context(cafile=str(certs.ca_cert))
        codes = server.app[PAIRING].codes
        for _ in range(2):  # two codes of five tries: the address's ten failed authentications
            code = (await asyncio.to_thread(codes.new_code)).code
            wrong = f"{(int(code) + 1) % 1_000_000:06d}"
            for _ in range(5):
                status, _body = await _post_pair(http, server, ca, code=wrong, name="Guess")
                assert status == 403
        code = (await asyncio.to_thread(codes.new_code)).code
        status, body = await _post_pair(http, server, ca, code=code, name="Guess")
        assert status == 429 and body["error"]["code"] == "RATE_LIMITED"


async def test_a_server_that_is_no_host_does_not_pair(tmp_path: Path) -> None:
    server = await start_server(ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path))
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/v1/pair/ca"), ("POST", "/v1/pair")):
                async with http.request(method, f"{server.url}{path}", json={}) as response:
                    assert response.status == 404
                    assert "no building host" in (await response.json())["error"]["message"]
    finally:
        await server.close()


# ----------------------------------------------------------------------------- config


MEMBER_BEFORE = """\
# Flat 12's kiosk: my notes stay.
[server]
url = "http://192.168.1.5:8080"   # the old server
urls = [
  "http://192.168.1.6:8080",
]
auth_token = "an-old-token"
data_dir = "/var/lib/kiosk"

[identity]
uid = "flat-12"
name = "Flat 12"  # shown on the screen
"""


def test_pairing_edits_the_server_table_and_keeps_everything_else() -> None:
    values = {
        "role": "member",
        "url": "https://lobby.local:8443",
        "auth_token_file": "/etc/kiosk/building-token",
        "ca_file": "/etc/kiosk/building-ca.pem",
    }
    edited = edit_member_config(MEMBER_BEFORE, values)
    config = parse_config(edited, check_devices=False)
    assert config.server.role == "member" and config.server.url == "https://lobby.local:8443"
    assert config.server.auth_token == "" and config.server.urls == []
    assert (
        config.server.ca_file == "/etc/kiosk/building-ca.pem" and config.server.data_dir == "/var/lib/kiosk"
    )
    # What the person wrote is still there: comments, other tables, the old token commented out.
    for line in ("# Flat 12's kiosk: my notes stay.", 'name = "Flat 12"  # shown on the screen'):
        assert line in edited
    assert '# auth_token = "an-old-token"' in edited

    # A config with no [server] table gets one; a layout the edit does not follow is left alone.
    assert parse_config(
        edit_member_config('[identity]\nuid = "a"\n', values), check_devices=False
    ).server.role
    with pytest.raises(ConfigEditError):
        edit_member_config('server = { url = "http://x:1" }\n', values)
    assert member_lines(values).startswith('[server]\nrole = "member"\nurl = "https://lobby.local:8443"\n')


def test_roles_in_the_config() -> None:
    host = parse_config('[server]\nrole = "host"\n', check_devices=False)
    check_runnable(host)  # a host makes its own user: no token to give
    with pytest.raises(ConfigError, match="server.role: expected one of"):
        parse_config('[server]\nrole = "server"\n', check_devices=False)
    with pytest.raises(ConfigError, match="server.url: a member reaches its host over https"):
        parse_config('[server]\nrole = "member"\nca_file = "ca.pem"\n', check_devices=False)
    with pytest.raises(ConfigError, match="server.ca_file: a member verifies its host"):
        parse_config('[server]\nrole = "member"\nurl = "https://lobby.local:8443"\n', check_devices=False)
    with pytest.raises(ConfigError, match="server.urls: a host"):
        parse_config('[server]\nrole = "host"\nurls = ["https://x:1"]\n', check_devices=False)
    from kiosk.assembly import plan_kiosk

    plan = plan_kiosk(parse_config('[server]\nrole = "host"\ndata_dir = "/srv/k"\n', check_devices=False))
    # The host logs in to its own server over TLS with its CA, and its calls use its LAN addresses.
    assert plan.embedded and plan.servers == ("https://127.0.0.1:8443",)
    assert plan.ca_file == host_ca_path("/srv/k") and plan.ice_addresses is None


# ----------------------------------------------------------------------------- a browser's pairing link


async def test_a_browser_pairs_by_the_link_from_the_host_screen(tmp_path: Path) -> None:
    from browser_support import chromium

    async with host_server(tmp_path) as (server, _certs), chromium() as browser:
        context = await browser.new_context(ignore_https_errors=True)  # the person accepted the host's CA
        page = await context.new_page()
        page.set_default_timeout(15_000)
        code = (await asyncio.to_thread(server.app[PAIRING].codes.new_code)).code
        await page.goto(f"{server.url}/app/#pair={code}&name=Kitchen%20tablet")
        await page.locator("#me").filter(has_text="Kitchen tablet").wait_for()
        assert "pair=" not in page.url  # the code is gone from the address bar and history
        token = await page.evaluate("localStorage.getItem('kiosk-paired-token')")
        user = await server.storage.user_for_auth_token(hashlib.sha256(token.encode()).hexdigest())
        assert user is not None and user.uid == "kitchen-tablet"
        # The same link again: the code was good once.
        again = await context.new_page()
        await again.goto(f"{server.url}/app/#pair={code}&name=Someone")
        await again.locator("#message").filter(has_text="Not paired").wait_for()
        await context.close()


# ----------------------------------------------------------------------------- the building


SUBNET = "10.79.0"
HOST_NAME = "Reception desk"


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Building:
    """A switch (a bridge in a namespace of its own) and one namespace per kiosk, its eth0 on the switch.
    Every name carries a random tag; nothing is added to this machine's own namespace."""

    def __init__(self, workdir: Path, kiosks: list[str]) -> None:
        self.tag = secrets.token_hex(2)
        self.workdir = workdir
        self.kiosks = kiosks
        self.address = {kiosk: f"{SUBNET}.{n}" for n, kiosk in enumerate(kiosks, 1)}
        self.switch = f"kl{self.tag}sw"
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, kiosk: str) -> str:
        return f"kl{self.tag}{kiosk}"

    def build(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the building tests need root (network namespaces)")
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        # No IGMP snooping: mDNS's multicast reaches every port, as on a small office switch.
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for n, kiosk in enumerate(self.kiosks):
            ns, port = self.ns(kiosk), f"p{n}"
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.address[kiosk]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def command(self, kiosk: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(kiosk), *KIOSK, *args]

    def run(self, kiosk: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(kiosk, *args), input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=90
        )

    def start(self, kiosk: str, name: str, *args: str) -> Process:
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(self.command(kiosk, *args), stdout=stdout, stderr=stderr, cwd=ROOT)
        self.procs.append(proc)
        return Process(proc, out, err)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in [*(self.ns(k) for k in self.kiosks), self.switch]:
            for pid in subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait_for(self, pattern: str, *, stream: str = "out", timeout: float = 30.0, after: int = 0) -> str:
        """Wait until a line matching `pattern` is printed (past the first `after` characters)."""
        path = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text(errors="replace")[after:]
            match = re.search(pattern, text)
            if match:
                return match.group(0)
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{path.name}: exited {self.proc.returncode} before {pattern!r}:\n{text[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{path.name}: no {pattern!r} within {timeout} s:\n{text[-3000:]}")
            time.sleep(0.1)

    def size(self, stream: str = "err") -> int:
        return len((self.out if stream == "out" else self.err).read_text(errors="replace"))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


def kiosk_config(path: Path, uid: str, name: str, server: str | None = "") -> Path:
    """An emulated kiosk's config; `server`: its [server] table's lines (None: no such table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = f'[server]\n{server}data_dir = "{path.parent / "data"}"\n\n' if server is not None else ""
    path.write_text(
        f"# {name}'s kiosk\n{table}"
        f'[identity]\nuid = "{uid}"\nname = "{name}"\n\n'
        '[[cameras]]\nbackend = "emulated"\nwidth = 320\nheight = 240\nfps = 15\n\n'
        '[audio]\nbackend = "emulated"\n\n'
        "[emulation]\nkeyboard = false\n\n"
        f'[recording]\ndirectory = "{path.parent / "recordings"}"\n'
    )
    return path


@dataclass
class Lan:
    building: Building
    host_config: Path
    host_data: Path
    workdir: Path
    host: Process | None = None

    def start_host(self, name: str) -> Process:
        self.host = self.building.start(
            "host", name, "--log-level", "INFO", "endpoint", "--config", str(self.host_config), "--idle"
        )
        self.host.wait_for(r"advertising .*port 8443", stream="err", timeout=40)
        return self.host

    def code(self, *extra: str) -> str:
        done = self.building.run("host", "pair-code", "--config", str(self.host_config), *extra)
        assert done.returncode == 0, done.stderr
        return re.search(r"#pair=(\d{6})", done.stdout).group(1)  # type: ignore[union-attr]

    def fingerprint(self) -> str:
        return fingerprint_of_pem((self.host_data / "lan" / "ca.pem").read_text())


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    workdir = tmp_path_factory.mktemp("building")
    building = Building(workdir, ["host", "m1", "m2", "m3"])
    try:
        building.build()
        host_config = kiosk_config(workdir / "host" / "kiosk.toml", "reception", HOST_NAME, 'role = "host"\n')
        lan = Lan(building, host_config, workdir / "host" / "data", workdir)
        lan.start_host("host")
        yield lan
    finally:
        building.close()


@dataclass
class Paired:
    m1: Path
    m2: Path


@pytest.fixture(scope="module")
def paired(lan: Lan) -> Paired:
    """Flat 1 (m1) pairs with the code on the command line, Flat 2 (m2, no [server] table yet) by
    typing it when asked, as a person would."""
    m1 = kiosk_config(lan.workdir / "m1" / "kiosk.toml", "flat-1", "Flat 1", 'auth_token = "old"\n')
    done = lan.building.run("m1", "pair", "--config", str(m1), "--host", HOST_NAME, "--code", lan.code())
    assert done.returncode == 0, done.stdout + done.stderr
    m2 = kiosk_config(lan.workdir / "m2" / "kiosk.toml", "flat-2", "Flat 2", server=None)
    done = lan.building.run("m2", "pair", "--config", str(m2), "--wait", "2", stdin=f"{lan.code()}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Code shown on the host:" in done.stdout
    return Paired(m1, m2)


def test_a_member_finds_the_host_with_no_address_given(lan: Lan) -> None:
    done = lan.building.run("m3", "pair", "--list", "--wait", "3")
    assert done.returncode == 0, done.stderr
    assert HOST_NAME in done.stdout and f"https://{lan.building.address['host']}:8443" in done.stdout
    shown = " ".join(lan.fingerprint().upper()[i : i + 4] for i in range(0, 64, 4))
    assert shown in done.stdout  # the fingerprint the host shows (kiosk pair-code) is the one found
    assert shown in lan.building.run("host", "pair-code", "--config", str(lan.host_config)).stdout


def test_pairing_writes_the_member_config(lan: Lan, paired: Paired) -> None:
    for path, uid in ((paired.m1, "flat-1"), (paired.m2, "flat-2")):
        config = parse_config(path.read_text(), check_devices=False)
        assert config.server.role == "member"
        assert config.server.url == f"https://{lan.building.address['host']}:8443"
        assert Path(config.server.ca_file).read_text() == (lan.host_data / "lan" / "ca.pem").read_text()
        token_file = Path(config.server.auth_token_file)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o640 and config.auth_token()
        assert config.identity.uid == uid
    assert (paired.m1.parent / "kiosk.toml.before-pair").read_text().count('auth_token = "old"') == 1
    assert '# auth_token = "old"' in paired.m1.read_text()


def test_a_wrong_code_is_refused_and_five_void_it(lan: Lan) -> None:
    config = kiosk_config(lan.workdir / "m3" / "kiosk.toml", "flat-3", "Flat 3", "")
    code = lan.code("--new")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    def attempt(text: str) -> subprocess.CompletedProcess[str]:
        return lan.building.run("m3", "pair", "--config", str(config), "--host", HOST_NAME, "--code", text)

    for left in (4, 3, 2, 1):
        done = attempt(wrong)
        assert done.returncode == 1 and f"wrong pairing code; {left} more tries" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1  # one clear line, no stack trace
    assert "void now" in attempt(wrong).stderr
    done = attempt(code)  # the right code, too late
    assert done.returncode == 1 and "no pairing code is valid now" in done.stderr
    assert parse_config(config.read_text(), check_devices=False).server.role == ""  # untouched


def _report(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _media_both_ways(lan: Lan, answer: str, call: str) -> None:
    for name, other in ((answer, "flat-2"), (call, "flat-1")):
        report = _report(lan.workdir / f"{name}.json")
        assert report["ok"], report
        received = report["stats"]["participants"][other]
        assert received["video_frames_decoded"] > 10 and received["audio_frames_decoded"] > 10, received


def _call(lan: Lan, paired: Paired, answer: str, call: str) -> None:
    """Flat 2 calls Flat 1, who answers; both report media from the other."""
    done = lan.building.run(
        "m2",
        "endpoint",
        "--config",
        str(paired.m2),
        "--call",
        "flat-1",
        "--duration",
        "3",
        "--report",
        str(lan.workdir / f"{call}.json"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _media_both_ways(lan, answer, call)


def _answerer(lan: Lan, paired: Paired, name: str) -> Process:
    flat1 = lan.building.start(
        "m1",
        name,
        "endpoint",
        "--config",
        str(paired.m1),
        "--answer",
        "--ring-wait",
        "90",
        "--report",
        str(lan.workdir / f"{name}.json"),
    )
    flat1.wait_for('"waiting_for_call"')
    return flat1


def test_two_paired_kiosks_call_each_other_through_the_host(lan: Lan, paired: Paired) -> None:
    flat1 = _answerer(lan, paired, "answer1")
    _call(lan, paired, "answer1", "call1")
    assert flat1.proc.wait(30) == 0
    # The media went straight between the two kiosks on the LAN; the host carried the signaling.
    ice = _report(lan.workdir / "answer1.json")["ice"]["flat-2"]
    assert ice["localAddress"].startswith(lan.building.address["m1"] + ":")
    assert ice["remoteAddress"].startswith(lan.building.address["m2"] + ":")


def test_the_host_restarts_with_its_ca_and_a_paired_member_reconnects(lan: Lan, paired: Paired) -> None:
    ca_files = {p.name: p.read_bytes() for p in (lan.host_data / "lan").glob("*.pem")}
    flat1 = _answerer(lan, paired, "answer2")
    assert lan.host is not None
    lan.host.stop()  # SIGTERM: the host goes at once, as in a power cut
    flat1.wait_for('"CONNECTION_LOST"')
    host = lan.start_host("host-restarted")
    # The same CA and certificate (nothing issued anew), advertised with the same fingerprint; Flat 1
    # is back with the token it was given at pairing.
    assert {p.name: p.read_bytes() for p in (lan.host_data / "lan").glob("*.pem")} == ca_files
    assert "certificate issued" not in host.err.read_text()
    host.wait_for(r"connection \w+ is flat-1", stream="err", timeout=60)
    _call(lan, paired, "answer2", "call2")
    assert flat1.proc.wait(30) == 0


def test_building_helpers_clean_up(tmp_path: Path) -> None:
    building = Building(tmp_path, ["a"])
    try:
        building.build()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert building.ns("a") in names and building.switch in names
    finally:
        building.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert building.ns("a") not in names and building.switch not in names
