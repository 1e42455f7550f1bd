"""Rate limits (docs/protocol.md, "Limits"): messages per WebSocket connection, and failed
authentication attempts per client address.

- `MessageLimiter`, one per WebSocket: a token bucket of messages and one of bytes. A frame that finds
  either empty is not handled and is answered `RATE_LIMITED`; every such refusal also takes a "strike"
  from a third, slowly refilling bucket, and a connection out of strikes (sustained abuse) is closed
  with code 1008. Other connections are not affected.
- `FailedAuthLimiter`, one per server: wrong auth tokens (REST and WebSocket `auth`) and wrong admin
  keys, per client address. An address out of attempts gets `RATE_LIMITED` (429 with `Retry-After`)
  for every authentication until its bucket refills, without the presented secret being checked.

The limits are far above what a real client does: in one call the Calls SDK and the browser client
send `auth`, `join`, one `offer` or `answer` per peer (and from the browser client, which trickles,
a handful of `candidate` messages per peer), a `media.state` per mute toggle, and `leave`; a few
kilobytes in all. WebSocket pings are control frames and are not counted.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from aiohttp import web

from kiosk.protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimits:
    # Per WebSocket connection: a burst of this many messages, then this many a second.
    ws_burst: int = 50
    ws_rate: float = 10.0
    # ... and of bytes (frames of up to 64 KiB): 1 MiB at once, 128 KiB a second sustained.
    ws_burst_bytes: int = 1024 * 1024
    ws_rate_bytes: float = 128 * 1024
    # Refused messages a connection may send before it is closed (1008), regaining one a second.
    ws_strikes: int = 50
    ws_strike_recovery: float = 1.0
    # Failed authentications per client address: a burst of this many, then one per period.
    auth_failures: int = 10
    auth_failure_period: float = 6.0  # 10 a minute sustained
    # Addresses tracked at once; beyond it the ones that have recovered are forgotten first.
    max_tracked_addresses: int = 100_000
    # A WebSocket must authenticate within this many seconds, or it is closed (1008 "auth timeout").
    ws_auth_seconds: float = 10.0
    # WebSockets not yet authenticated that one address may hold; past it an upgrade gets 429, so one
    # host cannot use up the server's open files; 0: no cap. (Authenticated ones are not capped: a
    # building behind one NAT address has many kiosks.)
    ws_unauthenticated_per_address: int = 20


DEFAULT_LIMITS = RateLimits()


class TokenBucket:
    """`capacity` tokens, refilled at `rate` a second; `take(cost)` spends them if there are enough."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("capacity and rate must be positive")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.tokens = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def wait_for(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 if they are now)."""
        self._refill(now)
        return max(0.0, (min(cost, self.capacity) - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


class Verdict(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer RATE_LIMITED, keep the connection
    CLOSE = "close"  # sustained abuse: close this connection


class MessageLimiter:
    """The message and byte budget of one WebSocket connection."""

    def __init__(self, limits: RateLimits = DEFAULT_LIMITS, clock: Clock = time.monotonic) -> None:
        now = clock()
        self._clock = clock
        self._messages = TokenBucket(limits.ws_burst, limits.ws_rate, now)
        self._bytes = TokenBucket(limits.ws_burst_bytes, limits.ws_rate_bytes, now)
        self._strikes = TokenBucket(limits.ws_strikes, limits.ws_strike_recovery, now)
        self.refused = 0

    def check(self, size: int) -> Verdict:
        """One frame of `size` bytes arrived."""
        now = self._clock()
        # Both budgets must allow it; nothing is spent from either unless both do.
        if self._messages.available(now) >= 1 and self._bytes.available(now) >= size:
            self._messages.take(now)
            self._bytes.take(now, size)
            return Verdict.ALLOW
        self.refused += 1
        return Verdict.REFUSE if self._strikes.take(now) else Verdict.CLOSE

    def retry_after(self, size: int) -> float:
        now = self._clock()
        return max(self._messages.wait_for(now), self._bytes.wait_for(now, size))


class FailedAuthLimiter:
    """Failed authentication attempts per client address (one instance per server)."""

    def __init__(self, limits: RateLimits = DEFAULT_LIMITS, clock: Clock = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def blocked_for(self, address: str) -> float | None:
        """None if `address` may try to authenticate now, else the seconds until it may."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        now = self._clock()
        if bucket.available(now) >= 1:
            return None
        return bucket.wait_for(now)

    def failed(self, address: str) -> None:
        """One failed attempt from `address`."""
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._limits.max_tracked_addresses:
                self._forget(now)
            bucket = TokenBucket(self._limits.auth_failures, 1.0 / self._limits.auth_failure_period, now)
            self._buckets[address] = bucket
        bucket.take(now)
        if bucket.available(now) < 1:
            # The address only, never what it presented.
            log.warning(
                "authentication from %s blocked for %.0f s: too many failures", address, bucket.wait_for(now)
            )

    def refuse_if_blocked(self, address: str) -> None:
        """ProtocolError RATE_LIMITED (with the seconds to wait) if `address` may not try now."""
        wait = self.blocked_for(address)
        if wait is not None:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many failed authentication attempts from this address",
                retry_after=wait,
            )

    def _forget(self, now: float) -> None:
        """Keep the table bounded: drop addresses that have recovered; if that is not enough (very many
        addresses failing at once), the oldest ones."""
        for address in [a for a, b in self._buckets.items() if b.full(now)]:
            del self._buckets[address]
        excess = len(self._buckets) - self._limits.max_tracked_addresses + 1
        for address in list(self._buckets)[: max(0, excess)]:
            del self._buckets[address]


@dataclass
class ServerLimits:
    """What one server keeps for its limits; `create_app` puts it at `app[LIMITS]`."""

    limits: RateLimits = DEFAULT_LIMITS
    clock: Clock = time.monotonic
    auth: FailedAuthLimiter = field(init=False)
    # Per address, its WebSockets that have not authenticated yet.
    unauthenticated: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.auth = FailedAuthLimiter(self.limits, self.clock)

    def admit_unauthenticated(self, address: str) -> None:
        """Count a new WebSocket from `address`; RATE_LIMITED (429) if it holds too many already."""
        held = self.unauthenticated.get(address, 0)
        cap = self.limits.ws_unauthenticated_per_address
        if cap and held >= cap:
            log.warning("refusing a WebSocket from %s: %d not yet authenticated", address, held)
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many unauthenticated connections from this address",
                retry_after=self.limits.ws_auth_seconds,
            )
        self.unauthenticated[address] = held + 1

    def release_unauthenticated(self, address: str) -> None:
        """One WebSocket from `address` authenticated or closed."""
        held = self.unauthenticated.get(address, 0) - 1
        if held > 0:
            self.unauthenticated[address] = held
        else:
            self.unauthenticated.pop(address, None)


@dataclass
class ConnectionGuard:
    """The limits one WebSocket connection is held to, and where it comes from."""

    address: str
    server: ServerLimits
    messages: MessageLimiter


LIMITS = web.AppKey("kiosk_limits", ServerLimits)

# WebSocket -> its guard; entries go when the WebSocket is garbage.
_GUARDS: weakref.WeakKeyDictionary[web.StreamResponse, ConnectionGuard] = weakref.WeakKeyDictionary()


def client_address(request: web.BaseRequest) -> str:
    """The peer address of the TCP connection (a proxy in front of the server shares one address)."""
    return request.remote or "unknown"


async def track_websocket(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: give every signaling WebSocket its guard before it reads a frame."""
    if isinstance(response, web.WebSocketResponse) and LIMITS in request.app:
        server = request.app[LIMITS]
        _GUARDS[response] = ConnectionGuard(
            client_address(request), server, MessageLimiter(server.limits, server.clock)
        )


def guard_of(ws: web.StreamResponse) -> ConnectionGuard:
    """The guard of a WebSocket; one with default limits (address unknown) if it was not tracked."""
    guard = _GUARDS.get(ws)
    if guard is None:
        server = ServerLimits()
        guard = ConnectionGuard("unknown", server, MessageLimiter(server.limits, server.clock))
        _GUARDS[ws] = guard
    return guard


def install(app: web.Application, limits: RateLimits | None = None) -> ServerLimits:
    """Set up the limits of one server (called by `create_app`)."""
    server = ServerLimits(limits or DEFAULT_LIMITS)
    app[LIMITS] = server
    app.on_response_prepare.append(track_websocket)
    return server
