"""WebSocket connections of this process and delivery of messages to them.

With several server processes (`kiosk server --redis`), each process is a node with an id; its
connections are named "<node id>.<random hex>", and a message for a connection of another node goes
to that node through a `Relay` (Redis pub/sub, see redis_state.py), which hands it to its own `Hub`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from asyncio import Transport
from collections.abc import Iterable
from typing import Protocol

from aiohttp import WSCloseCode, web

from kiosk.protocol import ServerMessage
from kiosk.server.models import User
from kiosk.server.state import LiveState

log = logging.getLogger(__name__)

# Messages waiting for one client. A client this far behind is not reading; it is dropped rather than
# letting its backlog grow without bound.
OUTBOX_LIMIT = 1000


def node_of(conn_id: str) -> str:
    """The node a connection id names ("<node>.<hex>"); "-" for an id without one (a single process)."""
    node, dot, _ = conn_id.partition(".")
    return node if dot else "-"


class Relay(Protocol):
    """Carries messages to the connections of other server processes."""

    def publish(self, node: str, conn_ids: list[str], message: ServerMessage) -> None:
        """Queue `message` for these connections of `node`; never waits, keeps the order."""


class Connection:
    """One signaling WebSocket. `send` never waits: messages go through a queue drained by a writer
    task, so a slow client cannot stall whoever is broadcasting, and each client sees its messages in
    the order they were sent."""

    def __init__(self, ws: web.WebSocketResponse, transport: Transport | None) -> None:
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.user: User | None = None
        self.token_hash: str | None = None  # of the auth token it signed in with (revocation checks)
        self.authenticated = asyncio.Event()
        self._transport = transport
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")

    def send(self, message: ServerMessage) -> None:
        if self._closed:
            return
        try:
            self._outbox.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            log.warning("dropping connection %s (%s): not reading its messages", self.id, self._who())
            self._closed = True
            if self._transport is not None:
                self._transport.abort()

    async def _write_loop(self) -> None:
        while True:
            data = await self._outbox.get()
            if data is None:
                return
            try:
                await self.ws.send_str(data)
            except Exception as exc:  # the peer went away; the reader notices and cleans up
                log.debug("send to %s failed: %r", self.id, exc)
                self._closed = True
                return

    async def finish(self) -> None:
        """Stop accepting messages, let the writer flush what is queued, and stop it."""
        self._closed = True
        if self._writer is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=2.0)
        except TimeoutError:
            self._writer.cancel()
        except asyncio.CancelledError:
            self._writer.cancel()
            raise

    def _who(self) -> str:
        return self.user.uid if self.user else "unauthenticated"


class Hub:
    """The connections of this process, and pushes to users wherever they are connected.

    With a `relay` and a `node_id` (several processes), a connection id that names another node is
    delivered through the relay; this process's own connections are still served directly."""

    def __init__(self, state: LiveState, relay: Relay | None = None, node_id: str | None = None) -> None:
        self._state = state
        self._relay = relay
        self._node_id = node_id
        self._connections: dict[str, Connection] = {}

    def add(self, conn: Connection) -> None:
        """Register a new connection (before it authenticates). On a node, this also names it
        "<node id>.<its id>", so that every process can tell where to deliver to it."""
        if self._node_id is not None and node_of(conn.id) != self._node_id:
            conn.id = f"{self._node_id}.{conn.id}"
        self._connections[conn.id] = conn

    def discard(self, conn: Connection) -> None:
        self._connections.pop(conn.id, None)

    def send(self, conn_id: str, message: ServerMessage) -> None:
        self.send_many((conn_id,), message)

    def send_many(self, conn_ids: Iterable[str], message: ServerMessage) -> None:
        remote: dict[str, list[str]] = {}
        for conn_id in conn_ids:
            conn = self._connections.get(conn_id)
            if conn is not None:
                conn.send(message)
            elif self._relay is not None and (node := node_of(conn_id)) != self._node_id:
                remote.setdefault(node, []).append(conn_id)
        if self._relay is not None:
            for node, ids in remote.items():
                self._relay.publish(node, ids, message)

    def connections(self) -> list[Connection]:
        """This process's connections, authenticated or not."""
        return list(self._connections.values())

    def authenticated(self) -> list[tuple[str, str]]:
        """(uid, connection id) of this process's authenticated connections."""
        return [(conn.user.uid, conn.id) for conn in self._connections.values() if conn.user is not None]

    def deliver_local(self, conn_ids: list[str], message: ServerMessage) -> None:
        """A message another node relayed to connections of this one (gone ones are skipped)."""
        for conn_id in conn_ids:
            conn = self._connections.get(conn_id)
            if conn is not None:
                conn.send(message)

    async def push_to_user(self, uid: str, message: ServerMessage) -> None:
        """To every connection of the user (several endpoints or tabs)."""
        self.send_many(await self._state.connections_of(uid), message)

    async def close_all(self) -> None:
        conns = list(self._connections.values())
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for c in conns),
            return_exceptions=True,
        )
