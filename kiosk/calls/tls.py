"""The TLS context the SDK connects to the call server with (HTTPS and WSS)."""

from __future__ import annotations

import ssl
from pathlib import Path

from kiosk.calls.errors import CallsError


class CaFileError(CallsError):
    """The configured CA file cannot be read or holds no usable certificate."""

    def __init__(self, message: str) -> None:
        super().__init__("BAD_CA_FILE", message)


def client_ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Verify the server's certificate against the system's CAs, or only against `ca_file` (PEM)
    when one is given (a private CA for a fleet of kiosks). The host name is checked either way.

    Raises CaFileError (a CallsError) when `ca_file` cannot be used."""
    if ca_file is None or str(ca_file) == "":
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except OSError as exc:  # a missing or unreadable file; ssl.SSLError (not PEM) is an OSError too
        if isinstance(exc, ssl.SSLError):
            raise CaFileError(
                f"CA file {ca_file} holds no usable PEM certificate: {exc.reason or exc}"
            ) from None
        raise CaFileError(f"CA file {ca_file}: {exc.strerror or exc}") from None
