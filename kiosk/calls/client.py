"""`Calls`: one endpoint's client of the call server, with the call-session API of the documents.

Methods that talk to the server are coroutines (`generate_token`, `start_session`, `end_session`,
the ringing methods). In-call controls (`mute_audio`, `pause_video`, ...) are plain methods: they
take effect locally at once and tell the others in the background, so a GPIO button or a UI
callback can call them directly on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from kiosk.calls import ice
from kiosk.calls.compat import check_aiortc
from kiosk.calls.constants import CallStatus, CallType, SessionType, parse_enum
from kiosk.calls.door import DoorOpener
from kiosk.calls.errors import CallsError, ConnectionFailedError, NotSupportedError, SessionNotActiveError
from kiosk.calls.events import AudioModeInfo, CallError, ListenerRegistry, RTCUser
from kiosk.calls.memory import return_freed_memory
from kiosk.calls.peer import SessionStats
from kiosk.calls.ports import SessionOver, as_call_view
from kiosk.calls.ring_preview import RingPreview
from kiosk.calls.session import CallSession, SessionInfo
from kiosk.calls.settings import CallSettings, CallSettingsBuilder
from kiosk.calls.signaling import RestClient, SignalingClient
from kiosk.calls.tls import client_ssl_context
from kiosk.calls.udp import read_datagrams_dry
from kiosk.media.devices import DeviceError, MediaDeviceInfo, MediaDevices
from kiosk.protocol import FINAL_CALL_STATUSES, IceServer, ServerMessage, UserJson, is_session_message
from kiosk.urls import server_base_url

log = logging.getLogger(__name__)

VIDEO_CODECS = ("VP8", "H264")  # what `video_codec` may name
RECONNECT_MAX_SECONDS = 30.0
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_IN_CALL_MAX_SECONDS = 1.0
RECONNECT_MIN_SECONDS = 0.05  # the shortest wait, jitter and the last attempt's own time taken off
MEMORY_RETURN_DELAY = 1.0  # seconds after a session ends
LOGIN_ROUNDS = 3  # times each server address is tried when logging in


@dataclass(frozen=True)
class GenerateToken:
    """What `generate_token` returns; pass it (or its `token`) to `start_session`."""

    token: str
    session_id: str
    uid: str
    expires_at: int
    ice_servers: list[IceServer] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    """A ringing-flow call, as the server reports it (docs/protocol.md, "Call object")."""

    session_id: str
    type: CallType
    status: CallStatus
    initiator: RTCUser
    receiver: RTCUser
    initiated_at: int
    joined_at: int | None = None
    ended_at: int | None = None
    duration_seconds: int = 0
    has_recording: bool = False
    direction: str | None = None
    group: bool = False  # the receiver is a ring group: every member rang
    answered_by: RTCUser | None = None  # a ring group's call: the member who took it
    has_picture: bool = False  # a still of the caller from the ring (Calls.get_call_picture)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Call:
        """From the protocol's Call object (a `kiosk.protocol.CallJson`)."""
        return cls(
            session_id=data["sessionId"],
            type=CallType(data["type"]),
            status=CallStatus(data["status"]),
            initiator=RTCUser.from_json(data["initiator"]),
            receiver=RTCUser.from_json(data["receiver"]),
            initiated_at=int(data.get("initiatedAt") or 0),
            joined_at=data.get("joinedAt"),
            ended_at=data.get("endedAt"),
            duration_seconds=int(data.get("durationSeconds") or 0),
            has_recording=bool(data.get("hasRecording")),
            direction=data.get("direction"),
            group=bool(data.get("group")),
            answered_by=RTCUser.from_json(data["answeredBy"]) if data.get("answeredBy") else None,
            has_picture=bool(data.get("hasPicture")),
        )

    # The documents' getters.
    def get_session_id(self) -> str:
        return self.session_id


@dataclass(frozen=True)
class CallLogPage:
    calls: list[Call]
    page: int
    per_page: int
    total: int


def _default_devices() -> MediaDevices:
    from kiosk.media.emulated import EmulatedDevices

    return EmulatedDevices()


class Calls:
    """One endpoint. Several may live in one process (tests run two or three side by side)."""

    def __init__(
        self,
        server_url: str | Sequence[str],
        *,
        auth_token: str | None = None,
        devices: MediaDevices | None = None,
        video_codec: str | None = None,
        recording_dir: str | Path | None = None,
        ice_host_addresses: list[str] | None = None,
        device_poll_interval: float = 1.0,
        reconnect: bool = True,
        ca_file: str | Path | None = None,
        door: DoorOpener | None = None,
        ring_pictures: bool = True,
    ) -> None:
        check_aiortc()  # aiortc's private parts this SDK uses: IncompatibleLibrary now, not mid-call
        read_datagrams_dry()  # before any ICE socket is made: media must not queue behind a busy loop
        if video_codec is not None and video_codec.upper() not in VIDEO_CODECS:
            raise ValueError("video_codec must be 'VP8' or 'H264'")
        # Several addresses: the same service (server processes sharing Redis, docs/scale-out.md). The
        # first is used until it cannot be reached; then the next, in turn.
        urls = [server_url] if isinstance(server_url, str) else list(server_url)
        if not urls:
            raise ValueError("give at least one server URL")
        # Checked now (a ValueError naming the URL), and in the http(s) form REST and signaling derive from.
        self.server_urls = [server_base_url(url, "server_url") for url in urls]
        self.server_url = self.server_urls[0]  # the one in use
        self.auth_token = auth_token
        self.devices = devices if devices is not None else _default_devices()
        self.video_codec = video_codec.upper() if video_codec else None
        self.recording_dir = Path(recording_dir or os.environ.get("KIOSK_RECORDING_DIR") or "recordings")
        self.device_poll_interval = device_poll_interval
        self.reconnect = reconnect
        # https:// and wss:// are verified against the system's CAs, or only this PEM file's.
        self.ca_file = ca_file
        # A door relay this endpoint drives (a door kiosk): others in its calls may ask it to release.
        self.door_opener = door
        # While a video call it made rings: stills of its camera to the server (kiosk.calls.ring_preview).
        self.ring_pictures = ring_pictures
        self._ring_preview: tuple[str, RingPreview] | None = None
        if ice_host_addresses is not None:
            ice.restrict_host_addresses(ice_host_addresses)
        self.listeners = ListenerRegistry()
        self._session: CallSession | None = None
        self.active_call: Call | None = None
        self.user: RTCUser | None = None
        # The stats of the session that ended last, taken just before its connections closed.
        self.last_session_stats: SessionStats | None = None
        self._http: aiohttp.ClientSession | None = None
        self._rest: RestClient | None = None
        self._signaling: SignalingClient | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._grace_task: asyncio.Task[None] | None = None
        self._refreshing = False
        self._ring_stopping: asyncio.Future[None] | None = None
        self._accepting: set[str] = set()  # calls this endpoint is accepting now
        self._accepted_here: str | None = None  # the last call this endpoint accepted
        self._ending: asyncio.Future[None] | None = None
        self._closing = False

    @property
    def session(self) -> SessionInfo | None:
        """The active session, read only (its in-call methods are this client's), or None."""
        return self._session.info if self._session is not None else None

    # ----------------------------------------------------------------- connection

    def _ensure_http(self) -> tuple[aiohttp.ClientSession, RestClient]:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(ssl=client_ssl_context(self.ca_file))
            self._http = aiohttp.ClientSession(connector=connector)
            self._rest = RestClient(self.server_url, self._http)
        assert self._rest is not None
        return self._http, self._rest

    @property
    def rest(self) -> RestClient:
        return self._ensure_http()[1]

    @property
    def signaling_connected(self) -> bool:
        return self._signaling is not None and self._signaling.connected

    @property
    def signaling(self) -> SignalingClient:
        if self._signaling is None:
            raise ConnectionFailedError("not logged in: call login() or start_session() first")
        return self._signaling

    async def login(self, auth_token: str | None = None) -> RTCUser:
        """Open the signaling connection as the auth token's user (needed to receive incoming calls)."""
        token = auth_token or self.auth_token
        if not token:
            raise CallsError("UNAUTHORIZED", "no auth token: pass one to Calls(...) or login()")
        self.auth_token = token
        http, _ = self._ensure_http()
        if self._signaling is not None and self._signaling.connected:
            assert self.user is not None
            return self.user
        self._signaling = SignalingClient(self.server_url, http, self._on_message, self._on_signaling_closed)
        user = await self._connect_any(token)
        self.user = RTCUser.from_json(user)
        return self.user

    def _use_next_server(self) -> None:
        """Move REST and signaling on to the next server address (after the last, the first)."""
        index = (self.server_urls.index(self.server_url) + 1) % len(self.server_urls)
        self.server_url = self.server_urls[index]
        if self._rest is not None:
            self._rest.base_url = self.server_url
        if self._signaling is not None:
            self._signaling.set_server(self.server_url)

    async def _connect_any(self, token: str) -> UserJson:
        """Open signaling to the address in use, else to each other one in turn, for LOGIN_ROUNDS
        rounds; the last failure is raised if none can be reached. Only an address that cannot be
        reached is passed over. More than one round because on a lossy link (Wi-Fi) a connect can
        lose its SYN twice and miss its timeout, and a fresh attempt gets through sooner than
        TCP's backed-off retry would."""
        assert self._signaling is not None
        attempts = LOGIN_ROUNDS * len(self.server_urls)
        for attempt in range(attempts):
            try:
                return await self._signaling.connect(token)
            except ConnectionFailedError as exc:
                if attempt == attempts - 1:
                    raise
                log.info(
                    "%s; trying again%s", exc, " at the next address" if len(self.server_urls) > 1 else ""
                )
                self._use_next_server()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """End any session, close the signaling connection and the HTTP client."""
        self._closing = True
        await self._stop_ring_preview()
        if self._session is not None:
            with contextlib.suppress(CallsError):
                await self.end_session()
        for task in (self._reconnect_task, self._poll_task, self._grace_task):
            if task is not None:
                task.cancel()
        if self._signaling is not None:
            await self._signaling.close()
            self._signaling = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _on_signaling_closed(self) -> None:
        if self._closing:
            return
        if self._refreshing:
            self._refreshing = False  # dropped on purpose: nothing to report
        else:
            self.listeners.emit(
                "on_error",
                CallError(
                    "CONNECTION_LOST",
                    "lost the connection to the call server" + ("; reconnecting" if self.reconnect else ""),
                ),
            )
        session = self._session
        if session is not None and self.reconnect:
            # Media is peer to peer and goes on. The server keeps our place for its rejoin grace:
            # reconnect and rejoin within it, or give the session up when it has passed.
            session.signaling_lost()
            if self._grace_task is None or self._grace_task.done():
                self._grace_task = asyncio.ensure_future(self._give_up_after_grace(session))
        elif session is not None:
            self._session = None
            reason = "hangup" if len(session.participants) == 1 else "disconnected"
            self._ending = asyncio.ensure_future(self._on_session_ended(session, reason))
        if self.reconnect and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.ensure_future(self._reconnect_loop())

    async def _give_up_after_grace(self, session: CallSession) -> None:
        await asyncio.sleep(session.rejoin_grace)
        if self._session is session and not session.rejoined_since_loss:
            log.info(
                "could not rejoin session %s within %.0f s: ending it",
                session.session_id,
                session.rejoin_grace,
            )
            self._drop_session(session, "disconnected")

    def _session_ended_by_itself(self, session: CallSession, reason: SessionOver) -> None:
        """The session's own decision to end (its on_over callback)."""
        if self._session is not session:
            return
        if reason is SessionOver.TIMEOUT:
            self._ending = asyncio.ensure_future(self._end_by_timeout(session))
        else:
            self._drop_session(session, "lost")

    async def _end_by_timeout(self, session: CallSession) -> None:
        """Alone for the idle timeout period: leave, then on_session_timeout."""
        await self._end_session_from(session, notify_server=True)
        self.listeners.emit("on_session_timeout")
        self._session_over(session)

    def _drop_session(self, session: CallSession, reason: str) -> None:
        """End a session the server no longer has us in: the call is over for this endpoint, as a
        hung-up 1:1 call is (on_call_ended), whatever its size."""
        if self._session is session:
            self._session = None
            self._ending = asyncio.ensure_future(self._on_session_ended(session, "lost"))

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        waited = 0.0  # how long the last attempt itself took (a connect that timed out)
        loop = asyncio.get_running_loop()
        while not self._closing:
            # Jitter spreads a fleet's retries; the delay counts from the start of the last attempt.
            await asyncio.sleep(max(RECONNECT_MIN_SECONDS, delay * (0.5 + random.random()) - waited))
            started = loop.time()
            try:
                assert self._signaling is not None and self.auth_token is not None
                await self._connect_any(self.auth_token)
                log.info("signaling reconnected to %s", self.server_url)
            except CallsError as exc:
                if exc.code == "UNAUTHORIZED":
                    # The token was revoked (or the user removed): no retry can succeed, and each
                    # would count as a failed sign-in against this address. Stop, and say so.
                    log.warning("signaling refused this endpoint's auth token: not reconnecting")
                    self.listeners.emit(
                        "on_error",
                        CallError("UNAUTHORIZED", "the call server no longer accepts this auth token"),
                    )
                    if self._session is not None:
                        self._drop_session(self._session, "lost")
                    return
                log.info("reconnect failed: %s", exc)
                waited = loop.time() - started
                # In a call, keep trying often: the call waits on it. Idle, back off further.
                cap = RECONNECT_IN_CALL_MAX_SECONDS if self._session is not None else RECONNECT_MAX_SECONDS
                delay = min(cap, delay * 2)
                continue
            session = self._session
            if session is not None:
                try:
                    await session.rejoin()
                except CallsError as exc:
                    if exc.code == "CONNECTION_FAILED":
                        continue  # lost again already: the close callback starts a new attempt
                    log.info("rejoining session %s failed: %s", session.session_id, exc)
                    self._drop_session(session, "lost")
            return

    def refresh_signaling(self) -> None:
        """Drop the signaling connection and make a new one (media stalled: the old TCP connection
        may be dead without knowing it yet, and a new one is up as soon as the network is back)."""
        if self._signaling is not None and not self._closing and self._signaling.connected:
            self._refreshing = True
            self._signaling.drop()

    # ----------------------------------------------------------------- listeners

    def add_call_event_listener(self, listener_id: str, listener: Any) -> None:
        self.listeners.add(listener_id, listener)

    def remove_call_event_listener(self, listener_id: str) -> None:
        self.listeners.remove(listener_id)

    # The Android/Flutter spellings.
    add_calls_event_listeners = add_call_event_listener
    remove_calls_event_listeners = remove_call_event_listener

    # ----------------------------------------------------------------- session

    async def generate_token(self, session_id: str, auth_token: str | None = None) -> GenerateToken:
        token = auth_token or self.auth_token
        if not token:
            raise CallsError("UNAUTHORIZED", "generate_token() needs the logged-in user's auth token")
        if self.auth_token is None:
            self.auth_token = token
        data = await self.rest.request(
            "POST", "/calls/token", auth_token=token, body={"sessionId": session_id}
        )
        return GenerateToken(
            token=data["token"],
            session_id=data["sessionId"],
            uid=data["uid"],
            expires_at=int(data["expiresAt"]),
            ice_servers=list(data.get("iceServers") or []),
        )

    async def start_session(
        self, call_token: GenerateToken | str, call_settings: CallSettings | None = None, view: object = None
    ) -> SessionInfo:
        """Join the session `call_token` is for. `view`: the application's screen for the call, any
        object with some of CallView's hooks (render_frame, remove_participant, set_mode, set_pip,
        close), checked now (TypeError for a hook that cannot be called as it will be)."""
        if self._session is not None:
            raise CallsError("SESSION_ALREADY_ACTIVE", "a call session is already active; end it first")
        settings = call_settings or CallSettingsBuilder().build()
        if not isinstance(settings, CallSettings):
            raise CallsError("INVALID_SETTINGS", "call_settings must be built with CallSettingsBuilder")
        if isinstance(call_token, GenerateToken):
            token, session_id = call_token.token, call_token.session_id
        else:
            token, session_id = call_token, _session_of(call_token)
        call_view = as_call_view(view)
        await self.login()
        # A ring's stills had the camera: it must be closed before the session opens it (a Pi
        # camera opens once at a time).
        await self._stop_ring_preview()
        session = CallSession(
            self,
            session_id,
            settings,
            call_view,
            lambda reason: self._session_ended_by_itself(session, reason),
        )
        self.listeners.settings_listener = settings.listener
        self._session = session
        try:
            await session.start(token)
        except BaseException:
            self._session = None
            await session.close(notify_server=False)
            self._session_over(session)
            raise
        self._poll_task = asyncio.ensure_future(self._poll_devices(session))
        return session.info

    async def end_session(self) -> None:
        """Leave the session and release camera, microphone and connections."""
        session = self._session
        if session is None:
            if self._ending is not None:  # the server ended it; wait until it is torn down
                await asyncio.shield(self._ending)
            return
        one_to_one = len(session.participants) == 1
        await self._end_session_from(session, notify_server=True)
        if one_to_one:
            self.listeners.emit("on_call_ended")
        self._session_over(session)

    def _session_over(self, session: CallSession) -> None:
        """After a session's last events: its settings listener hears nothing more."""
        if self.listeners.settings_listener is session.settings.listener:
            self.listeners.settings_listener = None

    async def _end_session_from(self, session: CallSession, notify_server: bool) -> None:
        if self._session is session:
            self._session = None
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        await session.close(notify_server=notify_server)
        self.last_session_stats = session.final_stats
        # Once the call's last objects are gone (aiortc closes some a moment later), and not while a
        # new call is being set up: between calls a few milliseconds on the loop are not noticed.
        loop = asyncio.get_running_loop()
        loop.call_later(MEMORY_RETURN_DELAY, self._return_memory_between_calls)

    def _return_memory_between_calls(self) -> None:
        if self._session is None and not self._closing:
            return_freed_memory()

    def press_end_call_button(self) -> None:
        """What the end-call button (touch or GPIO) does: tell the app, as the documents' UI does."""
        self._active_session("press_end_call_button")
        self.listeners.emit("on_call_end_button_pressed")

    async def _poll_devices(self, session: CallSession) -> None:
        while session.active:
            await asyncio.sleep(self.device_poll_interval)
            try:
                session.check_devices()
            except DeviceError as exc:
                self.listeners.emit("on_error", CallError("DEVICE_ERROR", str(exc)))

    def _active_session(self, method: str) -> CallSession:
        if self._session is None or not self._session.active:
            raise SessionNotActiveError(method)
        return self._session

    # ----------------------------------------------------------------- in-call methods

    def mute_audio(self, muted: bool) -> None:
        self._active_session("mute_audio").controls.mute_audio(muted)

    def pause_video(self, paused: bool) -> None:
        self._active_session("pause_video").controls.pause_video(paused)

    def switch_camera(self) -> None:
        self._active_session("switch_camera").controls.switch_camera()

    def set_audio_mode(self, mode: str) -> None:
        self._active_session("set_audio_mode").output.select_mode(mode)

    def get_audio_output_modes(self) -> list[AudioModeInfo]:
        return self._active_session("get_audio_output_modes").output.modes()

    def switch_to_video_call(self) -> None:
        self._active_session("switch_to_video_call").controls.switch_to_video_call()

    def start_recording(self) -> None:
        self._active_session("start_recording").start_recording()

    def stop_recording(self) -> None:
        self._active_session("stop_recording").recording.stop()

    def set_mode(self, mode: str) -> None:
        self._active_session("set_mode").controls.set_mode(mode)

    def enter_pip_mode(self) -> None:
        self._active_session("enter_pip_mode").controls.set_pip(True)

    def exit_pip_mode(self) -> None:
        self._active_session("exit_pip_mode").controls.set_pip(False)

    def get_audio_input_devices(self) -> list[MediaDeviceInfo]:
        self._active_session("get_audio_input_devices")
        return self.devices.audio_inputs()

    def get_audio_output_devices(self) -> list[MediaDeviceInfo]:
        self._active_session("get_audio_output_devices")
        return self.devices.audio_outputs()

    def get_video_input_devices(self) -> list[MediaDeviceInfo]:
        self._active_session("get_video_input_devices")
        return self.devices.video_inputs()

    def set_audio_input_device(self, device_id: str) -> None:
        self._device_call(lambda s: s.controls.set_audio_input_device(device_id), "set_audio_input_device")

    def set_audio_output_device(self, device_id: str) -> None:
        self._device_call(lambda s: s.output.select_output(device_id), "set_audio_output_device")

    def set_video_input_device(self, device_id: str) -> None:
        self._device_call(lambda s: s.controls.set_video_input_device(device_id), "set_video_input_device")

    def _device_call(self, action: Callable[[CallSession], None], method: str) -> None:
        session = self._active_session(method)
        try:
            action(session)
        except DeviceError as exc:
            raise CallsError("DEVICE_NOT_FOUND", f"{method}(): {exc}") from None

    def start_screen_share(self) -> None:
        self._active_session("start_screen_share").controls.start_screen_share()

    def stop_screen_share(self) -> None:
        self._active_session("stop_screen_share").controls.stop_screen_share()

    @property
    def can_open_doors(self) -> bool:
        """Whether the server lets this user ask a door kiosk in its call to open (as of sign-in;
        the server checks again at each request)."""
        return self._signaling is not None and self._signaling.can_open_doors

    def doors(self) -> list[RTCUser]:
        """Those in the active call that drive a door (Calls.open_door can ask them)."""
        session = self._active_session("doors")
        return [p.user for p in session.participants.values() if p.door]

    async def open_door(self, uid: str | None = None) -> None:
        """Ask the door kiosk `uid` in the active call (None: the only one in it) to release its
        door. Returns once the server passed the request on; the door's answer comes to everyone
        in the call as on_door_opened (released, or why not). CallsError when refused: FORBIDDEN
        (this user may not open doors), NO_DOOR (nobody in the call has a door), INVALID_STATE."""
        session = self._active_session("open_door")
        if uid is None:
            doors = [p.user.uid for p in session.participants.values() if p.door]
            if len(doors) != 1:
                raise CallsError(
                    "NO_DOOR",
                    "nobody in this call has a door"
                    if not doors
                    else f"several doors in this call: name one of {doors}",
                )
            uid = doors[0]
        await session.door.ask(uid)

    async def get_session_stats(self) -> SessionStats:
        return await self._active_session("get_session_stats").stats()

    # The documents' other spellings.
    enter_p_i_p_mode = enter_pip_mode
    exit_p_i_p_mode = exit_pip_mode

    # ----------------------------------------------------------------- ringing

    def _require_token(self, method: str) -> str:
        if not self.auth_token:
            raise CallsError("UNAUTHORIZED", f"{method}() needs an auth token: call login() first")
        return self.auth_token

    async def initiate_call(self, receiver_uid: str, call_type: CallType | str = CallType.VIDEO) -> Call:
        token = self._require_token("initiate_call")
        try:
            kind = parse_enum(CallType, call_type, "call_type")
        except ValueError as exc:
            raise CallsError("BAD_REQUEST", str(exc)) from None
        data = await self.rest.request(
            "POST", "/calls", auth_token=token, body={"receiverUid": receiver_uid, "callType": str(kind)}
        )
        call = Call.from_json(data)
        if call.status not in FINAL_CALL_STATUSES:
            self.active_call = call
            if self.ring_pictures and call.type == CallType.VIDEO:
                await self._stop_ring_preview()  # another ring's, still closing its camera
                self._start_ring_preview(call.session_id, token)
        return call

    def _start_ring_preview(self, session_id: str, token: str) -> None:
        async def upload(jpeg: bytes) -> None:
            await self.rest.put_image(f"/calls/{session_id}/picture", jpeg, auth_token=token)

        preview = RingPreview(self.devices, upload)
        self._ring_preview = (session_id, preview)
        preview.start()

    async def _stop_ring_preview(self, session_id: str | None = None) -> None:
        """Stop the stills (of this call only, if given); the camera is closed when this returns."""
        current = self._ring_preview
        if current is None or (session_id is not None and current[0] != session_id):
            return
        self._ring_preview = None
        await current[1].stop()

    async def get_call_picture(self, session_id: str) -> bytes | None:
        """The still of the caller of this call (JPEG): while it rings, the newest (call it a couple of
        times a second for a preview); after, the last one taken. None if there is none."""
        token = self._require_token("get_call_picture")
        return await self.rest.get_image(f"/calls/{session_id}/picture", auth_token=token)

    async def accept_call(self, session_id: str) -> Call:
        # Marked before the request: the server's call.updated may come before its answer, and an
        # answer from this endpoint must not read as "answered elsewhere".
        self._accepting.add(session_id)
        try:
            return await self._call_action(session_id, "accept", None)
        finally:
            self._accepting.discard(session_id)
            self._accepted_here = session_id

    async def reject_call(self, session_id: str, status: CallStatus | str = CallStatus.REJECTED) -> Call:
        allowed = (CallStatus.REJECTED, CallStatus.BUSY, CallStatus.CANCELLED)
        chosen = next((s for s in allowed if str(status).lower() == s.value), None)
        if chosen is None:
            raise CallsError(
                "BAD_REQUEST", f"reject status must be rejected, busy or cancelled, not {status!r}"
            )
        return await self._call_action(session_id, "reject", {"status": str(chosen)})

    async def end_call(self, session_id: str) -> Call:
        return await self._call_action(session_id, "end", None)

    async def _call_action(self, session_id: str, action: str, body: dict[str, Any] | None) -> Call:
        token = self._require_token(f"{action}_call")
        data = await self.rest.request(
            "POST", f"/calls/{session_id}/{action}", auth_token=token, body=body or {}
        )
        call = Call.from_json(data)
        self._track_call(call)
        return call

    def _track_call(self, call: Call) -> None:
        if call.status in FINAL_CALL_STATUSES:
            if self.active_call is not None and self.active_call.session_id == call.session_id:
                self.active_call = None
        else:
            self.active_call = call

    def get_active_call(self) -> Call | None:
        return self.active_call

    def clear_active_call(self) -> None:
        self.active_call = None

    async def get_call_participant_count(self, session_id: str, session_type: SessionType | str) -> int:
        token = self._require_token("get_call_participant_count")
        data = await self.rest.request(
            "GET",
            f"/sessions/{session_id}/participants",
            auth_token=token,
            params={"type": str(session_type)},
        )
        return int(data["count"])

    async def get_call_logs(self, **filters: Any) -> CallLogPage:
        """Call logs, newest first. Filters: type, status, direction, has_recording, page, per_page."""
        token = self._require_token("get_call_logs")
        names = {"has_recording": "hasRecording", "per_page": "perPage"}
        params = {
            names.get(k, k): (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in filters.items()
            if v is not None
        }
        data = await self.rest.request("GET", "/calls", auth_token=token, params=params)
        return CallLogPage(
            [Call.from_json(c) for c in data["calls"]],
            int(data["page"]),
            int(data["perPage"]),
            int(data["total"]),
        )

    # ----------------------------------------------------------------- messages from the server

    def _on_message(self, message: ServerMessage) -> None:
        if message["type"] == "call.incoming":
            self._on_call_incoming(Call.from_json(message["call"]))
        elif message["type"] == "call.updated":
            self._on_call_updated(Call.from_json(message["call"]))
        elif message["type"] == "session.ended":
            session = self._session
            if session is not None and session.session_id == message.get("sessionId"):
                self._session = None  # from now on no in-call method reaches it
                self._ending = asyncio.ensure_future(self._on_session_ended(session, message.get("reason")))
        elif is_session_message(message):
            session = self._session
            if session is not None and session.session_id == message.get("sessionId"):
                # Messages can arrive between the server accepting our join and start() resuming;
                # the session keeps them until it is active.
                session.receive(message)

    def _on_call_incoming(self, call: Call) -> None:
        busy = self._session is not None or (
            self.active_call is not None and self.active_call.session_id != call.session_id
        )
        if busy:
            # The server normally answers busy itself; this covers a race between two calls.
            asyncio.ensure_future(self._reject_quietly(call.session_id, CallStatus.BUSY))
            return
        self.active_call = call
        self.listeners.emit("on_incoming_call_received", call)

    async def _reject_quietly(self, session_id: str, status: CallStatus) -> None:
        with contextlib.suppress(CallsError):
            await self.reject_call(session_id, status)

    def _on_call_updated(self, call: Call) -> None:
        mine = self.user is not None and call.initiator.uid == self.user.uid
        if mine and call.status != CallStatus.INITIATED:
            # Answered or over: no more stills. The session, if one starts, waits for the camera.
            self._ring_stopping = asyncio.ensure_future(self._stop_ring_preview(call.session_id))
        status = call.status
        here = call.session_id in self._accepting or call.session_id == self._accepted_here
        if status == CallStatus.ONGOING and not mine and not here:
            # Answered, but not by this endpoint: by another member of a ring group, or by this
            # user on another device. It stops ringing here ("answered elsewhere").
            if self.active_call is not None and self.active_call.session_id == call.session_id:
                self.active_call = None
                self.listeners.emit("on_incoming_call_cancelled", call)
            return
        self._track_call(call)
        if status == CallStatus.ONGOING and mine:
            self.listeners.emit("on_outgoing_call_accepted", call)
        elif status in (CallStatus.REJECTED, CallStatus.BUSY, CallStatus.UNANSWERED) and mine:
            self.listeners.emit("on_outgoing_call_rejected", call)
        elif status in (CallStatus.CANCELLED, CallStatus.UNANSWERED) and not mine:
            self.listeners.emit("on_incoming_call_cancelled", call)
        elif status == CallStatus.ENDED:
            self.listeners.emit("on_call_ended_message_received", call)

    async def _on_session_ended(self, session: CallSession, reason: str | None) -> None:
        # on_call_ended is for 1:1 calls: a hangup, or an end for everyone with one other participant.
        # "lost": we could not get back into the session; for us the call is over.
        one_to_one = reason in ("hangup", "lost") or (reason == "ended" and len(session.participants) == 1)
        remaining = list(session.participants.values())
        await self._end_session_from(session, notify_server=False)
        if one_to_one:
            self.listeners.emit("on_call_ended")
        else:
            for participant in remaining:
                self.listeners.emit("on_user_left", participant.user)
            self.listeners.emit("on_user_list_changed", [session.self_user] if session.self_user else [])
        self._session_over(session)


def _session_of(token: str) -> str:
    """The session id a call token was issued for (read without checking: the server checks)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return str(claims["sid"])
    except (jwt.PyJWTError, KeyError) as exc:
        raise CallsError("TOKEN_INVALID", "this is not a call token from generate_token()") from exc


__all__ = ["Call", "CallLogPage", "Calls", "GenerateToken", "NotSupportedError"]
