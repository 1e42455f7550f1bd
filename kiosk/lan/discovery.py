"""Finding the building's host with no address typed: DNS-SD over mDNS (python-zeroconf's asyncio
API, on the process's one event loop). docs/protocol.md, "Finding the building's host".

The host advertises `<its name>._kiosk-call._tcp.local.`: SRV (its port), A records (its LAN
addresses) and TXT

    v=1            the advertisement's version
    url=https://…  the server's base URL on its first LAN address
    ca=<hex>       SHA-256 of the host's CA certificate (the one a new kiosk pins)
    name=…         the host's name, as people know it ("Reception desk")
    host=….local   the host's mDNS host name (also in its server certificate)

A kiosk browses for the type and resolves what it finds (`browse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from kiosk.lan import LAN_PROTOCOL_VERSION, SERVICE_TYPE, is_fingerprint

log = logging.getLogger(__name__)

_RESOLVE_MS = 3000
_MAX_INSTANCE_BYTES = 63  # a DNS label


class DiscoveryError(Exception):
    """mDNS cannot be used here (no network interface with multicast); one line."""


@dataclass(frozen=True)
class HostAd:
    """A building host as advertised."""

    instance: str  # the DNS-SD instance name, "Reception desk._kiosk-call._tcp.local."
    name: str  # the host's name for people
    urls: tuple[str, ...]  # https://<address>:<port>, one per advertised address
    fingerprint: str  # SHA-256 of its CA certificate, lowercase hex
    hostname: str  # "<hostname>.local"
    version: str

    @property
    def url(self) -> str:
        return self.urls[0]


def this_hostname() -> str:
    """This machine's name, as its `<name>.local` mDNS name starts (the first label only)."""
    return socket.gethostname().split(".")[0].lower() or "kiosk"


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses on its networks (not loopback, not link-local), in interface order."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: (address, flowinfo, scope)
            address = ipaddress.IPv4Address(ip.ip)
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                found.append(str(address))
    return list(dict.fromkeys(found))


def instance_label(name: str) -> str:
    """`name` as a DNS-SD instance label: no dots (they would split it), at most 63 bytes."""
    label = " ".join(name.replace(".", " ").split()) or "Kiosk host"
    while len(label.encode()) > _MAX_INSTANCE_BYTES:
        label = label[:-1]
    return label


class Advertiser:
    """The host's advertisement, from `start()` to `close()` (which says goodbye on the network)."""

    def __init__(self) -> None:
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def instance(self) -> str:
        """The instance name in use (mDNS renames it "Name (2)" if another host has the same name)."""
        return self._info.name if self._info is not None else ""

    async def start(
        self, *, name: str, port: int, fingerprint: str, hostname: str, addresses: list[str]
    ) -> None:
        if not addresses:
            raise DiscoveryError("no network address to advertise the host on (is the network up?)")
        properties = {
            "v": LAN_PROTOCOL_VERSION,
            "url": f"https://{addresses[0]}:{port}",
            "ca": fingerprint,
            "name": name[:200],
            "host": f"{hostname}.local",
        }
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_label(name)}.{SERVICE_TYPE}",
            port=port,
            properties=properties,
            server=f"{hostname}.local.",
            parsed_addresses=addresses,
        )
        try:
            self._zc = AsyncZeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
            # Probing for a name clash and announcing take a second or two; the server already serves.
            await (await self._zc.async_register_service(info, allow_name_change=True))
        except OSError as exc:
            await self.close()
            raise DiscoveryError(f"cannot advertise the host over mDNS: {exc.strerror or exc}") from None
        except BaseException:
            await self.close()
            raise
        self._info = info
        log.info("advertising %s on %s, port %d", info.name, ", ".join(addresses), port)

    async def close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None:
            await zc.async_close()  # unregisters: goodbye packets, so browsers forget the host at once
        self._info = None


def _parse(info: AsyncServiceInfo) -> HostAd | None:
    props = info.decoded_properties
    fingerprint = (props.get("ca") or "").lower()
    if not is_fingerprint(fingerprint) or info.port is None:
        return None  # not a kiosk host's advertisement (or a broken one)
    addresses = info.parsed_addresses(IPVersion.V4Only)
    urls = tuple(f"https://{a}:{info.port}" for a in addresses)
    if not urls and props.get("url"):
        urls = (str(props["url"]),)
    if not urls:
        return None
    instance = info.name.removesuffix("." + SERVICE_TYPE)
    return HostAd(
        instance=info.name,
        name=props.get("name") or instance,
        urls=urls,
        fingerprint=fingerprint,
        hostname=(props.get("host") or (info.server or "").rstrip(".")).lower(),
        version=props.get("v") or "",
    )


async def browse(timeout: float = 3.0, *, until: Callable[[HostAd], bool] | None = None) -> list[HostAd]:
    """The hosts that answer within `timeout` seconds (sooner, once one satisfies `until`), ordered
    by name."""
    try:
        aiozc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    except OSError as exc:
        raise DiscoveryError(f"cannot browse the network over mDNS: {exc.strerror or exc}") from None
    found: dict[str, HostAd] = {}
    enough = asyncio.Event()
    resolving: set[asyncio.Task[None]] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(aiozc.zeroconf, _RESOLVE_MS):
            return
        ad = _parse(info)
        if ad is None:
            log.debug("ignoring %s: not a kiosk host's advertisement", name)
            return
        found[name] = ad
        if until is not None and until(ad):
            enough.set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
        else:
            task = asyncio.ensure_future(resolve(name))
            resolving.add(task)
            task.add_done_callback(resolving.discard)

    try:
        browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout)
            if resolving and not enough.is_set():
                # Found near the end: let those answers in.
                await asyncio.wait(list(resolving), timeout=_RESOLVE_MS / 1000)
        finally:
            await browser.async_cancel()
    finally:
        for task in list(resolving):
            task.cancel()
        await aiozc.async_close()
    return sorted(found.values(), key=lambda ad: (ad.name.lower(), ad.instance))
