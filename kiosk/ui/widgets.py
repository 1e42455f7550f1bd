"""Kivy widgets of the kiosk: large buttons, labels readable from a metre, video tiles with avatars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import av
from kivy.graphics import Color, Ellipse, Rectangle, RoundedRectangle
from kivy.graphics.texture import Texture
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.label import Label

from kiosk.ui.frames import FrameStore

# High contrast on a dark background; colours as RGBA.
BACKGROUND = (0.07, 0.08, 0.10, 1)
PANEL = (0.15, 0.17, 0.21, 1)
TEXT = (1, 1, 1, 1)
DIM_TEXT = (0.75, 0.78, 0.82, 1)
GREEN = (0.10, 0.60, 0.25, 1)
RED = (0.80, 0.15, 0.15, 1)
BLUE = (0.15, 0.40, 0.80, 1)
GREY = (0.30, 0.33, 0.38, 1)
AMBER = (0.85, 0.55, 0.05, 1)

TOUCH_TARGET = 88  # px: comfortably larger than a fingertip on a 7-inch 800x480 panel
FONT_LARGE = 40
FONT_MEDIUM = 28
FONT_BUTTON = 26


class Text(Label):
    """A label that wraps to its width and is large by default."""

    def __init__(self, text: str = "", font_size: float = FONT_MEDIUM, **kwargs: Any) -> None:
        kwargs.setdefault("color", TEXT)
        kwargs.setdefault("halign", "center")
        kwargs.setdefault("valign", "middle")
        super().__init__(text=text, font_size=font_size, **kwargs)
        self.bind(size=self._wrap)

    def _wrap(self, *_: Any) -> None:
        self.text_size = (self.width, None)


class VolumeControl(BoxLayout):
    """The playback volume, on screen: a + above the level and a - below, over the call's video.

    Only what this kiosk plays changes (the other side hears the same); the level is the current
    audio mode's, kept across restarts (kiosk.media.volume)."""

    KEY = 64  # px: smaller than the bar's buttons, so it fits under the preview on a 7-inch screen

    def __init__(self, up: Callable[[], object], down: Callable[[], object], **kwargs: Any) -> None:
        kwargs.setdefault("orientation", "vertical")
        kwargs.setdefault("size_hint", (None, None))
        kwargs.setdefault("size", (self.KEY + 8, 2 * self.KEY + 36 + 24))
        kwargs.setdefault("spacing", 4)
        kwargs.setdefault("padding", 4)
        super().__init__(**kwargs)
        key: dict[str, Any] = {"size_hint_y": None, "height": self.KEY, "size_hint_min_y": self.KEY}
        self.up_button = BigButton("+", action=up, font_size=FONT_LARGE, **key)
        self.level = Label(text="", font_size=18, bold=True, color=TEXT, size_hint_y=None, height=36)
        self.down_button = BigButton("\u2212", action=down, font_size=FONT_LARGE, **key)
        for widget in (self.up_button, self.level, self.down_button):
            self.add_widget(widget)
        with self.canvas.before:
            Color(0, 0, 0, 0.45)
            self._backdrop = RoundedRectangle(radius=[14])
        self.bind(pos=self._redraw, size=self._redraw)

    def _redraw(self, *_: Any) -> None:
        self._backdrop.pos, self._backdrop.size = self.pos, self.size

    def show(self, percent: int | None) -> None:
        self.opacity = 0 if percent is None else 1
        self.disabled = percent is None
        self.level.text = "" if percent is None else f"{percent} %"


class BigButton(Button):
    """A flat, coloured, rounded touch target; `action` runs on release (a touch, or a test's dispatch)."""

    def __init__(
        self,
        text: str,
        action: Callable[[], object] | None = None,
        colour: tuple[float, ...] = GREY,
        font_size: float = FONT_BUTTON,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("size_hint_min_y", TOUCH_TARGET)
        super().__init__(
            text=text,
            font_size=font_size,
            background_normal="",
            background_down="",
            background_color=(0, 0, 0, 0),
            color=TEXT,
            bold=True,
            halign="center",
            valign="middle",
            **kwargs,
        )
        self.action = action
        self._colour = colour
        with self.canvas.before:
            self._paint = Color(*colour)
            self._shape = RoundedRectangle(radius=[14])
        self.bind(pos=self._redraw, size=self._redraw, state=self._redraw)
        self.bind(size=lambda *_: setattr(self, "text_size", (self.width - 8, None)))

    def set_colour(self, colour: tuple[float, ...]) -> None:
        self._colour = colour
        self._redraw()

    def _redraw(self, *_: Any) -> None:
        r, g, b, a = self._colour
        lift = 0.15 if self.state == "down" else 0.0  # visible feedback under the finger
        self._paint.rgba = (min(1, r + lift), min(1, g + lift), min(1, b + lift), a)
        self._shape.pos, self._shape.size = self.pos, self.size

    def on_release(self) -> None:
        if self.action is not None:
            self.action()


def paint_background(widget: Any, colour: tuple[float, ...] = BACKGROUND) -> None:
    with widget.canvas.before:
        Color(*colour)
        rect = Rectangle(pos=widget.pos, size=widget.size)

    def follow(*_: Any) -> None:
        rect.pos, rect.size = widget.pos, widget.size

    widget.bind(pos=follow, size=follow)


def initials(name: str) -> str:
    parts = [p for p in name.replace("-", " ").split() if p]
    return "".join(p[0] for p in parts[:2]).upper() or "?"


class Avatar(FloatLayout):
    """A person's initials on a coloured circle or square (the settings' avatar_mode), or filling the
    whole area (fullscreen)."""

    def __init__(self, name: str = "", shape: str = "circle", fill: float = 0.7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shape = shape.lower()
        self.fill = fill  # of the shorter side
        with self.canvas.before:
            Color(*BLUE)
            self._disc: Ellipse | Rectangle = (
                Ellipse() if self.shape == "circle" else RoundedRectangle(radius=[12])
            )
        self.label = Label(text=initials(name), bold=True, color=TEXT, pos_hint={"x": 0, "y": 0})
        self.add_widget(self.label)
        self.bind(pos=self._redraw, size=self._redraw)

    def set_name(self, name: str) -> None:
        self.label.text = initials(name)

    def _redraw(self, *_: Any) -> None:
        if self.shape == "fullscreen":
            self._disc.pos, self._disc.size = self.pos, self.size
            side = min(self.width, self.height)
        else:
            side = min(self.width, self.height) * self.fill
            # From x/y, not center_x/center_y: those cached aliases update after a pos observer runs.
            self._disc.pos = (self.x + (self.width - side) / 2, self.y + (self.height - side) / 2)
            self._disc.size = (side, side)
        self.label.font_size = max(18, side * 0.35)


# Where a tile's name label sits, per the settings' position (Kivy's pos_hint: y runs up).
LABEL_CORNERS: dict[str, dict[str, float]] = {
    "top-left": {"x": 0.02, "top": 0.98},
    "top-right": {"right": 0.98, "top": 0.98},
    "bottom-left": {"x": 0.02, "y": 0.02},
    "bottom-right": {"right": 0.98, "y": 0.02},
}


class VideoTile(ButtonBehavior, FloatLayout):
    """One participant: the newest frame from the store (uploaded at display rate), the name, muted and
    video-off badges, and the avatar while there is no video."""

    # Told of every frame any tile uploads, just after it reaches the texture (a benchmark reads the
    # frame's capture stamp here to measure latency to the screen). None, the default, costs nothing.
    on_upload: ClassVar[Callable[[VideoTile, av.VideoFrame], None] | None] = None

    def __init__(
        self,
        store: FrameStore,
        uid: str,
        name: str,
        avatar_mode: str = "circle",
        fit: str = "contain",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fit = fit  # "contain": all of the picture, letterboxed; "cover": fills the tile, cropped
        self.store = store
        self.person = uid
        self.name = name
        self.audio_muted = False
        self.video_muted = False
        self.draggable = False  # the local preview may be moved out of the way by a finger
        self._grab_offset = (0.0, 0.0)
        self.frames_shown = 0  # how many frames this tile has drawn (tests check video arrives)
        self._version = 0
        self._texture: Texture | None = None
        with self.canvas.before:
            Color(0, 0, 0, 1)
            self._back = Rectangle()
            self._tint = Color(1, 1, 1, 1)
            self._image = Rectangle()
        self.avatar = Avatar(name, avatar_mode, size_hint=(1, 1), pos_hint={"x": 0, "y": 0})
        self.add_widget(self.avatar)
        self.name_label = Label(
            text=name,
            font_size=22,
            bold=True,
            color=TEXT,
            size_hint=(None, None),
            pos_hint={"x": 0.02, "y": 0.02},
        )
        self.name_label.bind(texture_size=self._fit_label)
        with self.name_label.canvas.before:
            self._label_colour = Color(0.2, 0.2, 0.2, 0.75)
            self._label_back = Rectangle()
        self.name_label.bind(pos=self._fit_label)
        self.add_widget(self.name_label)
        self.badges = Label(
            text="",
            font_size=20,
            bold=True,
            color=(1, 0.85, 0.3, 1),
            size_hint=(None, None),
            pos_hint={},  # placed just above the name label (see _fit_badges): fits the smallest tile
        )
        self.badges.bind(texture_size=self._fit_badges, pos=self._fit_badges)
        with self.badges.canvas.before:
            self._badge_colour = Color(0, 0, 0, 0)
            self._badge_back = Rectangle()
        self.add_widget(self.badges)
        self.bind(pos=self._place, size=self._place)

    def on_touch_down(self, touch: Any) -> bool:
        if self.draggable and self.collide_point(*touch.pos):
            touch.grab(self)
            self._grab_offset = (touch.x - self.x, touch.y - self.y)
            return True
        return bool(super().on_touch_down(touch))

    def on_touch_move(self, touch: Any) -> bool:
        if touch.grab_current is self and self.parent is not None:
            area = self.parent
            self.pos_hint: dict[str, float] = {}  # from now on where the finger left it
            x = min(max(area.x, touch.x - self._grab_offset[0]), area.right - self.width)
            y = min(max(area.y, touch.y - self._grab_offset[1]), area.top - self.height)
            self.pos = (x, y)
            return True
        return bool(super().on_touch_move(touch))

    def on_touch_up(self, touch: Any) -> bool:
        if touch.grab_current is self:
            touch.ungrab(self)
            return True
        return bool(super().on_touch_up(touch))

    def _fit_label(self, *_: Any) -> None:
        w, h = self.name_label.texture_size
        self.name_label.size = (w + 16, h + 8)
        self._label_back.pos, self._label_back.size = self.name_label.pos, self.name_label.size
        self._fit_badges()

    def _fit_badges(self, *_: Any) -> None:
        w, h = self.badges.texture_size
        self.badges.size = (w + 16, h + 8)
        label = self.name_label
        # Beside the label, on the tile's side of it: above a label at the bottom, below one at the top.
        x = label.right - self.badges.width if "right" in label.pos_hint else label.x
        y = label.y - 4 - self.badges.height if "top" in label.pos_hint else label.top + 4
        self.badges.pos = (x, y)
        self._badge_back.pos, self._badge_back.size = self.badges.pos, self.badges.size
        self._badge_colour.a = 0.65 if self.badges.text else 0

    def set_name_label(
        self, visible: bool, background: tuple[float, ...], position: str = "bottom-left"
    ) -> None:
        """The settings' name label: shown or not, in which corner, on its background colour."""
        self.name_label.opacity = 1 if visible else 0
        self._label_colour.rgba = (*background[:3], 0.75)
        hint = LABEL_CORNERS.get(position, LABEL_CORNERS["bottom-left"])
        if self.name_label.pos_hint != hint:
            self.name_label.pos_hint = dict(hint)
            self.do_layout()
            self._fit_badges()

    def set_fit(self, fit: str) -> None:
        """Letterbox ("contain") or fill and crop ("cover"), redrawn at once."""
        if fit != self.fit:
            self.fit = fit
            self._place()

    def set_muted(self, audio_muted: bool, video_muted: bool) -> None:
        self.audio_muted, self.video_muted = audio_muted, video_muted
        words = [w for w, on in (("MUTED", audio_muted), ("VIDEO OFF", video_muted)) if on]
        self.badges.text = "  ".join(words)
        self._show_avatar()

    def _show_avatar(self) -> None:
        showing = self.video_muted or self._texture is None
        self.avatar.opacity = 1 if showing else 0
        self._tint.a = 0 if showing else 1

    def clear(self) -> None:
        """Forget the last picture (a new call must not start with the previous call's face)."""
        self._texture = None
        self._image.texture = None
        self._version = 0
        self._show_avatar()

    def refresh(self) -> bool:
        """Upload the newest frame if there is one we have not shown; True if something was drawn."""
        frame, version = self.store.latest(self.person)
        if frame is None or version == self._version:
            return False
        self._version = version
        self._upload(frame)
        return True

    def upload_size(self, width: int, height: int) -> tuple[int, int]:
        """The size to upload a `width` x `height` frame at: the size it is drawn at when that is at
        most half the frame's (the local preview, small grid tiles), so a small tile costs little to
        convert and upload; else the frame's own size (scaling costs more than it saves there)."""
        if self.width < 2 or self.height < 2:
            return width, height  # not laid out yet
        pick = max if self.fit == "cover" else min
        scale = pick(self.width / width, self.height / height)
        if scale > 0.5:
            return width, height
        return max(2, round(width * scale)), max(2, round(height * scale))

    def _upload(self, frame: av.VideoFrame) -> None:
        width, height = self.upload_size(frame.width, frame.height)
        # One swscale pass converts (and scales, for a small tile) straight to RGB.
        pixels = frame.to_ndarray(width=width, height=height, format="rgb24")
        if self._texture is None or self._texture.size != (width, height):
            self._texture = Texture.create(size=(width, height), colorfmt="rgb")
            self._texture.flip_vertical()  # frames are top row first; OpenGL draws bottom row first
            self._image.texture = self._texture
            self._texture_aspect = frame.width / frame.height
            self._show_avatar()
            self._place()
        self._texture.blit_buffer(pixels.tobytes(), colorfmt="rgb", bufferfmt="ubyte")
        self.frames_shown += 1
        self.canvas.ask_update()
        observer = VideoTile.on_upload
        if observer is not None:
            observer(self, frame)

    def _place(self, *_: Any) -> None:
        self._back.pos, self._back.size = self.pos, self.size
        if self._texture is None or self.width <= 0 or self.height <= 0:
            return
        aspect = self._texture_aspect
        if self.fit == "cover":
            # Fill the tile and crop the picture's overflow through the texture coordinates
            # (the texture is flipped: v runs from 1 at the bottom to 0 at the top).
            tile_aspect = self.width / self.height
            crop_x = max(0.0, (1 - tile_aspect / aspect) / 2)
            crop_y = max(0.0, (1 - aspect / tile_aspect) / 2)
            self._image.pos, self._image.size = self.pos, self.size
            self._image.tex_coords = (
                crop_x,
                1 - crop_y,
                1 - crop_x,
                1 - crop_y,
                1 - crop_x,
                crop_y,
                crop_x,
                crop_y,
            )
            return
        # Contain: the whole picture, letterboxed, never stretched.
        width = min(self.width, self.height * aspect)
        height = width / aspect
        self._image.size = (width, height)
        self._image.pos = (self.x + (self.width - width) / 2, self.y + (self.height - height) / 2)
