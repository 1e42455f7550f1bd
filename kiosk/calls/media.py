"""The media of a session, behind one interface: a mesh of peer connections (kiosk.calls.mesh) or a
group call through an SFU (kiosk.calls.sfu_media). The session holds one; switching to the SFU
swaps the object.

`MediaContext` is what either needs from its session: the captures to send, the roster to read,
where decoded media and errors go, how to start background work, and a clock (a test's, in the
decision tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kiosk.calls.peer import ParticipantStats, RemoteParticipant
from kiosk.calls.playout import ParticipantAudio
from kiosk.calls.ports import AudioCallback, FrameCallback, SessionHost
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.protocol import IceServer, Negotiation

# A peer's media has stopped when nothing arrived for this long (audio flows 50 times a second, even
# muted: digital silence).
MEDIA_STALL_SECONDS = 1.5
MEDIA_START_SECONDS = 3.0  # a rebuilt peer connection gets this long to bring its first media
REBUILD_INTERVAL_SECONDS = 2.0  # between two rebuilds (or resubscriptions) for the same participant
OFFER_ANSWER_SECONDS = 1.5  # an offer unanswered this long is taken as lost

MediaMode = Literal["mesh", "sfu"]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass
class MediaContext:
    """What the session gives its media."""

    session_id: str
    host: SessionHost
    video: VideoCapture
    audio: AudioCapture
    participants: Mapping[str, RemoteParticipant]  # the roster, read only
    self_uid: Callable[[], str]
    active: Callable[[], bool]
    started_at: float
    on_video_frame: FrameCallback
    on_audio_frame: AudioCallback
    on_peer_state: PeerStateCallback
    spawn: Spawn
    emit_error: Callable[[str, str], None]
    # The participant's audio playout, the same for every connection from it (kiosk.calls.playout).
    audio_for: Callable[[str], ParticipantAudio | None] = lambda uid: None
    ice_servers: list[IceServer] = field(default_factory=list)  # from the joined reply
    clock: Callable[[], float] = time.monotonic


class MediaLink(Protocol):
    """A connection bringing one participant's media: a mesh peer connection or an SFU feed (both
    `RemoteMedia`), or a test's fake."""

    uid: str
    last_media_at: float | None  # when the last audio or video frame arrived

    def receiving(self, window: float) -> bool:
        """Whether media arrived within the last `window` seconds."""
        ...

    def age(self) -> float: ...

    async def collect_stats(self) -> ParticipantStats: ...

    async def close(self) -> None: ...


# A connection's state changed (aiortc's connectionState: "connecting", "connected", "failed"...).
PeerStateCallback = Callable[[MediaLink, str], None]


class SessionMedia(Protocol):
    """A session's connections to the other participants: one RemoteMedia per participant."""

    @property
    def mode(self) -> MediaMode: ...

    @property
    def peers(self) -> Mapping[str, MediaLink]:
        """The connection (or feed) that brings each participant's media now."""
        ...

    def start(self, present: list[RemoteParticipant]) -> None:
        """We joined: `present` were there already."""
        ...

    def participant_back(self, uid: str, now_reachable: bool) -> None:
        """A known participant was announced again (it rejoined, or we did): repair what is broken;
        `now_reachable`: it just came back, so an offer in flight went to a connection now gone."""
        ...

    def participant_left(self, uid: str) -> None: ...

    def handle(self, message: Negotiation) -> None:
        """A negotiation message from the server (offer, answer, candidate)."""
        ...

    def broken(self, uid: str, peer: MediaLink) -> bool:
        """Whether `uid`'s connection, whose media has flowed, no longer carries it."""
        ...

    def repair(self, uid: str) -> None:
        """`uid`'s media stopped: rebuild or resubscribe, as this media does."""
        ...

    def tick(self) -> None:
        """Periodic upkeep (the media watch's interval)."""
        ...

    async def stats(self) -> dict[str, ParticipantStats]: ...

    async def close(self) -> None: ...


async def retire(uid: str, link: MediaLink, departed: dict[str, ParticipantStats]) -> None:
    """Close the link of a participant who left, keeping its last figures: the session's final stats
    report everyone who was in it, not only those still there at the end."""
    try:
        departed[uid] = await link.collect_stats()
    except Exception:  # figures are a report, never a reason not to close
        pass
    await link.close()
