"""Group calls through an SFU: the Janus VideoRoom plugin over Janus's HTTP API.

One `JanusSession` per endpoint and room (create, keepalive every 25 s, one long poll for the events
of all its handles, destroy). On it:

- `SfuPublisher`: one handle joined as a publisher (`display` = our uid) and one send-only peer
  connection with our audio and video; the shared encoders feed it as they feed mesh peers. It
  reports who publishes, who stopped, and who is talking.
- `SfuFeed`: one handle per remote publisher, joined as a subscriber to its feed; Janus offers, we
  answer receive-only. It receives through `RemoteMedia`, as a mesh `RemotePeer` does, so the session
  treats both alike (stats, levels, stamp latencies, frame callbacks).

aiortc does not trickle: every offer and answer carries its candidates, and Janus's SDPs carry theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
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
from kiosk.calls.peer import (
    AudioSink,
    FrameSink,
    RemoteMedia,
    RemoteParticipant,
    _forward_keyframe_requests,
    _ice_servers,
    _prefer_video_codec,
    _share_encoder,
    allow_close_while_connecting,
)

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_SECONDS = 25.0  # Janus drops a session after 60 s without a request
REQUEST_TIMEOUT = 5.0  # one HTTP request to Janus
EVENT_TIMEOUT = 10.0  # a plugin's asynchronous reply (joined, configured, attached, started)
POLL_MAX_EVENTS = 10

# VideoRoom error codes a caller may want to tell apart.
ERROR_NO_SUCH_SESSION = 458  # Janus core: the Janus session is gone
ERROR_NO_SUCH_ROOM = 426
ERROR_NO_SUCH_FEED = 428
ERROR_UNAUTHORIZED = 433


class SfuError(Exception):
    """Janus refused a request (`code` is Janus's or the VideoRoom plugin's error code)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SfuUnavailable(SfuError):
    """Janus cannot be reached, does not answer in time, or dropped our session."""


@dataclass(frozen=True)
class SfuPublisherInfo:
    feed: int  # Janus's publisher id, which a subscriber names
    uid: str  # the publisher's display: its kiosk uid


class JanusSession:
    """A Janus API session over HTTP, with its keepalive and long poll; handles are attached on it."""

    def __init__(self, api_url: str, *, http: aiohttp.ClientSession | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = http
        self._own_http = http is None
        self.id: int | None = None
        self.handles: dict[int, JanusHandle] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.error: SfuUnavailable | None = None  # why the session stopped, if Janus went away
        self.on_lost: Callable[[SfuUnavailable], None] | None = None

    # --------------------------------------------------------------- transport

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _post(
        self, path: str, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        body = {**body, "transaction": body.get("transaction") or secrets.token_hex(8)}
        try:
            async with self._session().post(
                f"{self.api_url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    raise SfuUnavailable(f"Janus answered HTTP {response.status} to {body.get('janus')}")
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SfuUnavailable(
                f"Janus at {self.api_url} is unavailable: {exc or type(exc).__name__}"
            ) from exc
        if not isinstance(reply, dict):
            raise SfuUnavailable("Janus sent a reply that is not a JSON object")
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            if error.get("code") == ERROR_NO_SUCH_SESSION and path and self.id is not None:
                # Janus dropped our session (its timeout after a network loss, or a restart): every
                # handle on it is gone too, which the long poll may take 30 s to tell.
                lost = SfuUnavailable("Janus dropped the session", ERROR_NO_SUCH_SESSION)
                self._lost(lost)
                raise lost
            raise SfuError(f"Janus refused {body.get('janus')}: {error.get('reason')}", error.get("code"))
        return reply

    # --------------------------------------------------------------- lifecycle

    async def create(self) -> JanusSession:
        reply = await self._post("", {"janus": "create"})
        self.id = int(reply["data"]["id"])
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll(), name=f"janus-poll-{self.id}"),
            loop.create_task(self._keepalive(), name=f"janus-keepalive-{self.id}"),
        ]
        return self

    async def attach(self, plugin: str = VIDEOROOM) -> JanusHandle:
        self._check()
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": plugin})
        handle = JanusHandle(self, int(reply["data"]["id"]))
        self.handles[handle.id] = handle
        return handle

    async def destroy(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self.id is not None and self.error is None:
            with contextlib.suppress(SfuError):
                await self._post(f"/{self.id}", {"janus": "destroy"}, timeout=2.0)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending(SfuUnavailable("the Janus session was closed"))
        if self._own_http and self._http is not None:
            await self._http.close()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed or self.id is None:
            raise SfuUnavailable("the Janus session is closed")

    def _lost(self, error: SfuUnavailable) -> None:
        if self.error is not None or self.closed:
            return
        log.warning("Janus session %s lost: %s", self.id, error)
        self.error = error
        self._fail_pending(error)
        for handle in list(self.handles.values()):
            handle._lost(error)
        if self.on_lost is not None:
            self.on_lost(error)

    def _fail_pending(self, error: SfuError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            try:
                await self._post(f"/{self.id}", {"janus": "keepalive"})
            except SfuError as exc:
                self._lost(exc if isinstance(exc, SfuUnavailable) else SfuUnavailable(str(exc), exc.code))
                return

    async def _poll(self) -> None:
        url = f"{self.api_url}/{self.id}"
        failures = 0
        while True:
            try:
                async with self._session().get(
                    url,
                    params={"maxev": str(POLL_MAX_EVENTS), "rid": str(int(time.time() * 1000))},
                    timeout=aiohttp.ClientTimeout(total=45),  # Janus answers a quiet poll after 30 s
                ) as response:
                    if response.status != 200:
                        raise SfuUnavailable(f"Janus answered HTTP {response.status} to a poll")
                    events = await response.json(content_type=None)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, ValueError, SfuUnavailable) as exc:
                failures += 1
                if failures >= 2:  # one retry: a single dropped connection is not Janus gone
                    self._lost(
                        exc
                        if isinstance(exc, SfuUnavailable)
                        else SfuUnavailable(f"Janus poll failed: {exc}")
                    )
                    return
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):
                    try:
                        self._dispatch(event)
                    except Exception:  # a callback's bug must not stop the event stream
                        log.exception("handling Janus event %s failed", event.get("janus"))
                    if event.get("janus") == "error":
                        error = event.get("error") or {}
                        if error.get("code") == ERROR_NO_SUCH_SESSION:  # it timed out on Janus
                            self._lost(SfuUnavailable("Janus dropped the session", ERROR_NO_SUCH_SESSION))
                            return

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind in ("keepalive", "ack"):
            return
        transaction = event.get("transaction")
        future = self._pending.pop(transaction, None) if transaction else None
        if future is not None and kind in ("event", "success", "error"):
            if not future.done():
                future.set_result(event)
            return
        handle = self.handles.get(int(event.get("sender") or 0))
        if handle is not None:
            handle._event(event)

    async def _request(self, handle: JanusHandle, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A Janus API request on a handle; an asynchronous one ("ack") waits for its event."""
        self._check()
        transaction = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            reply = await self._post(f"/{self.id}/{handle.id}", {**body, "transaction": transaction})
            if reply.get("janus") != "ack":
                return reply
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise SfuUnavailable(
                    f"Janus did not answer {body.get('body', {}).get('request')} in time"
                ) from None
        finally:
            self._pending.pop(transaction, None)
            if future.done() and not future.cancelled():
                future.exception()  # failed by _lost while _post itself raised: nobody else reads it


class JanusHandle:
    """A handle attached to a plugin: requests, and the events Janus sends it on its own."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id
        self.on_event: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None
        self.on_core_event: Callable[[dict[str, Any]], None] | None = None  # webrtcup, media, hangup, ...
        self.on_lost: Callable[[SfuUnavailable], None] | None = None

    async def request(self, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """A synchronous plugin request (create, destroy, exists, list...): the plugin's data."""
        data, _ = self._plugin_reply(
            await self.session._request(self, {"janus": "message", "body": body}, timeout)
        )
        return data

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = EVENT_TIMEOUT
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request (join, publish, start...): its event's data and jsep."""
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        return self._plugin_reply(await self.session._request(self, request, timeout))

    def _plugin_reply(self, reply: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            raise SfuError(f"Janus: {error.get('reason')}", error.get("code"))
        data = (reply.get("plugindata") or {}).get("data") or {}
        if "error_code" in data or "error" in data:
            raise SfuError(f"Janus VideoRoom: {data.get('error')}", data.get("error_code"))
        return data, reply.get("jsep")

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("janus") == "event":
            if self.on_event is not None:
                data = (event.get("plugindata") or {}).get("data") or {}
                self.on_event(data, event.get("jsep"))
        elif self.on_core_event is not None:
            self.on_core_event(event)

    def _lost(self, error: SfuUnavailable) -> None:
        if self.on_lost is not None:
            self.on_lost(error)

    async def detach(self) -> None:
        self.session.handles.pop(self.id, None)
        if self.session.closed or self.session.error is not None:
            return
        with contextlib.suppress(SfuError):
            await self.session._request(self, {"janus": "detach"}, 2.0)


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

    sender._next_encoded_frame = with_level  # type: ignore[method-assign]


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
        ice_servers: list[dict[str, Any]],
        video_codec: str | None = None,
        on_publisher: Callable[[SfuPublisherInfo], None] | None = None,
        on_unpublished: Callable[[int], None] | None = None,
        on_talking: Callable[[str, bool], None] | None = None,
        on_connection_state: Callable[[str], None] | None = None,
        on_lost: Callable[[SfuUnavailable], None] | None = None,
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
        self.handle = await self.janus.attach()
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
            raise SfuError(f"Janus did not answer our offer: {data}")
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
            self._lost(SfuUnavailable("the room was destroyed", ERROR_NO_SUCH_ROOM))

    def _lost(self, error: SfuUnavailable) -> None:
        if self.on_lost is not None and not self.closed:
            self.on_lost(error)

    async def subscribe(
        self,
        info: SfuPublisherInfo,
        *,
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: Callable[[Any, str], None],
        participant: RemoteParticipant | None = None,
    ) -> SfuFeed:
        """A started subscription to another publisher's feed, on this publisher's Janus session."""
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
            with contextlib.suppress(SfuError):
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
        ice_servers: list[dict[str, Any]],
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: Callable[[Any, str], None],
    ) -> None:
        super().__init__(
            participant,
            ice_servers=ice_servers,
            session_started_at=session_started_at,
            on_video_frame=on_video_frame,
            on_audio_frame=on_audio_frame,
            on_connection_state=on_connection_state,
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
        self.handle = await self.janus.attach()
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
            raise SfuError(f"Janus sent no offer for feed {self.feed}: {data}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "recvonly"
            if transceiver.kind == "video":
                release_frames_on_marker(transceiver.receiver)  # decode a frame when complete
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
    "AudioLevelMeter",
    "JanusHandle",
    "JanusSession",
    "SfuError",
    "SfuFeed",
    "SfuPublisher",
    "SfuPublisherInfo",
    "SfuUnavailable",
]
