"""A building host's pairing routes (docs/intercom.md, docs/protocol.md "Pairing with the building's
host") and its mDNS advertisement.

- `GET /v1/pair/ca`: the host's CA certificate, which a new kiosk checks against the fingerprint the
  host advertises (and shows) before trusting it.
- `POST /v1/pair` `{code, name, uid?}`: the code the host shows (kiosk.lan.codes) gives the caller a
  new user and its auth token. A wrong code counts against the code (void after a few) and, as a
  failed authentication, against the caller's address (kiosk.server.limits).

Only a server with `ServerConfig.lan_ca` (a host) pairs; any other answers 404 to both. The routes
exist either way, so the REST reference lists them once for every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from kiosk.lan import fingerprint_of_pem
from kiosk.lan.codes import CODE_DIGITS, PairingCodes, Verdict, is_code_shaped
from kiosk.protocol import MAX_NAME_LENGTH, ErrorCode, ProtocolError
from kiosk.server.config import ServerConfig
from kiosk.server.context import CONTEXT
from kiosk.server.limits import LIMITS, client_address
from kiosk.server.models import User
from kiosk.server.storage import Storage, UserExistsError
from kiosk.server.tokens import hash_secret, new_secret
from kiosk.server.validation import bad_request, read_json_object, require_id, require_text

if TYPE_CHECKING:
    from kiosk.lan.discovery import Advertiser

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# Tried in turn for a uid made from the name: "flat-12", "flat-12-2", ...
_MAX_UID_SUFFIX = 100
_ADVERTISE_RETRY = 10.0  # seconds, while the host has no network address yet (a Pi still booting)


@dataclass
class HostPairing:
    """What a host's server keeps for pairing: `app[PAIRING]`. Its `codes` are also what the host's
    own screen shows (`codes.current_or_new()`, through asyncio.to_thread)."""

    config: ServerConfig
    codes: PairingCodes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one pairing at a time
    _ca_pem: str | None = None

    @property
    def enabled(self) -> bool:
        """A host pairs kiosks and browsers; a stand-alone kiosk's own server, browsers."""
        return self.config.lan_ca is not None or self.config.pairs_browsers

    async def ca_pem(self) -> str | None:
        """The host's CA; None for a stand-alone kiosk's server (no TLS, no CA to pin)."""
        if self._ca_pem is None and self.config.lan_ca is not None:
            self._ca_pem = await asyncio.to_thread(self.config.lan_ca.read_text)
        return self._ca_pem


PAIRING = web.AppKey("kiosk_pairing", HostPairing)


def install(app: web.Application, config: ServerConfig) -> None:
    """The pairing routes and state (called by `create_app`)."""
    app[PAIRING] = HostPairing(config, PairingCodes(config.data_dir))
    app.add_routes(routes)


def _host(request: web.Request) -> HostPairing:
    pairing = request.app[PAIRING]
    if not pairing.enabled:
        raise ProtocolError(
            ErrorCode.NOT_FOUND, "this call server does not pair kiosks (it is no building host)"
        )
    return pairing


@routes.get("/v1/pair/ca")
async def pair_ca(request: web.Request) -> web.Response:
    pairing = _host(request)
    pem = await pairing.ca_pem()
    if pem is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, "this call server has no CA (it is a stand-alone kiosk)")
    return web.json_response(
        {"caPem": pem, "fingerprint": fingerprint_of_pem(pem), "name": pairing.config.lan_name}
    )


@routes.post("/v1/pair")
async def pair(request: web.Request) -> web.Response:
    pairing = _host(request)
    failures = request.app[LIMITS].auth
    address = client_address(request)
    failures.refuse_if_blocked(address)  # before the code is looked at, as for a token
    body = await read_json_object(request)
    code = body.get("code")
    if not isinstance(code, str) or not is_code_shaped(code):
        raise bad_request(f"'code' must be the {CODE_DIGITS} digits the host shows")
    name = require_text(body, "name", MAX_NAME_LENGTH)
    uid = require_id(body, "uid") if body.get("uid") is not None else None
    storage = request.app[CONTEXT].storage
    async with pairing.lock:
        result = await asyncio.to_thread(pairing.codes.check, code)
        if result.verdict is not Verdict.ACCEPTED:
            failures.failed(address)
            if result.verdict is Verdict.NO_CODE:
                raise ProtocolError(
                    ErrorCode.INVALID_STATE,
                    "no pairing code is valid now (expired, used or tried too often): show a new one on the host",
                )
            left = (
                f"{result.attempts_left} more tries with it"
                if result.attempts_left
                else "it is void now: show a new one on the host"
            )
            raise ProtocolError(ErrorCode.FORBIDDEN, f"wrong pairing code; {left}")
        user, token = await _new_user(storage, uid, name)
        await asyncio.to_thread(pairing.codes.use, code)
    log.info("paired %s (%s) from %s", user.uid, user.name, address)
    pem = await pairing.ca_pem()
    paired: dict[str, object] = {**user.to_json(), "authToken": token}
    if pem is not None:  # a host's: the new kiosk pins it
        paired.update(caPem=pem, fingerprint=fingerprint_of_pem(pem))
    return web.json_response(paired, status=201)


def uid_from_name(name: str) -> str:
    """A uid for a name: "Flat 12" -> "flat-12" (the id pattern's letters only)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:90]
    return slug or "kiosk"


async def _new_user(storage: Storage, uid: str | None, name: str) -> tuple[User, str]:
    token = new_secret()
    if uid is not None:
        user = User(uid=uid, name=name)
        try:
            await storage.create_user(user, hash_secret(token))
        except UserExistsError:
            raise ProtocolError(
                ErrorCode.USER_EXISTS, f"user {uid} already exists on the host: choose another uid"
            ) from None
        return user, token
    base = uid_from_name(name)
    for n in range(1, _MAX_UID_SUFFIX + 1):
        user = User(uid=base if n == 1 else f"{base}-{n}", name=name)
        try:
            await storage.create_user(user, hash_secret(token))
            return user, token
        except UserExistsError:
            continue
    raise ProtocolError(ErrorCode.USER_EXISTS, f"every uid from {base} to {base}-{_MAX_UID_SUFFIX} is taken")


# ----------------------------------------------------------------------------- the advertisement


class LanAdvertisement:
    """The host's mDNS advertisement while its server runs. A host whose network is not up yet is
    advertised as soon as it is (tried again every few seconds); the server serves meanwhile."""

    def __init__(self, config: ServerConfig, port: int) -> None:
        self.config = config
        self.port = port
        self._task: asyncio.Task[None] | None = None
        self._advertiser: Advertiser | None = None  # once advertising

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        # Imported here: only a host needs python-zeroconf.
        from kiosk.lan.discovery import Advertiser, DiscoveryError, lan_addresses, this_hostname

        assert self.config.lan_ca is not None
        pem = await asyncio.to_thread(self.config.lan_ca.read_text)
        while True:
            addresses = self.config.lan_addresses or await asyncio.to_thread(lan_addresses)
            advertiser = Advertiser()
            try:
                await advertiser.start(
                    name=self.config.lan_name or "Kiosk host",
                    port=self.port,
                    fingerprint=fingerprint_of_pem(pem),
                    hostname=self.config.lan_hostname or this_hostname(),
                    addresses=addresses,
                )
            except asyncio.CancelledError:
                await advertiser.close()  # closed while still announcing
                raise
            except Exception as exc:  # the server serves on; kiosks can still pair by address
                await advertiser.close()
                reason = (
                    exc
                    if isinstance(exc, DiscoveryError)
                    else f"cannot advertise the host over mDNS: {exc!r}"
                )
                log.warning("%s; trying again in %.0f s", reason, _ADVERTISE_RETRY)
                await asyncio.sleep(_ADVERTISE_RETRY)
                continue
            self._advertiser = advertiser
            return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._advertiser is not None:
            await self._advertiser.close()
            self._advertiser = None

    @property
    def advertising(self) -> bool:
        return self._advertiser is not None


def advertise(config: ServerConfig, port: int) -> LanAdvertisement | None:
    """For a host: its advertisement, started (in the background); None for any other server."""
    if config.lan_ca is None or not config.lan_advertise:
        return None
    advertisement = LanAdvertisement(config, port)
    advertisement.start()
    return advertisement
