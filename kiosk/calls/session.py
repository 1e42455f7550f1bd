"""An active call session: who is in it, and the parts that carry it.

A `CallSession` is made by `Calls.start_session()` and lives until the session ends. It holds the
roster (the other participants), reacts to the signaling messages for its session id, emits the
documents' events, and composes the parts, each with one job:

- `media` (kiosk.calls.media): the connections to the others, a mesh (kiosk.calls.mesh) or a group
  call through an SFU (kiosk.calls.sfu_media); switching to the SFU swaps the object;
- `watch`, `probe` (kiosk.calls.liveness): repair stalled media, keep the signaling connection alive;
- `controls` (kiosk.calls.controls): the in-call controls on this endpoint's capture;
- `output` (kiosk.calls.audio_output): the audio mode and the speaker that plays the call;
- `recording` (kiosk.calls.recording): the recording file and its events;
- `idle` (kiosk.calls.idle): the idle timeout.

It talks to the world only through the ports it is given (kiosk.calls.ports): the signaling channel,
the listeners, the view, and `on_over`, by which it says it ended by itself. Applications see it
through `SessionInfo`, a read-only view (`Calls.session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

from kiosk.calls.audio_output import AudioOutput
from kiosk.calls.constants import Mode
from kiosk.calls.controls import InCallControls
from kiosk.calls.door import SessionDoor
from kiosk.calls.errors import CallsError
from kiosk.calls.events import CallError, CallSwitchRequestInfo, RTCMutedUser, RTCRecordingInfo, RTCUser
from kiosk.calls.freezes import FreezeMeter
from kiosk.calls.idle import IdleTimer
from kiosk.calls.liveness import MediaWatch, SignalingProbe
from kiosk.calls.media import MEDIA_STALL_SECONDS, MediaContext, MediaLink, MediaMode, SessionMedia
from kiosk.calls.mesh import MeshMedia, PeerFactory
from kiosk.calls.peer import RemoteParticipant, SessionStats
from kiosk.calls.playout import ParticipantAudio
from kiosk.calls.ports import (
    AudioCallback,
    CallView,
    SessionHost,
    SessionNotice,
    SessionOver,
    SessionOverCallback,
)
from kiosk.calls.recording import SessionRecording
from kiosk.calls.settings import CallSettings
from kiosk.calls.sfu_media import Publisher, PublisherFactory, SfuMedia
from kiosk.calls.turn import prefer_working_turn
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.devices import DeviceError, MediaDeviceInfo, SpeakerSink
from kiosk.media.encoding import SharedAudioEncoder, SharedVideoEncoder
from kiosk.protocol import (
    DEFAULT_REJOIN_GRACE,
    JoinRequest,
    LeaveRequest,
    MediaJson,
    ParticipantJson,
    RecordingRequest,
    SessionMessage,
    SfuRoomJson,
    check_client_message,
)

log = logging.getLogger(__name__)


class CallSession:
    def __init__(
        self,
        host: SessionHost,
        session_id: str,
        settings: CallSettings,
        view: CallView,
        on_over: SessionOverCallback,
        *,
        new_peer: PeerFactory | None = None,
        new_publisher: PublisherFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self.session_id = session_id
        self.settings = settings
        self._view = view
        self._on_over = on_over
        self._new_publisher = new_publisher
        self.started_at = time.monotonic()
        self.self_user: RTCUser | None = None
        self._participants: dict[str, RemoteParticipant] = {}
        self.call_token = ""
        self.rejoin_grace = DEFAULT_REJOIN_GRACE  # the server says how long it keeps our place
        self.rejoined_since_loss = True  # False from a signaling loss until the rejoin succeeded
        self.active = False
        self._torn_down = False
        self._early: list[SessionMessage] = []  # messages that came before the join completed
        self.first_remote_frame_ms: float | None = None
        self.final_stats: SessionStats | None = None
        self._known_devices: list[MediaDeviceInfo] = []
        self._known_modes: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._audio_taps: list[AudioCallback] = []
        self._audio: dict[str, ParticipantAudio] = {}  # each participant's playout, across connections
        self._freezes: dict[str, FreezeMeter] = {}  # each participant's video freezes, across connections
        devices = host.devices
        cameras, microphones = devices.video_inputs(), devices.audio_inputs()
        self.camera = VideoCapture(devices, cameras[0].device_id if cameras else None, self._device_error)
        self.microphone = AudioCapture(
            devices, microphones[0].device_id if microphones else None, self._device_error
        )
        self.camera.on_restored = lambda: self._emit_error("DEVICE_RESTORED", "camera is back; video resumed")
        events = host.listeners
        self.controls = InCallControls(
            settings, devices, self.camera, self.microphone, view=view, send=self._send, events=events
        )
        self.output = AudioOutput(
            devices,
            on_error=self._device_error,
            on_changed=self._emit_audio_modes,
            on_microphone=self._follow_microphone,
        )
        self.recording = SessionRecording(
            session_id,
            Path(host.recording_dir),
            self.microphone,
            self_user=lambda: self.self_user,
            send=self._send,
            events=events,
        )
        self.idle = IdleTimer(
            settings.idle_timeout_period,
            warn=lambda seconds: events.emit("on_session_timeout_warning", seconds),
            expire=self._idle_expired,
        )
        self._context = MediaContext(
            session_id=session_id,
            host=host,
            video=self.camera,
            audio=self.microphone,
            participants=self._participants,
            self_uid=lambda: self.self_user.uid if self.self_user is not None else "",
            active=lambda: self.active,
            started_at=self.started_at,
            on_video_frame=self._on_remote_video,
            on_audio_frame=self._on_remote_audio,
            on_peer_state=self._on_peer_state,
            spawn=self._spawn,
            emit_error=self._emit_error,
            audio_for=self._audio_of,
            clock=clock,
        )
        self.media: SessionMedia = MeshMedia(self._context, new_peer)
        self.watch = MediaWatch(lambda: self.media, self._participants, host, lambda: self.active, clock)
        self.probe = SignalingProbe(host, lambda: self.active)
        self.door = SessionDoor(session_id, lambda: host.signaling, events, self._spawn, host.door_opener)
        self.info = SessionInfo(self)

    @property
    def participants(self) -> Mapping[str, RemoteParticipant]:
        return MappingProxyType(self._participants)

    # ----------------------------------------------------------------- lifecycle

    def _join_request(self, call_token: str, *, rejoin: bool = False) -> JoinRequest:
        c = self.controls
        request: JoinRequest = {"type": "join", "sessionId": self.session_id, "callToken": call_token}
        if rejoin:
            request["rejoin"] = True
        request["audioMuted"] = c.audio_muted
        request["videoMuted"] = c.video_muted
        request["audioOnly"] = c.audio_only
        if self.door.opener is not None:
            request["door"] = True
        return request

    async def start(self, call_token: str) -> None:
        devices = self._host.devices
        self._known_devices = devices.list_devices()
        self._known_modes = devices.audio_modes()
        reply = await self._host.signaling.request(self._join_request(call_token))
        # Before the session is active (messages wait in _early): no connection exists yet that
        # could use a TURN transport this network blocks.
        ice_servers = await prefer_working_turn(list(reply.get("iceServers") or []))
        self.call_token = call_token
        self.rejoin_grace = float(reply.get("rejoinGraceMs", DEFAULT_REJOIN_GRACE * 1000)) / 1000
        self.active = True
        problem = self.output.choose_initial(self.settings.default_audio_mode)
        if problem is not None:
            self._emit_error("AUDIO_MODE_UNAVAILABLE", problem)
        self.self_user = RTCUser.from_json(reply["self"])
        self._context.ice_servers[:] = ice_servers
        if reply.get("audioOnly") and not self.controls.audio_only:
            self.controls.call_is_audio_only()
        self._view.set_mode(self.controls.mode)
        for data in reply.get("participants", []):
            participant = _participant_from(data)
            self._participants[participant.user.uid] = participant
        if self._participants:
            self._host.listeners.emit("on_user_list_changed", self.user_list())
        for participant in self._participants.values():
            if participant.audio_muted or participant.video_muted:
                self._emit_muted(participant)
        # A recording already going on when we joined: as if we had seen it start.
        for data in reply.get("participants", []):
            since = data.get("recordingSince")
            if since is not None:
                self._host.listeners.emit(
                    "on_recording_toggled", RTCRecordingInfo(True, RTCUser.from_json(data), int(since))
                )
        room = _sfu_room(reply.get("media"))
        if room is not None:
            self._use_sfu(room)
        else:
            # We offer to those already in the session; anyone who joined after us offers to us. So the
            # early messages are replayed only after these offers are on their way.
            self.media.start(list(self._participants.values()))
        early, self._early = self._early, []
        for message in early:
            self.handle(message)
        self._update_idle()
        self._spawn(self.watch.run())
        self._spawn(self.probe.run())
        if self.settings.auto_record_on_call_start:
            self.start_recording()

    # ----------------------------------------------------------------- staying connected

    def signaling_lost(self) -> None:
        self.rejoined_since_loss = False

    async def rejoin(self) -> None:
        """After the signaling reconnected: take our place in the session back (the server kept it
        for its grace, or builds the session again after a restart), then bring the participant
        list and any broken connection up to date."""
        reply = await self._host.signaling.request(self._join_request(self.call_token, rejoin=True))
        if not self.active:
            return
        self.rejoined_since_loss = True
        self.rejoin_grace = float(reply.get("rejoinGraceMs", self.rejoin_grace * 1000)) / 1000
        listed: dict[str, RemoteParticipant] = {}
        for data in reply.get("participants", []):
            participant = _participant_from(data)
            listed[participant.user.uid] = participant
            self._update_participant(participant)
        if reply.get("rejoined"):
            # The server kept the session: whoever it no longer lists left while we were away.
            for uid in [u for u in self._participants if u not in listed]:
                self._participant_left(uid)
        else:
            # The server restarted and knows only those who came back before us; the others are
            # kept while their media flows or until they rejoin within the grace.
            self._spawn(self._forget_unconfirmed(set(listed)))
        log.info("rejoined session %s (%d others)", self.session_id, len(listed))
        room = _sfu_room(reply.get("media"))
        if room is not None:
            self._use_sfu(room)
            return
        for uid in listed:
            self.media.participant_back(uid, now_reachable=True)

    async def _forget_unconfirmed(self, confirmed: set[str]) -> None:
        await asyncio.sleep(self.rejoin_grace)
        had_others = bool(self._participants)
        for uid in [u for u in self._participants if u not in confirmed]:
            if self.active and not self.watch.receiving_from(uid, MEDIA_STALL_SECONDS):
                self._participant_left(uid)
        if self.active and had_others and not self._participants:
            # Everyone we were talking to is gone (the session ended while we were away): for this
            # endpoint the call is over, rather than waiting alone for the idle timeout.
            self._on_over(SessionOver.LOST)

    def _use_sfu(self, room: SfuRoomJson) -> None:
        """The session outgrew the mesh (or is past it already), or its room moved: publish into
        the room and subscribe to everyone else's there; participants, events and in-call methods
        stay as they were, so the application sees no difference."""
        media = self.media
        if isinstance(media, SfuMedia):
            self._spawn(media.use(room))
            return
        handover: Mapping[str, MediaLink] = media.hand_over() if isinstance(media, MeshMedia) else {}
        self.media = SfuMedia(self._context, room, handover=handover, new_publisher=self._new_publisher)
        self.media.start([])

    # ----------------------------------------------------------------- participants

    def user_list(self) -> list[RTCUser]:
        """Everyone in the session, this endpoint first (the documents: "all current participants")."""
        me = [self.self_user] if self.self_user is not None else []
        return me + [p.user for p in self._participants.values()]

    def _update_participant(self, participant: RemoteParticipant) -> None:
        """A participant the server (re)announces: new ones are added, known ones updated."""
        uid = participant.user.uid
        known = self._participants.get(uid)
        events = self._host.listeners
        if known is None:
            self._participants[uid] = participant
            self._update_idle()
            events.emit("on_user_joined", participant.user)
            events.emit("on_user_list_changed", self.user_list())
            if participant.audio_muted or participant.video_muted:
                self._emit_muted(participant)
            return
        changed = (known.audio_muted, known.video_muted) != (participant.audio_muted, participant.video_muted)
        known.audio_muted, known.video_muted = participant.audio_muted, participant.video_muted
        if changed:
            self._emit_muted(known)

    def _participant_left(self, uid: str) -> None:
        participant = self._participants.pop(uid, None)
        self.media.participant_left(uid)
        audio = self._audio.pop(uid, None)
        if audio is not None:
            audio.close()
        self._freezes.pop(uid, None)
        self.watch.forget(uid)
        self.recording.participant_left(uid, next(iter(self._participants), None))
        self._view.remove_participant(uid)
        self._update_idle()
        if participant is not None:
            self._host.listeners.emit("on_user_left", participant.user)
            self._host.listeners.emit("on_user_list_changed", self.user_list())

    def _emit_muted(self, participant: RemoteParticipant) -> None:
        user = participant.user
        muted = RTCMutedUser(user.uid, user.name, participant.audio_muted, participant.video_muted)
        self._host.listeners.emit("on_user_muted", muted)

    # ----------------------------------------------------------------- signaling from the server

    def receive(self, message: SessionMessage) -> None:
        if self.active:
            self.handle(message)
        elif not self._torn_down:
            self._early.append(message)

    def handle(self, message: SessionMessage) -> None:
        events = self._host.listeners
        if message["type"] == "participant.joined":
            participant = _participant_from(message["participant"])
            known = participant.user.uid in self._participants
            self._update_participant(participant)
            if known:
                # It came back (rejoin, or the server restarted): one entry still, and its connection
                # is repaired if its media stopped.
                self.media.participant_back(participant.user.uid, now_reachable=bool(message.get("rejoined")))
        elif message["type"] == "participant.left":
            self._participant_left(message["participant"]["uid"])
        elif message["type"] == "session.media":
            room = _sfu_room(message.get("media"))
            if room is not None:
                self._use_sfu(room)
        elif message["type"] == "offer" or message["type"] == "answer" or message["type"] == "candidate":
            self.media.handle(message)
        elif message["type"] == "media.state":
            changed = self._participants.get(message["user"]["uid"])
            if changed is not None:
                changed.audio_muted = bool(message["audioMuted"])
                changed.video_muted = bool(message["videoMuted"])
                self._emit_muted(changed)
        elif message["type"] == "switch.video":
            requested_by = RTCUser.from_json(message["requestedBy"]) if message.get("requestedBy") else None
            self.controls.become_video()
            events.emit("on_call_switched_to_video", CallSwitchRequestInfo(requested_by, self.session_id))
        elif message["type"] == "door.open":
            self.door.requested(message)
        elif message["type"] == "door.opened":
            self.door.answered(message)
        elif message["type"] == "recording":
            user = RTCUser.from_json(message["user"]) if message.get("user") else None
            events.emit(
                "on_recording_toggled",
                RTCRecordingInfo(bool(message["recording"]), user, int(message.get("at") or 0)),
            )

    # ----------------------------------------------------------------- media in

    def _on_remote_video(self, uid: str, frame: av.VideoFrame) -> None:
        if self.first_remote_frame_ms is None:
            self.first_remote_frame_ms = (time.monotonic() - self.started_at) * 1000
        meter = self._freezes.get(uid)
        if meter is None:
            meter = self._freezes[uid] = FreezeMeter()
        meter.frame(time.monotonic())
        self.recording.write(uid, frame)
        self._view.render_frame(uid, frame)

    def _audio_of(self, uid: str) -> ParticipantAudio | None:
        if self._torn_down:
            return None
        audio = self._audio.get(uid)
        if audio is None:
            audio = self._audio[uid] = ParticipantAudio(uid, self._on_remote_audio)
        return audio

    def _on_remote_audio(self, uid: str, frame: av.AudioFrame) -> None:
        self.output.write(uid, frame)
        self.recording.write(uid, frame)
        for tap in list(self._audio_taps):
            tap(uid, frame)

    def _on_peer_state(self, peer: MediaLink, state: str) -> None:
        log.info("connection to %s: %s", peer.uid, state)
        if state == "failed" and self.active:
            self._emit_error("PEER_CONNECTION_FAILED", f"media connection to {peer.uid} failed")

    # ----------------------------------------------------------------- idle timeout

    def _update_idle(self) -> None:
        self.idle.update(alone=self.active and not self._participants)

    def _idle_expired(self) -> None:
        if self.active and not self._participants:
            self._on_over(SessionOver.TIMEOUT)

    def stay(self) -> None:
        """Restart the idle countdown (the "stay" answer to the timeout warning)."""
        self.idle.stay()

    # ----------------------------------------------------------------- in-call parts

    def start_recording(self) -> None:
        self.recording.start(
            with_video=not self.controls.audio_only, main_uid=next(iter(self._participants), None)
        )

    def _follow_microphone(self, microphone: MediaDeviceInfo) -> None:
        if microphone.device_id != self.microphone.device_id:
            self.microphone.select(microphone.device_id)

    def _emit_audio_modes(self) -> None:
        self._host.listeners.emit("on_audio_mode_changed", self.output.modes())

    def check_devices(self) -> None:
        """Compare the device list with the last one seen; emit the change events. Called by the poll."""
        devices = self._host.devices.list_devices()
        if devices != self._known_devices:
            self._known_devices = devices
            self._host.listeners.emit("on_media_device_list_updated", devices)
            if self.output.output_vanished(devices):
                self._emit_audio_modes()
        modes = self._host.devices.audio_modes()
        if modes != self._known_modes:
            self._known_modes = modes
            self._emit_audio_modes()

    def _send(self, message_type: SessionNotice, **fields: bool) -> None:
        """Tell the others in the background; a failure becomes on_error, never an exception here."""
        message = check_client_message({"type": message_type, "sessionId": self.session_id, **fields})

        async def send() -> None:
            try:
                await self._host.signaling.request(message)
            except CallsError as exc:
                self._emit_error(exc.code, f"{message_type}: {exc.message}")

        self._spawn(send())

    # ----------------------------------------------------------------- the end

    async def close(self, notify_server: bool) -> None:
        """Tear everything down. `notify_server`: send `leave` (False when the server ended it)."""
        if self._torn_down:
            return
        self._torn_down = True
        was_active, self.active = self.active, False
        current = asyncio.current_task()
        self.idle.cancel()
        tell = was_active and notify_server and self._host.signaling_connected
        if self.recording.session_ends() and tell:
            stopped: RecordingRequest = {
                "type": "recording",
                "sessionId": self.session_id,
                "recording": False,
            }
            with contextlib.suppress(CallsError):
                await self._host.signaling.request(stopped)
        if tell:
            leave: LeaveRequest = {"type": "leave", "sessionId": self.session_id}
            with contextlib.suppress(CallsError):
                await self._host.signaling.request(leave)
        self._view.close()
        await self.recording.close()
        try:
            self.final_stats = await self.stats()
        except Exception:  # stats are a report, never a reason not to hang up
            log.exception("final stats failed")
        await self.media.close()
        for audio in self._audio.values():
            audio.close()
        self._audio.clear()
        await self.camera.close()
        await self.microphone.close()
        await self.output.close()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def stats(self) -> SessionStats:
        result = SessionStats(
            self.session_id,
            self.first_remote_frame_ms,
            frames_captured=self.camera.frames_captured,
            audio_frames_captured=self.microphone.frames_captured,
        )
        result.participants.update(await self.media.stats())
        for uid, stats in result.participants.items():
            meter = self._freezes.get(uid)
            if meter is not None:
                stats.video_freeze_count = meter.freeze_count
                stats.video_freeze_seconds = meter.freeze_seconds
                stats.video_freeze_share = meter.freeze_share
                stats.video_fps = meter.frames_per_second
        # Counted over the whole session: an encoder closes when its last peer goes, which may be
        # just before these final figures are taken.
        result.audio_fec_packets = self.microphone.fec_packets
        result.video_picture_changes = self.camera.picture_changes
        for encoder in self.microphone.encoders:
            if isinstance(encoder, SharedAudioEncoder):
                result.audio_fec_protection = max(result.audio_fec_protection, encoder.packet_loss)
        for video in self.camera.encoders:
            if isinstance(video, SharedVideoEncoder) and video.sinks:
                result.video_sent_size, result.video_sent_bitrate = video.sent_size, video.bitrate
                result.video_sent_loss, result.video_quantizer = video.loss, video.quantizer
        return result

    # ----------------------------------------------------------------- plumbing

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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

    def _device_error(self, exc: Exception) -> None:
        code = "DEVICE_ERROR" if isinstance(exc, DeviceError) else "MEDIA_ERROR"
        self._emit_error(code, str(exc))

    def _emit_error(self, code: str, message: str) -> None:
        self._host.listeners.emit("on_error", CallError(code, message))


def _sfu_room(media: MediaJson | None) -> SfuRoomJson | None:
    """The room a session's `media` names when it goes through the SFU; None for a mesh."""
    if media and media["mode"] == "sfu":
        return media["sfu"]
    return None


def _participant_from(data: ParticipantJson) -> RemoteParticipant:
    return RemoteParticipant(
        user=RTCUser.from_json(data),
        audio_muted=bool(data.get("audioMuted")),
        video_muted=bool(data.get("videoMuted")),
        joined_at=int(data.get("joinedAt") or 0),
        door=bool(data.get("door")),
    )


@dataclass(frozen=True)
class EncoderFigures:
    kind: str
    mime: str
    sinks: int
    frames_encoded: int
    bitrate: int | None


@dataclass(frozen=True)
class CaptureFigures:
    frames_captured: int
    audio_frames_captured: int
    encoders: list[EncoderFigures]


class SessionInfo:
    """A call session as applications see it (`Calls.session`): what it is now, read only.

    The in-call methods are on `Calls`; the one action here is `stay()`, the answer to the idle
    timeout warning (the documents' "stay" button). For the UI and diagnostics (the bench, tests):
    `local_video()` (a preview of what the camera sends), `peers` (the connection that brings each
    participant's media), `add_remote_audio_tap()`, `capture_figures()`.
    """

    def __init__(self, session: CallSession) -> None:
        self._session = session

    # -- what the session is

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def settings(self) -> CallSettings:
        return self._session.settings

    @property
    def active(self) -> bool:
        return self._session.active

    @property
    def self_user(self) -> RTCUser | None:
        return self._session.self_user

    @property
    def participants(self) -> Mapping[str, RemoteParticipant]:
        """The other participants by uid (this endpoint is not among them)."""
        return self._session.participants

    def user_list(self) -> list[RTCUser]:
        """Everyone, this endpoint first: the on_user_list_changed payload."""
        return self._session.user_list()

    # -- the controls' state

    @property
    def audio_only(self) -> bool:
        return self._session.controls.audio_only

    @property
    def audio_muted(self) -> bool:
        return self._session.controls.audio_muted

    @property
    def video_muted(self) -> bool:
        return self._session.controls.video_muted

    @property
    def mode(self) -> Mode:
        return self._session.controls.mode

    @property
    def pip(self) -> bool:
        return self._session.controls.pip

    @property
    def camera_id(self) -> str | None:
        """The camera in use (the device id)."""
        return self._session.controls.camera_id

    @property
    def sharing_screen(self) -> bool:
        return self._session.controls.sharing_screen

    @property
    def audio_mode(self) -> str | None:
        """The selected audio mode (its speaker may still be opening: `audio_output_settled()`)."""
        return self._session.output.mode

    @property
    def speaker(self) -> SpeakerSink | None:
        """The open output that plays the call now."""
        return self._session.output.speaker

    async def audio_output_settled(self) -> None:
        """Wait until the speaker plays the selected output (outputs open on worker threads)."""
        await self._session.output.settled()

    @property
    def recording(self) -> bool:
        return self._session.recording.recording

    @property
    def recording_file_open(self) -> bool:
        return self._session.recording.file_open

    @property
    def recordings(self) -> tuple[Path, ...]:
        """The files this session recorded."""
        return tuple(self._session.recording.recordings)

    # -- media and connectivity

    @property
    def media_mode(self) -> MediaMode:
        """ "mesh" or "sfu" (a group call through the SFU)."""
        return self._session.media.mode

    @property
    def talking(self) -> frozenset[str]:
        """The uids the SFU room says are talking; empty in a mesh."""
        media = self._session.media
        return frozenset(media.talking) if isinstance(media, SfuMedia) else frozenset()

    @property
    def sfu_room(self) -> SfuRoomJson | None:
        """The SFU room the session goes through, as the server described it; None in a mesh."""
        media = self._session.media
        return media.room if isinstance(media, SfuMedia) else None

    @property
    def sfu_publisher(self) -> Publisher | None:
        """Our publisher in the SFU room (diagnostics); None in a mesh or while it is being made."""
        media = self._session.media
        return media.publisher if isinstance(media, SfuMedia) else None

    @property
    def peers(self) -> Mapping[str, MediaLink]:
        """The connection that brings each participant's media: a mesh `RemotePeer` or an `SfuFeed`."""
        return self._session.media.peers

    @property
    def offers_received(self) -> Mapping[str, int]:
        """Mesh offers received from each participant (diagnostics)."""
        media = self._session.media
        return media.offers_received if isinstance(media, MeshMedia) else MappingProxyType({})

    @property
    def first_remote_frame_ms(self) -> float | None:
        return self._session.first_remote_frame_ms

    @property
    def rejoin_grace(self) -> float:
        return self._session.rejoin_grace

    @property
    def rejoined_since_loss(self) -> bool:
        return self._session.rejoined_since_loss

    # -- for the UI and diagnostics

    def stay(self) -> None:
        """Restart the idle countdown (the "stay" answer to on_session_timeout_warning)."""
        self._session.stay()

    def local_video(self) -> MediaStreamTrack:
        """A track of what the camera sends (for a preview); stop it when done."""
        return self._session.camera.subscribe()

    def add_remote_audio_tap(self, tap: AudioCallback) -> None:
        """`tap(uid, frame)` with every decoded remote audio frame, on the event loop."""
        self._session._audio_taps.append(tap)

    def remove_remote_audio_tap(self, tap: AudioCallback) -> None:
        if tap in self._session._audio_taps:
            self._session._audio_taps.remove(tap)

    def capture_figures(self) -> CaptureFigures:
        session = self._session
        encoders = [
            EncoderFigures(kind, e.mime, e.sinks, e.frames_encoded, e.bitrate)
            for kind, capture in (("video", session.camera), ("audio", session.microphone))
            for e in capture.encoders
        ]
        return CaptureFigures(session.camera.frames_captured, session.microphone.frames_captured, encoders)
