"""Keeping a call alive over a network that drops: the media watch and the signaling probe.

`MediaWatch` notices a participant whose media stopped (its network dropped, or ours): aiortc has no
ICE restart, so the session's media rebuilds the connection (or resubscribes the feed) as soon as
signaling can carry the offer. Only media that flowed and stopped counts: a participant that never
sends (no microphone, a receive-only browser) is not broken. When nobody's media has come for a
while, the fault is probably ours, and our signaling connection may be dead without knowing it (TCP
retransmits for minutes, and what the server sends waits behind them): it is renewed. The silence
counts against a connection only from when it was made: one made after the media stopped came over
the network as it is now, and is how the rebuilt connections get negotiated; renewing it would lose
the offers and answers on it and put the recovery back by a reconnect.

`SignalingProbe` sends `ping` during a call and renews a connection that does not answer in time,
for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from kiosk.calls.errors import CallsError, ConnectionFailedError
from kiosk.calls.media import MEDIA_STALL_SECONDS, SessionMedia
from kiosk.calls.peer import RemoteParticipant
from kiosk.calls.ports import SessionHost

log = logging.getLogger(__name__)

MEDIA_WATCH_INTERVAL = 0.5
SIGNALING_REFRESH_AFTER = 3.0  # no media from anyone this long: renew the signaling connection
SIGNALING_REFRESH_INTERVAL = 4.0
SIGNALING_PROBE_INTERVAL = 2.0
SIGNALING_PROBE_TIMEOUT = 2.0


class MediaWatch:
    def __init__(
        self,
        media: Callable[[], SessionMedia],
        participants: Mapping[str, RemoteParticipant],
        host: SessionHost,
        active: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._media = media
        self._participants = participants
        self._host = host
        self._active = active
        self._clock = clock
        self._had_media: set[str] = set()  # participants whose media has flowed (so it can stop)
        self._last_media_from: dict[str, float] = {}  # uid -> newest media from it, any connection
        self._refreshed_at = float("-inf")
        # The signaling connection the watch last saw (its generation), and since when: one there
        # before the watch started counts as made before any media.
        self._signaling_generation: int | None = None
        self._signaling_since = float("-inf")

    async def run(self) -> None:
        while self._active():
            await asyncio.sleep(MEDIA_WATCH_INTERVAL)
            if self._active():
                self.check()

    def forget(self, uid: str) -> None:
        """A participant left."""
        self._had_media.discard(uid)
        self._last_media_from.pop(uid, None)

    def check(self) -> None:
        """One look: repair what stopped, renew signaling when everyone went silent."""
        now = self._clock()
        media = self._media()
        for uid, link in list(media.peers.items()):
            if link.last_media_at is not None:
                self._had_media.add(uid)
                # Kept per participant, across rebuilt connections (a new one starts with none).
                self._last_media_from[uid] = max(
                    self._last_media_from.get(uid, float("-inf")), link.last_media_at
                )
        media.tick()
        stalled = [
            uid
            for uid, link in list(media.peers.items())
            if uid in self._participants
            and uid in self._had_media
            and not link.receiving(MEDIA_STALL_SECONDS)
            and media.broken(uid, link)
        ]
        if stalled and self._host.signaling_connected:
            for uid in stalled:
                media.repair(uid)
        # Everyone silent at once points at our own network (one silent peer, at theirs).
        flowed = [self._last_media_from[uid] for uid in self._participants if uid in self._last_media_from]
        connected_since = self._signaling_connected_since(now)
        if (
            flowed
            and now - max(flowed) >= SIGNALING_REFRESH_AFTER
            and now - connected_since >= SIGNALING_REFRESH_AFTER
            and now - self._refreshed_at >= SIGNALING_REFRESH_INTERVAL
        ):
            self._refreshed_at = now
            log.info("no media from anyone for %.1f s: renewing the signaling connection", now - max(flowed))
            self._host.refresh_signaling()

    def _signaling_connected_since(self, now: float) -> float:
        """When the current signaling connection was made, as near as this watch can tell (`now` for
        one it sees for the first time, unless it is the first it sees at all)."""
        if not self._host.signaling_connected:
            return now  # reconnecting: nothing to renew
        generation = self._host.signaling.generation
        if generation != self._signaling_generation:
            if self._signaling_generation is not None:
                self._signaling_since = now
            self._signaling_generation = generation
        return self._signaling_since

    def receiving_from(self, uid: str, window: float) -> bool:
        """Whether `uid`'s media came within `window` seconds, on any connection."""
        link = self._media().peers.get(uid)
        return link is not None and link.receiving(window)


class SignalingProbe:
    def __init__(self, host: SessionHost, active: Callable[[], bool]) -> None:
        self._host = host
        self._active = active
        self.renewed = 0  # connections renewed because a ping went unanswered

    async def run(self) -> None:
        while self._active():
            await asyncio.sleep(SIGNALING_PROBE_INTERVAL)
            if self._active():
                await self.probe()

    async def probe(self) -> None:
        host = self._host
        if not host.signaling_connected:
            return  # reconnecting already
        signaling = host.signaling
        probed = signaling.generation
        try:
            await signaling.request({"type": "ping"}, timeout=SIGNALING_PROBE_TIMEOUT)
        except ConnectionFailedError as exc:
            if self._active() and host.signaling_connected and signaling.generation == probed:
                log.info("signaling probe: %s; renewing the connection", exc)
                self.renewed += 1
                host.refresh_signaling()
        except CallsError:
            pass  # an answer, even a refusal, means the connection is alive
