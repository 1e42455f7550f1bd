"""The in-call controls of the documents, for one session: mute, pause video, switch camera, the
devices, audio-only to video, screen sharing, the layout and picture-in-picture.

Each acts at once, on this endpoint's capture (so mute and pause really stop what leaves the
device, for every peer at once), and tells the others in the background (`media.state`,
`switch.video`); a failure to tell becomes on_error, never an exception from the control.
"""

from __future__ import annotations

from kiosk.calls.constants import Mode, parse_enum
from kiosk.calls.errors import CallsError, NotSupportedError
from kiosk.calls.ports import CallView, EventSink, Send
from kiosk.calls.settings import CallSettings
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.devices import DeviceError, MediaDevices


class InCallControls:
    def __init__(
        self,
        settings: CallSettings,
        devices: MediaDevices,
        camera: VideoCapture,
        microphone: AudioCapture,
        *,
        view: CallView,
        send: Send,
        events: EventSink,
    ) -> None:
        self._devices = devices
        self._camera = camera
        self._microphone = microphone
        self._view = view
        self._send = send
        self._events = events
        self.audio_only = settings.audio_only
        self.audio_muted = settings.start_with_audio_muted
        self.video_muted = settings.start_with_video_muted
        self.mode: Mode = settings.mode
        self.pip = False
        microphone.set_muted(self.audio_muted)
        camera.set_enabled(not self.audio_only)
        camera.set_paused(self.video_muted)

    def _tell_media_state(self) -> None:
        self._send("media.state", audioMuted=self.audio_muted, videoMuted=self.video_muted)

    def mute_audio(self, muted: bool) -> None:
        self.audio_muted = bool(muted)
        self._microphone.set_muted(self.audio_muted)
        self._tell_media_state()

    def pause_video(self, paused: bool) -> None:
        self.video_muted = bool(paused)
        self._camera.set_paused(self.video_muted)
        self._tell_media_state()

    # ----------------------------------------------------------------- audio only and video

    def call_is_audio_only(self) -> None:
        """The session is an audio call (rung as audio): send no video until someone switches."""
        self.audio_only = True
        self._camera.set_enabled(False)

    def become_video(self) -> None:
        """Someone switched the call to video."""
        self.audio_only = False
        self._camera.set_enabled(True)

    def switch_to_video_call(self) -> None:
        if not self.audio_only:
            return
        self.become_video()
        self._send("switch.video")

    # ----------------------------------------------------------------- cameras and devices

    def switch_camera(self) -> None:
        cameras = self._devices.video_inputs()
        if len(cameras) < 2:
            raise NotSupportedError("switch_camera(): this device has only one camera")
        current = next((c for c in cameras if c.device_id == self._camera.device_id), None)
        if current is not None and current.facing in ("front", "back"):
            # Flip front <-> back, as the documents describe, when the cameras say which way they face.
            flipped = next((c for c in cameras if c.facing not in (None, current.facing)), None)
            if flipped is not None:
                self._camera.select(flipped.device_id)
                return
        ids = [c.device_id for c in cameras]
        following = ids[(ids.index(current.device_id) + 1) % len(ids)] if current is not None else ids[0]
        self._camera.select(following)

    def set_video_input_device(self, device_id: str) -> None:
        self._camera.select(device_id)

    def set_audio_input_device(self, device_id: str) -> None:
        self._microphone.select(device_id)

    @property
    def camera_id(self) -> str | None:
        return self._camera.device_id

    # ----------------------------------------------------------------- screen sharing

    @property
    def sharing_screen(self) -> bool:
        return self._camera.sharing_screen

    def start_screen_share(self) -> None:
        if self._camera.sharing_screen:
            return
        try:
            self._camera.share_screen(True)
        except DeviceError as exc:
            raise NotSupportedError(f"start_screen_share(): {exc}") from None
        self._camera.set_enabled(True)
        self._events.emit("on_screen_share_started")

    def stop_screen_share(self) -> None:
        if not self._camera.sharing_screen:
            return
        self._camera.share_screen(False)
        self._camera.set_enabled(not self.audio_only)
        self._events.emit("on_screen_share_stopped")

    # ----------------------------------------------------------------- the view

    def set_mode(self, mode: Mode | str) -> None:
        try:
            self.mode = parse_enum(Mode, mode, "mode")
        except ValueError as exc:
            raise CallsError("INVALID_MODE", str(exc)) from None
        self._view.set_mode(self.mode)

    def set_pip(self, pip: bool) -> None:
        self.pip = pip
        self._view.set_pip(pip)
