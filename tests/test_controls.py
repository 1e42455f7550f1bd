"""The in-call controls on their own (kiosk/calls/controls.py): each acts on this endpoint's capture at
once and tells the others; the camera flips front and back; screen sharing; the layout."""

from __future__ import annotations

from typing import Any

import pytest

from kiosk.calls.constants import Mode
from kiosk.calls.controls import InCallControls
from kiosk.calls.errors import CallsError, NotSupportedError
from kiosk.calls.ports import as_call_view
from kiosk.calls.settings import CallSettingsBuilder
from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.emulated import EmulatedDevices


class World:
    def __init__(self, *, screen: bool = False, audio_only: bool = False, **settings: Any) -> None:
        self.devices = EmulatedDevices(width=128, height=96, screen=screen)
        self.errors: list[Exception] = []
        self.camera = VideoCapture(self.devices, "emulated-camera-front", self.errors.append)
        self.microphone = AudioCapture(self.devices, "emulated-mic", self.errors.append)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.events: list[str] = []
        self.view_calls: list[tuple[str, Any]] = []
        builder = CallSettingsBuilder().set_is_audio_only_call(audio_only)
        for name, value in settings.items():
            builder = getattr(builder, name)(value)

        world = self

        class View:
            def set_mode(self, mode: Mode) -> None:
                world.view_calls.append(("set_mode", mode))

            def set_pip(self, pip: bool) -> None:
                world.view_calls.append(("set_pip", pip))

        class Events:
            def emit(self, event: str, *args: Any) -> None:
                world.events.append(event)

        self.controls = InCallControls(
            builder.build(),
            self.devices,
            self.camera,
            self.microphone,
            view=as_call_view(View()),
            send=lambda kind, **fields: self.sent.append((kind, fields)),
            events=Events(),
        )


def test_start_muted_and_paused_as_the_settings_say() -> None:
    world = World(start_with_audio_muted=True, start_with_video_muted=True)
    assert world.controls.audio_muted and world.microphone.muted
    assert world.controls.video_muted and world.camera.paused
    assert world.sent == []  # the join carries the initial state


def test_mute_and_pause_act_on_the_capture_and_tell_the_others() -> None:
    world = World()
    world.controls.mute_audio(True)
    assert world.microphone.muted
    world.controls.pause_video(True)
    assert world.camera.paused
    assert world.sent == [
        ("media.state", {"audioMuted": True, "videoMuted": False}),
        ("media.state", {"audioMuted": True, "videoMuted": True}),
    ]


def test_switch_camera_flips_front_and_back() -> None:
    world = World()
    world.controls.switch_camera()
    assert world.controls.camera_id == "emulated-camera-back"
    world.controls.switch_camera()
    assert world.controls.camera_id == "emulated-camera-front"
    world.devices.unplug("emulated-camera-back")
    with pytest.raises(NotSupportedError):
        world.controls.switch_camera()


def test_an_audio_call_becomes_a_video_call_once() -> None:
    world = World(audio_only=True)
    assert not world.camera.enabled
    world.controls.switch_to_video_call()
    world.controls.switch_to_video_call()
    assert world.camera.enabled and not world.controls.audio_only
    assert world.sent == [("switch.video", {})]


def test_screen_sharing_needs_a_screen_and_says_when_it_starts_and_stops() -> None:
    with pytest.raises(NotSupportedError):
        World().controls.start_screen_share()
    world = World(screen=True, audio_only=True)
    world.controls.start_screen_share()
    assert world.controls.sharing_screen and world.camera.enabled
    world.controls.stop_screen_share()
    assert not world.controls.sharing_screen and not world.camera.enabled  # back to the audio call
    assert world.events == ["on_screen_share_started", "on_screen_share_stopped"]


def test_the_layout_and_pip_reach_the_view_and_a_wrong_mode_is_refused() -> None:
    world = World()
    world.controls.set_mode("SPOTLIGHT")
    world.controls.set_pip(True)
    assert world.view_calls == [("set_mode", Mode.SPOTLIGHT), ("set_pip", True)]
    with pytest.raises(CallsError) as refused:
        world.controls.set_mode("CAROUSEL")
    assert refused.value.code == "INVALID_MODE" and world.controls.mode == Mode.SPOTLIGHT
