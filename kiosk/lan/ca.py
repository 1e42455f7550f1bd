"""The building host's own certificate authority, made at its first start, and the server
certificate it signs for the host's names and addresses. Kept in `<data_dir>/lan/` (mode 0600, the
directory 0700):

    ca.pem, ca-key.pem            the CA: its SHA-256 fingerprint is what kiosks pin when they pair
    server.pem, server-key.pem    the HTTPS certificate, for <hostname>.local, <hostname>, localhost,
                                  127.0.0.1 and the host's LAN addresses

The CA is made once and never replaced silently: every paired kiosk trusts it. The server
certificate is issued again, by the same CA, when the host's addresses or name change (a new DHCP
lease), so paired kiosks keep verifying the host.

Synchronous (key generation and file writes): from the event loop, call it through asyncio.to_thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kiosk.lan import CA_CERT_FILE, LAN_DIR, fingerprint_of_pem

CA_CERT, CA_KEY = CA_CERT_FILE, "ca-key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"

# Validity starts at a fixed past date: a Pi with no real-time clock and no internet (a building with
# no cloud) may boot with its clock months behind the host that made the certificate.
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_EARLIEST_NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_CA_YEARS = 30
_SERVER_YEARS = 10
_RENEW_BEFORE = datetime.timedelta(days=365)


class HostCAError(Exception):
    """The host's CA files cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class HostCertificates:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_pem: str
    fingerprint: str  # SHA-256 of the CA certificate, lowercase hex
    issued: bool  # the server certificate was (re)issued by this call


def host_names(hostname: str) -> list[str]:
    """The DNS names the server certificate covers."""
    names = [f"{hostname}.local", hostname, "localhost"] if hostname else ["localhost"]
    return list(dict.fromkeys(name.lower() for name in names))


def ensure_host_certificates(
    data_dir: Path,
    hostname: str,
    addresses: Iterable[str],
    now: datetime.datetime | None = None,
) -> HostCertificates:
    """The CA (made on first use) and a server certificate covering `hostname` and `addresses` (and
    loopback). Raises HostCAError for files that exist but cannot be used."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory = Path(data_dir) / LAN_DIR
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key, ca_cert = _load_or_make_ca(directory, hostname, now)
    names = host_names(hostname)
    ips = sorted({ipaddress.ip_address(a) for a in [*addresses, "127.0.0.1"]}, key=str)
    issued = False
    if not _server_cert_fits(directory, ca_cert, names, ips, now):
        _issue_server_cert(directory, ca_key, ca_cert, names, ips, now)
        issued = True
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    return HostCertificates(
        directory=directory,
        ca_cert=directory / CA_CERT,
        server_cert=directory / SERVER_CERT,
        server_key=directory / SERVER_KEY,
        ca_pem=ca_pem,
        fingerprint=fingerprint_of_pem(ca_pem),
        issued=issued,
    )


def read_ca_pem(data_dir: Path) -> str | None:
    """The host's CA certificate (PEM), or None when the host has not made one yet."""
    try:
        return (Path(data_dir) / LAN_DIR / CA_CERT).read_text()
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------- the CA


def _load_or_make_ca(
    directory: Path, hostname: str, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() or key_path.exists():
        for path in (cert_path, key_path):
            if not path.exists():
                raise HostCAError(
                    f"{path} is missing but its pair is there: restore it from a backup, or remove "
                    f"both to make a new CA (every paired kiosk must then pair again)"
                )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise HostCAError(f"{directory}: the CA files cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise HostCAError(f"{key_path} is not the key of {cert_path}")
        for path in (cert_path, key_path):
            os.chmod(path, 0o600)
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kiosk building"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Building CA of {hostname or 'the host'}"),
        ]
    )
    start = max(now, _EARLIEST_NOW)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(start + datetime.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    # The key first: a CA certificate without its key next to it would stop the next start.
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


# ----------------------------------------------------------------------------- the server certificate


def _server_cert_fits(
    directory: Path,
    ca_cert: x509.Certificate,
    names: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: datetime.datetime,
) -> bool:
    """The server certificate there is the CA's, its key's, covers every name and address, and is not
    near its end."""
    try:
        cert = x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / SERVER_KEY).read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return False
    covered_names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    covered_ips = set(san.get_values_for_type(x509.IPAddress))
    if not (set(names) <= covered_names and set(ips) <= covered_ips):
        return False
    return cert.not_valid_after_utc - now > _RENEW_BEFORE


def _issue_server_cert(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: datetime.datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ip) for ip in ips]
    start = max(now, _EARLIEST_NOW)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(
            min(start + datetime.timedelta(days=365 * _SERVER_YEARS), ca_cert.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / SERVER_KEY, _key_pem(key))
    _write_private(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


# ----------------------------------------------------------------------------- files


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, non-zero, under 20 bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600 from the start (never readable by others, even briefly),
    whole or not at all."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
