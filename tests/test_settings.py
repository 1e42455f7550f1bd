"""CallSettingsBuilder: every setting of the documents, their defaults, and refusal of bad values."""

from __future__ import annotations

import dataclasses

import pytest

from kiosk.calls import (
    AspectRatio,
    AudioMode,
    AvatarMode,
    CallEventListener,
    CallSettingsBuilder,
    MainVideoContainerSetting,
    Mode,
    Position,
    SettingsError,
)

DOCUMENTED_DEFAULTS = {
    "default_layout": True,
    "audio_only": False,
    "listener": None,
    "mode": Mode.DEFAULT,
    "avatar_mode": AvatarMode.CIRCLE,
    "default_audio_mode": None,
    "start_with_audio_muted": False,
    "start_with_video_muted": False,
    "show_end_call_button": True,
    "show_switch_camera_button": True,
    "show_mute_audio_button": True,
    "show_pause_video_button": True,
    "show_audio_mode_button": True,
    "show_switch_to_video_call_button": True,
    "show_recording_button": False,
    "show_screen_share_button": True,
    "show_mode_button": True,
    "auto_record_on_call_start": False,
    "enable_video_tile_click": True,
    "enable_video_tile_drag": True,
    "idle_timeout_period": 180,
}


def test_defaults_are_the_documents():
    settings = CallSettingsBuilder().build()
    for name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.main_video_container_setting == MainVideoContainerSetting()
    assert {f.name for f in dataclasses.fields(settings)} == set(DOCUMENTED_DEFAULTS) | {
        "main_video_container_setting"
    }


def test_every_setter_and_its_platform_aliases():
    listener = CallEventListener(on_user_joined=lambda user: None)
    container = (
        MainVideoContainerSetting()
        .set_main_video_aspect_ratio("cover")
        .set_name_label_params(Position.TOP_LEFT, False, "#000000")
    )
    settings = (
        CallSettingsBuilder()
        .set_default_layout_enable(False)
        .set_is_audio_only(True)
        .set_event_listener(listener)
        .set_mode("MODE_SPOTLIGHT")
        .set_avatar_mode("AVATAR_MODE_FULLSCREEN")
        .set_default_audio_mode(AudioMode.EARPIECE)
        .start_with_audio_muted(True)
        .start_with_video_muted(True)
        .show_end_call_button(False)
        .show_switch_camera_button(False)
        .show_mute_audio_button(False)
        .show_pause_video_button(False)
        .show_audio_mode_button(False)
        .show_switch_to_video_call_button(False)
        .show_call_record_button(True)
        .show_screen_share_button(False)
        .show_mode_button(False)
        .start_recording_on_call_start(True)
        .enable_video_tile_click(False)
        .enable_video_tile_drag(False)
        .set_main_video_container_setting(container)
        .set_idle_timeout_period(300)
        .build()
    )
    for name, default in DOCUMENTED_DEFAULTS.items():
        assert getattr(settings, name) != default, f"{name} was not set"
    assert settings.mode == Mode.SPOTLIGHT and settings.avatar_mode == AvatarMode.FULLSCREEN
    assert settings.main_video_container_setting.aspect_ratio == AspectRatio.COVER
    assert not settings.main_video_container_setting.name_label.visible
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.audio_only = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("setter", "value", "words"),
    [
        ("set_mode", "CAROUSEL", "mode must be one of"),
        ("set_avatar_mode", 3, "avatar_mode must be one of"),
        ("set_default_audio_mode", "LOUD", "default_audio_mode must be one of"),
        ("set_is_audio_only_call", "yes", "audio_only must be True or False"),
        ("show_end_call_button", 1, "show_end_call_button must be True or False"),
        ("set_idle_timeout_period", 0, "idle_timeout_period must be whole seconds"),
        ("set_idle_timeout_period", 1.5, "idle_timeout_period must be whole seconds"),
        ("set_idle_timeout_period", True, "idle_timeout_period must be whole seconds"),
        ("set_main_video_container_setting", "big", "MainVideoContainerSetting"),
        ("set_call_listener", object(), "listener must be an object with on_"),
    ],
)
def test_bad_values_raise_at_build(setter, value, words):
    builder = getattr(CallSettingsBuilder(), setter)(value)  # setting does not raise
    with pytest.raises(SettingsError, match=words):
        builder.build()


def test_listener_rejects_unknown_event_names():
    with pytest.raises(TypeError, match="unknown event"):
        CallEventListener(on_user_jumped=lambda user: None)


def test_each_event_reaches_a_listener_once_under_its_platform_spelling():
    from kiosk.calls.events import ListenerRegistry

    seen: list[tuple[str, object]] = []

    class Both:
        def on_user_list_changed(self, users):
            seen.append(("changed", users))

        def on_user_list_updated(self, users):
            seen.append(("updated", users))

    class WebStyle(CallEventListener):
        def on_user_list_updated(self, users):
            seen.append(("web", users))

        def on_audio_modes_updated(self, modes):
            seen.append(("rn", modes))

    class PlainWeb:
        def on_user_list_updated(self, users):
            seen.append(("plain", users))

    registry = ListenerRegistry()
    registry.add("both", Both())
    registry.add("web", WebStyle())
    registry.add("kw", CallEventListener(on_user_list_updated=lambda users: seen.append(("kw", users))))
    registry.add("plain", PlainWeb())
    registry.emit("on_user_list_changed", ["u"])
    registry.emit("on_audio_mode_changed", ["m"])
    assert seen == [("changed", ["u"]), ("web", ["u"]), ("kw", ["u"]), ("plain", ["u"]), ("rn", ["m"])]


def test_a_plain_call_event_listener_is_a_valid_settings_listener():
    settings = CallSettingsBuilder().set_call_listener(CallEventListener()).build()
    assert isinstance(settings.listener, CallEventListener)


def test_constants_accept_the_documents_prefixed_spellings():
    from kiosk.calls import AUDIO_MODE_EARPIECE, MODE_SINGLE

    assert Mode.MODE_SPOTLIGHT is Mode.SPOTLIGHT and list(Mode) == [Mode.DEFAULT, Mode.SPOTLIGHT, Mode.SINGLE]
    assert AudioMode.AUDIO_MODE_BLUETOOTH is AudioMode.BLUETOOTH and AUDIO_MODE_EARPIECE == "EARPIECE"
    assert AvatarMode.AVATAR_MODE_SQUARE is AvatarMode.SQUARE
    settings = CallSettingsBuilder().set_mode(MODE_SINGLE).default_layout(False).build()
    assert settings.mode is Mode.SINGLE and settings.default_layout is False
