"""Assembling and running the call server: `create_app`, `start_server` (embedding, tests) and
`run_server` (the blocking entry behind `kiosk server`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from kiosk.protocol import MAX_MESSAGE_BYTES
from kiosk.server import limits, pairing, rest, signaling
from kiosk.server.clock import now_ms
from kiosk.server.config import ServerConfig
from kiosk.server.connections import Hub
from kiosk.server.context import CONTEXT, ServerContext
from kiosk.server.doors import Doors
from kiosk.server.errors import error_middleware
from kiosk.server.http_policy import RedactingAccessLogger, cors_middleware, security_headers
from kiosk.server.revocation import RevocationWatch
from kiosk.server.ringing import Ringing
from kiosk.server.sessions import Sessions
from kiosk.server.sfu import JanusRooms
from kiosk.server.state import LiveState, MemoryState
from kiosk.server.storage import SqliteStorage, Storage, StorageClosedError
from kiosk.server.tokens import CallTokens, load_admin_key, load_signing_key
from kiosk.server.web import add_web_routes

if TYPE_CHECKING:
    from kiosk.server.redis_state import RedisState

log = logging.getLogger(__name__)

# How long shutdown waits for request handlers after the WebSockets were closed.
_SHUTDOWN_TIMEOUT = 5.0
_PICTURE_SWEEP_SECONDS = 3600.0
# The soft open-file limit to take when the hard one is unlimited (Linux's default fs.nr_open).
_OPEN_FILES_IF_UNLIMITED = 1 << 20


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context for HTTPS and WSS, or None when no certificate is configured."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    for what, path, marker in (
        ("certificate", config.tls_cert, b"-----BEGIN CERTIFICATE-----"),
        ("key", config.tls_key, b"PRIVATE KEY-----"),
    ):
        try:
            with open(path, "rb") as pem:
                text = pem.read(1 << 20)
        except OSError as exc:
            raise TLSConfigError(f"TLS {what} {path}: {exc.strerror or exc}") from None
        if marker not in text:
            raise TLSConfigError(f"TLS {what} {path}: not a PEM {what} (no {marker.decode()!r} line)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_passphrase() -> bytes:
        # An encrypted key would otherwise prompt on the terminal; the server runs unattended.
        raise TLSConfigError(f"TLS key {config.tls_key} is encrypted; give an unencrypted key (mode 0600)")

    try:
        context.load_cert_chain(config.tls_cert, config.tls_key, password=no_passphrase)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            reason = "the key does not belong to the certificate"
        raise TLSConfigError(
            f"TLS certificate {config.tls_cert} / key {config.tls_key} cannot be used: {reason}"
        ) from None
    return context


def create_app(config: ServerConfig) -> web.Application:
    """The aiohttp application. Its storage, keys and live state are set up when it starts."""
    app = web.Application(
        middlewares=[cors_middleware(config.cors_origins), error_middleware],
        client_max_size=MAX_MESSAGE_BYTES,
    )
    app.on_response_prepare.append(security_headers)
    # Message rate per WebSocket, failed authentication and pending WebSockets per address.
    limits.install(
        app,
        dataclasses.replace(
            limits.DEFAULT_LIMITS, ws_unauthenticated_per_address=config.max_pending_websockets_per_address
        ),
    )
    app.add_routes(rest.routes)
    app.add_routes(signaling.routes)
    pairing.install(app, config)  # a building host's pairing routes (docs/intercom.md)
    add_web_routes(app)  # the browser client at /app/
    app.cleanup_ctx.append(partial(_lifecycle, config))
    app.on_shutdown.append(_close_connections)
    return app


async def _lifecycle(config: ServerConfig, app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    storage: Storage
    if config.database_url is not None:
        # Processes on several hosts: records and shared secrets in PostgreSQL (docs/scale-out.md).
        # Imported here: only a server started with --database needs asyncpg.
        from kiosk.server.storage_pg import PostgresStorage

        pg = await PostgresStorage.connect(config.database_url)
        try:
            signing_key = await pg.signing_key()
            admin = await pg.admin_key(config.admin_key)
        except BaseException:
            await pg.close()
            raise
        storage = pg
    else:
        # Key files are read (or created) off the event loop, like all other disk access.
        signing_key = await loop.run_in_executor(None, load_signing_key, config.data_dir)
        admin = await loop.run_in_executor(None, load_admin_key, config.data_dir, config.admin_key)
        storage = SqliteStorage(config.data_dir)
    state: LiveState
    redis_state: RedisState | None = None
    if config.redis_url is not None:
        # Several processes share the live state and reach each other's connections through Redis
        # (docs/scale-out.md). Imported here: only a server started with --redis needs redis-py.
        from kiosk.server.redis_state import RedisState

        redis_state = RedisState(
            config.redis_url, rejoin_grace=config.rejoin_grace, ring_timeout=config.ring_timeout
        )
        state = redis_state
        hub = Hub(state, relay=redis_state, node_id=redis_state.node_id)
    else:
        state = MemoryState()
        hub = Hub(state)
    tokens = CallTokens(signing_key, config.token_ttl)
    rooms = (
        JanusRooms(config.janus_url, config.janus_admin_key, client_url=config.janus_public_url)
        if config.janus_url
        else None
    )
    sessions = Sessions(config, state, storage, tokens, hub, rooms)
    ringing = Ringing(config, storage, state, hub, sessions)
    revocations = RevocationWatch(storage, hub)
    app[CONTEXT] = ServerContext(
        config=config,
        storage=storage,
        state=state,
        hub=hub,
        tokens=tokens,
        admin=admin,
        sessions=sessions,
        ringing=ringing,
        revocations=revocations,
        doors=Doors(state, storage, hub),
    )
    pictures = asyncio.create_task(_expire_pictures(storage, config.picture_days), name="expire-pictures")
    try:
        await revocations.start()
        if redis_state is not None:

            async def leave_orphan(session_id: str, conn_id: str) -> None:
                # A participant of a server process that is gone, still not back after the grace.
                await sessions.leave(conn_id, session_id, reason="disconnected")

            await redis_state.start(
                hub.deliver_local,
                leave_orphan,
                local_connections=hub.authenticated,
                periodic=ringing.close_overdue_calls,
            )
        if not state.survives_restart:
            await ringing.close_stale_calls()
        if admin.generated:
            # Shown once; only its hash is kept, so this is the only chance to copy it.
            print(f"admin key: {admin.plain}", flush=True)
        yield
    finally:
        pictures.cancel()
        await revocations.close()
        await ringing.close()
        if rooms is not None:
            await rooms.close()
        if redis_state is not None:
            await redis_state.close()
        await storage.close()


async def _expire_pictures(storage: Storage, days: float) -> None:
    """Remove the callers' stills of calls older than `days`, at start and then every hour."""
    while True:
        try:
            removed = await storage.delete_pictures_before(now_ms() - int(days * 86_400_000))
            if removed:
                log.info("removed %d caller picture(s) older than %g days", removed, days)
        except StorageClosedError:
            return
        except Exception:
            log.exception("removing old caller pictures failed")
        await asyncio.sleep(_PICTURE_SWEEP_SECONDS)


async def _close_connections(app: web.Application) -> None:
    if CONTEXT in app:
        await app[CONTEXT].hub.close_all()


@dataclass
class RunningServer:
    """A server started by `start_server`; `close()` stops it."""

    url: str  # "http://127.0.0.1:PORT", or https:// with a TLS certificate
    port: int
    # The plain key if it was given or generated by this start, else None; never in a repr.
    admin_key: str | None = field(repr=False)
    storage: Storage
    config: ServerConfig
    app: web.Application
    runner: web.AppRunner
    lan: pairing.LanAdvertisement | None = None  # a building host's mDNS advertisement

    async def close(self) -> None:
        if self.lan is not None:
            await self.lan.close()  # its goodbye first: kiosks stop trying a host that is going
        await self.runner.cleanup()


async def start_server(config: ServerConfig) -> RunningServer:
    """Start serving on config.host:config.port (0: any free port) and return once listening.

    With config.tls_cert/tls_key it serves HTTPS and WSS only; a certificate or key that cannot be
    used raises TLSConfigError before anything listens."""
    ssl_context = server_ssl_context(config)
    app = create_app(config)
    runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log_class=RedactingAccessLogger)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    host = f"[{config.host}]" if ":" in config.host else config.host
    ctx = app[CONTEXT]
    return RunningServer(
        url=f"{'https' if ssl_context is not None else 'http'}://{host}:{port}",
        port=port,
        admin_key=ctx.admin.plain,
        storage=ctx.storage,
        config=config,
        app=app,
        runner=runner,
        lan=pairing.advertise(config, port),
    )


async def _serve(config: ServerConfig) -> None:
    server = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        # Only now: whoever waits for this line may signal at once.
        log.info("listening on %s", server.url)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.close()


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit now.

    Every connected kiosk holds a socket. The usual soft limit (1024, also systemd's default) makes
    the server stop accepting at about a thousand kiosks: accept() fails with EMFILE and the new
    connections hang unanswered. The hard limit is what the administrator allows, so take all of it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _OPEN_FILES_IF_UNLIMITED)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def run_server(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("open-file limit %d (about that many kiosks can connect)", raise_open_file_limit())
    asyncio.run(_serve(config))
