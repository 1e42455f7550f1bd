"""Fakes for a call session's ports, as gpiozero's mock pin factory is to its devices: a signaling
channel that records what is sent and answers from a script, a host, a clock the test moves, peer
connections whose state the test sets, and an SFU publisher whose subscriptions can fail.

With them a `CallSession`'s decisions (glare, answers to older offers, rebuilds, resubscriptions,
the idle timeout) are driven step by step, with no network, no aiortc and no waiting.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc.exceptions import InvalidStateError

from kiosk.calls.errors import ConnectionFailedError
from kiosk.calls.events import ListenerRegistry
from kiosk.calls.peer import ParticipantStats, RemoteParticipant
from kiosk.calls.ports import SessionOver, as_call_view
from kiosk.calls.session import CallSession
from kiosk.calls.settings import CallSettings, CallSettingsBuilder
from kiosk.calls.sfu import SfuError, SfuPublisherInfo
from kiosk.media.emulated import EmulatedDevices
from kiosk.protocol import ClientMessage


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sent:
    type: str
    fields: dict[str, Any]


class FakeSignaling:
    """Records every request; answers `join` with `joined` (set by the test), the rest with {}."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.joined: dict[str, Any] = {}
        self.connected = True
        self.generation = 1
        self.fail_pings = False

    async def request(self, message: ClientMessage, *, timeout: float = 10.0) -> dict[str, Any]:
        message_type = message["type"]
        self.sent.append(Sent(message_type, {k: v for k, v in message.items() if k != "type"}))
        if message_type == "ping" and self.fail_pings:
            raise ConnectionFailedError("no reply to ping")
        if message_type == "join":
            return dict(self.joined)
        return {}

    def of(self, message_type: str) -> list[Sent]:
        return [s for s in self.sent if s.type == message_type]


class EventLog:
    """A listener that keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.events.append((name, args))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.events if event == name]


class FakeHost:
    def __init__(self, tmp: Path) -> None:
        self.devices = EmulatedDevices(width=128, height=96, fps=5)
        self.video_codec: str | None = None
        self.recording_dir = tmp / "recordings"
        self.listeners = ListenerRegistry()
        self.log = EventLog()
        self.listeners.add("log", self.log)
        self.channel = FakeSignaling()
        self.refreshed = 0
        self.door_opener: Any = None  # a kiosk.calls.door.DoorOpener on a door kiosk

    @property
    def signaling(self) -> FakeSignaling:
        return self.channel

    @property
    def signaling_connected(self) -> bool:
        return self.channel.connected

    def refresh_signaling(self) -> None:
        self.refreshed += 1


class FakePeer:
    """A mesh peer connection whose signaling state and media the test controls."""

    ids = itertools.count(1)

    def __init__(self, participant: RemoteParticipant, clock: FakeClock) -> None:
        self.participant = participant
        self.uid = participant.user.uid
        self.clock = clock
        self.negotiation_id = f"n{next(self.ids)}"
        self.lock = asyncio.Lock()
        self.closed = False
        self.offered_at: float | None = None
        self.last_media_at: float | None = None
        self.created_at = clock()
        self.signaling_state = "stable"
        self.remote_sdps: list[str] = []
        self.answers_applied: list[str] = []
        self.applied: list[tuple[str, Any]] = []  # ("offer" | "answer" | "candidate", what), in order

    async def create_offer(self) -> str:
        self.offered_at = self.clock()
        self.signaling_state = "have-local-offer"
        return f"offer from {self.negotiation_id}"

    async def answer_offer(self, sdp: str) -> str:
        for _ in range(3):  # applying a description takes a while (aiortc's awaits several steps)
            await asyncio.sleep(0)
        if self.closed:
            raise InvalidStateError("RTCPeerConnection is closed")  # as aiortc's does meanwhile
        self.remote_sdps.append(sdp)
        self.applied.append(("offer", sdp))
        return f"answer from {self.negotiation_id}"

    async def accept_answer(self, sdp: str) -> None:
        await asyncio.sleep(0)
        self.answers_applied.append(sdp)
        self.applied.append(("answer", sdp))
        self.signaling_state = "stable"

    async def add_remote_candidate(self, init: dict[str, Any] | None) -> None:
        self.applied.append(("candidate", init))

    def awaiting_answer(self, within: float) -> bool:
        return (
            self.offered_at is not None
            and self.signaling_state == "have-local-offer"
            and self.clock() - self.offered_at < within
        )

    def media_arrives(self) -> None:
        self.last_media_at = self.clock()

    def receiving(self, window: float) -> bool:
        return self.last_media_at is not None and self.clock() - self.last_media_at < window

    def age(self) -> float:
        return self.clock() - self.created_at

    async def collect_stats(self) -> ParticipantStats:
        return ParticipantStats(uid=self.uid)

    async def close(self) -> None:
        self.closed = True


class FakeFeed(FakePeer):
    def __init__(self, participant: RemoteParticipant, clock: FakeClock, feed: int) -> None:
        super().__init__(participant, clock)
        self.feed = feed


class FakePublisher:
    """An SFU publisher: `publishers` as the room lists them; `failures` subscriptions fail first."""

    def __init__(self, clock: FakeClock, **options: Any) -> None:
        self.clock = clock
        self.options = options
        self.feed: int | None = None
        self.publishers: dict[int, str] = {}
        self.on_lost: Callable[[Exception], None] | None = None
        self.failures = 0
        self.subscriptions: list[int] = []
        self.closed = False
        self.start_error: Exception | None = None

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.feed = 1

    async def subscribe(self, info: SfuPublisherInfo, **options: Any) -> FakeFeed:
        self.subscriptions.append(info.feed)
        if self.failures:
            self.failures -= 1
            raise SfuError(f"Janus did not answer for feed {info.feed}")
        participant = options.get("participant")
        if not isinstance(participant, RemoteParticipant):
            from kiosk.calls.events import RTCUser

            participant = RemoteParticipant(RTCUser(info.uid))
        return FakeFeed(participant, self.clock, info.feed)

    async def close(self) -> None:
        self.closed = True


@dataclass
class Scene:
    """A session on fakes, and what the test reads and moves."""

    session: CallSession
    host: FakeHost
    clock: FakeClock
    peers: list[FakePeer] = field(default_factory=list)
    publishers: list[FakePublisher] = field(default_factory=list)
    over: list[SessionOver] = field(default_factory=list)
    refuse_publishing: Exception | None = None  # what the next publishers' start raises

    @property
    def sent(self) -> FakeSignaling:
        return self.host.channel

    def peer_of(self, uid: str) -> FakePeer:
        peer = self.session.media.peers[uid]
        assert isinstance(peer, FakePeer)
        return peer

    def message(self, **message: Any) -> None:
        self.session.receive({"sessionId": self.session.session_id, **message})


def user(uid: str) -> dict[str, Any]:
    return {"uid": uid, "name": uid.title(), "avatar": None}


async def settle() -> None:
    """Let every task the session spawned run as far as it can."""
    for _ in range(20):
        await asyncio.sleep(0)


async def start_scene(
    tmp: Path,
    me: str,
    others: list[str],
    *,
    settings: CallSettings | None = None,
    media: dict[str, Any] | None = None,
) -> Scene:
    """A session joined as `me`, with `others` already there (the joined reply lists them). The media
    watch and the signaling probe do not run by themselves: the test calls `watch.check()`."""
    clock = FakeClock()
    host = FakeHost(tmp)
    scene: Scene

    def new_peer(participant: RemoteParticipant) -> FakePeer:
        peer = FakePeer(participant, clock)
        scene.peers.append(peer)
        return peer

    def new_publisher(*args: Any, **options: Any) -> FakePublisher:
        publisher = FakePublisher(clock, **options)
        publisher.start_error = scene.refuse_publishing
        scene.publishers.append(publisher)
        return publisher

    session = CallSession(
        host,  # type: ignore[arg-type]
        "s1",
        settings or CallSettingsBuilder().set_idle_timeout_period(600).build(),
        as_call_view(None),
        lambda reason: scene.over.append(reason),
        new_peer=new_peer,  # type: ignore[arg-type]
        new_publisher=new_publisher,  # type: ignore[arg-type]
        clock=clock,
    )
    scene = Scene(session, host, clock)

    async def idle() -> None:
        return None

    session.watch.run = idle  # type: ignore[method-assign]
    session.probe.run = idle  # type: ignore[method-assign]
    host.channel.joined = {
        "type": "joined",
        "self": user(me),
        "participants": [user(uid) for uid in others],
        "iceServers": [],
        **({"media": media} if media else {}),
    }
    await session.start("call-token")
    await settle()
    return scene
