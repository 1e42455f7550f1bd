"""The call settings that shape the kiosk's call screen (Kivy, offscreen), each seen on screen: no button
layout, the main video container's name label, zoom, user-list and full-screen buttons, the screen-share
button, and picture-in-picture as a floating tile over the home screen.

As in tests/test_ui.py, Kivy runs in a child process (this file run as a script) with a hard timeout;
the test checks its report and the screenshots it saved.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT = 75.0


def test_call_settings_shape_the_call_screen(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(tmp_path), str(shots), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    seen: dict[str, Any] = json.loads(report.read_text())

    # enable_default_layout(False): no button layout at all, the video fills the screen.
    bare = seen["bare"]
    assert bare["bar_height"] == 0 and bare["buttons"] == [] and bare["corner_buttons"] == []
    assert not {"End", "Mute", "Zoom", "People"} & set(bare["texts"])
    # The name label where the settings put it (top left), on their colour.
    label, tile = bare["label"], bare["tile"]
    assert abs(label["x"] - tile["x"]) < 0.05 * tile["width"]
    assert abs(label["top"] - tile["top"]) < 0.05 * tile["height"]
    red, green, blue = _median_colour(shots / "bare.png", label)
    assert red > green + 60 and red > blue + 60, (red, green, blue)

    # The container's buttons where the settings put them; each does what it says.
    full = seen["full"]
    assert "Share screen" in full["buttons"]
    assert full["corner_buttons"] == ["Zoom", "People", "Full screen"]
    corner, area = full["corner"], full["area"]
    # Top left, under the status line: in the area's top-left corner, not in its middle.
    assert 0 <= corner["x"] - area["x"] < 0.05 * area["width"]
    assert 0 <= area["top"] - corner["top"] < 0.2 * area["height"]
    assert full["name_label_opacity"] == 0
    assert full["fit_before_zoom"] == "cover"  # the settings' aspect ratio
    assert full["fit_after_zoom"] == "contain" and full["fit_after_second_zoom"] == "cover"
    assert {"Front door", "Visitor"} <= set(full["user_list"]) and full["user_list_after_close"] == []
    assert full["full_screen"] == {"bar_height": 0, "preview_opacity": 0}
    assert full["after_full_screen"]["bar_height"] > 0 and full["after_full_screen"]["preview_opacity"] == 1
    assert full["shared"] is True and full["share_button_while_sharing"] == "Stop sharing"

    # Picture-in-picture: the call goes on in a small tile over the home screen; a tap brings it back.
    pip = seen["pip"]
    assert pip["screen"] == "home" and pip["tile_frames_grew"] and pip["session_pip"] is True
    assert pip["back_screen"] == "in_call" and pip["session_pip_after_tap"] is False
    assert pip["tile_after_tap"] is False
    pixels = _pixels(shots / "pip.png")
    assert pixels.std() > 12

    # Buttons the settings hide are not there.
    hidden = seen["hidden"]
    assert hidden["buttons"] == ["End"] and hidden["corner_buttons"] == []


def _pixels(png: Path) -> np.ndarray:
    with av.open(str(png)) as container:
        frame = next(container.decode(video=0))
    return frame.to_ndarray(format="rgb24").astype(np.float32)


def _median_colour(png: Path, box: dict[str, float]) -> tuple[float, float, float]:
    """The median colour inside a widget's box (Kivy's y runs up from the bottom, the image's down)."""
    pixels = _pixels(png)
    height = pixels.shape[0]
    top, bottom = int(height - box["top"]) + 2, int(height - box["y"]) - 2
    left, right = int(box["x"]) + 2, int(box["right"]) - 2
    patch = pixels[top:bottom, left:right].reshape(-1, 3)
    red, green, blue = (float(v) for v in np.median(patch, axis=0))
    return red, green, blue


def _box(widget: Any) -> dict[str, float]:
    return {
        "x": float(widget.x),
        "y": float(widget.y),
        "right": float(widget.right),
        "top": float(widget.top),
        "width": float(widget.width),
        "height": float(widget.height),
    }


async def scenario(tmp: Path, shots: Path) -> dict[str, Any]:
    from calls_support import endpoints, make_user, running_server, wait_until

    from kiosk.calls import Calls, CallSettings, CallSettingsBuilder, MainVideoContainerSetting
    from kiosk.controller import KioskController, Phase
    from kiosk.device import KioskDevices
    from kiosk.media.emulated import EmulatedDevices
    from kiosk.ui.kivy_app import KioskApp

    seen: dict[str, Any] = {}
    async with (
        running_server(tmp / "server") as server,
        endpoints(server.url, tmp, "visitor") as (visitor,),
    ):
        token = await make_user(server.url, "front-door", "Front door")
        emulated = EmulatedDevices(width=320, height=240, fps=15, tone_hz=440, screen=True)
        calls = Calls(
            server.url,
            auth_token=token,
            devices=KioskDevices(emulated, emulated, ["SPEAKER"]),
            ice_host_addresses=["127.0.0.1"],
        )
        await calls.login()
        settings: list[CallSettings] = []
        controller = KioskController(calls, settings_factory=lambda call: settings[-1])
        visitor_kiosk = KioskController(visitor.calls)
        app = KioskApp(controller, device_name="Front door", ended_seconds=0.5)
        runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))

        def on(screen: str) -> bool:
            return getattr(app, "manager", None) is not None and app.manager.current == screen

        def texts(widgets: list[Any]) -> list[str]:
            return [str(w.text) for w in widgets]

        async def answered_call(call_settings: CallSettings) -> Any:
            settings.append(call_settings)
            await wait_until(lambda: on("home") and controller.state.phase == Phase.IDLE, 10, "home")
            await visitor_kiosk.call("front-door")
            await wait_until(lambda: on("incoming"), 10, "incoming screen")
            app.incoming.answer_button.dispatch("on_release")
            await wait_until(lambda: on("in_call"), 10, "in-call screen")
            await wait_until(
                lambda: "visitor" in app.in_call.tiles and app.in_call.tiles["visitor"].frames_shown > 3,
                15,
                "the visitor's video",
            )
            return app.in_call

        async def hang_up() -> None:
            visitor_kiosk.hang_up()
            await wait_until(lambda: controller.state.phase == Phase.IDLE, 10, "the call to end")

        try:
            await wait_until(lambda: on("home"), 10, "home screen")

            # 1. No default layout; the name label top left, red.
            container = MainVideoContainerSetting().set_name_label_params("top-left", True, "#cc0000")
            screen = await answered_call(
                CallSettingsBuilder()
                .enable_default_layout(False)
                .set_main_video_container_setting(container)
                .build()
            )
            await asyncio.sleep(0.3)
            app.save_screenshot(shots / "bare.png")
            tile = screen.tiles["visitor"]
            seen["bare"] = {
                "bar_height": screen.bar.height,
                "buttons": texts(list(screen.buttons.values())),
                "corner_buttons": texts(list(screen.corner_buttons.values())),
                "texts": app.current_texts(),
                "label": _box(tile.name_label),
                "tile": _box(tile),
            }
            await hang_up()

            # 2. Zoom, user list and full screen at the top left; no name label; a screen to share.
            container = (
                MainVideoContainerSetting()
                .set_main_video_aspect_ratio("cover")
                .set_name_label_params("bottom-left", False)
                .set_zoom_button_params("top-left", True)
                .set_user_list_button_params("top-left", True)
                .set_full_screen_button_params("top-left", True)
            )
            screen = await answered_call(
                CallSettingsBuilder().set_main_video_container_setting(container).build()
            )
            await asyncio.sleep(0.2)
            full: dict[str, Any] = {
                "buttons": texts(list(screen.buttons.values())),
                "corner_buttons": texts(list(screen.corner_buttons.values())),
                "corner": _box(screen.corners["top-left"]),
                "area": _box(screen.videos),
                "name_label_opacity": screen.tiles["visitor"].name_label.opacity,
            }
            full["fit_before_zoom"] = screen.tiles["visitor"].fit
            screen.corner_buttons["zoom"].dispatch("on_release")
            full["fit_after_zoom"] = screen.tiles["visitor"].fit
            screen.corner_buttons["zoom"].dispatch("on_release")
            full["fit_after_second_zoom"] = screen.tiles["visitor"].fit
            screen.corner_buttons["users"].dispatch("on_release")
            full["user_list"] = screen.user_list_names()
            screen.corner_buttons["users"].dispatch("on_release")
            full["user_list_after_close"] = screen.user_list_names()
            screen.corner_buttons["full_screen"].dispatch("on_release")
            await asyncio.sleep(0.2)
            full["full_screen"] = {"bar_height": screen.bar.height, "preview_opacity": screen.preview.opacity}
            screen.corner_buttons["full_screen"].dispatch("on_release")
            await asyncio.sleep(0.2)
            full["after_full_screen"] = {
                "bar_height": screen.bar.height,
                "preview_opacity": screen.preview.opacity,
            }
            screen.buttons["share"].dispatch("on_release")
            await wait_until(
                lambda: calls.session is not None and calls.session.sharing_screen, 5, "the share"
            )
            full["shared"] = calls.session.sharing_screen
            screen.update_bar()
            full["share_button_while_sharing"] = screen.buttons["share"].text
            seen["full"] = full

            # Picture-in-picture, then back by a tap on the tile.
            calls.enter_pip_mode()
            await wait_until(lambda: on("home") and app.pip_tile is not None, 5, "the call in a tile")
            before = app.pip_tile.frames_shown
            await asyncio.sleep(0.8)
            app.save_screenshot(shots / "pip.png")
            pip: dict[str, Any] = {
                "screen": app.manager.current,
                "tile_frames_grew": app.pip_tile.frames_shown > before,
                "session_pip": calls.session.pip,
            }
            app.pip_tile.dispatch("on_release")
            await wait_until(lambda: on("in_call"), 5, "the call screen again")
            pip["back_screen"] = app.manager.current
            pip["session_pip_after_tap"] = calls.session.pip
            pip["tile_after_tap"] = app.pip_tile is not None
            # The app's own code leaves it too (exit_pip_mode), as a GPIO button's handler might.
            calls.enter_pip_mode()
            await wait_until(lambda: on("home"), 5, "the call in a tile again")
            calls.exit_pip_mode()
            await wait_until(
                lambda: on("in_call") and app.pip_tile is None, 5, "the call screen after exit_pip_mode"
            )
            seen["pip"] = pip
            await hang_up()

            # 3. The container's buttons and the share button hidden.
            container = (
                MainVideoContainerSetting()
                .set_zoom_button_params("top-left", False)
                .set_user_list_button_params("top-left", False)
                .set_full_screen_button_params("top-left", False)
            )
            screen = await answered_call(
                CallSettingsBuilder()
                .show_screen_share_button(False)
                .show_mute_audio_button(False)
                .show_pause_video_button(False)
                .show_switch_camera_button(False)
                .show_audio_mode_button(False)
                .show_switch_to_video_call_button(False)
                .show_mode_button(False)
                .show_recording_button(False)
                .show_end_call_button(True)
                .set_main_video_container_setting(container)
                .build()
            )
            seen["hidden"] = {
                "buttons": texts(list(screen.buttons.values())),
                "corner_buttons": texts(list(screen.corner_buttons.values())),
            }
            await hang_up()
        finally:
            app.stop()
            await asyncio.wait_for(runner, 10)
            await calls.close()
    return seen


def _child(tmp: Path, shots: Path, report: Path) -> None:
    sys.path.insert(0, str(HERE))  # calls_support
    from kiosk.ui.env import prepare_kivy

    prepare_kivy(width=800, height=480, offscreen=True, kivy_home=tmp / "kivy-home")
    shots.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(asyncio.run(scenario(tmp, shots))))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
