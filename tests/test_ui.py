"""The touch UI (Kivy, offscreen) through a whole call against a real server and a second endpoint.

Kivy makes one window per process and reads its environment at import, so the scenario runs in a child
process (this file run as a script) with a hard timeout; the test checks its exit code, its report and
the screenshots it saved. Set KIOSK_UPDATE_SCREENSHOTS=1 to also write them to docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np

HERE = Path(__file__).resolve().parent
DOCS_SCREENSHOTS = HERE.parent / "docs" / "screenshots"
SCREENS = (
    "home",
    "pair",
    "incoming",
    "in_call",
    "in_call_muted",
    "timeout_warning",
    "ended",
    "outgoing",
    "audio_call",
)
CHILD_TIMEOUT = 55.0


def test_touch_ui_through_a_call(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(tmp_path), str(shots), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    assert time.monotonic() - started < CHILD_TIMEOUT
    texts: dict[str, list[str]] = json.loads(report.read_text())["texts"]
    # What each screen says (the widget tree's texts, not OCR).
    assert "Front door" in texts["home"] and "Call Visitor" in texts["home"]
    assert any("from Visitor" in line for line in texts["home_after"])
    assert {"Visitor", "Answer", "Decline", "Incoming call"} <= set(texts["incoming"])
    assert {"Mute", "End", "Visitor"} <= set(texts["in_call"])
    assert "Unmute" in texts["in_call_muted"] and "VIDEO OFF" in texts["in_call_muted"]
    assert "Stay in the call" in texts["timeout_warning"]
    assert "Call ended" in texts["ended"] and any(t.startswith("Duration ") for t in texts["ended"])
    assert "Cancel" in texts["outgoing"] and "Visitor" in texts["outgoing"]
    assert "Visitor declined the call" in texts["declined"]
    assert "camera unplugged" in texts["error"]
    assert "Video call" in texts["audio_call"]
    assert "Visitor hung up" in texts["hung_up"]
    for screen in SCREENS:
        png = shots / f"{screen}.png"
        with av.open(str(png)) as container:
            frame = next(container.decode(video=0))
        pixels = frame.to_ndarray(format="rgb24").astype(np.float32)
        assert pixels.shape == (480, 800, 3), screen
        assert pixels.std() > 12, f"{screen}.png looks blank"
    if os.environ.get("KIOSK_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for screen in SCREENS:
            shutil.copy(shots / f"{screen}.png", DOCS_SCREENSHOTS / f"{screen}.png")


KIOSK_TOML = """
[server]
url = "http://127.0.0.1:{port}"
embedded = true
data_dir = "{tmp}/data"

[identity]
uid = "front-door"
name = "Front door"

[[cameras]]
id = "camera"
backend = "emulated"
width = 320
height = 240
fps = 15

[audio]
backend = "emulated"
echo_cancellation = false
noise_suppression = false
auto_gain_control = false

[ui]
fullscreen = false
auto_answer_after = 0.3
contacts = [{{ uid = "visitor", name = "Visitor" }}]

[recording]
directory = "{tmp}/recordings"

[emulation]
keyboard = false

[buttons]
pin_factory = "mock"

[door]
pin = 16
pulse_s = 0.3
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_run_kiosk_embedded_server_answers_the_printed_command(tmp_path: Path) -> None:
    """`run_kiosk` with an embedded server and no display: it prints a command that calls it, answers
    that call by itself (ui.auto_answer_after), saves screenshots, and exits 0 after `duration`."""
    config = tmp_path / "kiosk.toml"
    config.write_text(KIOSK_TOML.format(port=free_port(), tmp=tmp_path))
    shots = tmp_path / "shots"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "KIVY_HOME": str(tmp_path / "kivy-home")}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    code = "import sys; from pathlib import Path; from kiosk.ui.app import run_kiosk; " + (
        "sys.exit(run_kiosk(Path(sys.argv[1]), screenshots_dir=Path(sys.argv[2]), duration=10.0))"
    )
    log = (tmp_path / "kiosk.log").open("w")
    kiosk = subprocess.Popen(
        [sys.executable, "-c", code, str(config), str(shots)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log,  # a file, not a pipe: a chatty child must never block on a full pipe
        text=True,
    )
    watchdog = threading.Timer(45, kiosk.kill)  # a hard limit, whatever happens below
    watchdog.start()
    try:
        assert kiosk.stdout is not None
        command = ""
        for line in kiosk.stdout:  # the kiosk prints the line as soon as it is ready
            if line.strip().startswith("kiosk endpoint"):
                command = line.strip()
                break
        assert "--call front-door --loopback --open-door-after 1" in command, command
        browser = kiosk.stdout.readline().strip()  # and the web client's link, for a person with a browser
        assert browser.startswith("or from a browser: http://127.0.0.1:") and "/app/#token=" in browser, (
            browser
        )
        with urllib.request.urlopen(browser.split(": ", 1)[1], timeout=10) as page:
            assert page.status == 200 and b"app.js" in page.read()
        assert "Open door" in kiosk.stdout.readline()
        # A browser joins the stand-alone kiosk by the code it shows: no token typed.
        pair_line = kiosk.stdout.readline().strip()
        assert pair_line.startswith("pair a browser") and "/app/#pair=" in pair_line, pair_line
        server_url, code = pair_line.rsplit(" ", 1)[1].split("/app/#pair=")
        request = urllib.request.Request(
            f"{server_url}/v1/pair",
            data=json.dumps({"code": code, "name": "Desk tablet"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            paired = json.loads(answer.read())
        assert answer.status == 201 and paired["uid"] == "desk-tablet" and paired["authToken"]
        assert "caPem" not in paired  # a stand-alone kiosk has no CA to pin
        args = command.split()[1:]
        caller = subprocess.run(
            [str(Path(sys.executable).parent / "kiosk"), *args, "--duration", "3"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert caller.returncode == 0, caller.stdout[-3000:] + caller.stderr[-3000:]
        # The visitor opened the kiosk's door in the call (the demo's door release).
        opened = [json.loads(line) for line in caller.stdout.splitlines() if '"on_door_opened"' in line]
        assert opened and opened[0]["data"]["opened"] is True, caller.stdout[-3000:]
        assert kiosk.wait(timeout=30) == 0, (tmp_path / "kiosk.log").read_text()[-4000:]
    finally:
        watchdog.cancel()
        log.close()
        if kiosk.poll() is None:
            kiosk.kill()
            kiosk.wait()
    for screen in ("home", "in_call", "ended"):
        assert (shots / f"{screen}.png").stat().st_size > 1000, screen


def test_frame_store_keeps_only_the_newest_frame() -> None:
    from kiosk.ui.frames import FrameStore

    layouts: list[str] = []
    told: list[str] = []
    store = FrameStore(on_layout=lambda: layouts.append(store.mode), on_frame=told.append)
    frames = [av.VideoFrame(16, 16, "rgb24") for _ in range(3)]
    for frame in frames:
        store.render_frame("bob", frame)
    newest, version = store.latest("bob")
    assert newest is frames[-1] and version == 3 and store.slots["bob"].received == 3
    assert told == ["bob", "bob", "bob"]  # every frame, so the screen can show it at its next frame
    assert layouts == ["DEFAULT"]  # a new participant is a layout change; its next frames are not
    store.set_mode("SPOTLIGHT")
    store.remove_participant("bob")
    assert store.latest("bob") == (None, 0) and layouts == ["DEFAULT", "SPOTLIGHT", "SPOTLIGHT"]


def test_run_kiosk_config_error_is_one_line(tmp_path: Path, capsys: Any) -> None:
    from kiosk.ui.app import run_kiosk

    bad = tmp_path / "kiosk.toml"
    bad.write_text("[ui]\nwidth = 'wide'\n")
    assert run_kiosk(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiosk: ") and err.count("\n") == 1 and "ui.width" in err


# ----------------------------------------------------------------------------- the child process


async def scenario(tmp: Path, shots: Path) -> dict[str, list[str]]:
    import aiohttp
    from calls_support import ADMIN_KEY, endpoints, make_user, running_server, wait_until
    from gpiozero.pins.mock import MockFactory
    from kivy.clock import Clock

    from kiosk.calls import Calls, CallSettingsBuilder, CallType
    from kiosk.calls.events import CallError
    from kiosk.config import ButtonSection, ButtonsSection, Contact, DoorSection, EndButtonSection
    from kiosk.controller import KioskController, Phase
    from kiosk.device import KioskDevices
    from kiosk.hardware import ButtonPanel, DoorRelay
    from kiosk.media.emulated import EmulatedDevices
    from kiosk.media.pattern import latency_ms, read_stamp
    from kiosk.media.volume import OutputVolume, VolumeLevels
    from kiosk.ui import kivy_app
    from kiosk.ui.frames import FrameStore
    from kiosk.ui.kivy_app import KioskApp
    from kiosk.ui.widgets import VideoTile

    texts: dict[str, list[str]] = {}
    # The visitor stands at a door kiosk: its relay on gpiozero's mock pins.
    door_relay = DoorRelay(DoorSection(pin=5, pulse_s=0.2), asyncio.get_running_loop(), MockFactory())
    async with (
        running_server(tmp / "server") as server,
        endpoints(server.url, tmp, "visitor", door=door_relay) as (visitor,),
    ):
        token = await make_user(server.url, "front-door", "Front door")
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{server.url}/v1/users/front-door/permissions",
                json={"openDoors": True},
                headers={"X-Admin-Key": ADMIN_KEY},
            ) as r,
        ):
            assert r.status == 200
        emulated = EmulatedDevices(width=320, height=240, fps=15, tone_hz=440)
        volume = OutputVolume(emulated, VolumeLevels(tmp / "volume.json", 80))
        calls = Calls(
            server.url,
            auth_token=token,
            devices=KioskDevices(emulated, emulated, ["SPEAKER", "EARPIECE", "HEADPHONES"], volume=volume),
            ice_host_addresses=["127.0.0.1"],
            recording_dir=tmp / "recordings",
            device_poll_interval=0.5,
        )
        await calls.login()
        # Every button the settings offer, so the screenshot shows the full control bar.
        controller = KioskController(
            calls,
            settings_factory=lambda call: CallSettingsBuilder().show_recording_button(True).build(),
            volume=volume,
        )
        factory = MockFactory()
        panel = ButtonPanel(
            ButtonsSection(pin_factory="mock", mute=ButtonSection(17), end=EndButtonSection(27)),
            controller,
            asyncio.get_running_loop(),
            pin_factory=factory,
        )
        visitor_kiosk = KioskController(visitor.calls)
        # This kiosk is a building host: its pairing, on its real code store and CA (no server here).
        from kiosk.lan.ca import ensure_host_certificates
        from kiosk.lan.codes import PairingCodes

        host_ca = ensure_host_certificates(tmp / "host", "front-door", [])
        codes = PairingCodes(tmp / "host")

        class Pairing:
            async def code(self, new: bool = False) -> tuple[str, float]:
                made = codes.new_code() if new else codes.current_or_new()
                return made.code, made.expires_at

            async def fingerprint(self) -> str:
                return host_ca.fingerprint

            def browser_links(self, code: str) -> list[str]:
                return [f"https://front-door.local:8443/app/#pair={code}"]

        app = KioskApp(
            controller,
            device_name="Front door",
            contacts=[Contact("visitor", "Visitor")],
            ended_seconds=1.0,
            pairing=Pairing(),
        )
        # The upload hook sees every frame a tile puts on its texture, stamp and all.
        uploads: list[tuple[str, int | None]] = []
        # Kivy's frame count when each remote frame was decoded, by stamp, and whether its upload
        # (and the redraw that follows it) came in that same Kivy frame rather than at the next one.
        decoded_in_frame: dict[int, int] = {}
        same_frame: list[bool] = []
        original_render = FrameStore.render_frame

        def render_frame(store: FrameStore, uid: str, frame: av.VideoFrame) -> None:
            stamp = read_stamp(frame)
            if uid == "visitor" and stamp is not None:
                decoded_in_frame[stamp] = Clock.frames
            original_render(store, uid, frame)

        def uploaded(tile: VideoTile, frame: av.VideoFrame) -> None:
            stamp = read_stamp(frame)
            uploads.append((tile.person, None if stamp is None else latency_ms(stamp)))
            if tile.person == "visitor" and stamp in decoded_in_frame:
                same_frame.append(decoded_in_frame[stamp] == Clock.frames)

        FrameStore.render_frame = render_frame  # type: ignore[method-assign]
        finishes: list[float] = []
        real_finish = kivy_app.glFinish

        def counted_finish() -> None:
            finishes.append(time.monotonic())
            real_finish()

        kivy_app.glFinish = counted_finish

        VideoTile.on_upload = uploaded
        runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))

        async def shot(name: str, key: str | None = None) -> None:
            await asyncio.sleep(0.25)  # a few frames drawn
            app.save_screenshot(shots / f"{name}.png")
            texts[key or name] = app.current_texts()

        def on(screen: str) -> bool:
            return getattr(app, "manager", None) is not None and app.manager.current == screen

        try:
            await wait_until(lambda: on("home"), 10, "home screen")
            await wait_until(lambda: app.home.connection.text == "Connected", 5, "connected")
            texts["home"] = app.current_texts()

            # the visitor rings the kiosk: incoming screen
            await visitor_kiosk.call("front-door")
            await wait_until(lambda: on("incoming"), 10, "incoming screen")
            # Who is calling, before answering: the visitor's camera stills, in the avatar's place.
            await wait_until(lambda: app.incoming.pictures_shown >= 2, 10, "the caller's stills")
            assert app.incoming.picture.opacity == 1 and app.incoming.avatar.opacity == 0
            await shot("incoming")

            # accept by touch
            app.incoming.answer_button.dispatch("on_release")
            await wait_until(lambda: on("in_call"), 10, "in-call screen")
            await wait_until(lambda: visitor_kiosk.state.phase == Phase.IN_CALL, 10, "visitor in call")
            await wait_until(lambda: "visitor" in app.in_call.tiles, 10, "visitor's tile")
            tile = app.in_call.tiles["visitor"]
            await wait_until(lambda: tile.frames_shown >= 5, 15, "remote video drawn")
            await wait_until(lambda: app.in_call.preview.frames_shown >= 3, 10, "local preview drawn")
            # Drawn from the newest frame at display rate: never more frames shown than received.
            assert tile.frames_shown <= app.store.slots["visitor"].received
            # A tile uploads at the size it draws a frame at when that is at most half the frame's.
            small = VideoTile(app.store, "nobody", "Nobody", size_hint=(None, None), size=(160, 100))
            assert small.upload_size(640, 480) == (133, 100) and small.upload_size(200, 150) == (200, 150)
            small.fit = "cover"
            assert small.upload_size(640, 480) == (160, 120)
            remote = [lag for uid, lag in uploads if uid == "visitor"]
            assert len(remote) == tile.frames_shown, (len(remote), tile.frames_shown)
            # A decoded remote frame is drawn at once, not at Kivy's next frame (which sleeps out up to
            # 1/60 s): all but the ones that come within 1/60 s of the last redraw.
            assert same_frame and sum(same_frame) >= len(same_frame) / 2, same_frame
            # Every buffer swap waits for the drawing (glFinish), so the next upload does not.
            assert finishes, "no glFinish at a buffer swap"
            from kivy.config import Config

            assert Config.getint("graphics", "multisamples") == 0  # no resolve pass per frame
            assert all(lag is not None and lag < 5000 for lag in remote), remote  # the camera's stamps
            await wait_until(
                lambda: (
                    "front-door" in visitor.calls.session.participants
                    and "visitor" in calls.session.participants
                ),
                10,
                "both in the session",
            )
            await shot("in_call")

            # The visitor's kiosk has a door, and this user may open it: the bar offers it, and a
            # touch releases the visitor's relay and says so.
            door_button = app.in_call.door_button
            assert door_button is not None
            await wait_until(lambda: door_button.parent is not None, 10, "the Open door button")
            door_button.dispatch("on_release")
            await wait_until(lambda: door_relay.released_by == ["front-door"], 10, "the door released")
            await wait_until(
                lambda: any("released" in text for text in app.current_texts()), 10, "the door's answer shown"
            )

            # the layout button walks the modes through the SDK (set_mode -> the view's set_mode)
            mode_button = app.in_call.buttons["mode"]
            for expected, words in (("SPOTLIGHT", "Speaker"), ("SINGLE", "Single"), ("DEFAULT", "Grid")):
                mode_button.dispatch("on_release")
                assert calls.session.mode == expected and app.store.mode == expected
                assert mode_button.text == words
            # the volume control: the current mode's level, a touch is one step, kept per mode
            assert app.in_call.volume.level.text == "80 %" and app.in_call.volume.opacity == 1
            app.in_call.volume.up_button.dispatch("on_release")
            await wait_until(lambda: app.in_call.volume.level.text == "90 %", 5, "louder")
            speaker_mode = controller.state.audio_mode
            assert volume.level(speaker_mode) == 90 and emulated.mixer_percent["emulated-speaker"] == 90
            # the audio-mode button moves the sound to the next output (with its own level)
            before = controller.state.audio_mode
            app.in_call.buttons["audio_mode"].dispatch("on_release")
            assert controller.state.audio_mode != before == calls.get_audio_output_modes()[0].mode
            await wait_until(lambda: app.in_call.volume.level.text == "80 %", 5, "the next mode's level")

            # mute by the GPIO button (gpiozero MockFactory); the visitor hears of it
            pin = panel.buttons["mute"].pin
            pin.drive_low()
            pin.drive_high()
            muted = (await visitor.events.wait_for("on_user_muted", 5))[0]
            assert muted.uid == "front-door" and muted.audio_muted
            await wait_until(lambda: app.in_call.buttons["mute"].text == "Unmute", 5, "mute shown")
            # the visitor stops its video: the kiosk shows the badge and the avatar
            visitor_kiosk.toggle_video()
            await wait_until(lambda: tile.video_muted, 5, "video-off badge")
            assert tile.avatar.opacity == 1
            await shot("in_call_muted")

            # the idle-timeout warning, and its stay button
            stays: list[int] = []
            original_stay = calls.session.stay
            calls.session.stay = lambda: (stays.append(1), original_stay())
            calls.listeners.emit("on_session_timeout_warning", 45)
            await wait_until(lambda: app.in_call.warning is not None, 5, "warning shown")
            await shot("timeout_warning")
            stay_button = [
                w for w in app.in_call.warning.walk() if getattr(w, "text", "") == "Stay in the call"
            ]
            stay_button[0].dispatch("on_release")
            assert stays == [1] and app.in_call.warning is None

            # an error is a short message on screen, not a crash
            calls.listeners.emit("on_error", CallError("DEVICE_ERROR", "camera unplugged"))
            await asyncio.sleep(0.1)
            texts["error"] = app.current_texts()

            # end by touch: the call-ended screen, then home by itself
            app.in_call.buttons["end"].dispatch("on_release")
            await wait_until(lambda: on("ended"), 10, "ended screen")
            await visitor.events.wait_for("on_call_ended", 10)
            await wait_until(lambda: visitor_kiosk.state.phase == Phase.IDLE, 10, "visitor idle")
            app._hide_toast()
            await shot("ended")
            await wait_until(lambda: on("home"), 5, "back home")
            await wait_until(
                lambda: any("from Visitor" in t.text for t in app.home.recent_lines), 5, "recent calls"
            )
            await shot("home", "home_after")  # the home screen with a call in its recent list

            # the kiosk calls by touch; the visitor declines: outgoing, then the outcome in words
            app.home.call_buttons["visitor"].dispatch("on_release")
            await wait_until(lambda: on("outgoing"), 10, "outgoing screen")
            await wait_until(lambda: visitor_kiosk.state.phase == Phase.RINGING_IN, 10, "visitor rings")
            await shot("outgoing")
            await visitor_kiosk.reject()
            await wait_until(lambda: on("ended"), 10, "outcome shown")
            texts["declined"] = app.current_texts()
            assert app.screen_log[:6] == ["home", "incoming", "in_call", "ended", "home", "outgoing"]

            # an audio call, answered by a press of the GPIO end button: the avatar instead of video,
            # and a "Video call" button that switches it; then the visitor hangs up
            await visitor_kiosk.call("front-door", CallType.AUDIO)
            await wait_until(lambda: on("incoming"), 10, "rings again")
            end_pin = panel.buttons["end"].pin
            end_pin.drive_low()
            end_pin.drive_high()
            await wait_until(lambda: on("in_call") and calls.session is not None, 10, "audio call")
            await wait_until(lambda: calls.session.active and "visitor" in app.in_call.tiles, 10, "tile")
            await wait_until(lambda: "to_video" in app.in_call.buttons, 5, "video call button")
            await wait_until(lambda: app.in_call.buttons["to_video"].parent is not None, 5, "shown")
            assert app.in_call.tiles["visitor"].avatar.opacity == 1  # no video: the avatar
            await shot("audio_call")
            app.in_call.buttons["to_video"].dispatch("on_release")
            await visitor.events.wait_for("on_call_switched_to_video", 5)
            await wait_until(lambda: app.in_call.buttons["to_video"].parent is None, 5, "button gone")
            bar = [button.text for button in reversed(app.in_call.bar.children)]  # left to right
            # (the visitor's kiosk has a door: Open door stays, in its place before End)
            assert bar == [
                "Mute",
                "Stop video",
                "Switch camera",
                "Speaker",
                "Record",
                "Grid",
                "Open door",
                "End",
            ], bar
            await visitor_kiosk.hang_up()
            await wait_until(lambda: on("ended"), 10, "ended by the visitor")
            texts["hung_up"] = app.current_texts()

            # A missed call (the visitor gives up before an answer): home shows who it was, as the
            # visitor's camera saw them while it rang.
            await wait_until(lambda: on("home"), 10, "home again")
            shown = app.incoming.pictures_shown
            await visitor_kiosk.call("front-door")
            await wait_until(lambda: app.incoming.pictures_shown > shown, 10, "the caller's still")
            await visitor_kiosk.hang_up()
            await wait_until(lambda: on("home"), 15, "home after the missed call")
            await wait_until(lambda: app.home.missed_picture.opacity == 1, 10, "the missed caller's picture")

            # The host's "Pair a device": the code a new kiosk or browser enters, the CA fingerprint
            # it will show, and a fresh code on request.
            app.home.pair_button.dispatch("on_release")
            await wait_until(lambda: on("pair"), 10, "the pairing screen")
            first = codes.current()
            assert first is not None and app.pair.code_label.text.replace(" ", "") == first.code
            assert host_ca.fingerprint[:4].upper() in app.pair.fingerprint_label.text
            assert app.pair.validity.text.startswith("Valid 4:") or app.pair.validity.text.startswith(
                "Valid 5:"
            )
            await shot("pair")
            app.pair.new_button.dispatch("on_release")
            await wait_until(
                lambda: app.pair.code_label.text.replace(" ", "") != first.code, 10, "a new code"
            )
            assert app.pair.code_label.text.replace(" ", "") == codes.current().code  # type: ignore[union-attr]
            app.pair.done_button.dispatch("on_release")
            await wait_until(lambda: on("home"), 10, "home after pairing")
        finally:
            VideoTile.on_upload = None
            app.stop()
            await asyncio.wait_for(runner, 10)
            panel.close()
            factory.reset()
            await calls.close()
    return texts


def _child(tmp: Path, shots: Path, report: Path) -> None:
    sys.path.insert(0, str(HERE))  # calls_support
    from kiosk.ui.env import prepare_kivy

    prepare_kivy(width=800, height=480, offscreen=True, kivy_home=tmp / "kivy-home")
    texts = asyncio.run(scenario(tmp, shots))
    report.write_text(json.dumps({"texts": texts}))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))


def test_spotlight_speaker_prefers_who_the_sfu_says_is_talking() -> None:
    from kiosk.ui.frames import choose_speaker

    levels = {"ann": 0.20, "ben": 0.05, "cat": 0.002}
    assert choose_speaker(levels, set()) == "ann"  # mesh: the loudest decoded audio
    assert choose_speaker(levels, {"ben"}) == "ben"  # the room's talking events win over a loud blip
    assert choose_speaker(levels, {"ben", "cat"}) == "ben"  # the loudest of those talking
    assert choose_speaker({"ann": 0.001, "ben": 0.002}, set()) is None  # nobody audible: no change
    assert choose_speaker({}, {"ann"}) is None
