"""TLS: the server serves HTTPS and WSS with a certificate and key; the SDK verifies the server's
certificate, against a private CA when one is configured. Certificates are made here, with `cryptography`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import ADMIN_KEY, Endpoint, audio_frames, new_session_id, video_frames, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kiosk.calls import Calls, CallsError, ConnectionFailedError
from kiosk.calls.tls import CaFileError, client_ssl_context
from kiosk.config import ConfigError, parse_config
from kiosk.media.emulated import EmulatedDevices
from kiosk.server.app import RunningServer, TLSConfigError, server_ssl_context, start_server
from kiosk.server.config import ServerConfig

KIOSK = [sys.executable, "-m", "kiosk.cli"]


# ----------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _make_ca(common_name: str, path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cert_path: Path, key_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)


@dataclass
class Pki:
    ca: Path  # the fleet's CA, which signed cert
    cert: Path  # the server's certificate for 127.0.0.1 and localhost
    key: Path
    other_ca: Path  # a CA that signed nothing of this server
    other_cert: Path  # a certificate for 127.0.0.1 from other_ca
    other_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("Kiosk Test Fleet CA", tmp / "ca.pem")
    _make_server_cert(ca_key, ca_cert, tmp / "server.pem", tmp / "server.key")
    other_key, other_cert = _make_ca("Somebody Else's CA", tmp / "other-ca.pem")
    _make_server_cert(other_key, other_cert, tmp / "other-server.pem", tmp / "other-server.key")
    server_key = serialization.load_pem_private_key((tmp / "server.key").read_bytes(), None)
    (tmp / "encrypted.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return Pki(
        tmp / "ca.pem",
        tmp / "server.pem",
        tmp / "server.key",
        tmp / "other-ca.pem",
        tmp / "other-server.pem",
        tmp / "other-server.key",
    )


# ----------------------------------------------------------------------------- helpers


def _config(data_dir: Path, cert: Path, key: Path, port: int = 0) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1", port=port, data_dir=data_dir, admin_key=ADMIN_KEY, tls_cert=cert, tls_key=key
    )


@pytest.fixture
async def tls_server(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningServer]:
    server = await start_server(_config(tmp_path / "data", pki.cert, pki.key))
    try:
        yield server
    finally:
        await server.close()


async def _make_user(server: RunningServer, ca: Path, uid: str) -> str:
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{server.url}/v1/users",
            json={"uid": uid, "name": uid.title()},
            headers={"X-Admin-Key": ADMIN_KEY},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        return str(body["authToken"])


def _plain_http_get(url: str) -> Exception | None:
    try:
        urllib.request.urlopen(url, timeout=5)
    except Exception as exc:  # noqa: BLE001  (what the failure is, is the point)
        return exc
    return None


# ----------------------------------------------------------------------------- the server


async def test_server_serves_https_and_two_endpoints_with_the_ca_call(
    tls_server: RunningServer, pki: Pki, tmp_path: Path
) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    session = new_session_id()
    made: list[Endpoint] = []
    try:
        for uid in ("door", "desk"):
            token = await _make_user(tls_server, pki.ca, uid)
            made.append(Endpoint(tls_server.url, uid, token, tmp_path, ca_file=pki.ca))
        door, desk = made
        # The REST token request goes to the https:// URL, and the call token comes back over it.
        call_token = await door.calls.generate_token(session)
        assert call_token.session_id == session and call_token.token
        await door.calls.start_session(call_token)
        await desk.join(session)  # signaling over wss://
        assert door.calls.signaling.url.startswith("wss://127.0.0.1:")
        for me, other in ((door, "desk"), (desk, "door")):
            await wait_until(lambda me=me, other=other: video_frames(me, other), 20, f"{me.uid}: video")
            await wait_until(lambda me=me, other=other: audio_frames(me, other), 20, f"{me.uid}: audio")
    finally:
        for endpoint in made:
            await endpoint.calls.close()


@pytest.mark.parametrize("which", ["system CAs", "another CA"])
async def test_a_certificate_that_does_not_verify_is_refused_clearly(
    tls_server: RunningServer, pki: Pki, which: str
) -> None:
    ca_file = None if which == "system CAs" else pki.other_ca
    token = await _make_user(tls_server, pki.ca, "door")
    calls = Calls(tls_server.url, auth_token=token, devices=EmulatedDevices(), ca_file=ca_file)
    try:
        with pytest.raises(ConnectionFailedError) as refused:
            await calls.login()
        assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message, refused.value.message
        assert tls_server.url in refused.value.message or "wss://127.0.0.1" in refused.value.message
        with pytest.raises(ConnectionFailedError, match="CERTIFICATE_VERIFY_FAILED"):
            await calls.generate_token("hall")  # REST too
        # Refused, not broken: the next attempt fails the same way, not with a leftover state.
        with pytest.raises(ConnectionFailedError, match="CERTIFICATE_VERIFY_FAILED"):
            await calls.login()
    finally:
        await calls.close()


async def test_plain_http_to_the_tls_port_fails_cleanly(tls_server: RunningServer, pki: Pki) -> None:
    plain = tls_server.url.replace("https://", "http://")
    started = time.monotonic()
    failure = await asyncio.to_thread(_plain_http_get, f"{plain}/v1/me")
    assert failure is not None and not isinstance(failure, urllib.error.HTTPError), failure
    assert time.monotonic() - started < 5
    # The SDK given http:// for a TLS port: a CallsError, not a hang or a traceback.
    calls = Calls(plain, auth_token="whatever", devices=EmulatedDevices(), reconnect=False)
    try:
        with pytest.raises(ConnectionFailedError, match="cannot"):
            await asyncio.wait_for(calls.login(), 15)
    finally:
        await calls.close()
    # The server still serves HTTPS afterwards.
    token = await _make_user(tls_server, pki.ca, "after")
    assert token


async def test_kiosk_keeps_retrying_through_a_wrong_certificate(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A logged-in kiosk whose server comes back with a certificate it does not trust keeps trying, as
    for a server it cannot reach, and reconnects once the right certificate is back."""
    caplog.set_level(logging.INFO, logger="kiosk.calls.client")
    data = tmp_path / "data"
    server = await start_server(_config(data, pki.cert, pki.key))
    port = server.port
    token = await _make_user(server, pki.ca, "door")
    calls = Calls(server.url, auth_token=token, devices=EmulatedDevices(), ca_file=pki.ca)
    errors: list[Any] = []

    class Listener:
        def on_error(self, error: Any) -> None:
            errors.append(error)

    calls.add_call_event_listener("test", Listener())
    try:
        await calls.login()
        await server.close()
        server = await start_server(_config(data, pki.other_cert, pki.other_key, port=port))
        await wait_until(lambda: errors, 10, "CONNECTION_LOST")
        await wait_until(
            lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records),
            20,
            "a refused reconnect",
        )
        assert not calls.signaling.connected
        await server.close()
        server = await start_server(_config(data, pki.cert, pki.key, port=port))
        await wait_until(lambda: calls.signaling.connected, 40, "the reconnect")
    finally:
        await calls.close()
        await server.close()


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing.pem", "server.key", "No such file"),
        ("server.pem", "other-server.key", "does not belong"),
        ("garbage.pem", "server.key", "not a PEM certificate"),
        ("server.pem", "garbage.pem", "not a PEM key"),
        ("server.pem", "encrypted.key", "is encrypted"),
    ],
)
def test_bad_certificate_or_key_is_refused_before_serving(
    tmp_path: Path, pki: Pki, cert: str, key: str, message: str
) -> None:
    (pki.ca.parent / "garbage.pem").write_text("not a certificate\n")
    config = _config(tmp_path / "data", pki.ca.parent / cert, pki.ca.parent / key)
    with pytest.raises(TLSConfigError, match=message):
        server_ssl_context(config)
    done = subprocess.run(
        [
            *KIOSK,
            "server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-cert",
            str(config.tls_cert),
            "--tls-key",
            str(config.tls_key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,  # an encrypted key must not make it prompt
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cert_without_key_is_a_usage_error(tmp_path: Path, pki: Pki) -> None:
    done = subprocess.run(
        [*KIOSK, "server", "--data-dir", str(tmp_path), "--tls-cert", str(pki.cert)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "both a certificate and its key" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_ca_file_problems_are_calls_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(CaFileError, match="No such file") as missing:
        client_ssl_context(tmp_path / "nope.pem")
    assert isinstance(missing.value, CallsError) and missing.value.code == "BAD_CA_FILE"
    with pytest.raises(CaFileError, match="no usable PEM certificate"):
        client_ssl_context(tmp_path / "empty.pem")


def test_device_config_ca_file(tmp_path: Path, pki: Pki) -> None:
    config = parse_config(f"[server]\nurl = 'https://127.0.0.1:8443'\nca_file = '{pki.ca}'\n")
    assert config.server.ca_file == str(pki.ca)
    assert parse_config("[server]\n").server.ca_file == ""
    with pytest.raises(ConfigError, match="server.ca_file"):
        parse_config(f"[server]\nca_file = '{tmp_path / 'missing.pem'}'\n")


# ----------------------------------------------------------------------------- the commands


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 20.0) -> re.Match[str]:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"{pattern!r} not printed: {''.join(seen)}")


def test_commands_serve_https_and_endpoints_verify_with_ca_file(tmp_path: Path, pki: Pki) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "KIOSK_ADMIN_KEY": ADMIN_KEY}
    server = subprocess.Popen(
        [*KIOSK, "server", "--port", "0", "--data-dir", str(data), "--tls-cert", str(pki.cert)]
        + ["--tls-key", str(pki.key)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs: list[subprocess.Popen[str]] = [server]
    try:
        url = _wait_for_line(server, r"listening on (https://127\.0\.0\.1:\d+)").group(1)

        def endpoint(uid: str, *extra: str) -> subprocess.Popen[str]:
            added = subprocess.run(
                [*KIOSK, "users", "add", uid, "--name", uid.title(), "--data-dir", str(data)],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            proc = subprocess.Popen(
                [*KIOSK, "endpoint", "--server", url, "--auth-token", added.stdout.strip(), "--loopback"]
                + ["--report", str(tmp_path / f"{uid}.json"), *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            return proc

        trusting = {
            uid: endpoint(uid, "--session", "hall", "--duration", "4", "--ca-file", str(pki.ca))
            for uid in ("door", "desk")
        }
        refused = endpoint("stranger", "--session", "hall", "--duration", "4", "--ca-file", str(pki.other_ca))
        for uid, proc in trusting.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{uid}: {out}\n{err}"
            report = json.loads((tmp_path / f"{uid}.json").read_text())
            assert report["ok"] is True
            (other,) = report["stats"]["participants"].values()
            assert other["video_frames_decoded"] > 10 and other["audio_frames_decoded"] > 10
        out, err = refused.communicate(timeout=60)
        assert refused.returncode == 2, f"{out}\n{err}"
        assert "Traceback" not in err
        (error,) = [line for line in map(json.loads, out.splitlines()) if line.get("status") == "error"]
        assert error["data"]["code"] == "CONNECTION_FAILED"
        assert "CERTIFICATE_VERIFY_FAILED" in error["data"]["message"]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
