"""The ICE servers a user is handed with a call token (STUN, and TURN with short-lived credentials).

TURN credentials follow coturn's shared-secret REST scheme (`use-auth-secret` with
`static-auth-secret=<secret>` in turnserver.conf): the username is "<expiry unix time>:<uid>" and the
credential is base64(HMAC-SHA1(secret, username)). coturn recomputes the credential from the
username, so the server and coturn share only the secret, and a leaked credential expires by itself.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import time

from kiosk.protocol import IceServer
from kiosk.server.config import ServerConfig


def turn_credentials(secret: str, uid: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """(username, credential) for `uid`, valid `ttl` seconds from `now`."""
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{uid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers_for(config: ServerConfig, uid: str) -> list[IceServer]:
    """RTCPeerConnection iceServers for `uid`: the configured ones, then TURN with fresh credentials."""
    servers = copy.deepcopy(config.ice_servers)  # the caller may change its copy
    if config.turn_urls and config.turn_secret:
        username, credential = turn_credentials(config.turn_secret, uid, config.turn_ttl)
        servers.append({"urls": list(config.turn_urls), "username": username, "credential": credential})
    return servers
