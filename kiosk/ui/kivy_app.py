"""KioskApp: the kiosk's screens (home, incoming, outgoing, in call, call ended) on a KioskController.

Touch buttons call the same controller actions as the GPIO buttons and the keyboard, so every way of
pressing "mute" does the same thing. All of it runs on the one asyncio loop the SDK uses
(`App.async_run`), so SDK events and controller state changes reach the widgets without threads.
Import only after `kiosk.ui.env.prepare_kivy()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError
from kivy.app import App
from kivy.base import EventLoop
from kivy.clock import Clock
from kivy.core.image import Image as CoreImage
from kivy.core.window import Window
from kivy.graphics.opengl import glFinish
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.image import Image
from kivy.uix.label import Label
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager
from kivy.uix.widget import Widget
from kivy.utils import get_color_from_hex

from kiosk.calls import Call, CallEventListener, CallsError, CallSettings, CallStatus, CallType
from kiosk.calls.events import CallError, RTCMutedUser, RTCUser
from kiosk.config import Contact
from kiosk.controller import KioskController, KioskState, Phase
from kiosk.hardware.control import KEYS
from kiosk.lan import show_fingerprint
from kiosk.lan.codes import show_code
from kiosk.ui.frames import LOCAL, FrameStore, choose_speaker
from kiosk.ui.widgets import (
    AMBER,
    BLUE,
    FONT_LARGE,
    GREEN,
    GREY,
    PANEL,
    RED,
    TOUCH_TARGET,
    Avatar,
    BigButton,
    Text,
    VideoTile,
    VolumeControl,
    paint_background,
)

log = logging.getLogger(__name__)

DISPLAY_FPS = 30
CALLER_PICTURE_INTERVAL = 0.5  # seconds between two looks at a ringing caller's still
PREVIEW_ALONE_AFTER = 0.1  # seconds without remote video after which the preview is drawn on its own
MODES = ("DEFAULT", "SPOTLIGHT", "SINGLE")

MODE_WORDS = {"DEFAULT": "Grid", "SPOTLIGHT": "Speaker", "SINGLE": "Single"}
AUDIO_MODE_WORDS = {
    "SPEAKER": "Speaker",
    "EARPIECE": "Handset",
    "HEADSET": "Headset",
    "BLUETOOTH": "Bluetooth",
}


def texts_of(widget: Widget) -> list[str]:
    """Every non-empty text in a widget tree (what a test, or a screen reader, would read)."""
    found: list[str] = []
    for child in widget.walk(restrict=True):
        text = getattr(child, "text", "")
        if isinstance(text, str) and text.strip():
            found.append(text)
    return found


def short(message: str, limit: int = 70) -> str:
    """A message that fits one line of a 7-inch screen; the whole text goes to the log."""
    return message if len(message) <= limit else message[: limit - 1].rstrip() + "…"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe_call(call: Call, me: str) -> str:
    """One line of the recent-calls list, in words."""
    incoming = call.initiator.uid != me  # to this kiosk, or to a ring group it is in
    other = call.initiator if incoming else call.receiver
    name = other.name or other.uid
    stamp = call.initiated_at / 1000 if call.initiated_at > 10**11 else call.initiated_at
    when = time.strftime("%H:%M", time.localtime(stamp)) if stamp else ""
    status = call.status
    if status == CallStatus.ENDED:
        outcome = f"talked {format_duration(call.duration_seconds)}"
    elif status == CallStatus.UNANSWERED:
        outcome = "missed" if incoming else "no answer"
    else:
        outcome = {
            CallStatus.REJECTED: "declined",
            CallStatus.BUSY: "busy",
            CallStatus.CANCELLED: "cancelled",
        }.get(status, str(status.value).lower())
    direction = "from" if incoming else "to"
    return f"{when}  {direction} {name}: {outcome}".strip()


# ----------------------------------------------------------------------------- screens


def finish_drawing(*_: Any) -> None:
    """Wait, before the buffers swap, until the GPU has drawn the frame (bound to Window.on_flip).

    Otherwise the drawing runs on while the loop goes on, and the next video frame's texture upload
    stalls until it is done (the driver must not change a texture a queued draw still reads: Mesa's
    llvmpipe and the Pi's v3d both flush and wait there), so a new frame waited for the previous one's
    drawing. Waiting here, just after the draw, costs the loop the same time once, when no frame is
    waiting, and a frame is on the glass when the swap says so. bench latency_on_screen measures it.
    """
    glFinish()


class HomeScreen(Screen):
    def __init__(self, app: KioskApp, **kwargs: Any) -> None:
        super().__init__(name="home", **kwargs)
        self.app = app
        paint_background(self)
        page = BoxLayout(orientation="vertical", padding=16, spacing=12)
        header = BoxLayout(size_hint_y=None, height=70, spacing=12)
        self.title = Text(app.device_name, font_size=FONT_LARGE, bold=True, halign="left")
        self.connection = Text("Connecting…", font_size=22, halign="right", size_hint_x=0.55)
        header.add_widget(self.title)
        header.add_widget(self.connection)
        page.add_widget(header)
        self.message = Text("", font_size=24, color=AMBER, size_hint_y=None, height=36)
        page.add_widget(self.message)
        body = BoxLayout(spacing=16)
        contacts = BoxLayout(orientation="vertical", spacing=12, size_hint_x=0.55)
        contacts.add_widget(Text("Touch to call", font_size=24, size_hint_y=None, height=34))
        self.call_buttons: dict[str, BigButton] = {}
        for contact in app.contacts[:4]:  # four rows still leave each button taller than a fingertip
            button = BigButton(
                f"Call {contact.name or contact.uid}",
                action=functools.partial(app.controller.call, contact.uid),
                colour=GREEN,
                font_size=32,
            )
            self.call_buttons[contact.uid] = button
            contacts.add_widget(button)
        if not app.contacts:
            contacts.add_widget(Text("No contacts configured (ui.contacts)", font_size=22))
        if app.pairing is not None:
            self.pair_button = BigButton("Pair a device", action=app.show_pairing, colour=BLUE, font_size=26)
            contacts.add_widget(self.pair_button)
        body.add_widget(contacts)
        recent = BoxLayout(orientation="vertical", spacing=4, size_hint_x=0.45, padding=(12, 0))
        paint_background(recent, PANEL)
        recent.add_widget(Text("Recent calls", font_size=24, bold=True, size_hint_y=None, height=40))
        # The newest missed call's caller, as its kiosk saw them while it rang.
        self.missed_picture = Image(fit_mode="contain", size_hint_y=None, height=0, opacity=0)
        recent.add_widget(self.missed_picture)
        self.recent_lines = [
            Text("", font_size=20, halign="left", size_hint_y=None, height=44) for _ in range(5)
        ]
        for line in self.recent_lines:
            recent.add_widget(line)
        recent.add_widget(Widget())
        body.add_widget(recent)
        page.add_widget(body)
        self.add_widget(page)

    def show_recent(self, lines: list[str]) -> None:
        if not lines:
            lines = ["No calls yet"]
        for i, widget in enumerate(self.recent_lines):
            widget.text = lines[i] if i < len(lines) else ""

    def show_missed_picture(self, jpeg: bytes | None) -> None:
        texture = None
        if jpeg is not None:
            try:
                texture = CoreImage(io.BytesIO(jpeg), ext="jpg").texture
            except Exception as exc:
                log.info("missed-call picture not shown: %s", exc)
        self.missed_picture.texture = texture
        self.missed_picture.height = 120 if texture is not None else 0
        self.missed_picture.opacity = 1 if texture is not None else 0

    def show_connection(self, connected: bool) -> None:
        self.connection.text = "Connected" if connected else "Offline: no call server"
        self.connection.color = (0.45, 0.9, 0.5, 1) if connected else (1, 0.45, 0.4, 1)


class RingingScreen(Screen):
    """Incoming (answer / decline) or outgoing (calling / cancel): a big avatar, a name, big buttons."""

    def __init__(self, app: KioskApp, incoming: bool, **kwargs: Any) -> None:
        super().__init__(name="incoming" if incoming else "outgoing", **kwargs)
        self.app = app
        paint_background(self)
        page = BoxLayout(orientation="vertical", padding=20, spacing=10)
        self.heading = Text(
            "Incoming call" if incoming else "Calling", font_size=30, size_hint_y=None, height=44
        )
        page.add_widget(self.heading)
        shape = "square" if app.avatar_mode == "square" else "circle"
        self.avatar = Avatar("", shape, fill=0.95, size_hint_y=0.9)
        page.add_widget(self.avatar)
        # While a video call rings: the caller's stills (who is at the door), in the avatar's place.
        self.picture = Image(fit_mode="contain", size_hint_y=0.9, opacity=0)
        self.pictures_shown = 0
        self.page = page
        self.name_label = Text("", font_size=48, bold=True, size_hint_y=None, height=64)
        page.add_widget(self.name_label)
        self.status = Text("", font_size=24, size_hint_y=None, height=36)
        page.add_widget(self.status)
        row = BoxLayout(size_hint_y=None, height=110, spacing=24)
        if incoming:
            self.reject_button = BigButton("Decline", action=app.controller.reject, colour=RED, font_size=36)
            self.answer_button = BigButton("Answer", action=app.controller.answer, colour=GREEN, font_size=36)
            row.add_widget(self.reject_button)
            row.add_widget(self.answer_button)
        else:
            self.cancel_button = BigButton("Cancel", action=app.controller.hang_up, colour=RED, font_size=36)
            row.add_widget(Widget(size_hint_x=0.25))
            row.add_widget(self.cancel_button)
            row.add_widget(Widget(size_hint_x=0.25))
        page.add_widget(row)
        self.add_widget(page)

    def show_picture(self, jpeg: bytes | None) -> None:
        """The caller's newest still (None: none, the avatar shows)."""
        if jpeg is None:
            self.picture.texture = None
            self._swap(self.picture, self.avatar)
            return
        try:
            texture = CoreImage(io.BytesIO(jpeg), ext="jpg").texture
        except Exception as exc:  # a picture that does not decode is no reason to stop ringing
            log.info("caller picture not shown: %s", exc)
            return
        self.picture.texture = texture
        self._swap(self.avatar, self.picture)
        self.pictures_shown += 1

    def _swap(self, old: Widget, new: Widget) -> None:
        """`new` in `old`'s place in the page (one of the two is in it at a time)."""
        old.opacity, new.opacity = 0, 1
        if old.parent is self.page:
            index = self.page.children.index(old)
            self.page.remove_widget(old)
            self.page.add_widget(new, index=index)

    def show(self, state: KioskState) -> None:
        self.name_label.text = state.peer_name or "Someone"
        self.avatar.set_name(state.peer_name)
        if self.name == "incoming":
            after = self.app.controller.auto_answer_after
            self.status.text = f"Answering by itself in {after:g} s" if after > 0 else ""
        else:
            self.status.text = state.message or "Calling…"


class InCallScreen(Screen):
    def __init__(self, app: KioskApp, **kwargs: Any) -> None:
        super().__init__(name="in_call", **kwargs)
        self.app = app
        paint_background(self, (0, 0, 0, 1))
        self.tiles: dict[str, VideoTile] = {}
        self.muted: dict[str, tuple[bool, bool]] = {}
        self.spotlight: str | None = None  # a tile touched: stays large until the call ends
        self.speaker: str | None = None  # the loudest participant lately (SPOTLIGHT mode)
        page = BoxLayout(orientation="vertical")
        self.videos = FloatLayout()
        page.add_widget(self.videos)
        self.bar = BoxLayout(size_hint_y=None, height=TOUCH_TARGET + 16, spacing=8, padding=8)
        paint_background(self.bar, PANEL)
        page.add_widget(self.bar)
        self.add_widget(page)
        self.status = Label(
            text="", font_size=24, bold=True, size_hint=(None, None), pos_hint={"x": 0.01, "top": 0.99}
        )
        self.status.bind(texture_size=lambda w, s: setattr(w, "size", (s[0] + 20, s[1] + 10)))
        self.add_widget(self.status)
        self.preview = VideoTile(
            app.store, LOCAL, "You", "square", fit="cover", size_hint=(None, None), size=(176, 132)
        )
        self.preview.pos_hint = {"right": 0.99, "top": 0.99}
        self.preview.clear()
        self.volume = VolumeControl(app.controller.volume_up, app.controller.volume_down)
        self.volume.pos_hint = {"right": 0.99, "y": 0.03}
        self.buttons: dict[str, BigButton] = {}
        self.door_button: BigButton | None = None  # "Open door", shown while it can be used
        self.warning: BoxLayout | None = None
        self.warning_label: Text | None = None
        self.started = 0.0
        self.remote_shown_at = 0.0  # time.monotonic() of the last remote frame uploaded
        self.fit = "contain"
        self.avatar_mode = app.avatar_mode  # the call's settings replace it when a call starts
        self.label_visible = True
        self.label_colour: tuple[float, ...] = (0.2, 0.2, 0.2, 1)
        self.label_position = "bottom-left"
        # The main video container's own buttons (zoom, user list, full screen), grouped per corner.
        self.corner_buttons: dict[str, BigButton] = {}
        self.corners: dict[str, BoxLayout] = {}
        self.layout_shown = True  # enable_default_layout: the button layout at all
        self.zoomed = False  # the zoom button: the other fit than the settings' one
        self.full_screen = False  # the full-screen button: video only, no bar, no preview
        self.user_list: BoxLayout | None = None
        self.videos.bind(pos=self._place_corners, size=self._place_corners)

    def apply_settings(self, settings: CallSettings) -> None:
        """The main video container settings: picture fit and the name label."""
        container = settings.main_video_container_setting
        self.fit = str(container.aspect_ratio.value)
        self.label_visible = container.name_label.visible
        self.label_position = str(container.name_label.position.value)
        self.layout_shown = settings.default_layout
        # The status line (who, how long) makes way for a name label in the top-left corner.
        top_left = self.label_position == "top-left"
        self.status.pos_hint = {"center_x": 0.5, "top": 0.99} if top_left else {"x": 0.01, "top": 0.99}
        self.preview.draggable = settings.enable_video_tile_drag
        self.avatar_mode = str(getattr(settings.avatar_mode, "value", settings.avatar_mode))
        try:
            self.label_colour = tuple(get_color_from_hex(container.name_label.background_color))
        except (ValueError, IndexError):
            self.label_colour = (0.2, 0.2, 0.2, 1)

    # ----------------------------------------------------------------- control bar

    def build_bar(self, settings: CallSettings, video_inputs: int) -> None:
        """The buttons the call settings ask for, in the order a thumb expects (end at the right).
        With the default layout off there are none: the video has the whole screen."""
        self.bar.clear_widgets()
        self.buttons = {}
        self.door_button = None
        self._build_corners(settings)
        self._show_chrome()
        if not settings.default_layout:
            return
        app, controller = self.app, self.app.controller
        wanted: list[tuple[str, bool, str, Callable[[], object], tuple[float, ...]]] = [
            ("mute", settings.show_mute_audio_button, "Mute", controller.toggle_mute, GREY),
            ("video", settings.show_pause_video_button, "Stop video", controller.toggle_video, GREY),
            (
                "camera",
                settings.show_switch_camera_button and video_inputs > 1,
                "Switch camera",
                lambda: app.sdk("switch camera", app.calls.switch_camera),
                GREY,
            ),
            ("audio_mode", settings.show_audio_mode_button, "Speaker", controller.cycle_audio_mode, GREY),
            (
                "to_video",
                settings.show_switch_to_video_call_button,
                "Video call",
                lambda: app.sdk("switch to video", app.calls.switch_to_video_call),
                BLUE,
            ),
            (
                "share",
                settings.show_screen_share_button and app.calls.devices.has_screen(),
                "Share screen",
                app.toggle_screen_share,
                GREY,
            ),
            ("record", settings.show_recording_button, "Record", app.toggle_recording, GREY),
            ("mode", settings.show_mode_button, "Grid", app.next_mode, GREY),
            ("end", settings.show_end_call_button, "End", controller.end_pressed, RED),
        ]
        # Not one the settings ask for: shown only while a door kiosk is in the call and this user
        # may open doors (update_bar), before End.
        self.door_button = BigButton("Open door", action=controller.open_door, colour=GREEN, font_size=21)
        for key, show, text, action, colour in wanted:
            if not show:
                continue
            button = BigButton(text, action=action, colour=colour, font_size=21)
            if key == "end":
                button.font_size = 30
                button.size_hint_x = 1.4
            self.buttons[key] = button
            self.bar.add_widget(button)
        self.update_bar()

    def audio_only(self) -> bool:
        session, call = self.app.calls.session, self.app.controller.state.call
        if session is not None and session.active:
            return session.audio_only
        return call is not None and call.type == CallType.AUDIO

    def door_in_call(self) -> bool:
        """A door kiosk is in the call and this user may ask it to open."""
        calls, session = self.app.calls, self.app.calls.session
        if session is None or not session.active or not calls.can_open_doors:
            return False
        return any(p.door for p in session.participants.values())

    def update_bar(self) -> None:
        state, session = self.app.controller.state, self.app.calls.session
        buttons = self.buttons
        if "mute" in buttons:
            buttons["mute"].text = "Unmute" if state.muted else "Mute"
            buttons["mute"].set_colour(AMBER if state.muted else GREY)
        if "video" in buttons:
            buttons["video"].text = "Start video" if state.video_paused else "Stop video"
            buttons["video"].set_colour(AMBER if state.video_paused else GREY)
        if "audio_mode" in buttons:
            mode = state.audio_mode or ""
            buttons["audio_mode"].text = AUDIO_MODE_WORDS.get(mode, mode.title() or "Audio")
        # Only an audio call can become a video call; camera buttons only make sense in a video call.
        audio_only = self.audio_only()
        door, door_button = self.door_in_call(), self.door_button
        if door_button is not None:
            if door and door_button.parent is None:
                end = buttons.get("end")
                self.bar.add_widget(door_button, index=1 if end is not None and end.parent is self.bar else 0)
            elif not door and door_button.parent is not None:
                self.bar.remove_widget(door_button)
        for key, wanted in (("to_video", audio_only), ("video", not audio_only), ("camera", not audio_only)):
            button = buttons.get(key)
            if button is None:
                continue
            if wanted and button.parent is None:
                order = list(buttons)
                after = [k for k in order[order.index(key) + 1 :] if buttons[k].parent is not None]
                shown_door = door_button is not None and door_button.parent is self.bar  # before End
                self.bar.add_widget(button, index=len(after) + shown_door)  # Kivy counts from the right
            elif not wanted and button.parent is not None:
                self.bar.remove_widget(button)
        if "record" in buttons:
            recording = bool(session is not None and session.recording)
            buttons["record"].text = "Stop rec" if recording else "Record"
            buttons["record"].set_colour(RED if recording else GREY)
        if "mode" in buttons:
            buttons["mode"].text = MODE_WORDS.get(self.app.store.mode, self.app.store.mode.title())
        if "share" in buttons:
            sharing = bool(session is not None and session.active and session.sharing_screen)
            buttons["share"].text = "Stop sharing" if sharing else "Share screen"
            buttons["share"].set_colour(AMBER if sharing else GREY)
        self.preview.set_muted(state.muted, state.video_paused)
        self.volume.show(state.volume)

    # ----------------------------------------------------------------- tiles and layout

    def participant_names(self) -> dict[str, str]:
        session = self.app.calls.session
        names: dict[str, str] = {}
        if session is not None:
            for uid, participant in session.participants.items():
                names[uid] = participant.user.name or uid
        for uid in self.app.store.remote_uids():
            names.setdefault(uid, self.app.controller.state.peer_name or uid)
        return names

    def relayout(self) -> None:
        names = self.participant_names()
        for uid in list(self.tiles):
            if uid not in names:
                self.videos.remove_widget(self.tiles.pop(uid))
        for uid, name in names.items():
            tile = self.tiles.get(uid)
            if tile is None:
                tile = VideoTile(self.app.store, uid, name, self.avatar_mode)
                tile.bind(on_release=lambda t: self.tile_touched(t.person))
                self.tiles[uid] = tile
            tile.name, tile.name_label.text = name, name
            tile.set_fit(self.current_fit())
            tile.set_name_label(self.label_visible, self.label_colour, self.label_position)
            tile.set_muted(*self.muted.get(uid, (False, False)))
        uids = list(self.tiles)
        mode = self.app.store.mode
        main = next((uid for uid in (self.spotlight, self.speaker) if uid in self.tiles), None)
        main = main or (uids[0] if uids else None)
        self.videos.clear_widgets()
        if mode == "DEFAULT" or main is None:
            cols = max(1, math.ceil(math.sqrt(len(uids))))
            rows = max(1, math.ceil(len(uids) / cols))
            for i, uid in enumerate(uids):
                row, col = divmod(i, cols)
                tile = self.tiles[uid]
                tile.size_hint = (1 / cols, 1 / rows)
                tile.pos_hint = {"x": col / cols, "top": 1 - row / rows}
                self.videos.add_widget(tile)
        else:
            others = [uid for uid in uids if uid != main] if mode == "SPOTLIGHT" else []
            tile = self.tiles[main]
            tile.size_hint = (0.78 if others else 1, 1)
            tile.pos_hint = {"x": 0, "y": 0}
            self.videos.add_widget(tile)
            for i, uid in enumerate(others):
                small = self.tiles[uid]
                small.size_hint = (0.22, 1 / max(3, len(others)))
                small.pos_hint = {"right": 1, "top": 1 - i / max(3, len(others))}
                self.videos.add_widget(small)
        if self.preview.parent is not None:
            self.preview.parent.remove_widget(self.preview)
        self.videos.add_widget(self.preview)  # last: drawn over the remote video
        if self.volume.parent is not None:
            self.volume.parent.remove_widget(self.volume)
        self.videos.add_widget(self.volume)
        for group in self.corners.values():
            self.videos.add_widget(group)  # over the video, where the settings put them
        if self.user_list is not None:
            self._fill_user_list()
        if "mode" in self.buttons:
            self.buttons["mode"].text = MODE_WORDS.get(mode, mode.title())

    # ----------------------------------------------------------------- the main video container

    def current_fit(self) -> str:
        if not self.zoomed:
            return self.fit
        return "cover" if self.fit == "contain" else "contain"

    def _build_corners(self, settings: CallSettings) -> None:
        for group in self.corners.values():
            if group.parent is not None:
                group.parent.remove_widget(group)
        self.corners, self.corner_buttons = {}, {}
        if not settings.default_layout:
            return
        container = settings.main_video_container_setting
        wanted = (
            ("zoom", container.zoom_button, "Zoom", self.toggle_zoom),
            ("users", container.user_list_button, "People", self.toggle_user_list),
            ("full_screen", container.full_screen_button, "Full screen", self.toggle_full_screen),
        )
        for key, params, text, action in wanted:
            if not params.visible:
                continue
            corner = str(params.position.value)
            group = self.corners.get(corner)
            if group is None:
                group = self.corners[corner] = BoxLayout(
                    size_hint=(None, None), height=56, width=0, spacing=6
                )
            button = BigButton(
                text, action=action, font_size=18, size_hint=(None, 1), width=128, size_hint_min_y=56
            )
            self.corner_buttons[key] = button
            group.add_widget(button)
            group.width += button.width + (group.spacing if len(group.children) > 1 else 0)
        self._place_corners()

    def _place_corners(self, *_: Any) -> None:
        """Each corner's buttons clear of what already sits there: the status line top left, the
        preview top right, the volume keys bottom right, the name label bottom left."""
        area, gap = self.videos, 8
        for corner, group in self.corners.items():
            left = corner.endswith("left")
            if corner.startswith("top"):
                below = self.status.height if left else self.preview.height
                y = area.top - gap - below - gap - group.height
            else:
                y = area.y + gap + (64 if left else 0)
            x = area.x + gap if left else area.right - gap - self.volume.width - gap - group.width
            group.pos = (x, y)

    def toggle_zoom(self) -> None:
        """Zoom: fill the tiles (cropping) when the settings letterbox, or the other way round."""
        self.zoomed = not self.zoomed
        for tile in self.tiles.values():
            tile.set_fit(self.current_fit())
        if "zoom" in self.corner_buttons:
            self.corner_buttons["zoom"].text = "Fit" if self.zoomed else "Zoom"

    def toggle_user_list(self) -> None:
        if self.user_list is not None:
            self.remove_widget(self.user_list)
            self.user_list = None
            return
        box = BoxLayout(
            orientation="vertical",
            size_hint=(0.45, None),
            pos_hint={"center_x": 0.5, "center_y": 0.55},
            padding=16,
            spacing=6,
        )
        paint_background(box, (0.12, 0.12, 0.16, 0.92))
        self.user_list = box
        self._fill_user_list()
        self.add_widget(box)

    def _fill_user_list(self) -> None:
        box = self.user_list
        if box is None:
            return
        box.clear_widgets()
        box.add_widget(Text("In this call", font_size=24, bold=True, size_hint_y=None, height=36))
        for name in self._everyone():
            box.add_widget(Text(name, font_size=22, size_hint_y=None, height=32))
        box.height = 32 + 36 + 38 * len(box.children)

    def _everyone(self) -> list[str]:
        session = self.app.calls.session
        if session is not None and session.active:
            return [user.name or user.uid for user in session.user_list()]
        return [self.app.device_name, *self.participant_names().values()]

    def user_list_names(self) -> list[str]:
        """The names the user list shows now ([] when it is closed)."""
        if self.user_list is None:
            return []
        return [str(w.text) for w in reversed(self.user_list.children)][1:]

    def toggle_full_screen(self) -> None:
        """Video only: the bar, the preview and the volume keys go; the corner buttons stay, to come back."""
        self.full_screen = not self.full_screen
        if "full_screen" in self.corner_buttons:
            self.corner_buttons["full_screen"].text = (
                "Exit full screen" if self.full_screen else "Full screen"
            )
        self._show_chrome()

    def _show_chrome(self) -> None:
        bar = self.layout_shown and not self.full_screen
        self.bar.height = TOUCH_TARGET + 16 if bar else 0
        self.bar.opacity = 1 if bar else 0
        self.bar.disabled = not bar
        self.volume.opacity = 0 if self.full_screen else 1
        self.volume.disabled = self.full_screen
        self.preview.opacity = 0 if self.full_screen or self.audio_only() else 1

    def tile_touched(self, uid: str) -> None:
        session = self.app.calls.session
        if session is not None and not session.settings.enable_video_tile_click:
            return
        self.spotlight = uid  # a touched tile becomes the large one
        if self.app.store.mode == "DEFAULT" and len(self.tiles) > 1:
            self.app.sdk("change layout", lambda: self.app.calls.set_mode("SPOTLIGHT"))
        self.relayout()

    def set_muted(self, user: RTCMutedUser) -> None:
        self.muted[user.uid] = (user.audio_muted, user.video_muted)
        tile = self.tiles.get(user.uid)
        if tile is not None:
            tile.set_muted(user.audio_muted, user.video_muted)

    def show_frames(self) -> None:
        """Upload the newest frame of every tile that has one it has not shown."""
        if any([tile.refresh() for tile in list(self.tiles.values())]):
            self.remote_shown_at = time.monotonic()
        self.preview.refresh()

    def tick(self) -> None:
        # Remote frames are shown as they arrive (with the preview); this clock keeps the preview
        # moving while no remote video comes.
        if time.monotonic() - self.remote_shown_at > PREVIEW_ALONE_AFTER:
            self.show_frames()
        self.preview.opacity = 0 if self.audio_only() or self.full_screen else 1  # no camera in an audio call
        state = self.app.controller.state
        elapsed = format_duration(time.monotonic() - self.started) if self.started else ""
        self.status.text = f"{state.peer_name}  {elapsed}".strip()

    # ----------------------------------------------------------------- idle-timeout warning

    def show_timeout_warning(self, seconds_left: int) -> None:
        self.hide_timeout_warning()
        box = BoxLayout(
            orientation="vertical",
            size_hint=(0.8, 0.55),
            pos_hint={"center_x": 0.5, "center_y": 0.55},
            padding=20,
            spacing=12,
        )
        paint_background(box, (0.12, 0.12, 0.16, 0.95))
        self.warning_label = Text("", font_size=30)
        box.add_widget(self.warning_label)
        box.add_widget(BigButton("Stay in the call", action=self.app.stay, colour=GREEN, font_size=32))
        self.warning = box
        self.warning_deadline = time.monotonic() + seconds_left
        self.add_widget(box)
        self.update_warning()

    def update_warning(self) -> None:
        if self.warning_label is not None:
            left = max(0, int(round(self.warning_deadline - time.monotonic())))
            self.warning_label.text = f"Nobody else is in the call.\nIt ends in {left} s."

    def hide_timeout_warning(self) -> None:
        if self.warning is not None:
            self.remove_widget(self.warning)
        self.warning, self.warning_label = None, None

    def reset(self) -> None:
        self.hide_timeout_warning()
        if self.user_list is not None:
            self.toggle_user_list()
        self.zoomed = self.full_screen = False
        self.muted.clear()
        self.spotlight = self.speaker = None
        self.preview.pos_hint = {"right": 0.99, "top": 0.99}
        self.preview.clear()
        for tile in self.tiles.values():
            self.videos.remove_widget(tile)
        self.tiles.clear()


class EndedScreen(Screen):
    def __init__(self, app: KioskApp, **kwargs: Any) -> None:
        super().__init__(name="ended", **kwargs)
        paint_background(self)
        page = BoxLayout(orientation="vertical", padding=30, spacing=16)
        self.heading = Text("Call ended", font_size=52, bold=True)
        self.outcome = Text("", font_size=34)
        self.duration = Text("", font_size=30)
        for widget in (self.heading, self.outcome, self.duration):
            page.add_widget(widget)
        row = BoxLayout(size_hint_y=None, height=100)
        row.add_widget(Widget(size_hint_x=0.3))
        self.home_button = BigButton("Home", action=app.go_home, colour=BLUE, font_size=34)
        row.add_widget(self.home_button)
        row.add_widget(Widget(size_hint_x=0.3))
        page.add_widget(row)
        self.add_widget(page)

    def show(self, heading: str, outcome: str, duration: float | None) -> None:
        self.heading.text = heading
        self.outcome.text = outcome
        self.duration.text = f"Duration {format_duration(duration)}" if duration is not None else ""


class PairingSource(Protocol):
    """A building host's pairing, as its screen shows it (kiosk.assembly.HostPairing)."""

    async def code(self, new: bool = False) -> tuple[str, float]:
        """The valid pairing code (a fresh one with `new`) and when it expires (epoch seconds)."""
        ...

    async def fingerprint(self) -> str:
        """The host CA's SHA-256 fingerprint, as the kiosks pairing with it will show it."""
        ...

    def browser_links(self, code: str) -> list[str]:
        """Links that pair a browser with this code."""
        ...


class PairScreen(Screen):
    """A building host's pairing code: a new kiosk (`kiosk pair`) or a browser (its link) enters it.
    The CA fingerprint is shown too: the new kiosk shows the same one, and a person checks they match."""

    def __init__(self, app: KioskApp, **kwargs: Any) -> None:
        super().__init__(name="pair", **kwargs)
        self.app = app
        paint_background(self)
        page = BoxLayout(orientation="vertical", padding=24, spacing=10)
        page.add_widget(
            Text("Pair a kiosk or a browser", font_size=34, bold=True, size_hint_y=None, height=50)
        )
        self.code_label = Text("", font_size=96, bold=True, size_hint_y=None, height=120)
        page.add_widget(self.code_label)
        self.validity = Text("", font_size=22, size_hint_y=None, height=32)
        page.add_widget(self.validity)
        self.fingerprint_label = Text("", font_size=18, size_hint_y=None, height=56)
        page.add_widget(self.fingerprint_label)
        self.link_label = Text("", font_size=18, size_hint_y=None, height=30)
        page.add_widget(self.link_label)
        page.add_widget(Widget())
        row = BoxLayout(size_hint_y=None, height=90, spacing=24)
        self.new_button = BigButton("New code", action=lambda: app.show_pairing(new=True), colour=GREY)
        self.done_button = BigButton("Done", action=app.go_home, colour=BLUE)
        row.add_widget(self.new_button)
        row.add_widget(self.done_button)
        page.add_widget(row)
        self.add_widget(page)
        self.expires_at = 0.0

    def show(self, code: str, expires_at: float, fingerprint: str, links: list[str]) -> None:
        self.code_label.text = show_code(code)
        self.expires_at = expires_at
        groups = show_fingerprint(fingerprint).split()
        half = len(groups) // 2
        self.fingerprint_label.text = (
            "Host fingerprint: " + " ".join(groups[:half]) + "\n" + " ".join(groups[half:])
            if groups
            else "This kiosk's own call server (no building host): browsers only"
        )
        self.link_label.text = f"Browser: {links[0]}" if links else ""
        self.tick()

    def tick(self) -> None:
        left = max(0, int(self.expires_at - time.time()))
        self.validity.text = f"Valid {left // 60}:{left % 60:02d}, for one device" if left else "Expired"


# ----------------------------------------------------------------------------- the app


class _UiListener(CallEventListener):
    """The SDK events the screens show (the controller handles the call flow itself)."""

    def __init__(self, app: KioskApp) -> None:
        super().__init__()
        self.app = app

    def on_user_muted(self, muted_user: RTCMutedUser) -> None:
        self.app.in_call.set_muted(muted_user)

    def on_user_list_changed(self, users: list[RTCUser]) -> None:
        if self.app.controller.state.phase == Phase.IN_CALL:
            self.app.in_call.relayout()

    def on_user_joined(self, user: RTCUser) -> None:
        self.app.in_call.hide_timeout_warning()  # no longer alone
        self.app.in_call.update_bar()  # a door kiosk came: its Open door button

    def on_user_left(self, user: RTCUser) -> None:
        self.app.in_call.update_bar()

    def on_session_timeout_warning(self, seconds_left: int) -> None:
        self.app.in_call.show_timeout_warning(seconds_left)

    def on_recording_toggled(self, info: Any) -> None:
        self.app.in_call.update_bar()

    def on_call_switched_to_video(self, info: Any) -> None:
        self.app.in_call.update_bar()

    def on_error(self, error: CallError) -> None:
        self.app.notify(error.message, error.code)


class KioskApp(App):
    """The kiosk's screens on a controller. `store` is the SDK view: pass it as the controller's
    `view` (done here if the controller has none)."""

    def __init__(
        self,
        controller: KioskController,
        *,
        device_name: str = "Kiosk",
        contacts: list[Contact] | None = None,
        avatar_mode: str = "circle",
        ended_seconds: float = 5.0,
        store: FrameStore | None = None,
        screen_touched: Callable[[], bool] | None = None,
        pairing: PairingSource | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A building host's pairing (its home screen offers "Pair a device"); None on other kiosks.
        self.pairing = pairing
        # Told of every touch (the screen waker); True: the touch only woke the screen, drop it.
        self.screen_touched = screen_touched
        self.title = device_name
        self.controller = controller
        self.calls = controller.calls
        self.device_name = device_name
        self.contacts = list(contacts or [])
        self.avatar_mode = avatar_mode.lower()
        self.ended_seconds = ended_seconds
        self.store = store or FrameStore()
        if controller.view is None:
            controller.view = self.store
        self.screen_log: list[str] = []  # every screen shown, in order (tests and the log read it)
        self._phase = Phase.IDLE
        self._call_started: float | None = None
        self._back_home: Any = None
        self._preview_task: asyncio.Task[None] | None = None
        self._preview_track: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._toast_clear: Any = None
        self._ticks: list[Any] = []
        self._speaker_task: asyncio.Task[None] | None = None
        self._last_message = ""
        self._login_task: asyncio.Task[None] | None = None
        self._next_login = 0.0
        self.pip_tile: VideoTile | None = None  # the call, small over the home screen (enter_pip_mode)

    # ----------------------------------------------------------------- building

    def build(self) -> Widget:
        root = self.layers = FloatLayout()
        self.manager = ScreenManager(transition=NoTransition())
        self.home = HomeScreen(self)
        self.incoming = RingingScreen(self, incoming=True)
        self.outgoing = RingingScreen(self, incoming=False)
        self.in_call = InCallScreen(self)
        self.ended = EndedScreen(self)
        self.pair = PairScreen(self)
        for screen in (self.home, self.incoming, self.outgoing, self.in_call, self.ended, self.pair):
            self.manager.add_widget(screen)
        root.add_widget(self.manager)
        self.toast = Text(
            "",
            font_size=24,
            bold=True,
            size_hint=(1, None),
            height=0,
            opacity=0,
            pos_hint={"x": 0, "top": 1},
        )
        paint_background(self.toast, (0.55, 0.10, 0.10, 0.92))
        root.add_widget(self.toast)
        self.store.on_layout = self._layout_changed
        # A new remote frame is drawn as soon as it is decoded (see _present_frames); the local
        # preview goes along with it: one redraw per remote frame, not one for each.
        self._frames_trigger = Clock.create_trigger(lambda dt: self._show_frames(), 0)
        self._present_pending = False
        self._presented_at = 0.0
        self.store.on_frame = lambda uid: None if uid == LOCAL else self._frame_arrived()
        self.calls.add_call_event_listener("kiosk-ui", _UiListener(self))
        self.controller.add_observer(self._on_state)
        Window.bind(on_key_down=self._on_key)
        Window.bind(on_touch_down=self._on_touch_down)
        Window.bind(on_flip=finish_drawing)
        self._ticks = [
            Clock.schedule_interval(lambda dt: self._tick(), 1 / DISPLAY_FPS),
            Clock.schedule_interval(lambda dt: self._slow_tick(), 1.0),
        ]
        self._slow_tick()
        self.refresh_recent()
        self.manager.current = "home"
        self.screen_log.append("home")
        return root

    def on_stop(self) -> None:
        for tick in self._ticks:
            tick.cancel()
        self.store.on_frame = None
        self._frames_trigger.cancel()
        self.controller.remove_observer(self._on_state)
        self.calls.remove_call_event_listener("kiosk-ui")
        Window.unbind(on_key_down=self._on_key)
        Window.unbind(on_touch_down=self._on_touch_down)
        Window.unbind(on_flip=finish_drawing)
        self._stop_preview()
        self._cancel_back_home()
        for task in list(self._tasks):
            task.cancel()  # a call-log fetch or a stats poll must not outlive the screen

    # ----------------------------------------------------------------- state to screens

    def _show(self, name: str) -> None:
        if self.manager.current != name:
            self.manager.current = name
            self.screen_log.append(name)
            log.info("screen: %s", name)

    def _on_state(self, state: KioskState) -> None:
        previous, self._phase = self._phase, state.phase
        if state.message != self._last_message:
            self._last_message = state.message
            if state.message and state.phase == previous != Phase.IDLE:
                # A failure during a ring or a call ("Could not …"): say so over the call.
                self.notify(state.message)
        if state.phase == Phase.RINGING_IN:
            self._cancel_back_home()
            self.incoming.show(state)
            self._show("incoming")
            if previous != Phase.RINGING_IN and state.call is not None:
                self.incoming.show_picture(None)
                self._spawn(self._follow_caller_picture(state.call.session_id))
        elif state.phase == Phase.RINGING_OUT:
            self._cancel_back_home()
            self.outgoing.show(state)
            self._show("outgoing")
        elif state.phase == Phase.IN_CALL:
            if previous != Phase.IN_CALL:
                self._cancel_back_home()
                self._call_started = time.monotonic()
                self.in_call.reset()
                self.in_call.started = self._call_started
                session = self.calls.session
                settings = (
                    session.settings if session is not None else self.controller.settings_factory(state.call)
                )
                self.in_call.apply_settings(settings)
                self.in_call.build_bar(settings, len(self.calls.devices.video_inputs()))
                self.in_call.relayout()
                self._show("in_call")
            self.in_call.update_bar()
        elif previous != Phase.IDLE:
            # A call (or a ring) is over: say how it went, then go home by itself.
            duration = (
                time.monotonic() - self._call_started
                if previous == Phase.IN_CALL and self._call_started
                else None
            )
            self._call_started = None
            self._stop_preview()
            heading = {Phase.IN_CALL: "Call ended", Phase.RINGING_OUT: "Call not connected"}.get(
                previous, "Ringing stopped"
            )
            self.ended.show(heading, state.message, duration)
            self._show("ended")
            self._cancel_back_home()
            self._back_home = Clock.schedule_once(lambda dt: self.go_home(), self.ended_seconds)
            self.refresh_recent()
        if state.phase == Phase.IDLE:
            self.home.message.text = short(state.message)

    def _cancel_back_home(self) -> None:
        if self._back_home is not None:
            self._back_home.cancel()
            self._back_home = None

    def go_home(self) -> None:
        self._cancel_back_home()
        if self.controller.state.phase == Phase.IDLE:
            self._show("home")

    def _layout_changed(self) -> None:
        if self.controller.state.phase == Phase.IN_CALL:
            self.in_call.relayout()
        self._show_pip()

    def _show_pip(self) -> None:
        """Picture-in-picture: the call's main video in a small tile over the home screen while the call
        goes on; a tap on it brings the call screen back (exit_pip_mode)."""
        in_call = self.controller.state.phase == Phase.IN_CALL
        remote = self.store.remote_uids()
        wanted = self.store.pip and in_call
        tile = self.pip_tile
        if tile is not None and (not wanted or (remote and tile.person not in remote)):
            self.layers.remove_widget(tile)
            self.pip_tile = tile = None
        if wanted and tile is None:
            uid = remote[0] if remote else LOCAL
            name = self.in_call.participant_names().get(uid, self.controller.state.peer_name or "")
            tile = VideoTile(
                self.store,
                uid,
                name,
                self.in_call.avatar_mode,
                fit="cover",
                size_hint=(None, None),
                size=(240, 180),
                pos_hint={"right": 0.98, "top": 0.86},
            )
            tile.bind(on_release=lambda t: self.sdk("return to the call", self.calls.exit_pip_mode))
            self.layers.add_widget(tile)
            self.pip_tile = tile
        if wanted:
            self._show("home")
        elif in_call and self.manager.current == "home":
            self._show("in_call")

    def toggle_screen_share(self) -> None:
        session = self.calls.session
        if session is not None and session.active and session.sharing_screen:
            self.sdk("stop sharing the screen", self.calls.stop_screen_share)
        else:
            self.sdk("share the screen", self.calls.start_screen_share)

    def _tick(self) -> None:
        if self.manager.current == "in_call":
            self._ensure_preview()
            self.in_call.tick()

    def _frame_arrived(self) -> None:
        if self._present_pending:
            return  # frames of one loop pass (several tiles) share one redraw
        self._present_pending = True
        asyncio.get_running_loop().call_soon(self._present_frames)

    def _present_frames(self) -> None:
        """Upload the new frames and draw the window now, not at Kivy's next frame.

        Kivy's clock sleeps out the rest of its 1/60 s frame and cannot be woken under asyncio (its
        interrupt clock fails there), so a frame decoded just after a frame began waited up to 17 ms
        for its upload and as long again for the drawing. Drawing here does what Kivy's own loop does
        before a draw (tick_draw runs the pending layout and graphics updates). At most one such
        redraw per 1/60 s: frames that come faster (many tiles) wait for Kivy's next frame.
        """
        self._present_pending = False
        now = time.monotonic()
        window = EventLoop.window
        if window is None or now - self._presented_at < 1 / 60:
            self._frames_trigger()
            return
        self._presented_at = now
        self._show_frames()
        Clock.tick_draw()
        if window.canvas.needs_redraw:
            window.dispatch("on_draw")
            window.dispatch("on_flip")

    def _show_frames(self) -> None:
        if self.manager.current == "in_call":
            self.in_call.show_frames()
        elif self.pip_tile is not None:
            self.pip_tile.refresh()

    def _slow_tick(self) -> None:
        if self.manager.current == "pair":
            self.pair.tick()
        try:
            connected = bool(self.calls.signaling.connected)
        except CallsError:
            connected = False
        self.home.show_connection(connected)
        if not connected:
            self._retry_login()
        if self.in_call.warning is not None:
            self.in_call.update_warning()
        if (
            self.manager.current == "in_call"
            and self.store.mode == "SPOTLIGHT"
            and len(self.in_call.tiles) > 1
            and (self._speaker_task is None or self._speaker_task.done())
        ):
            self._speaker_task = self._spawn(self._find_speaker())

    def _retry_login(self) -> None:
        # Once logged in, the SDK reconnects by itself; before the first login (no server at start)
        # nobody else would try again.
        if self.calls.user is not None or not self.calls.auth_token or time.monotonic() < self._next_login:
            return
        if self._login_task is None or self._login_task.done():
            self._next_login = time.monotonic() + 5.0
            self._login_task = self._spawn(self._login())

    async def _login(self) -> None:
        try:
            await self.calls.login()
        except Exception as exc:
            log.info("login: %s", exc)
            return
        log.info("logged in to %s", self.calls.server_url)
        self.refresh_recent()

    async def _find_speaker(self) -> None:
        """SPOTLIGHT shows the active speaker: the loudest remote audio of the last moment."""
        try:
            stats = await self.calls.get_session_stats()
        except Exception as exc:
            log.debug("stats for the active speaker: %s", exc)
            return
        session = self.calls.session
        talking = set(session.talking) if session is not None else set()
        speaker = choose_speaker({uid: p.audio_level for uid, p in stats.participants.items()}, talking)
        if speaker is not None and speaker != self.in_call.speaker:
            self.in_call.speaker = speaker
            self.in_call.relayout()

    # ----------------------------------------------------------------- local preview

    def _ensure_preview(self) -> None:
        session = self.calls.session
        if self._preview_task is not None or session is None or not session.active:
            return
        # A track of our own from the capture: it keeps only the newest frame, as the peers' do.
        track = session.local_video()
        self._preview_track = track
        self._preview_task = self._spawn(self._read_preview(track))

    async def _read_preview(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):  # a camera's own H.264 packets are not shown
                    self.store.render_frame(LOCAL, frame)

    def _stop_preview(self) -> None:
        if self._preview_task is not None:
            self._preview_task.cancel()
            self._preview_task = None
        if self._preview_track is not None:
            self._preview_track.stop()
            self._preview_track = None
        self.store.slots.pop(LOCAL, None)

    # ----------------------------------------------------------------- actions the screens use

    async def _follow_caller_picture(self, session_id: str) -> None:
        """While this call rings here: the caller's newest still, twice a second."""
        last: bytes | None = None
        while self.controller.state.phase == Phase.RINGING_IN and self.controller.state.call is not None:
            if self.controller.state.call.session_id != session_id:
                return
            try:
                picture = await self.calls.get_call_picture(session_id)
            except CallsError as exc:
                log.info("caller picture: %s", exc)
                picture = None
            if picture is not None and picture != last and self.controller.state.phase == Phase.RINGING_IN:
                self.incoming.show_picture(picture)
                last = picture
            await asyncio.sleep(CALLER_PICTURE_INTERVAL)

    def show_pairing(self, new: bool = False) -> None:
        """The host's pairing code on screen (a fresh one with `new`)."""
        if self.pairing is not None:
            self._spawn(self._show_pairing(self.pairing, new))

    async def _show_pairing(self, pairing: PairingSource, new: bool) -> None:
        try:
            code, expires_at = await pairing.code(new)
            fingerprint = await pairing.fingerprint()
        except Exception as exc:  # a host whose CA is unreadable says so; it never crashes
            log.exception("pairing code")
            self.notify(f"Could not make a pairing code: {exc}")
            return
        self.pair.show(code, expires_at, fingerprint, pairing.browser_links(code))
        if self.controller.state.phase == Phase.IDLE:
            self._show("pair")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def sdk(self, what: str, action: Callable[[], object]) -> None:
        """Run an SDK call from a button: a failure is a message on screen, never a crash."""
        try:
            action()
        except CallsError as exc:
            self.notify(f"Could not {what}: {exc.message}")
        except Exception as exc:
            log.exception("%s failed", what)
            self.notify(f"Could not {what}: {exc}")
        self.in_call.update_bar()

    def toggle_recording(self) -> None:
        session = self.calls.session
        if session is None:
            return
        if session.recording:
            self.sdk("stop recording", self.calls.stop_recording)
        else:
            self.sdk("record", self.calls.start_recording)

    def next_mode(self) -> None:
        current = self.store.mode if self.store.mode in MODES else MODES[0]
        following = MODES[(MODES.index(current) + 1) % len(MODES)]
        self.sdk("change layout", lambda: self.calls.set_mode(following))

    def stay(self) -> None:
        session = self.calls.session
        if session is not None:
            session.stay()
        self.in_call.hide_timeout_warning()

    def notify(self, message: str, code: str = "") -> None:
        """A short message at the top of any screen for a few seconds (and in the log)."""
        log.warning("on screen: %s%s", message, f" ({code})" if code else "")
        self.toast.text = short(message)
        self.toast.height, self.toast.opacity = 56, 1
        if self._toast_clear is not None:
            self._toast_clear.cancel()
        self._toast_clear = Clock.schedule_once(lambda dt: self._hide_toast(), 6)

    def _hide_toast(self) -> None:
        self.toast.height, self.toast.opacity, self.toast.text = 0, 0, ""

    def refresh_recent(self) -> None:
        self._spawn(self._load_recent())

    async def _load_recent(self) -> None:
        try:
            page = await self.calls.get_call_logs(per_page=5)
        except Exception as exc:  # no server yet: the home screen says so
            log.info("call log: %s", exc)
            if not any(line.text for line in self.home.recent_lines):
                self.home.show_recent(["Call history unavailable"])
            return
        me = self.calls.user.uid if self.calls.user is not None else ""
        self.home.show_recent([describe_call(call, me) for call in page.calls[:5]])
        missed = next(
            # Missed: nobody answered, or the caller gave up before anyone did.
            (
                c
                for c in page.calls[:5]
                if c.status in (CallStatus.UNANSWERED, CallStatus.CANCELLED) and c.initiator.uid != me
            ),
            None,
        )
        picture = None
        if missed is not None and missed.has_picture:
            with contextlib.suppress(CallsError):
                picture = await self.calls.get_call_picture(missed.session_id)
        self.home.show_missed_picture(picture)

    def _on_touch_down(self, window: Any, touch: Any) -> bool:
        # Bound on the Window, so it runs before any widget sees the touch: returning True stops it
        # there, and the button under a finger on a dark screen is not pressed (nor grabbed, so its
        # release does nothing either).
        if self.screen_touched is None:
            return False
        try:
            return bool(self.screen_touched())
        except Exception:
            log.exception("screen waker failed on a touch")
            return False

    def _on_key(
        self, window: Any, key: int, scancode: int, codepoint: str | None, modifiers: list[str]
    ) -> bool:
        # The kiosk window's own keys: the same letters as the terminal keyboard emulation.
        letter = (codepoint or "").upper() if "shift" in modifiers else (codepoint or "")
        action = KEYS.get(letter)
        if action is None:
            return False
        if action == "call":
            if not self.contacts:
                return True
            action = f"call:{self.contacts[0].uid}"
        try:
            self.controller.dispatch(action)
        except Exception:
            log.exception("key %s failed", letter)
        return True

    # ----------------------------------------------------------------- screenshots

    def save_screenshot(self, path: Path) -> Path:
        """The window as it is now, as a PNG at exactly `path`."""
        from kivy.graphics.opengl import GL_RGB, GL_UNSIGNED_BYTE, glReadPixels

        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = Window.size
        data = glReadPixels(0, 0, width, height, GL_RGB, GL_UNSIGNED_BYTE)
        Window._win.save_bytes_in_png(str(path), data, width, height)
        return path

    def current_texts(self) -> list[str]:
        """The texts of the screen shown now, plus the message bar."""
        texts = texts_of(self.manager.current_screen)
        if self.toast.text:
            texts.append(self.toast.text)
        return texts
