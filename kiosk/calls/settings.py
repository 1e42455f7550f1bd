"""CallSettingsBuilder and the immutable CallSettings it builds.

Every setting of the five reference documents is here, with the documents' defaults. Where the
platforms spell a setter differently (`setIsAudioOnly`, `setIsAudioOnlyCall`, `setAudioOnlyCall`),
the Python builder has one canonical snake_case method and the other spellings as aliases.
Values are checked by `build()`, which raises `SettingsError` naming the setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kiosk.calls.constants import AspectRatio, AudioMode, AvatarMode, Mode, Position, parse_enum
from kiosk.calls.errors import SettingsError

MAX_IDLE_TIMEOUT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ButtonParams:
    """Where a button of the main video container sits, and whether it shows."""

    position: Position = Position.BOTTOM_RIGHT
    visible: bool = True


@dataclass(frozen=True)
class NameLabelParams:
    position: Position = Position.BOTTOM_LEFT
    visible: bool = True
    background_color: str = "#333333"


@dataclass(frozen=True)
class MainVideoContainerSetting:
    """Customisation of the main (large) video tile, as in the documents' Video View Customisation."""

    aspect_ratio: AspectRatio = AspectRatio.CONTAIN
    full_screen_button: ButtonParams = field(default_factory=lambda: ButtonParams(Position.BOTTOM_RIGHT))
    name_label: NameLabelParams = field(default_factory=NameLabelParams)
    zoom_button: ButtonParams = field(default_factory=lambda: ButtonParams(Position.BOTTOM_RIGHT))
    user_list_button: ButtonParams = field(default_factory=lambda: ButtonParams(Position.BOTTOM_RIGHT))

    def set_main_video_aspect_ratio(self, ratio: AspectRatio | str) -> MainVideoContainerSetting:
        try:
            aspect_ratio = parse_enum(AspectRatio, ratio, "aspect ratio")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return dataclasses.replace(self, aspect_ratio=aspect_ratio)

    def set_full_screen_button_params(
        self, position: Position | str, visible: bool
    ) -> MainVideoContainerSetting:
        return dataclasses.replace(self, full_screen_button=ButtonParams(_position(position), _bool(visible)))

    def set_name_label_params(
        self, position: Position | str, visible: bool, background_color: str = "#333333"
    ) -> MainVideoContainerSetting:
        return dataclasses.replace(
            self, name_label=NameLabelParams(_position(position), _bool(visible), background_color)
        )

    def set_zoom_button_params(self, position: Position | str, visible: bool) -> MainVideoContainerSetting:
        return dataclasses.replace(self, zoom_button=ButtonParams(_position(position), _bool(visible)))

    def set_user_list_button_params(
        self, position: Position | str, visible: bool
    ) -> MainVideoContainerSetting:
        return dataclasses.replace(self, user_list_button=ButtonParams(_position(position), _bool(visible)))


def _position(value: object) -> Position:
    try:
        return parse_enum(Position, value, "position")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"expected True or False, not {value!r}")
    return value


@dataclass(frozen=True)
class CallSettings:
    """How a call session looks and behaves. Build it with CallSettingsBuilder; it cannot change after."""

    default_layout: bool = True
    audio_only: bool = False
    listener: Any = None
    mode: Mode = Mode.DEFAULT
    avatar_mode: AvatarMode = AvatarMode.CIRCLE
    default_audio_mode: AudioMode | None = None  # None: the first available, in fallback order
    start_with_audio_muted: bool = False
    start_with_video_muted: bool = False
    show_end_call_button: bool = True
    show_switch_camera_button: bool = True
    show_mute_audio_button: bool = True
    show_pause_video_button: bool = True
    show_audio_mode_button: bool = True
    show_switch_to_video_call_button: bool = True
    show_recording_button: bool = False
    show_screen_share_button: bool = True
    show_mode_button: bool = True
    auto_record_on_call_start: bool = False
    enable_video_tile_click: bool = True
    enable_video_tile_drag: bool = True
    main_video_container_setting: MainVideoContainerSetting = field(default_factory=MainVideoContainerSetting)
    idle_timeout_period: int = 180


_BOOL_SETTINGS = tuple(f.name for f in dataclasses.fields(CallSettings) if f.type == "bool")


class CallSettingsBuilder:
    """Chainable builder: `CallSettingsBuilder().set_is_audio_only_call(True).set_mode("SPOTLIGHT").build()`."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def _set(self, name: str, value: Any) -> CallSettingsBuilder:
        self._values[name] = value
        return self

    def enable_default_layout(self, enabled: bool) -> CallSettingsBuilder:
        return self._set("default_layout", enabled)

    def set_is_audio_only_call(self, audio_only: bool) -> CallSettingsBuilder:
        return self._set("audio_only", audio_only)

    def set_call_listener(self, listener: Any) -> CallSettingsBuilder:
        return self._set("listener", listener)

    def set_mode(self, mode: Mode | str) -> CallSettingsBuilder:
        return self._set("mode", mode)

    def set_avatar_mode(self, mode: AvatarMode | str) -> CallSettingsBuilder:
        return self._set("avatar_mode", mode)

    def set_default_audio_mode(self, mode: AudioMode | str) -> CallSettingsBuilder:
        return self._set("default_audio_mode", mode)

    def start_with_audio_muted(self, muted: bool) -> CallSettingsBuilder:
        return self._set("start_with_audio_muted", muted)

    def start_with_video_muted(self, muted: bool) -> CallSettingsBuilder:
        return self._set("start_with_video_muted", muted)

    def show_end_call_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_end_call_button", show)

    def show_switch_camera_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_switch_camera_button", show)

    def show_mute_audio_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_mute_audio_button", show)

    def show_pause_video_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_pause_video_button", show)

    def show_audio_mode_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_audio_mode_button", show)

    def show_switch_to_video_call_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_switch_to_video_call_button", show)

    def show_recording_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_recording_button", show)

    def show_screen_share_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_screen_share_button", show)

    def show_mode_button(self, show: bool) -> CallSettingsBuilder:
        return self._set("show_mode_button", show)

    def auto_record_on_call_start(self, enabled: bool) -> CallSettingsBuilder:
        return self._set("auto_record_on_call_start", enabled)

    def enable_video_tile_click(self, enabled: bool) -> CallSettingsBuilder:
        return self._set("enable_video_tile_click", enabled)

    def enable_video_tile_drag(self, enabled: bool) -> CallSettingsBuilder:
        return self._set("enable_video_tile_drag", enabled)

    def set_main_video_container_setting(self, setting: MainVideoContainerSetting) -> CallSettingsBuilder:
        return self._set("main_video_container_setting", setting)

    def set_idle_timeout_period(self, seconds: int) -> CallSettingsBuilder:
        return self._set("idle_timeout_period", seconds)

    # The other platforms' spellings of the same setters.
    set_default_layout_enable = enable_default_layout  # Android
    set_default_layout = enable_default_layout  # iOS
    default_layout = enable_default_layout  # Flutter (a property there)
    set_is_audio_only = set_is_audio_only_call  # Android, iOS
    set_audio_only_call = set_is_audio_only_call  # Flutter
    set_event_listener = set_call_listener  # Android
    set_call_event_listener = set_call_listener  # React Native
    set_listener = set_call_listener  # Flutter
    set_delegate = set_call_listener  # iOS
    show_call_record_button = show_recording_button  # Flutter
    start_recording_on_call_start = auto_record_on_call_start  # Flutter

    def build(self) -> CallSettings:
        values = dict(self._values)
        for name in _BOOL_SETTINGS:
            if name in values and not isinstance(values[name], bool):
                raise SettingsError(f"{name} must be True or False, not {values[name]!r}")
        try:
            if "mode" in values:
                values["mode"] = parse_enum(Mode, values["mode"], "mode")
            if "avatar_mode" in values:
                values["avatar_mode"] = parse_enum(AvatarMode, values["avatar_mode"], "avatar_mode")
            if values.get("default_audio_mode") is not None:
                values["default_audio_mode"] = parse_enum(
                    AudioMode, values["default_audio_mode"], "default_audio_mode"
                )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        period = values.get("idle_timeout_period", 180)
        if (
            isinstance(period, bool)
            or not isinstance(period, int)
            or not 1 <= period <= MAX_IDLE_TIMEOUT_SECONDS
        ):
            raise SettingsError(
                f"idle_timeout_period must be whole seconds from 1 to {MAX_IDLE_TIMEOUT_SECONDS}, not {period!r}"
            )
        container = values.get("main_video_container_setting")
        if container is not None and not isinstance(container, MainVideoContainerSetting):
            raise SettingsError("main_video_container_setting must be a MainVideoContainerSetting")
        listener = values.get("listener")
        if listener is not None and not _looks_like_listener(listener):
            raise SettingsError("listener must be an object with on_... methods (see CallEventListener)")
        return CallSettings(**values)


def _looks_like_listener(listener: object) -> bool:
    return any(name.startswith("on_") and callable(getattr(listener, name, None)) for name in dir(listener))
