"""Settings of one call server instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kiosk.protocol import (
    DEFAULT_MAX_PARTICIPANTS,
    DEFAULT_MESH_LIMIT,
    DEFAULT_REJOIN_GRACE,
    DEFAULT_RING_TIMEOUT,
    DEFAULT_SFU_MAX_PARTICIPANTS,
    DEFAULT_TOKEN_TTL,
    IceServer,
)
from kiosk.urls import normalise_origin

# TURN credentials are valid this long (seconds). coturn checks the expiry in the username on every
# authenticated request, including the Refresh that keeps a relay allocated, so it must outlast a call.
DEFAULT_TURN_TTL = 86400


@dataclass(kw_only=True)
class ServerConfig:
    """Keyword-only, so `ServerConfig(data_dir=..., port=0)` reads the same everywhere."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path
    # None: use $KIOSK_ADMIN_KEY, else the key generated at first start (only its hash is kept).
    admin_key: str | None = field(default=None, repr=False)  # never printed or logged
    # Origins ("https://reception.example") whose pages may call the REST API and open the WebSocket
    # from another site; none: same origin only (docs/protocol.md, "Cross-origin requests").
    cors_origins: list[str] = field(default_factory=list)
    # WebSockets not yet authenticated one client address may hold (kiosk.server.limits); 0: no cap.
    # Behind a reverse proxy every client has the proxy's address: raise it (or 0) there.
    max_pending_websockets_per_address: int = 20
    # How long a call keeps the still of its caller taken while it rang (a missed call's picture).
    picture_days: float = 30.0
    token_ttl: int = DEFAULT_TOKEN_TTL
    ring_timeout: float = DEFAULT_RING_TIMEOUT
    # None: DEFAULT_MAX_PARTICIPANTS (a mesh), or DEFAULT_SFU_MAX_PARTICIPANTS with an SFU.
    max_participants: int = None  # type: ignore[assignment]  # always an int after __post_init__
    # Handed to clients as RTCPeerConnection iceServers, e.g. [{"urls": ["stun:stun.example.org"]}].
    ice_servers: list[IceServer] = field(default_factory=list)
    # How long a participant whose connection dropped stays in its sessions, so that it can come back
    # (join with rejoin) without the others seeing it leave; 0 removes it at once.
    rejoin_grace: float = DEFAULT_REJOIN_GRACE
    # TURN with coturn's shared-secret REST scheme (`use-auth-secret` + `static-auth-secret`): each
    # user is handed these URLs with a username "<expiry>:<uid>" and its HMAC as the credential.
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = field(default=None, repr=False)  # never printed or logged
    turn_ttl: int = DEFAULT_TURN_TTL
    # HTTPS and WSS: a PEM certificate (chain) and its private key; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Several server processes: live state, presence and message delivery shared through this Redis,
    # e.g. "redis://127.0.0.1:6379/0" (docs/scale-out.md). None: all in this process.
    redis_url: str | None = None
    # Users, auth tokens, call logs and the shared secrets in this PostgreSQL, e.g.
    # "postgresql://kiosk:PASSWORD@db.example.org/kiosk", for processes on several hosts
    # (docs/scale-out.md). None: SQLite and key files in data_dir.
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    # Group calls through Janus (docs/sfu.md): the server creates a VideoRoom through `janus_url` (its
    # HTTP API, e.g. "http://127.0.0.1:8088/janus") for a session of more than `mesh_limit`
    # participants; endpoints reach Janus at `janus_public_url` (default: the same URL).
    janus_url: str | None = None
    janus_public_url: str | None = None
    janus_admin_key: str | None = field(default=None, repr=False)  # the VideoRoom plugin's admin_key
    mesh_limit: int = DEFAULT_MESH_LIMIT
    # A building's host (docs/intercom.md): the CA (PEM) that signed tls_cert. With it, POST /v1/pair
    # pairs kiosks and browsers by the code kept in data_dir (kiosk.lan.codes), and the server
    # advertises itself over mDNS as `lan_name`, on `lan_addresses` (default: this machine's LAN IPv4
    # addresses) as `lan_hostname`.local (default: this machine's name).
    lan_ca: Path | None = None
    lan_name: str = ""
    lan_hostname: str = ""
    lan_addresses: list[str] = field(default_factory=list)
    lan_advertise: bool = True  # False: pairing by address only (a network that drops multicast)
    # A stand-alone kiosk's embedded server (no CA, plain HTTP on its own address): POST /v1/pair
    # pairs browsers by the code its screen shows, so a tablet joins it without a token typed.
    pairs_browsers: bool = False

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.cors_origins = [normalise_origin(origin) for origin in self.cors_origins]
        if not 0 <= self.picture_days <= 3650:
            raise ValueError("picture_days must be from 0 to 3650")
        if self.max_pending_websockets_per_address < 0:
            raise ValueError("max_pending_websockets_per_address must be 0 (no cap) or more")
        if self.token_ttl < 1:
            raise ValueError("token_ttl must be at least 1 second")
        if self.ring_timeout <= 0:
            raise ValueError("ring_timeout must be positive")
        if self.max_participants is None:
            self.max_participants = (
                DEFAULT_SFU_MAX_PARTICIPANTS if self.janus_url else DEFAULT_MAX_PARTICIPANTS
            )
        if self.max_participants < 2:
            raise ValueError("max_participants must be at least 2")
        if self.rejoin_grace < 0:
            raise ValueError("rejoin_grace must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0 to 65535")
        if self.turn_ttl < 60:
            raise ValueError("turn_ttl must be at least 60 seconds")
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"TURN URL {url!r} must start with turn: or turns:")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("TURN URLs need the TURN shared secret (--turn-secret or $KIOSK_TURN_SECRET)")
        if self.turn_secret and not self.turn_urls:
            raise ValueError("a TURN shared secret is set but no TURN URL (--turn-url)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"Redis URL {self.redis_url!r} must start with redis://, rediss:// or unix://")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            # Only the scheme: the rest of the URL may hold a password.
            got = (
                self.database_url.split("://", 1)[0] + "://..." if "://" in self.database_url else "no scheme"
            )
            raise ValueError(f"database URL must start with postgresql:// or postgres:// (got {got})")
        if self.mesh_limit < 2:
            raise ValueError("mesh_limit must be at least 2")
        for janus in (self.janus_url, self.janus_public_url):
            if janus is not None and not janus.startswith(("http://", "https://")):
                raise ValueError(f"Janus URL {janus!r} must start with http:// or https://")
        if self.janus_public_url is not None and self.janus_url is None:
            raise ValueError("a public Janus URL is set but no Janus URL (--janus-url)")
        if self.janus_url is not None and self.janus_public_url is None:
            self.janus_public_url = self.janus_url
        if self.tls_cert is not None and self.tls_key is not None:
            self.tls_cert, self.tls_key = Path(self.tls_cert), Path(self.tls_key)
        if self.lan_ca is not None:
            if self.tls_cert is None:
                raise ValueError("a building host (lan_ca) serves HTTPS only: give its certificate and key")
            self.lan_ca = Path(self.lan_ca)
