"""The TLS context the SDK connects to the call server with (HTTPS and WSS)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Verify the server's certificate against the system's CAs, or only against `ca_file` (PEM)
    when one is given (a private CA for a fleet of kiosks)."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))
