"""The ICE servers a user is handed with a call token (STUN, and TURN with short-lived credentials)."""

from __future__ import annotations

from typing import Any

from kiosk.server.config import ServerConfig


def ice_servers_for(config: ServerConfig, uid: str) -> list[dict[str, Any]]:
    """RTCPeerConnection iceServers for `uid`."""
    return [dict(server) for server in config.ice_servers]
