"""A building with no server to install (docs/intercom.md): one kiosk is the call server for all
(`[server] role = "host"`), with its own certificate authority; it advertises itself over mDNS, and
new kiosks and browsers pair with it by a short code shown on its screen.

- `ca`: the host's CA and server certificate, made at first start (`cryptography`).
- `codes`: the one-time pairing codes, kept in the host's data directory.
- `discovery`: the DNS-SD advertisement and browsing (python-zeroconf, on the asyncio loop).
- `pairing`: the new kiosk's side (`kiosk pair`): fetch and check the CA, pair, write its config.

Neutral like kiosk.urls: the server uses `ca`, `codes` and `discovery`, a kiosk `discovery` and
`pairing`; nothing here imports the SDK or the server.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path

# The DNS-SD service type a building host advertises (docs/protocol.md, "Finding the building's host").
SERVICE_TYPE = "_kiosk-call._tcp.local."
# The advertisement's TXT "v": bumped when what a member reads there changes incompatibly.
LAN_PROTOCOL_VERSION = "1"
DEFAULT_HOST_PORT = 8443
# In the host's data directory: the CA, the server certificate, the pairing code (all 0600).
LAN_DIR = "lan"
CA_CERT_FILE = "ca.pem"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fingerprint_of_pem(pem: str) -> str:
    """SHA-256 of a PEM certificate's DER bytes, lowercase hex: what the advertisement carries and
    what the host and a new kiosk show. Raises ValueError for text that is not a PEM certificate."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def is_fingerprint(text: str) -> bool:
    return bool(_HEX64.match(text))


def show_fingerprint(fingerprint: str) -> str:
    """For people comparing two screens: groups of four, upper case ("AB12 CD34 ..."), 16 groups."""
    text = fingerprint.upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def host_ca_path(data_dir: str | Path) -> Path:
    """Where a host keeps its CA certificate (made at its first start)."""
    return Path(data_dir) / LAN_DIR / CA_CERT_FILE
