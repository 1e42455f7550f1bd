"""The call server's address, checked once for the SDK (`Calls(...)`), the command line (`--server`)
and the device's config (`[server] url`, `urls`); and web origins, for the server's CORS allow-list.

It imports nothing of the kiosk's, so the config can use it without loading the SDK and its media
stack (`kiosk check-config` needs neither), and the SDK without depending on the config.
"""

from __future__ import annotations

from urllib.parse import urlsplit

# The schemes a server address may be written with, and the one its REST API is reached by: the
# signaling URL is derived from it (http -> ws, https -> wss), so ws:// and wss:// name the same server.
SERVER_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ServerUrlError(ValueError):
    """A call server address that cannot be used; the message is one line naming where it came from."""


def server_base_url(url: object, what: str = "server URL") -> str:
    """The http(s) base URL of the call server at `url` (http, https, ws or wss; a host; an optional
    port from 1 to 65535; an optional path), without a trailing slash. Raises ServerUrlError, whose
    message starts with `what` (the key or option that gave the URL)."""
    if not isinstance(url, str):
        raise ServerUrlError(f"{what}: expected a URL such as http://127.0.0.1:8080, got {url!r}")
    if not url or any(c.isspace() for c in url):
        raise ServerUrlError(f"{what}: {url!r} is not a URL: write it as http://host:port")
    if "://" not in url:
        # "127.0.0.1:8080": urlsplit would read a scheme or a path out of it; say what is missing.
        raise ServerUrlError(f"{what}: {url!r} has no scheme: write it as http://{url} (or https, ws, wss)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 address]
        raise ServerUrlError(f"{what}: {url!r} is not a URL: {exc}") from None
    try:
        port = parts.port  # a port that is not a number, or above 65535, raises here
    except ValueError:
        port = 0
    if parts.scheme not in SERVER_SCHEMES:
        raise ServerUrlError(
            f"{what}: {url!r}: the scheme must be http, https, ws or wss, not {parts.scheme}"
        )
    if not parts.hostname:
        raise ServerUrlError(f"{what}: {url!r} has no host: write it as {parts.scheme}://host:port")
    if port == 0:  # also one urlsplit could not read
        raise ServerUrlError(f"{what}: {url!r}: the port must be a number from 1 to 65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # The SDK appends /v1/... to the base: a query or fragment would end up in the middle.
        raise ServerUrlError(f"{what}: {url!r}: a server URL has no ?query or #fragment")
    return f"{SERVER_SCHEMES[parts.scheme]}://{parts.netloc}{parts.path.rstrip('/')}"


def normalise_origin(origin: str) -> str:
    """An origin as browsers send it (scheme://host[:port], lower case, no default port, no path);
    ValueError naming it if it is not one."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"CORS origin {origin!r} must be http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"CORS origin {origin!r} must be only scheme://host[:port], no path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"CORS origin {origin!r} has a bad port") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")
