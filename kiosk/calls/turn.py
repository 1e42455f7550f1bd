"""Which TURN transport a peer connection uses: UDP where it gets through, else TCP or TLS.

A call server can hand out several TURN URLs (UDP, TCP, TLS on 443) so that a client on a network
that blocks UDP can still relay its media. Browsers try them all; aiortc uses only the first TURN
URL it can (one TURN server per connection). So before a call the SDK asks the TURN server, over
UDP, for a STUN binding (every TURN server answers one, without credentials): an answer within a
second means UDP gets through and the UDP URL goes first; none means the first TCP or TLS URL goes
first. The answer is kept for a minute, so a run of calls does not pay the second each time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable

from kiosk.protocol import IceServer

log = logging.getLogger(__name__)

UDP_PROBE_SECONDS = 1.0
UDP_PROBE_RESENDS = (0.0, 0.25, 0.5)  # a lost request is sent again, as STUN retransmits
REMEMBER_SECONDS = 60.0

_STUN_BINDING_REQUEST = 0x0001
_STUN_MAGIC_COOKIE = 0x2112A442
_TURN_URL = re.compile(
    r"^(?P<scheme>turns?):(?P<host>\[[^\]]+\]|[^?:]+)(:(?P<port>\d+))?(\?transport=(?P<transport>\w+))?$"
)

UdpProbe = Callable[[str, int], Awaitable[bool]]

_remembered: dict[tuple[str, int], tuple[float, bool]] = {}


def turn_transport(url: str) -> tuple[str, str, int] | None:
    """(transport: "udp", "tcp" or "tls"; host; port) of a TURN URL, None if it is not one."""
    match = _TURN_URL.match(url.strip())
    if match is None:
        return None
    tls = match["scheme"] == "turns"
    transport = "tls" if tls else (match["transport"] or "udp").lower()
    port = int(match["port"]) if match["port"] else (5349 if tls else 3478)
    return transport, match["host"].strip("[]"), port


async def udp_answers(host: str, port: int, timeout: float = UDP_PROBE_SECONDS) -> bool:
    """Whether a STUN binding request over UDP to host:port gets any answer within `timeout`."""
    loop = asyncio.get_running_loop()
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", _STUN_BINDING_REQUEST, 0, _STUN_MAGIC_COOKIE) + transaction
    answered = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
            if data[8:20] == transaction and not answered.done():
                answered.set_result(True)

        def error_received(self, exc: Exception) -> None:  # ICMP unreachable: no UDP path
            if not answered.done():
                answered.set_result(False)

    try:
        transport, _ = await asyncio.wait_for(
            loop.create_datagram_endpoint(Probe, remote_addr=(host, port)), timeout
        )
    except (TimeoutError, OSError):
        return False
    started = loop.time()
    try:
        for at in UDP_PROBE_RESENDS:
            await asyncio.wait([answered], timeout=max(0.0, started + at - loop.time()))
            if answered.done():
                break
            transport.sendto(request)
        remaining = started + timeout - loop.time()
        if not answered.done() and remaining > 0:
            await asyncio.wait([answered], timeout=remaining)
        return answered.done() and bool(answered.result())
    finally:
        transport.close()


async def prefer_working_turn(servers: list[IceServer], probe: UdpProbe = udp_answers) -> list[IceServer]:
    """`servers` with the TURN URL that works here first in each entry and entries with one first.

    Only reorders; changes nothing when there is no choice (no TURN, or only one kind of transport).
    """
    urls = [url for server in servers for url in _urls(server)]
    parsed = [(url, turn_transport(url)) for url in urls]
    udp = [(url, t) for url, t in parsed if t is not None and t[0] == "udp"]
    stream = [url for url, t in parsed if t is not None and t[0] != "udp"]
    if not udp or not stream:
        return servers
    _, host, port = udp[0][1]
    now = time.monotonic()
    known = _remembered.get((host, port))
    if known is not None and now - known[0] < REMEMBER_SECONDS:
        udp_works = known[1]
    else:
        udp_works = await probe(host, port)
        _remembered[(host, port)] = (now, udp_works)
        if not udp_works:
            log.info("no UDP to the TURN server %s:%d: media is relayed over TCP or TLS", host, port)

    def rank(url: str) -> int:
        kind = turn_transport(url)
        if kind is None:
            return 1  # STUN and others: where they were, between the two
        return 0 if (kind[0] == "udp") == udp_works else 2

    ordered: list[IceServer] = []
    for server in servers:
        server_urls = _urls(server)
        if not server_urls:
            ordered.append(server)
            continue
        entry: IceServer = {**server, "urls": sorted(server_urls, key=rank)}  # stable within a rank
        ordered.append(entry)
    return sorted(ordered, key=lambda s: min((rank(u) for u in _urls(s)), default=1))


def forget_turn_probes() -> None:
    """Probe again at the next call (the network changed)."""
    _remembered.clear()


def _urls(server: IceServer) -> list[str]:
    urls = server.get("urls") if isinstance(server, dict) else None
    if isinstance(urls, str):
        return [urls]
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
