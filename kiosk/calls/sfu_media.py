"""A session's media through an SFU: one published stream, one subscription per other publisher
(docs/protocol.md, "Group calls through the SFU"; Janus VideoRoom, kiosk.calls.sfu).

The decisions, each with its reason:

- Make before break: at the switch from the mesh, each mesh connection carries its participant's
  media until that participant's feed from the room replaces it; any left after
  MESH_HANDOVER_SECONDS (a participant that never publishes there) are closed then.
- Publishing is retried every SFU_RETRY_SECONDS until it works; SFU_UNAVAILABLE is said once per
  outage. A room Janus no longer has (it restarted) is reported with `sfu.lost`, and the call server
  moves everyone to a new one (a `session.media` message: `use()` with the new room).
- Janus gone or our session with it lost: publish and subscribe again.
- Every publisher in the room has a feed here or one on its way: a subscription that failed (Janus
  busy, a timeout) is tried again, as is a feed whose media stopped; at most once every
  REBUILD_INTERVAL_SECONDS per participant. A new feed gets MEDIA_START_SECONDS to bring its first
  media, twice that after a subscription that brought none, up to four times: on a machine (or a
  Janus, or a publishing browser) too busy to start a feed within the allowance, subscribing again
  at the same pace would only start the wait over for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal, Protocol

from aiortc.mediastreams import MediaStreamTrack

from kiosk.calls.errors import CallsError
from kiosk.calls.media import (
    MEDIA_STALL_SECONDS,
    MEDIA_START_SECONDS,
    REBUILD_INTERVAL_SECONDS,
    MediaContext,
    MediaLink,
    PeerStateCallback,
    retire,
)
from kiosk.calls.peer import AudioSink, FrameSink, ParticipantStats, RemoteParticipant
from kiosk.calls.playout import ParticipantAudio
from kiosk.calls.sfu import (
    ERROR_NO_SUCH_ROOM,
    AudioLevelMeter,
    SfuError,
    SfuPublisher,
    SfuPublisherInfo,
    SfuUnavailable,
)
from kiosk.protocol import IceServer, Negotiation, SfuLostRequest, SfuRoomJson

log = logging.getLogger(__name__)

SFU_RETRY_SECONDS = 1.0  # between two attempts to (re)publish into the room
MAX_START_DOUBLINGS = 2  # a new feed's allowance for its first media: at most 4 x MEDIA_START_SECONDS
MESH_HANDOVER_SECONDS = 10.0  # mesh connections still not replaced by a feed this long after the switch close


class Publisher(Protocol):
    """What the session needs of its publisher in the room: `SfuPublisher`, or a test's fake."""

    feed: int | None
    publishers: dict[int, str]
    on_lost: Callable[[SfuUnavailable], None] | None

    async def start(self) -> None: ...

    async def subscribe(
        self,
        info: SfuPublisherInfo,
        *,
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: PeerStateCallback,
        participant: RemoteParticipant | None = None,
        audio: ParticipantAudio | None = None,
    ) -> MediaLink: ...

    async def close(self) -> None: ...


class PublisherFactory(Protocol):
    def __call__(
        self,
        api_url: str,
        *,
        room: int,
        pin: str,
        uid: str,
        audio_track: MediaStreamTrack,
        video_track: MediaStreamTrack | None,
        ice_servers: list[IceServer],
        video_codec: str | None,
        on_publisher: Callable[[SfuPublisherInfo], None],
        on_unpublished: Callable[[int], None],
        on_talking: Callable[[str, bool], None],
        audio_level: AudioLevelMeter,
        on_keyframe_request: Callable[[], None],
    ) -> Publisher: ...


def _feed_of(link: object) -> int | None:
    feed = getattr(link, "feed", None)  # an SfuFeed's; a mesh peer connection has none
    return feed if isinstance(feed, int) else None


class SfuMedia:
    mode: Literal["sfu"] = "sfu"

    def __init__(
        self,
        context: MediaContext,
        room: SfuRoomJson,
        *,
        handover: Mapping[str, MediaLink] | None = None,
        new_publisher: PublisherFactory | None = None,
    ) -> None:
        self._context = context
        self._new_publisher: PublisherFactory = new_publisher or SfuPublisher
        self._room = room
        self._publisher: Publisher | None = None
        # The mesh's connections, until each participant's feed replaces its one.
        self._peers: dict[str, MediaLink] = dict(handover or {})
        self._subscribing: set[int] = set()  # feeds whose subscription is under way
        self._rebuilt_at: dict[str, float] = {}
        self._departed: dict[str, ParticipantStats] = {}  # the last figures of those who left
        self._fruitless: dict[str, int] = {}  # uid -> subscriptions in a row that brought no media
        self._level = AudioLevelMeter()  # our audio level, for the room's talking events
        self.talking: set[str] = set()  # uids the room says are talking (its active speakers)
        self._closed = False
        if self._level not in context.audio.taps:
            context.audio.taps.append(self._level)
        if self._peers:
            asyncio.get_running_loop().call_later(MESH_HANDOVER_SECONDS, self._close_mesh_leftovers)

    @property
    def peers(self) -> Mapping[str, MediaLink]:
        return MappingProxyType(self._peers)

    @property
    def room(self) -> SfuRoomJson:
        return self._room.copy()

    @property
    def publisher(self) -> Publisher | None:
        return self._publisher

    # ----------------------------------------------------------------- the session's events

    def start(self, present: list[RemoteParticipant]) -> None:
        self._context.spawn(self.use(self._room))  # the room's join lists who publishes

    def participant_back(self, uid: str, now_reachable: bool) -> None:
        peer = self._peers.get(uid)
        if self._context.active() and peer is not None and not peer.receiving(MEDIA_STALL_SECONDS):
            self._resubscribe(uid)

    def participant_left(self, uid: str) -> None:
        peer = self._peers.pop(uid, None)
        self._rebuilt_at.pop(uid, None)
        self._fruitless.pop(uid, None)
        self.talking.discard(uid)
        if peer is not None:
            self._context.spawn(retire(uid, peer, self._departed))

    def handle(self, message: Negotiation) -> None:
        pass  # a mesh negotiation overtaken by the switch to the SFU

    def broken(self, uid: str, peer: MediaLink) -> bool:
        if peer.last_media_at is None:
            return peer.age() > self.start_allowance(uid)
        return peer.age() > MEDIA_STALL_SECONDS

    def start_allowance(self, uid: str) -> float:
        """How long a new feed from `uid` may take to bring its first media."""
        return MEDIA_START_SECONDS * 2.0 ** min(self._fruitless.get(uid, 0), MAX_START_DOUBLINGS)

    def repair(self, uid: str) -> None:
        self._resubscribe(uid)

    def tick(self) -> None:
        for uid, link in list(self._peers.items()):
            if link.last_media_at is not None:
                self._fruitless.pop(uid, None)  # this one brings media: a next one starts afresh
        self._subscribe_missing()

    # ----------------------------------------------------------------- publishing

    async def use(self, room: SfuRoomJson, again: bool = False) -> None:
        """Publish into `room` (the one we have, or a new one the server moved the session to), and
        keep trying until it works or the session moves on."""
        if self._publisher is not None and self._room == room and not again:
            return  # publishing there already (a rejoin's reply names the same room)
        self._room = room
        c = self._context
        log.info("session %s goes through the SFU (room %s)", c.session_id, room.get("room"))
        failures = 0
        while c.active() and not self._closed and self._room is room:
            await self._drop_publisher()
            publisher = self._new_publisher(
                room["url"],
                room=int(room["room"]),
                pin=str(room["pin"]),
                uid=c.self_uid(),
                audio_track=c.audio.subscribe(),
                video_track=c.video.subscribe(),
                ice_servers=c.ice_servers,
                video_codec=c.host.video_codec,
                on_publisher=self._on_publisher,
                on_unpublished=self._unpublished,
                on_talking=self._talking,
                audio_level=self._level,
                on_keyframe_request=c.video.request_keyframe,
            )
            publisher.on_lost = functools.partial(self._lost, publisher)
            self._publisher = publisher
            try:
                await publisher.start()
                return
            except SfuError as exc:
                if self._publisher is publisher:
                    if not failures:  # once per outage; the retries are logged
                        c.emit_error("SFU_UNAVAILABLE", f"group call media server: {exc}; retrying")
                    log.info("publishing to the SFU failed: %s", exc)
                    failures += 1
                    if exc.code == ERROR_NO_SUCH_ROOM:
                        # Janus lost the room (it restarted): the call server makes a new one.
                        c.spawn(self._report_room_lost(int(room["room"])))
            await asyncio.sleep(SFU_RETRY_SECONDS)

    async def _report_room_lost(self, room: int) -> None:
        c = self._context
        lost: SfuLostRequest = {"type": "sfu.lost", "sessionId": c.session_id, "room": room}
        try:
            await c.host.signaling.request(lost)
        except CallsError as exc:
            log.info("telling the server that SFU room %s is gone: %s", room, exc)

    def _lost(self, publisher: Publisher, error: Exception) -> None:
        """Janus went away or dropped us (our network, its restart): publish again until it works."""
        if self._context.active() and self._publisher is publisher and not self._closed:
            log.info("lost the SFU: %s; publishing again", error)
            self._context.spawn(self.use(self._room, again=True))

    async def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        feeds = {uid: link for uid, link in self._peers.items() if _feed_of(link) is not None}
        for uid in feeds:
            self._peers.pop(uid, None)
        await asyncio.gather(*(feed.close() for feed in feeds.values()), return_exceptions=True)
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()

    def _close_mesh_leftovers(self) -> None:
        if not self._context.active() or self._closed:
            return
        for uid, link in list(self._peers.items()):
            if _feed_of(link) is None:
                del self._peers[uid]
                self._context.spawn(link.close())

    # ----------------------------------------------------------------- subscribing

    def _on_publisher(self, info: SfuPublisherInfo) -> None:
        self._context.spawn(self._subscribe(info))

    async def _subscribe(self, info: SfuPublisherInfo) -> None:
        c = self._context
        publisher = self._publisher
        if publisher is None or not c.active() or info.feed in self._subscribing:
            return
        self._subscribing.add(info.feed)
        try:
            feed = await publisher.subscribe(
                info,
                session_started_at=c.started_at,
                on_video_frame=c.on_video_frame,
                on_audio_frame=c.on_audio_frame,
                on_connection_state=c.on_peer_state,
                participant=c.participants.get(info.uid),
                audio=c.audio_for(info.uid),
            )
        except SfuError as exc:
            # The feed left meanwhile, or we lost Janus (then _lost publishes and subscribes again);
            # otherwise the media watch's tick tries again (_subscribe_missing).
            log.info("subscribing to %s through the SFU failed: %s", info.uid, exc)
            return
        finally:
            self._subscribing.discard(info.feed)
        if not c.active() or self._publisher is not publisher or info.feed not in publisher.publishers:
            await feed.close()  # ended, republished, or that publisher left meanwhile
            return
        old = self._peers.get(info.uid)
        self._peers[info.uid] = feed
        if old is not None:
            await old.close()

    def _subscribe_missing(self) -> None:
        publisher = self._publisher
        if publisher is None or publisher.feed is None:
            return  # not published yet: its own join lists the publishers
        for feed_id, uid in list(publisher.publishers.items()):
            if _feed_of(self._peers.get(uid)) != feed_id:
                self._subscribe_again(uid, feed_id, "no feed from it yet")

    def _resubscribe(self, uid: str) -> None:
        """A feed whose media stopped: subscribe to that publisher again."""
        publisher = self._publisher
        feed_id = (
            next((f for f, owner in publisher.publishers.items() if owner == uid), None)
            if publisher
            else None
        )
        if feed_id is not None:
            self._subscribe_again(uid, feed_id, "its media stopped")

    def _subscribe_again(self, uid: str, feed_id: int, why: str) -> None:
        """Subscribe to `uid`'s feed unless that is under way, at most every few seconds per participant."""
        now = self._context.clock()
        if (
            feed_id in self._subscribing
            or now - self._rebuilt_at.get(uid, float("-inf")) < REBUILD_INTERVAL_SECONDS
        ):
            return
        self._rebuilt_at[uid] = now
        current = self._peers.get(uid)
        if current is not None and _feed_of(current) is not None and current.last_media_at is None:
            self._fruitless[uid] = self._fruitless.get(uid, 0) + 1  # it never brought anything
        log.info("subscribing to %s through the SFU again: %s", uid, why)
        self._context.spawn(self._subscribe(SfuPublisherInfo(feed_id, uid)))

    def _unpublished(self, feed: int) -> None:
        for uid, link in list(self._peers.items()):
            if _feed_of(link) == feed:
                del self._peers[uid]
                self._context.spawn(link.close())

    def _talking(self, uid: str, talking: bool) -> None:
        (self.talking.add if talking else self.talking.discard)(uid)

    # ----------------------------------------------------------------- the end

    async def stats(self) -> dict[str, ParticipantStats]:
        return {
            **self._departed,
            **{uid: await link.collect_stats() for uid, link in list(self._peers.items())},
        }

    async def close(self) -> None:
        self._closed = True
        links, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        await self._drop_publisher()
        if self._level in self._context.audio.taps:
            self._context.audio.taps.remove(self._level)
