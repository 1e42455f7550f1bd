"""Group calls through an SFU: the Janus VideoRoom plugin over Janus's HTTP API.

One `JanusSession` (kiosk/janus.py, the Janus HTTP client the call server uses too) per endpoint and
room (create, keepalive every 25 s, one long poll for the events of all its handles, destroy). On it:

- `SfuPublisher`: one handle joined as a publisher (`display` = our uid) and one send-only peer
  connection with our audio and video; the shared encoders feed it as they feed mesh peers. It
  reports who publishes, who stopped, and who is talking.
- `SfuFeed`: one handle per remote publisher, joined as a subscriber to its feed; Janus offers, we
  answer receive-only. It receives through `RemoteMedia`, as a mesh `RemotePeer` does, so the session
  treats both alike (stats, levels, stamp latencies, frame callbacks).

Errors are the Janus client's: `SfuError` is `kiosk.janus.JanusError` (a refusal, with Janus's or the
VideoRoom's `code`), `SfuUnavailable` is `kiosk.janus.JanusUnavailable` (Janus unreachable, not
answering in time, or having dropped the session).

aiortc does not trickle: every offer and answer carries its candidates, and Janus's SDPs carry theirs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from kiosk.calls.events import RTCUser
from kiosk.calls.jitter import release_frames_on_marker
from kiosk.calls.nack import repeat_nacks
from kiosk.calls.peer import (
    AudioSink,
    FrameSink,
    RemoteMedia,
    RemoteParticipant,
    StateSink,
    _forward_keyframe_requests,
    _ice_servers,
    _prefer_video_codec,
    _share_encoder,
    allow_close_while_connecting,
)
from kiosk.calls.playout import ParticipantAudio
from kiosk.janus import (
    ERROR_NO_SUCH_FEED,
    ERROR_NO_SUCH_ROOM,
    ERROR_NO_SUCH_SESSION,
    ERROR_UNAUTHORIZED,
    VIDEOROOM,
    JanusError,
    JanusHandle,
    JanusSession,
    JanusUnavailable,
)
from kiosk.protocol import IceServer

# The SDK's names for the Janus client's errors: a refusal (`code`: Janus's or the VideoRoom's error
# code), and Janus unreachable, not answering in time, or having dropped our session.
SfuError = JanusError
SfuUnavailable = JanusUnavailable


@dataclass(frozen=True)
class SfuPublisherInfo:
    feed: int  # Janus's publisher id, which a subscriber names
    uid: str  # the publisher's display: its kiosk uid


class AudioLevelMeter:
    """The level of the newest captured audio frame, for the RTP audio-level header extension
    (RFC 6464) that the VideoRoom's talking events read.

    aiortc writes that extension only for audio it encodes itself; the shared Opus encoder hands it
    packets, whose level aiortc does not know. Add the meter to the audio capture's taps
    (`session.audio.taps.append(meter)`) and give it to `SfuPublisher(audio_level=meter)`.
    """

    def __init__(self) -> None:
        self.dbov: int | None = None  # -127 (silence) .. 0 (full scale)

    def __call__(self, frame: Any) -> None:
        if not isinstance(frame, av.AudioFrame):
            return
        samples = frame.to_ndarray().ravel().astype(np.float64)
        rms = math.sqrt(float(samples @ samples) / samples.size) / 32767.0 if samples.size else 0.0
        self.dbov = max(-127, min(0, round(20 * math.log10(rms)))) if rms > 0 else -127


def _send_audio_level(sender: RTCRtpSender, meter: AudioLevelMeter) -> None:
    """Stamp the meter's level on every audio frame the sender sends without a level of its own."""
    next_frame = sender._next_encoded_frame

    async def with_level(codec: Any) -> Any:
        frame = await next_frame(codec)
        if frame is not None and frame.audio_level is None and meter.dbov is not None:
            frame.audio_level = meter.dbov
        return frame

    sender._next_encoded_frame = with_level  # type: ignore[method-assign]  # aiortc has no hook for it


def _participant(uid: str) -> RemoteParticipant:
    return RemoteParticipant(user=RTCUser(uid=uid, name=uid))


class SfuPublisher:
    """Our audio and video published into a VideoRoom, and what the room tells about the others.

    Callbacks: `on_publisher(info)` for every other publisher present at join or publishing later;
    `on_unpublished(feed)` when one stops publishing or leaves; `on_talking(uid, talking)` from the
    room's audio-level events (which need `audio_level`, see AudioLevelMeter);
    `on_keyframe_request()` when Janus asks for a keyframe for a new subscriber (pass the video
    capture's `request_keyframe`, as for a mesh `RemotePeer`);
    `on_connection_state(state)` for our peer connection;
    `on_lost(error)` when Janus goes away.
    """

    def __init__(
        self,
        api_url: str,
        *,
        room: int,
        pin: str,
        uid: str,
        audio_track: MediaStreamTrack,
        video_track: MediaStreamTrack | None,
        ice_servers: list[IceServer],
        video_codec: str | None = None,
        on_publisher: Callable[[SfuPublisherInfo], None] | None = None,
        on_unpublished: Callable[[int], None] | None = None,
        on_talking: Callable[[str, bool], None] | None = None,
        on_connection_state: Callable[[str], None] | None = None,
        on_lost: Callable[[JanusUnavailable], None] | None = None,
        audio_level: AudioLevelMeter | None = None,
        on_keyframe_request: Callable[[], None] | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.room = room
        self.pin = pin
        self.uid = uid
        self.janus = JanusSession(api_url, http=http)
        self.ice_servers = list(ice_servers)
        self.video_codec = video_codec
        self.on_publisher = on_publisher
        self.on_unpublished = on_unpublished
        self.on_talking = on_talking
        self.on_connection_state = on_connection_state
        self.on_lost = on_lost
        self.handle: JanusHandle | None = None
        self.feed: int | None = None  # our own publisher id
        self.private_id: int | None = None  # given to our subscriptions, so Janus ties them to us
        self.publishers: dict[int, str] = {}  # feed -> uid, the others publishing now
        self.talking: set[str] = set()
        self.published_at: float | None = None
        self.closed = False
        # An explicit empty list: aiortc would otherwise try a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(self.ice_servers)))
        allow_close_while_connecting(self.pc)
        self._local_tracks = [t for t in (audio_track, video_track) if t is not None]
        audio = self.pc.addTransceiver(audio_track, direction="sendonly")
        _share_encoder(audio, audio_track)
        if audio_level is not None:
            _send_audio_level(audio.sender, audio_level)
        if video_track is not None:
            video = self.pc.addTransceiver(video_track, direction="sendonly")
            _share_encoder(video, video_track)
            if video_codec:
                _prefer_video_codec(video, video_codec)
            if on_keyframe_request is not None:
                # Janus relays each new subscriber's picture-loss request (PLI) to us: the shared encoder
                # (or a camera that encodes by itself) must hear it, not only aiortc's idle encoder.
                _forward_keyframe_requests(video, on_keyframe_request)

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            if self.on_connection_state is not None:
                self.on_connection_state(self.pc.connectionState)

    async def start(self) -> None:
        """Join the room (SfuError 433 for a wrong pin, 426 for no such room) and publish."""
        self.janus.on_lost = self._lost
        await self.janus.create()
        self.handle = await self.janus.attach(VIDEOROOM)
        self.handle.on_event = self._event
        joined, _ = await self.handle.message(
            {"request": "join", "ptype": "publisher", "room": self.room, "pin": self.pin, "display": self.uid}
        )
        self.feed = int(joined["id"])
        self.private_id = joined.get("private_id")
        self._publishers(joined.get("publishers") or [])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body: dict[str, Any] = {"request": "publish", "audiocodec": "opus"}
        if self.video_codec:
            body["videocodec"] = self.video_codec.lower()
        data, jsep = await self.handle.message(body, {"type": "offer", "sdp": self.pc.localDescription.sdp})
        if jsep is None or jsep.get("type") != "answer":
            raise JanusError(f"Janus did not answer our offer: {data}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))
        self.published_at = time.monotonic()

    def _publishers(self, publishers: list[dict[str, Any]]) -> None:
        for p in publishers:
            feed, uid = int(p["id"]), str(p.get("display") or p["id"])
            if feed == self.feed or p.get("dummy"):
                continue
            known = feed in self.publishers
            self.publishers[feed] = uid
            if not known and self.on_publisher is not None:
                self.on_publisher(SfuPublisherInfo(feed, uid))

    def _gone(self, feed: Any) -> None:
        if not isinstance(feed, int) or feed not in self.publishers:
            return  # "ok" (ourselves), or someone who never published
        uid = self.publishers.pop(feed)
        if uid in self.talking:
            self.talking.discard(uid)
            if self.on_talking is not None:
                self.on_talking(uid, False)
        if self.on_unpublished is not None:
            self.on_unpublished(feed)

    def _event(self, data: dict[str, Any], jsep: dict[str, Any] | None) -> None:
        kind = data.get("videoroom")
        if kind == "event":
            self._publishers(data.get("publishers") or [])
            for key in ("unpublished", "leaving"):
                if key in data:
                    self._gone(data[key])
        elif kind in ("talking", "stopped-talking"):
            feed = data.get("id")
            uid = self.uid if feed == self.feed else self.publishers.get(int(feed or 0))
            if uid is None:
                return
            talking = kind == "talking"
            if talking == (uid in self.talking):
                return
            (self.talking.add if talking else self.talking.discard)(uid)
            if self.on_talking is not None:
                self.on_talking(uid, talking)
        elif kind == "destroyed":
            self._lost(JanusUnavailable("the room was destroyed", ERROR_NO_SUCH_ROOM))

    def _lost(self, error: JanusUnavailable) -> None:
        if self.on_lost is not None and not self.closed:
            self.on_lost(error)

    async def subscribe(
        self,
        info: SfuPublisherInfo,
        *,
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: StateSink,
        participant: RemoteParticipant | None = None,
        audio: ParticipantAudio | None = None,
    ) -> SfuFeed:
        """A started subscription to another publisher's feed, on this publisher's Janus session.
        `audio`: the participant's playout, for its audio."""
        feed = SfuFeed(
            self.janus,
            room=self.room,
            pin=self.pin,
            feed=info.feed,
            participant=participant or _participant(info.uid),
            private_id=self.private_id,
            ice_servers=self.ice_servers,
            session_started_at=session_started_at,
            on_video_frame=on_video_frame,
            on_audio_frame=on_audio_frame,
            on_connection_state=on_connection_state,
            audio=audio,
        )
        try:
            await feed.start()
        except BaseException:
            await feed.close()
            raise
        return feed

    async def close(self) -> None:
        """Leave the room and end the Janus session (every feed subscribed on it stops too)."""
        if self.closed:
            return
        self.closed = True
        for track in self._local_tracks:
            track.stop()
        if self.handle is not None and self.janus.error is None and not self.janus.closed:
            with contextlib.suppress(JanusError):
                await self.handle.message({"request": "leave"}, timeout=2.0)
        with contextlib.suppress(Exception):
            await self.pc.close()
        await self.janus.destroy()


class SfuFeed(RemoteMedia):
    """One remote participant's feed, subscribed through Janus: a receive-only peer connection."""

    def __init__(
        self,
        janus: JanusSession,
        *,
        room: int,
        pin: str,
        feed: int,
        participant: RemoteParticipant,
        private_id: int | None,
        ice_servers: list[IceServer],
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: StateSink,
        audio: ParticipantAudio | None = None,
    ) -> None:
        super().__init__(
            participant,
            ice_servers=ice_servers,
            session_started_at=session_started_at,
            on_video_frame=on_video_frame,
            on_audio_frame=on_audio_frame,
            on_connection_state=on_connection_state,
            audio=audio,
        )
        self.janus = janus
        self.room = room
        self.pin = pin
        self.feed = feed
        self.private_id = private_id
        self.handle: JanusHandle | None = None
        self.started_at: float | None = None  # when Janus confirmed our answer

    async def start(self) -> None:
        """Subscribe (SfuError 428 if the feed is gone), answer Janus's offer, start the media."""
        self.handle = await self.janus.attach(VIDEOROOM)
        body: dict[str, Any] = {
            "request": "join",
            "ptype": "subscriber",
            "room": self.room,
            "pin": self.pin,
            "streams": [{"feed": self.feed}],
        }
        if self.private_id is not None:
            body["private_id"] = self.private_id
        data, jsep = await self.handle.message(body)
        if jsep is None or jsep.get("type") != "offer":
            raise JanusError(f"Janus sent no offer for feed {self.feed}: {data}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "recvonly"
            if transceiver.kind == "video":
                release_frames_on_marker(transceiver.receiver)  # decode a frame when complete
                self.nacks = repeat_nacks(transceiver.receiver)  # ask again for a lost retransmission
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.handle.message(
            {"request": "start"}, {"type": "answer", "sdp": self.pc.localDescription.sdp}
        )
        self.started_at = time.monotonic()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        handle, self.handle = self.handle, None
        if handle is not None:
            await handle.detach()
        await self._close_media()


__all__ = [
    "ERROR_NO_SUCH_FEED",
    "ERROR_NO_SUCH_ROOM",
    "ERROR_NO_SUCH_SESSION",
    "ERROR_UNAUTHORIZED",
    "AudioLevelMeter",
    "JanusHandle",
    "JanusSession",
    "SfuError",
    "SfuFeed",
    "SfuPublisher",
    "SfuPublisherInfo",
    "SfuUnavailable",
]
