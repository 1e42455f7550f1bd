"""Group-call media through a real Janus (Debian's janus, VideoRoom plugin) with real aiortc peers:
rooms and pins, one publisher to one subscriber, three participants each publishing once and
receiving the two others, a publisher leaving, and Janus going away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from calls_support import wait_until
from janus_server import VIDEOROOM_ADMIN_KEY, JanusServer, running_janus

from kiosk.calls.ice import restrict_host_addresses
from kiosk.calls.sfu import AudioLevelMeter, SfuError, SfuFeed, SfuPublisher, SfuPublisherInfo, SfuUnavailable
from kiosk.janus import JanusError, JanusUnavailable
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.emulated import EmulatedDevices
from kiosk.server.sfu import JanusRooms, SfuRoom

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    with running_janus(tmp_path) as server:
        restrict_host_addresses([server.ice_address])  # our candidates on the address Janus gathers on
        try:
            yield server
        finally:
            restrict_host_addresses(None)


@pytest.fixture
async def rooms(janus: JanusServer) -> AsyncIterator[JanusRooms]:
    rooms = JanusRooms(janus.url, VIDEOROOM_ADMIN_KEY)
    try:
        yield rooms
    finally:
        await rooms.close()


class Participant:
    """An emulated camera and microphone, published into a room, subscribing to every other publisher."""

    def __init__(
        self, janus: JanusServer, room: SfuRoom, uid: str, tone: float, video_codec: str | None = None
    ):
        self.uid = uid
        self.devices = EmulatedDevices(width=320, height=240, fps=15, tone_hz=tone)
        self.video = VideoCapture(self.devices, "emulated-camera-front", self._error)
        self.video.set_enabled(True)
        self.audio = AudioCapture(self.devices, "emulated-mic", self._error)
        self.meter = AudioLevelMeter()
        self.audio.taps.append(self.meter)
        self.talking: list[tuple[str, bool]] = []
        self.errors: list[Exception] = []
        self.feeds: dict[str, SfuFeed] = {}
        self.video_frames: dict[str, int] = {}
        self.audio_frames: dict[str, int] = {}
        self.unpublished: list[int] = []
        self.lost: list[SfuUnavailable] = []
        self.states: list[str] = []
        self.started_at = time.monotonic()
        self._subscribing: set[asyncio.Task[None]] = set()
        self.publisher = SfuPublisher(
            janus.url,
            room=room.room,
            pin=room.pin,
            uid=uid,
            audio_track=self.audio.subscribe(),
            video_track=self.video.subscribe(),
            ice_servers=[],
            video_codec=video_codec,
            on_publisher=self._on_publisher,
            on_unpublished=self.unpublished.append,
            on_connection_state=self.states.append,
            on_lost=self.lost.append,
            on_talking=lambda uid, talking: self.talking.append((uid, talking)),
            audio_level=self.meter,
            on_keyframe_request=self.video.request_keyframe,
        )

    def _error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def _on_publisher(self, info: SfuPublisherInfo) -> None:
        task = asyncio.get_running_loop().create_task(self._subscribe(info))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _subscribe(self, info: SfuPublisherInfo) -> None:
        feed = await self.publisher.subscribe(
            info,
            session_started_at=self.started_at,
            on_video_frame=self._video,
            on_audio_frame=self._audio,
            on_connection_state=lambda feed, state: None,
        )
        self.feeds[info.uid] = feed

    def _video(self, uid: str, frame: Any) -> None:
        self.video_frames[uid] = self.video_frames.get(uid, 0) + 1

    def _audio(self, uid: str, frame: Any) -> None:
        self.audio_frames[uid] = self.audio_frames.get(uid, 0) + 1

    def receives(self, uid: str) -> bool:
        return self.video_frames.get(uid, 0) > 5 and self.audio_frames.get(uid, 0) > 10

    async def close(self) -> None:
        for task in list(self._subscribing):
            task.cancel()
        await asyncio.gather(*(feed.close() for feed in self.feeds.values()))
        await self.publisher.close()
        await self.video.close()
        await self.audio.close()


async def test_rooms_are_created_with_a_pin_and_destroyed(janus: JanusServer, rooms: JanusRooms) -> None:
    room = await rooms.create_room("session-1", publishers=3)
    other = await rooms.create_room("session-2", publishers=3)
    assert room.room != other.room and room.pin != other.pin and len(room.pin) >= 16
    assert room.for_client() == {
        "url": janus.url,
        "room": room.room,
        "pin": room.pin,
        "videoCodecs": "vp8,h264",
    }
    assert room.secret not in repr(room)
    alice = Participant(janus, room, "alice", 330)
    try:
        await alice.publisher.start()
        assert alice.publisher.feed is not None
    finally:
        await alice.close()
    await rooms.destroy_room(room)
    await rooms.destroy_room(room)  # already gone: not an error
    bob = Participant(janus, room, "bob", 440)
    try:
        with pytest.raises(SfuError) as refused:
            await bob.publisher.start()
        assert refused.value.code == 426 and "No such room" in str(refused.value)
    finally:
        await bob.close()
    # Rooms need the plugin's admin key.
    for key, refusal in ((None, "admin_key"), ("wrong-key", "Unauthorized")):
        keyless = JanusRooms(janus.url, key)
        try:
            with pytest.raises(JanusError, match=refusal) as refused:
                await keyless.create_room("session-3", publishers=3)
            assert refused.value.code is not None and not isinstance(refused.value, JanusUnavailable)
        finally:
            await keyless.close()
    await rooms.destroy_room(other)


async def test_a_wrong_pin_is_refused(janus: JanusServer, rooms: JanusRooms) -> None:
    room = await rooms.create_room("session-pin", publishers=2)
    wrong = SfuRoom(room.session_id, room.room, "not-the-pin", room.secret, room.publishers, room.api_url)
    mallory = Participant(janus, wrong, "mallory", 330)
    try:
        with pytest.raises(SfuError) as refused:
            await mallory.publisher.start()
        assert refused.value.code == 433 and "wrong pin" in str(refused.value)
    finally:
        await mallory.close()
    await rooms.destroy_room(room)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_one_publisher_one_subscriber(janus: JanusServer, rooms: JanusRooms, codec: str) -> None:
    room = await rooms.create_room("session-pair", publishers=2)
    alice = Participant(janus, room, "alice", 330, video_codec=codec)
    bob = Participant(janus, room, "bob", 550)
    try:
        await alice.publisher.start()
        await bob.publisher.start()
        await wait_until(lambda: "alice" in bob.feeds, 10, "bob's subscription to alice")
        feed = bob.feeds["alice"]
        await wait_until(lambda: bob.receives("alice"), 10, "alice's media at bob")
        stats = await feed.collect_stats()
        assert stats.uid == "alice" and feed.participant.user.uid == "alice"
        assert stats.connection_state == "connected"
        assert stats.video_frames_decoded > 5 and stats.audio_frames_decoded > 10
        assert stats.video_packets_received > 0 and stats.audio_packets_received > 0
        assert stats.latency_ms_p50 is not None and stats.latency_ms_p50 < 500  # stamps read through Janus
        assert feed.audio_level > 0.05 and feed.receiving(1.0) and feed.age() < 30
        [encoder] = alice.video.encoders
        assert encoder.mime == f"video/{codec.lower()}"
        assert feed.pc.getTransceivers()[1].receiver._track is not None
        assert "connected" in alice.states
        first = feed.stats.first_frame_ms
        assert first is not None
        print(f"{codec}: start of bob's session to alice's first decoded frame through Janus: {first:.0f} ms")
    finally:
        await bob.close()
        await alice.close()
    assert feed.closed and not feed.receiving(0.0)
    await rooms.destroy_room(room)


async def test_three_participants_each_encode_once_and_receive_both_others(
    janus: JanusServer, rooms: JanusRooms
) -> None:
    room = await rooms.create_room("session-group", publishers=3)
    people = [
        Participant(janus, room, uid, tone) for uid, tone in (("alice", 330), ("bob", 440), ("carol", 550))
    ]
    try:
        for person in people:
            await person.publisher.start()
        for person in people:
            for other in people:
                if other is not person:
                    await wait_until(
                        lambda p=person, o=other: p.receives(o.uid), 15, f"{other.uid} at {person.uid}"
                    )
        # One encoder per capture, feeding the one publisher connection however many receive it.
        before = {}
        for person in people:
            [video] = person.video.encoders
            [audio] = person.audio.encoders
            assert (video.sinks, audio.sinks) == (1, 1)
            before[person.uid] = (person.video.frames_captured, video.frames_encoded)
        await asyncio.sleep(1.0)
        for person in people:
            [video] = person.video.encoders
            captured = person.video.frames_captured - before[person.uid][0]
            encoded = video.frames_encoded - before[person.uid][1]
            assert 0.7 * captured <= encoded <= captured + 1
            assert person.publisher.publishers.keys() == {o.publisher.feed for o in people if o is not person}
        # Everyone's tone makes the room report them talking (the audio-level extension through Janus);
        # a muted microphone sends silence, and the room reports that she stopped.
        for person in people:
            for other in people:
                await wait_until(
                    lambda p=person, o=other: (o.uid, True) in p.talking, 5, f"{other.uid} talking"
                )
        people[1].audio.set_muted(True)
        await wait_until(lambda: ("bob", False) in people[0].talking, 5, "bob stopped talking at alice")
        assert people[0].publisher.talking == {"alice", "carol"}
        # carol leaves: the others hear that her feed is unpublished, and go on receiving each other.
        alice, bob, carol = people
        carol_feed = carol.publisher.feed
        await carol.close()
        for person in (alice, bob):
            await wait_until(
                lambda p=person: carol_feed in p.unpublished, 5, f"carol unpublished at {person.uid}"
            )
            assert carol_feed not in person.publisher.publishers
        seen = bob.video_frames["alice"]
        await wait_until(lambda: bob.video_frames["alice"] > seen + 5, 5, "alice at bob after carol left")
    finally:
        for person in people:
            await person.close()
    await rooms.destroy_room(room)


async def test_janus_going_away_is_a_clean_error(janus: JanusServer, rooms: JanusRooms) -> None:
    room = await rooms.create_room("session-outage", publishers=2)
    alice = Participant(janus, room, "alice", 330)
    try:
        await alice.publisher.start()
        janus.stop()
        started = time.monotonic()
        with pytest.raises(JanusUnavailable, match="unavailable"):
            await rooms.create_room("session-later", publishers=2)
        with pytest.raises(JanusUnavailable):
            await rooms.destroy_room(room)
        bob = Participant(janus, room, "bob", 440)
        try:
            with pytest.raises(SfuUnavailable, match="unavailable"):
                await bob.publisher.start()
        finally:
            await bob.close()
        assert time.monotonic() - started < 2.0  # refused at once, not a hang
        # A publisher already in the room hears that Janus is gone when its poll fails.
        await wait_until(lambda: alice.lost, 5, "alice's on_lost")
        assert isinstance(alice.lost[0], SfuUnavailable)
        with pytest.raises(SfuUnavailable):
            await alice.publisher.janus.attach()
    finally:
        await alice.close()
