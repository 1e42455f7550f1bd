"""An active call session: the mesh of peer connections, local capture, and the in-call controls.

A `CallSession` is made by `Calls.start_session()` and lives until the session ends. It reacts to
signaling messages for its session id, owns one `RemotePeer` per remote participant, and emits the
documents' events through the listeners of its `Calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av

from kiosk.calls.audio_output import AudioOutput
from kiosk.calls.constants import AudioMode, Mode, parse_enum
from kiosk.calls.errors import CallsError, ConnectionFailedError, NotSupportedError
from kiosk.calls.events import (
    AudioModeInfo,
    CallError,
    CallSwitchRequestInfo,
    RTCMutedUser,
    RTCRecordingInfo,
    RTCUser,
)
from kiosk.calls.peer import RemoteMedia, RemoteParticipant, RemotePeer, SessionStats
from kiosk.calls.recorder import CallRecorder
from kiosk.calls.settings import CallSettings
from kiosk.calls.sfu import ERROR_NO_SUCH_ROOM, AudioLevelMeter, SfuError, SfuPublisher, SfuPublisherInfo
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.devices import DeviceError, MediaDeviceInfo, SpeakerSink
from kiosk.protocol import DEFAULT_REJOIN_GRACE

if TYPE_CHECKING:
    from kiosk.calls.client import Calls

log = logging.getLogger(__name__)

IDLE_WARNING_SECONDS = 60
# A peer's media has stopped when nothing arrived for this long (audio flows 50 times a second, even
# muted: digital silence).
MEDIA_STALL_SECONDS = 1.5
MEDIA_START_SECONDS = 3.0  # a rebuilt peer connection gets this long to bring its first media
MEDIA_WATCH_INTERVAL = 0.5
REBUILD_INTERVAL_SECONDS = 2.0  # between two rebuilds of the same peer connection
OFFER_ANSWER_SECONDS = 1.5  # an offer unanswered this long is taken as lost
SIGNALING_REFRESH_AFTER = 3.0  # media stalled this long: renew the signaling connection too
SIGNALING_REFRESH_INTERVAL = 4.0
# In a call the signaling connection is probed with `ping`: a TCP connection whose network died
# looks open for minutes, and what the server sends us (an offer to rebuild a connection) waits
# behind TCP's backed-off retransmits. No pong in time: make a new connection.
SIGNALING_PROBE_INTERVAL = 2.0
SIGNALING_PROBE_TIMEOUT = 2.0
SFU_RETRY_SECONDS = 1.0
MESH_HANDOVER_SECONDS = 10.0  # mesh connections still not replaced by a feed this long after the switch close  # between two attempts to (re)publish into a group call's SFU room


class CallSession:
    def __init__(self, calls: Calls, session_id: str, settings: CallSettings, view: Any) -> None:
        self.calls = calls
        self.session_id = session_id
        self.settings = settings
        self.view = view
        self.started_at = time.monotonic()
        self.self_user: RTCUser | None = None
        self.participants: dict[str, RemoteParticipant] = {}
        # One per remote participant: a mesh RemotePeer, or an SfuFeed once the session goes through
        # the SFU (docs/protocol.md, "Group calls through the SFU"); both are RemoteMedia.
        self.peers: dict[str, RemoteMedia] = {}
        self.media_mode = "mesh"
        self.sfu: SfuPublisher | None = None
        self._sfu_room: dict[str, Any] | None = None  # the room's `sfu` description from the server
        self._sfu_level = AudioLevelMeter()  # our audio level, for the room's talking events
        self.talking: set[str] = set()  # uids the SFU says are talking (its active speakers)
        self._subscribing: set[int] = set()  # SFU feeds whose subscription is under way
        self.audio_only = settings.audio_only
        self.audio_muted = settings.start_with_audio_muted
        self.video_muted = settings.start_with_video_muted
        self.mode: Mode = settings.mode
        self.pip = False
        self.ice_servers: list[dict[str, Any]] = []
        self.call_token = ""
        self.rejoin_grace = DEFAULT_REJOIN_GRACE  # the server says how long it keeps our place
        self.rejoined_since_loss = True  # False from a signaling loss until the rejoin succeeded
        self._had_media: set[str] = set()  # participants whose media has flowed (so it can stop)
        self._last_media_from: dict[str, float] = {}  # uid -> newest media from it, any connection
        self._offers_seen: dict[str, int] = {}  # uid -> offers received from it
        self._rebuilt_at: dict[str, float] = {}  # uid -> when we last rebuilt its peer connection
        self._refreshed_at = 0.0
        self.active = False
        self._torn_down = False
        self._early: list[dict[str, Any]] = []  # messages that came before the join completed
        self.first_remote_frame_ms: float | None = None
        self.recorder: CallRecorder | None = None
        self.recordings: list[Path] = []  # files this session recorded
        self.final_stats: SessionStats | None = None
        self.recording = False
        self._known_devices: list[MediaDeviceInfo] = []
        self._known_modes: list[str] = []
        self._idle_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        devices = calls.devices
        cameras = devices.video_inputs()
        mics = devices.audio_inputs()
        self.video = VideoCapture(devices, cameras[0].device_id if cameras else None, self._device_error)
        self.audio = AudioCapture(devices, mics[0].device_id if mics else None, self._device_error)
        self.video.on_restored = lambda: self._emit_error("DEVICE_RESTORED", "camera is back; video resumed")
        self.audio.set_muted(self.audio_muted)
        self.video.set_enabled(not self.audio_only)
        self.video.set_paused(self.video_muted)
        self.output = AudioOutput(
            devices,
            on_error=self._device_error,
            on_changed=self._emit_audio_modes,
            on_microphone=self._follow_microphone,
        )

    @property
    def audio_mode(self) -> str | None:
        """The selected audio mode (its speaker may still be opening: `output.settled()`)."""
        return self.output.mode

    @property
    def speaker(self) -> SpeakerSink | None:
        """The speaker that plays the call now."""
        return self.output.speaker

    # ----------------------------------------------------------------- lifecycle

    async def start(self, call_token: str) -> None:
        self._known_devices = self.calls.devices.list_devices()
        self._known_modes = self.calls.devices.audio_modes()
        reply = await self.calls.signaling.request(
            "join",
            sessionId=self.session_id,
            callToken=call_token,
            audioMuted=self.audio_muted,
            videoMuted=self.video_muted,
            audioOnly=self.audio_only,
        )
        self.call_token = call_token
        self.rejoin_grace = float(reply.get("rejoinGraceMs", DEFAULT_REJOIN_GRACE * 1000)) / 1000
        self.active = True
        self._choose_initial_audio_mode()
        self.self_user = RTCUser.from_json(reply["self"])
        self.ice_servers = list(reply.get("iceServers") or [])
        if reply.get("audioOnly") and not self.audio_only:
            # The session is an audio call (rung as audio): send no video until someone switches.
            self.audio_only = True
            self.video.set_enabled(False)
        self._view_hook("set_mode", self.mode)
        for data in reply.get("participants", []):
            participant = self._participant_from(data)
            self.participants[participant.user.uid] = participant
        if self.participants:
            self.calls.listeners.emit("on_user_list_changed", self.user_list())
        for participant in self.participants.values():
            if participant.audio_muted or participant.video_muted:
                self._emit_muted(participant)
        media = reply.get("media") or {}
        if media.get("mode") == "sfu":
            self._spawn(self._use_sfu(media["sfu"]))
        else:
            # We offer to those already in the session (the joined reply); anyone who joined after us
            # offers to us. So the early messages are replayed only after these offers are on their way.
            for participant in list(self.participants.values()):
                self._spawn(self._offer_to(participant))
        early, self._early = self._early, []
        for message in early:
            self.handle(message)
        self._update_idle_timer()
        self._spawn(self._watch_media())
        self._spawn(self._probe_signaling())
        if self.settings.auto_record_on_call_start:
            self.start_recording()

    # ----------------------------------------------------------------- staying connected

    def signaling_lost(self) -> None:
        self.rejoined_since_loss = False

    async def rejoin(self) -> None:
        """After the signaling reconnected: take our place in the session back (the server kept it
        for its grace, or builds the session again after a restart), then bring the participant
        list and any broken peer connection up to date."""
        reply = await self.calls.signaling.request(
            "join",
            sessionId=self.session_id,
            callToken=self.call_token,
            audioMuted=self.audio_muted,
            videoMuted=self.video_muted,
            audioOnly=self.audio_only,
            rejoin=True,
        )
        if not self.active:
            return
        self.rejoined_since_loss = True
        self.rejoin_grace = float(reply.get("rejoinGraceMs", self.rejoin_grace * 1000)) / 1000
        listed = {}
        for data in reply.get("participants", []):
            participant = self._participant_from(data)
            listed[participant.user.uid] = participant
            self._update_participant(participant)
        if reply.get("rejoined"):
            # The server kept the session: whoever it no longer lists left while we were away.
            for uid in [u for u in self.participants if u not in listed]:
                self._participant_left(uid)
        else:
            # The server restarted and knows only those who came back before us; the others are
            # kept while their media flows or until they rejoin within the grace.
            self._spawn(self._forget_unconfirmed(set(listed)))
        log.info("rejoined session %s (%d others)", self.session_id, len(listed))
        media = reply.get("media") or {}
        if media.get("mode") == "sfu":
            self._spawn(self._use_sfu(media["sfu"]))
            return
        for uid in listed:
            self._rebuild_if_broken(uid, now_reachable=True)

    async def _forget_unconfirmed(self, confirmed: set[str]) -> None:
        await asyncio.sleep(self.rejoin_grace)
        had_others = bool(self.participants)
        for uid in [u for u in self.participants if u not in confirmed]:
            peer = self.peers.get(uid)
            if self.active and (peer is None or not peer.receiving(MEDIA_STALL_SECONDS)):
                self._participant_left(uid)
        if self.active and had_others and not self.participants:
            # Everyone we were talking to is gone (the session ended while we were away): for this
            # kiosk the call is over, rather than waiting alone for the idle timeout.
            self.calls._drop_session(self, "lost")

    def _update_participant(self, participant: RemoteParticipant) -> None:
        """A participant the server (re)announces: new ones are added, known ones updated."""
        uid = participant.user.uid
        known = self.participants.get(uid)
        if known is None:
            self.participants[uid] = participant
            self._update_idle_timer()
            self.calls.listeners.emit("on_user_joined", participant.user)
            self.calls.listeners.emit("on_user_list_changed", self.user_list())
            if participant.audio_muted or participant.video_muted:
                self._emit_muted(participant)
            return
        changed = (known.audio_muted, known.video_muted) != (participant.audio_muted, participant.video_muted)
        known.audio_muted, known.video_muted = participant.audio_muted, participant.video_muted
        if changed:
            self._emit_muted(known)

    def _initiates_with(self, uid: str) -> bool:
        """Who rebuilds a broken peer connection: the smaller uid, so that both sides never offer at once."""
        me = self.self_user.uid if self.self_user is not None else ""
        return me < uid

    def _rebuild_if_broken(self, uid: str, now_reachable: bool = False) -> None:
        peer = self.peers.get(uid)
        participant = self.participants.get(uid)
        if self.media_mode == "sfu":
            if self.active and peer is not None and not peer.receiving(MEDIA_STALL_SECONDS):
                self._resubscribe(uid)
            return
        if not self.active or participant is None or not self._initiates_with(uid):
            return
        if peer is not None and peer.receiving(MEDIA_STALL_SECONDS):
            return
        if isinstance(peer, RemotePeer) and peer.awaiting_answer(OFFER_ANSWER_SECONDS) and not now_reachable:
            return  # one offer in flight at a time, unless that one went to a connection now gone
        now = time.monotonic()
        if not now_reachable and now - self._rebuilt_at.get(uid, 0.0) < REBUILD_INTERVAL_SECONDS:
            return
        self._rebuilt_at[uid] = now
        log.info("media from %s stopped: rebuilding the peer connection", uid)
        self._spawn(self._offer_to(participant))

    def _broken(self, uid: str, peer: RemoteMedia) -> bool:
        """Whether the connection to a participant whose media has flowed no longer carries it."""
        if uid not in self.participants or uid not in self._had_media or peer.receiving(MEDIA_STALL_SECONDS):
            return False
        if isinstance(peer, RemotePeer) and peer.pc.signalingState == "have-local-offer" and peer.offered_at:
            return time.monotonic() - peer.offered_at > OFFER_ANSWER_SECONDS  # our offer went unanswered
        if peer.last_media_at is None:
            return peer.age() > MEDIA_START_SECONDS  # negotiated: give it time to connect
        return peer.age() > MEDIA_STALL_SECONDS  # media came, then stopped

    async def _probe_signaling(self) -> None:
        while self.active:
            await asyncio.sleep(SIGNALING_PROBE_INTERVAL)
            if not self.calls.signaling_connected:
                continue  # reconnecting already
            signaling = self.calls.signaling
            probed = signaling.generation
            try:
                await signaling.request("ping", timeout=SIGNALING_PROBE_TIMEOUT)
            except ConnectionFailedError as exc:
                if self.active and self.calls.signaling_connected and signaling.generation == probed:
                    log.info("signaling probe: %s; renewing the connection", exc)
                    self.calls.refresh_signaling()
            except CallsError:
                pass  # an answer, even a refusal, means the connection is alive

    async def _watch_media(self) -> None:
        """Notice a peer whose media stopped (its network dropped): aiortc has no ICE restart, so the
        initiating side builds a new peer connection as soon as signaling can carry the offer, and
        every side renews a signaling connection that may be dead without knowing it."""
        while self.active:
            await asyncio.sleep(MEDIA_WATCH_INTERVAL)
            now = time.monotonic()
            for uid, peer in list(self.peers.items()):
                if peer.last_media_at is not None:
                    self._had_media.add(uid)
                    # Kept per participant, across rebuilt connections (a new one starts with none).
                    self._last_media_from[uid] = max(self._last_media_from.get(uid, 0.0), peer.last_media_at)
            # Only media that flowed and stopped counts: a peer that never sends (no microphone, a
            # receive-only browser) is not broken.
            if self.media_mode == "sfu":
                self._subscribe_missing()
            stalled = [uid for uid, peer in list(self.peers.items()) if self._broken(uid, peer)]
            if stalled and self.calls.signaling_connected:
                for uid in stalled:
                    self._rebuild_if_broken(uid)
            # Everyone silent at once points at our own network (one silent peer, at theirs): the
            # signaling connection may be dead without knowing it (TCP retransmits for minutes, and
            # what the server sends waits behind them), so make a new one.
            flowed = [self._last_media_from[uid] for uid in self.participants if uid in self._last_media_from]
            if (
                flowed
                and now - max(flowed) >= SIGNALING_REFRESH_AFTER
                and now - self._refreshed_at >= SIGNALING_REFRESH_INTERVAL
            ):
                self._refreshed_at = now
                log.info(
                    "no media from anyone for %.1f s: renewing the signaling connection", now - max(flowed)
                )
                self.calls.refresh_signaling()

    # ----------------------------------------------------------------- group calls through the SFU

    async def _use_sfu(self, room: dict[str, Any], again: bool = False) -> None:
        """The session outgrew the mesh (or is past it already): publish our media once into the
        room and subscribe to everyone else's there. Each mesh connection carries media until the
        feed that replaces it does; participants, events and in-call methods stay as they were, so
        the application sees no difference."""
        if self.sfu is not None and self._sfu_room == room and not again:
            return  # publishing there already (a rejoin's reply names the same room)
        self._sfu_room = room
        if self.media_mode != "sfu":
            self.media_mode = "sfu"
            log.info("session %s goes through the SFU (room %s)", self.session_id, room.get("room"))
            # Make before break: each mesh connection carries its participant's media until that
            # participant's feed from the room replaces it (_subscribe); any left after a while
            # (a participant that never publishes there) are closed then.
            asyncio.get_running_loop().call_later(MESH_HANDOVER_SECONDS, self._close_mesh_leftovers)
            if self._sfu_level not in self.audio.taps:
                self.audio.taps.append(self._sfu_level)
        failures = 0
        while self.active and self._sfu_room is room:
            await self._drop_sfu()
            assert self.self_user is not None
            publisher = SfuPublisher(
                room["url"],
                room=int(room["room"]),
                pin=str(room["pin"]),
                uid=self.self_user.uid,
                audio_track=self.audio.subscribe(),
                video_track=self.video.subscribe(),
                ice_servers=self.ice_servers,
                video_codec=self.calls.video_codec,
                on_publisher=lambda info: self._spawn(self._subscribe(info)),
                on_unpublished=self._unpublished,
                on_talking=self._talking,
                audio_level=self._sfu_level,
                on_keyframe_request=self.video.request_keyframe,
            )
            publisher.on_lost = functools.partial(self._sfu_lost, publisher)
            self.sfu = publisher
            try:
                await publisher.start()
                return
            except SfuError as exc:
                if self.sfu is publisher:
                    if not failures:  # once per outage; the retries are logged
                        self._emit_error("SFU_UNAVAILABLE", f"group call media server: {exc}; retrying")
                    log.info("publishing to the SFU failed: %s", exc)
                    failures += 1
                    if exc.code == ERROR_NO_SUCH_ROOM:
                        # Janus lost the room (it restarted): the call server makes a new one.
                        self._spawn(self._report_room_lost(int(room["room"])))
            await asyncio.sleep(SFU_RETRY_SECONDS)

    async def _report_room_lost(self, room: int) -> None:
        try:
            await self.calls.signaling.request("sfu.lost", sessionId=self.session_id, room=room)
        except CallsError as exc:
            log.info("telling the server that SFU room %s is gone: %s", room, exc)

    def _close_mesh_leftovers(self) -> None:
        if not self.active:
            return
        for uid, peer in list(self.peers.items()):
            if isinstance(peer, RemotePeer):
                del self.peers[uid]
                self._spawn(peer.close())

    async def _drop_sfu(self) -> None:
        publisher, self.sfu = self.sfu, None
        feeds = {uid: peer for uid, peer in self.peers.items() if not isinstance(peer, RemotePeer)}
        for uid in feeds:
            self.peers.pop(uid, None)
        await asyncio.gather(*(feed.close() for feed in feeds.values()), return_exceptions=True)
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()

    def _sfu_lost(self, publisher: SfuPublisher, error: Exception) -> None:
        """Janus went away or dropped us (our network, its restart): publish again until it works."""
        if self.active and self.sfu is publisher and self._sfu_room is not None:
            log.info("lost the SFU: %s; publishing again", error)
            self._spawn(self._use_sfu(self._sfu_room, again=True))

    async def _subscribe(self, info: SfuPublisherInfo) -> None:
        publisher = self.sfu
        if publisher is None or not self.active or info.feed in self._subscribing:
            return
        participant = self.participants.get(info.uid)
        self._subscribing.add(info.feed)
        try:
            feed = await publisher.subscribe(
                info,
                session_started_at=self.started_at,
                on_video_frame=self._on_remote_video,
                on_audio_frame=self._on_remote_audio,
                on_connection_state=self._on_peer_state,
                participant=participant,
            )
        except SfuError as exc:
            # The feed left meanwhile, or we lost Janus (then _sfu_lost publishes and subscribes
            # again); otherwise _watch_media tries again (_subscribe_missing).
            log.info("subscribing to %s through the SFU failed: %s", info.uid, exc)
            return
        finally:
            self._subscribing.discard(info.feed)
        if not self.active or self.sfu is not publisher or info.feed not in publisher.publishers:
            await feed.close()  # ended, republished, or that publisher left meanwhile
            return
        old = self.peers.get(info.uid)
        self.peers[info.uid] = feed
        if old is not None:
            await old.close()

    def _subscribe_missing(self) -> None:
        """Every publisher in the room has a feed here, or one on its way: a subscription that failed
        (Janus busy, a timeout) is tried again."""
        publisher = self.sfu
        if publisher is None or publisher.feed is None:
            return  # not published yet: its own join lists the publishers
        for feed_id, uid in list(publisher.publishers.items()):
            if getattr(self.peers.get(uid), "feed", None) != feed_id:
                self._subscribe_again(uid, feed_id, "no feed from it yet")

    def _resubscribe(self, uid: str) -> None:
        """A feed whose media stopped: subscribe to that publisher again."""
        publisher = self.sfu
        feed_id = (
            next((f for f, owner in publisher.publishers.items() if owner == uid), None)
            if publisher
            else None
        )
        if feed_id is not None:
            self._subscribe_again(uid, feed_id, "its media stopped")

    def _subscribe_again(self, uid: str, feed_id: int, why: str) -> None:
        """Subscribe to `uid`'s feed unless that is under way, at most every few seconds per participant."""
        now = time.monotonic()
        if feed_id in self._subscribing or now - self._rebuilt_at.get(uid, 0.0) < REBUILD_INTERVAL_SECONDS:
            return
        self._rebuilt_at[uid] = now
        log.info("subscribing to %s through the SFU again: %s", uid, why)
        self._spawn(self._subscribe(SfuPublisherInfo(feed_id, uid)))

    def _unpublished(self, feed: int) -> None:
        for uid, peer in list(self.peers.items()):
            if getattr(peer, "feed", None) == feed:
                del self.peers[uid]
                self._spawn(peer.close())

    def _talking(self, uid: str, talking: bool) -> None:
        (self.talking.add if talking else self.talking.discard)(uid)

    async def close(self, notify_server: bool) -> None:
        """Tear everything down. `notify_server`: send `leave` (False when the server ended it)."""
        if self._torn_down:
            return
        self._torn_down = True
        was_active, self.active = self.active, False
        current = asyncio.current_task()
        if self._idle_task is not None and self._idle_task is not current:
            self._idle_task.cancel()
        if self.recording:
            self.recording = False
            self.calls.listeners.emit(
                "on_recording_toggled", RTCRecordingInfo(False, self.self_user, int(time.time() * 1000))
            )
            if was_active and notify_server and self.calls.signaling.connected:
                with contextlib.suppress(CallsError):
                    await self.calls.signaling.request(
                        "recording", sessionId=self.session_id, recording=False
                    )
        if was_active and notify_server and self.calls.signaling.connected:
            with contextlib.suppress(CallsError):
                await self.calls.signaling.request("leave", sessionId=self.session_id)
        self._view_hook("close")
        await self._stop_recording_files()
        try:
            self.final_stats = await self.stats()
        except Exception:  # stats are a report, never a reason not to hang up
            log.exception("final stats failed")
        await asyncio.gather(*(peer.close() for peer in self.peers.values()), return_exceptions=True)
        self.peers.clear()
        await self._drop_sfu()
        await self.video.close()
        await self.audio.close()
        await self.output.close()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if not self.active:
            log.debug("session task failed after the session ended: %s", exc)
        elif isinstance(exc, CallsError):
            self._emit_error(exc.code, exc.message)
        else:
            log.error("session task failed", exc_info=exc)
            self._emit_error("INTERNAL", f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------- participants and media

    def _participant_from(self, data: dict[str, Any]) -> RemoteParticipant:
        return RemoteParticipant(
            user=RTCUser.from_json(data),
            audio_muted=bool(data.get("audioMuted")),
            video_muted=bool(data.get("videoMuted")),
            joined_at=int(data.get("joinedAt") or 0),
        )

    def user_list(self) -> list[RTCUser]:
        """Everyone in the session, this endpoint first (the documents: "all current participants")."""
        me = [self.self_user] if self.self_user is not None else []
        return me + [p.user for p in self.participants.values()]

    def _new_peer(self, participant: RemoteParticipant) -> RemotePeer:
        old = self.peers.pop(participant.user.uid, None)
        if old is not None:
            self._spawn(old.close())
        peer = RemotePeer(
            participant,
            audio_track=self.audio.subscribe(),
            video_track=self.video.subscribe(),
            ice_servers=self.ice_servers,
            video_codec=self.calls.video_codec,
            session_started_at=self.started_at,
            on_video_frame=self._on_remote_video,
            on_audio_frame=self._on_remote_audio,
            on_connection_state=self._on_peer_state,
            on_keyframe_request=self.video.request_keyframe,
        )
        self.peers[participant.user.uid] = peer
        return peer

    async def _offer_to(self, participant: RemoteParticipant) -> None:
        peer = self._new_peer(participant)
        async with peer.lock:
            sdp = await peer.create_offer()
            if self.active and not peer.closed:
                log.info("offer %s to %s", peer.negotiation_id, peer.uid)
                await self.calls.signaling.request(
                    "offer",
                    sessionId=self.session_id,
                    to=peer.uid,
                    sdp=sdp,
                    negotiationId=peer.negotiation_id,
                )

    async def _answer(self, uid: str, sdp: str, seen: int = 0, negotiation: str | None = None) -> None:
        if seen and seen != self._offers_seen.get(uid):
            # Offers queued behind a dead connection arrive together when it comes back: only the
            # newest is the offerer's current connection; answering the others would confuse it.
            return
        current = self.peers.get(uid)
        if (
            current is not None
            and current.pc.signalingState == "have-local-offer"
            and self._initiates_with(uid)
        ):
            return  # both offered at once: ours wins (smaller uid), theirs is dropped; they answer ours
        participant = self.participants.get(uid)
        if participant is None:
            participant = RemoteParticipant(RTCUser(uid))
            self.participants[uid] = participant
        peer = self._new_peer(participant)
        async with peer.lock:
            answer = await peer.answer_offer(sdp)
            if seen and seen != self._offers_seen.get(uid):
                return  # a newer offer came meanwhile: it gets the answer
            if self.active and not peer.closed:
                log.info("answer %s to %s", negotiation or "", uid)
                fields = {"negotiationId": negotiation} if negotiation else {}
                await self.calls.signaling.request(
                    "answer", sessionId=self.session_id, to=uid, sdp=answer, **fields
                )

    async def _accept_answer(self, uid: str, sdp: str, negotiation: str | None = None) -> None:
        peer = self.peers.get(uid)
        if peer is None:
            return
        async with peer.lock:
            if peer.pc.signalingState != "have-local-offer" or (
                negotiation is not None and negotiation != peer.negotiation_id
            ):
                # The answer to an offer of a connection since replaced: applying it to this one
                # would leave this one unable to connect.
                log.info("answer %s from %s is for an older offer: ignored", negotiation, uid)
                return
            log.info("answer %s from %s", negotiation or "", uid)
            await peer.accept_answer(sdp)

    def _on_remote_video(self, uid: str, frame: av.VideoFrame) -> None:
        if self.first_remote_frame_ms is None:
            self.first_remote_frame_ms = (time.monotonic() - self.started_at) * 1000
        if self.recorder is not None:
            self.recorder.write(uid, frame)
        self._view_hook("render_frame", uid, frame)

    def _on_remote_audio(self, uid: str, frame: av.AudioFrame) -> None:
        self.output.write(uid, frame)
        if self.recorder is not None:
            self.recorder.write(uid, frame)

    def _on_peer_state(self, peer: RemotePeer, state: str) -> None:
        log.info("connection to %s: %s", peer.uid, state)
        if state == "failed" and self.active:
            self._emit_error("PEER_CONNECTION_FAILED", f"media connection to {peer.uid} failed")

    def _view_hook(self, name: str, *args: Any) -> None:
        """Call the view's method `name` if it has one; a failing view never breaks the call."""
        hook = getattr(self.view, name, None)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("view.%s failed", name)

    def _device_error(self, exc: Exception) -> None:
        code = "DEVICE_ERROR" if isinstance(exc, DeviceError) else "MEDIA_ERROR"
        self._emit_error(code, str(exc))

    def _emit_error(self, code: str, message: str) -> None:
        self.calls.listeners.emit("on_error", CallError(code, message))

    # ----------------------------------------------------------------- signaling from the server

    def receive(self, message: dict[str, Any]) -> None:
        if self.active:
            self.handle(message)
        elif not self._torn_down:
            self._early.append(message)

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "participant.joined":
            participant = self._participant_from(message["participant"])
            known = participant.user.uid in self.participants
            self._update_participant(participant)
            if known:
                # It came back (rejoin, or the server restarted): one entry still, and its peer
                # connection is rebuilt if its media stopped.
                self._rebuild_if_broken(participant.user.uid, now_reachable=bool(message.get("rejoined")))
        elif kind == "participant.left":
            self._participant_left(message["participant"]["uid"])
        elif kind == "session.media":
            media = message.get("media") or {}
            if media.get("mode") == "sfu":
                self._spawn(self._use_sfu(media["sfu"]))
        elif kind in ("offer", "answer") and self.media_mode == "sfu":
            pass  # a mesh negotiation overtaken by the switch to the SFU
        elif kind == "offer":
            uid = message["from"]
            self._offers_seen[uid] = self._offers_seen.get(uid, 0) + 1
            self._spawn(
                self._answer(uid, message["sdp"], self._offers_seen[uid], message.get("negotiationId"))
            )
        elif kind == "answer":
            self._spawn(self._accept_answer(message["from"], message["sdp"], message.get("negotiationId")))
        elif kind == "candidate":
            pass  # aiortc puts every candidate in the SDP; trickled ones are not needed
        elif kind == "media.state":
            uid = message["user"]["uid"]
            participant = self.participants.get(uid)
            if participant is not None:
                participant.audio_muted = bool(message["audioMuted"])
                participant.video_muted = bool(message["videoMuted"])
                self._emit_muted(participant)
        elif kind == "switch.video":
            requested_by = RTCUser.from_json(message["requestedBy"]) if message.get("requestedBy") else None
            self._become_video()
            self.calls.listeners.emit(
                "on_call_switched_to_video", CallSwitchRequestInfo(requested_by, self.session_id)
            )
        elif kind == "recording":
            user = RTCUser.from_json(message["user"]) if message.get("user") else None
            info = RTCRecordingInfo(bool(message["recording"]), user, int(message.get("at") or 0))
            self.calls.listeners.emit("on_recording_toggled", info)

    def _participant_left(self, uid: str) -> None:
        participant = self.participants.pop(uid, None)
        peer = self.peers.pop(uid, None)
        self._last_media_from.pop(uid, None)
        self._had_media.discard(uid)
        if self.recorder is not None and self.recorder.main_uid == uid:
            self.recorder.main_uid = next(iter(self.participants), None)
        if peer is not None:
            self._spawn(peer.close())
        self._view_hook("remove_participant", uid)
        self._update_idle_timer()
        if participant is not None:
            self.calls.listeners.emit("on_user_left", participant.user)
            self.calls.listeners.emit("on_user_list_changed", self.user_list())

    def _emit_muted(self, participant: RemoteParticipant) -> None:
        user = participant.user
        muted = RTCMutedUser(user.uid, user.name, participant.audio_muted, participant.video_muted)
        self.calls.listeners.emit("on_user_muted", muted)

    # ----------------------------------------------------------------- idle timeout

    def _update_idle_timer(self) -> None:
        alone = not self.participants
        if alone and self.active and (self._idle_task is None or self._idle_task.done()):
            self._idle_task = asyncio.ensure_future(self._idle_countdown(self.settings.idle_timeout_period))
        elif not alone and self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None

    async def _idle_countdown(self, period: float) -> None:
        warn_after = max(0.0, period - IDLE_WARNING_SECONDS)
        await asyncio.sleep(warn_after)
        self.calls.listeners.emit("on_session_timeout_warning", int(round(period - warn_after)))
        await asyncio.sleep(period - warn_after)
        if self.active and not self.participants:
            await self.calls._end_session_from(self, notify_server=True)
            self.calls.listeners.emit("on_session_timeout")
            self.calls._session_over(self)

    def stay(self) -> None:
        """Restart the idle countdown (the "stay" button of the timeout warning)."""
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None
        self._update_idle_timer()

    # ----------------------------------------------------------------- in-call controls

    def _send(self, message_type: str, **fields: Any) -> None:
        """Notify the others in the background; a failure becomes on_error, never an exception here."""

        async def send() -> None:
            try:
                await self.calls.signaling.request(message_type, sessionId=self.session_id, **fields)
            except CallsError as exc:
                self._emit_error(exc.code, f"{message_type}: {exc.message}")

        self._spawn(send())

    def mute_audio(self, muted: bool) -> None:
        self.audio_muted = bool(muted)
        self.audio.set_muted(self.audio_muted)
        self._send("media.state", audioMuted=self.audio_muted, videoMuted=self.video_muted)

    def pause_video(self, paused: bool) -> None:
        self.video_muted = bool(paused)
        self.video.set_paused(self.video_muted)
        self._send("media.state", audioMuted=self.audio_muted, videoMuted=self.video_muted)

    def _become_video(self) -> None:
        self.audio_only = False
        self.video.set_enabled(True)

    def switch_to_video_call(self) -> None:
        if not self.audio_only:
            return
        self._become_video()
        self._send("switch.video")

    def switch_camera(self) -> None:
        cameras = self.calls.devices.video_inputs()
        if len(cameras) < 2:
            raise NotSupportedError("switch_camera(): this device has only one camera")
        current = next((c for c in cameras if c.device_id == self.video.device_id), None)
        if current is not None and current.facing in ("front", "back"):
            # Flip front <-> back, as the documents describe, when the cameras say which way they face.
            flipped = next((c for c in cameras if c.facing not in (None, current.facing)), None)
            if flipped is not None:
                self.video.select(flipped.device_id)
                return
        ids = [c.device_id for c in cameras]
        following = ids[(ids.index(current.device_id) + 1) % len(ids)] if current is not None else ids[0]
        self.video.select(following)

    def set_video_input_device(self, device_id: str) -> None:
        self.video.select(device_id)

    def set_audio_input_device(self, device_id: str) -> None:
        self.audio.select(device_id)

    def set_audio_output_device(self, device_id: str) -> None:
        device = self.calls.devices.find(device_id, "audiooutput")
        before = self.audio_mode
        self.output.select(device)
        if self.audio_mode != before:
            self._emit_audio_modes()

    def _follow_microphone(self, microphone: MediaDeviceInfo) -> None:
        if microphone.device_id != self.audio.device_id:
            self.audio.select(microphone.device_id)

    def _choose_initial_audio_mode(self) -> None:
        modes = self.calls.devices.audio_modes()
        wanted = self.settings.default_audio_mode
        mode = wanted if wanted in modes else (modes[0] if modes else None)
        if wanted is not None and wanted not in modes:
            self._emit_error(
                "AUDIO_MODE_UNAVAILABLE",
                f"default audio mode {wanted} has no device now; using {mode or 'none'}",
            )
        device = self.calls.devices.output_for_mode(mode) if mode is not None else None
        if device is None and self.calls.devices.audio_outputs():
            device = self.calls.devices.audio_outputs()[0]
        if device is not None:
            self.output.select(device)

    def set_audio_mode(self, mode: AudioMode | str) -> None:
        try:
            chosen = parse_enum(AudioMode, mode, "audio mode")
        except ValueError as exc:
            raise CallsError("INVALID_AUDIO_MODE", str(exc)) from None
        device = self.calls.devices.output_for_mode(chosen)
        if device is None:
            raise CallsError("AUDIO_MODE_UNAVAILABLE", f"no {chosen} device is present now")
        self.output.select(device)  # the output that already plays is not reopened
        self._emit_audio_modes()

    def audio_modes(self) -> list[AudioModeInfo]:
        return [AudioModeInfo(m, m == self.audio_mode) for m in self.calls.devices.audio_modes()]

    def _emit_audio_modes(self) -> None:
        self.calls.listeners.emit("on_audio_mode_changed", self.audio_modes())

    def check_devices(self) -> None:
        """Compare the device list with the last one seen; emit the change events. Called by the poll."""
        devices = self.calls.devices.list_devices()
        if devices != self._known_devices:
            self._known_devices = devices
            self.calls.listeners.emit("on_media_device_list_updated", devices)
            if self.output.output_vanished(devices):
                self._emit_audio_modes()
        modes = self.calls.devices.audio_modes()
        if modes != self._known_modes:
            self._known_modes = modes
            self._emit_audio_modes()

    def set_mode(self, mode: Mode | str) -> None:
        try:
            self.mode = parse_enum(Mode, mode, "mode")
        except ValueError as exc:
            raise CallsError("INVALID_MODE", str(exc)) from None
        self._view_hook("set_mode", self.mode)

    def set_pip(self, pip: bool) -> None:
        self.pip = pip
        self._view_hook("set_pip", pip)

    def start_screen_share(self) -> None:
        if self.video.sharing_screen:
            return
        try:
            self.video.share_screen(True)
        except DeviceError as exc:
            raise NotSupportedError(f"start_screen_share(): {exc}") from None
        self.video.set_enabled(True)
        self.calls.listeners.emit("on_screen_share_started")

    def stop_screen_share(self) -> None:
        if not self.video.sharing_screen:
            return
        self.video.share_screen(False)
        self.video.set_enabled(not self.audio_only)
        self.calls.listeners.emit("on_screen_share_stopped")

    def start_recording(self) -> None:
        if self.recording:
            return
        directory = Path(self.calls.recording_dir)
        path = directory / f"{self.session_id}_{time.strftime('%Y%m%d-%H%M%S')}.mkv"
        try:
            recorder = CallRecorder(path, with_video=not self.audio_only)
        except (OSError, av.FFmpegError) as exc:
            raise CallsError("RECORDING_FAILED", f"cannot record to {path}: {exc}") from None
        # The main video: the first remote participant (the one a 1:1 call shows large).
        recorder.main_uid = next(iter(self.participants), None)
        self.recorder = recorder
        self.recordings.append(path)
        self.audio.taps.append(self._record_local_audio)
        self.recording = True
        self._send("recording", recording=True)
        self.calls.listeners.emit(
            "on_recording_toggled",
            RTCRecordingInfo(True, self.self_user, int(time.time() * 1000), str(directory), str(path)),
        )

    def _record_local_audio(self, frame: av.frame.Frame) -> None:
        if self.recorder is not None and self.self_user is not None:
            self.recorder.write(self.self_user.uid, frame)

    def stop_recording(self) -> None:
        if not self.recording:
            return
        self.recording = False
        self._spawn(self._stop_recording_files())
        self._send("recording", recording=False)
        self.calls.listeners.emit(
            "on_recording_toggled", RTCRecordingInfo(False, self.self_user, int(time.time() * 1000))
        )

    async def _stop_recording_files(self) -> None:
        recorder, self.recorder = self.recorder, None
        if self._record_local_audio in self.audio.taps:
            self.audio.taps.remove(self._record_local_audio)
        if recorder is not None:
            await asyncio.to_thread(recorder.close)

    async def stats(self) -> SessionStats:
        result = SessionStats(
            self.session_id,
            self.first_remote_frame_ms,
            frames_captured=self.video.frames_captured,
            audio_frames_captured=self.audio.frames_captured,
        )
        for uid, peer in list(self.peers.items()):
            result.participants[uid] = await peer.collect_stats()
        return result
