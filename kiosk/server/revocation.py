"""Open connections follow revocations: a WebSocket whose auth token was revoked, or whose user was
removed, is closed (1008, "auth token revoked") at once by the process that revoked it and within
`CHECK_SECONDS` by every other process, including after `kiosk users revoke/remove`, which writes
the database directly with no server to tell."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode

from kiosk.server.connections import Hub
from kiosk.server.storage import Storage, StorageClosedError

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0  # how often the revocation count is read (one small query)
CLOSE_REASON = b"auth token revoked"


class RevocationWatch:
    """Reads the storage's revocation count; when it moved, checks each authenticated connection's
    token again and closes those that no longer name a user."""

    def __init__(self, storage: Storage, hub: Hub, interval: float = CHECK_SECONDS) -> None:
        self._storage = storage
        self._hub = hub
        self._interval = interval
        self._seen: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        self._seen = await self._storage.revocations()
        self._task = asyncio.create_task(self._run(), name="revocation-watch")

    def poke(self) -> None:
        """Check now (this process has just revoked something)."""
        self._wake.set()

    async def check(self) -> int:
        """Close the connections whose token is gone; how many were closed."""
        count = await self._storage.revocations()
        if count == self._seen:
            return 0
        self._seen = count
        closed = 0
        for conn in self._hub.connections():
            if conn.user is None or conn.token_hash is None:
                continue
            if await self._storage.user_for_auth_token(conn.token_hash) is None:
                log.info("closing connection %s (%s): auth token revoked", conn.id, conn.user.uid)
                # Not awaited here: a close waits for the client's close frame (up to 3 s), and
                # neither the other connections nor the revoking request should wait for that.
                task = asyncio.create_task(
                    conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=CLOSE_REASON)
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                closed += 1
        return closed

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.check()
            except StorageClosedError:
                return
            except Exception:
                log.exception("checking open connections against revocations failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
