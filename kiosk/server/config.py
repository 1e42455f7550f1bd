"""Settings of one call server instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.protocol import DEFAULT_MAX_PARTICIPANTS, DEFAULT_RING_TIMEOUT, DEFAULT_TOKEN_TTL


@dataclass(kw_only=True)
class ServerConfig:
    """Keyword-only, so `ServerConfig(data_dir=..., port=0)` reads the same everywhere."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path
    # None: use $KIOSK_ADMIN_KEY, else the key generated at first start (only its hash is kept).
    admin_key: str | None = None
    token_ttl: int = DEFAULT_TOKEN_TTL
    ring_timeout: float = DEFAULT_RING_TIMEOUT
    max_participants: int = DEFAULT_MAX_PARTICIPANTS
    # Handed to clients as RTCPeerConnection iceServers, e.g. [{"urls": ["stun:stun.example.org"]}].
    ice_servers: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.token_ttl < 1:
            raise ValueError("token_ttl must be at least 1 second")
        if self.ring_timeout <= 0:
            raise ValueError("ring_timeout must be positive")
        if self.max_participants < 2:
            raise ValueError("max_participants must be at least 2")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0 to 65535")
