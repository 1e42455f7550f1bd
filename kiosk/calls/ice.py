"""Which local addresses ICE offers as host candidates.

aioice never offers 127.0.0.1, so two endpoints on a loopback-only host (a network namespace, or a
test that must keep its traffic on loopback) cannot connect. `restrict_host_addresses` makes ICE
use exactly the given addresses. It is process-wide, because aioice reads a module-level function.
"""

from __future__ import annotations

import aioice.ice

_original = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: list[str] | None) -> None:
    """Use only `addresses` for host candidates; None restores aioice's own discovery."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses
