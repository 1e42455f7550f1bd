"""One finger on the touchscreen is one touch: the kiosk's Mute toggles once per tap (kivy/kivy#8494).

On a Raspberry Pi the kiosk's window is SDL2 on KMS/DRM, and two readers can see the same finger on
the kernel's touchscreen (/dev/input/eventN):

- SDL2 itself. Its evdev code reports the finger, and `SDL_SendTouch` (SDL2 src/events/SDL_touch.c,
  `SDL_HINT_TOUCH_MOUSE_EVENTS` on by default) also synthesises a mouse motion and a left-button press
  for the first finger. Kivy's `_window_sdl2.pyx` `poll()` hands those on as ('mousemotion', x, y) and
  ('mousebuttondown', x, y, 1) tuples without SDL's `which`, so a touch-made press looks like a real
  mouse. `WindowSDL.mainloop` (kivy/core/window/window_sdl2.py) dispatches `on_mouse_down`/`on_mouse_up`,
  and the `mouse` provider (kivy/input/providers/mouse.py) turns them into a `MouseMotionEvent` touch.
  SDL's own finger events are dropped on Linux (only iOS and Android use them).
- Kivy's `%(name)s = probesysfs` line, which Kivy's first run writes into [input] on Linux
  (kivy/config.py, `version == 0`). probesysfs (kivy/input/providers/probesysfs.py) scans
  /sys/class/input for event devices with ABS_MT_POSITION_X and starts an `mtdev` provider on each
  (kivy/input/providers/mtdev.py). Its reader thread reads the node through libmtdev
  (kivy/lib/mtdev.py) and queues an `MTDMotionEvent`. That is a second touch for the same tap.

What runs for real here: Kivy's first-run config (written by Kivy into a fresh KIVY_HOME, as on a Pi),
the kiosk's `prepare_kivy`, the kiosk app (real SDK, server and controller, the in-call Mute
`BigButton`), `App.async_run` and so `kivy/base.py::_runTouchApp_prepare`, which builds the providers
from `Config.items('input')` through `MotionEventFactory`, probesysfs's probe, the mtdev provider and its
reader thread, `WindowSDL.mainloop`, the mouse provider, and the event loop with its postproc modules.

What is emulated, at the lowest level we can reach without the hardware:
- sysfs: probesysfs reads a temporary tree instead of /sys/class/input. The tree has one multitouch
  panel at event0 (its `device/name` and `device/capabilities/abs` with the MT bits).
- libmtdev: `kivy.input.providers.mtdev.Device` (kivy/lib/mtdev.py: ctypes libmtdev on the evdev node)
  is replaced by `EmulatedMtdevDevice`. It hands Kivy's reader thread the kernel events of the tap: MT
  protocol B slot, tracking id and position, plus the single-touch pointer emulation and SYN_REPORT.
- SDL: `Window._win.poll()` first returns what SDL2 makes of the same tap (see above), then SDL's real
  events.

Kivy reads [input] only when the app starts, and it makes one window per process. So each scenario
runs in a child process (this file run as a script), as tests/test_ui.py does. The control scenario
puts the first-run probesysfs line back after `prepare_kivy`. It shows that the emulation reproduces
the double toggle whatever `prepare_kivy` does, so the kiosk scenario's single toggle means something.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from ctypes.util import find_library
from pathlib import Path
from typing import Any, ClassVar

import pytest

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT = 60.0
WIDTH, HEIGHT = 800, 480  # the Pi 7-inch display; the emulated panel has the same resolution
TOUCH_NODE = "/dev/input/event0"
FIRST_RUN_INPUT = {"mouse": "mouse", "%(name)s": "probesysfs"}  # kivy/config.py on Linux (not an old Pi)
KIOSK_INPUT = [["mouse", "mouse,disable_multitouch"]]
# The lines Kivy's Pi docs (doc/sources/installation/installation-rpi.rst) tell users to add.
PI_DOCS_INPUT = {
    "mtdev_%(name)s": "probesysfs,provider=mtdev",
    "hid_%(name)s": "probesysfs,provider=hidinput",
}


def require_libmtdev() -> None:
    # Kivy's mtdev provider needs libmtdev.so.1 to import; scripts/setup.sh installs libmtdev1, so
    # its absence is a broken set-up, reported as a failure rather than hidden by a skip.
    assert find_library("mtdev") is not None, "libmtdev.so.1 is missing: apt-get install libmtdev1"


def run_child(mode: str, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Run one scenario in a child process; its report and the [input] of the config.ini Kivy wrote."""
    report = tmp / "report.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "KIVY_HOME", "KIVY_NO_CONFIG", "KIVY_USE_DEFAULTCONFIG"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode, str(tmp), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=tmp,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return json.loads(report.read_text()), read_input_section(tmp / "kivy-home" / "config.ini")


def read_input_section(path: Path) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(path)
    return dict(parser.items("input"))


def test_one_tap_on_mute_toggles_it_once_with_kivys_first_run_input_config(tmp_path: Path) -> None:
    require_libmtdev()
    report, config_ini = run_child("kiosk", tmp_path)
    # The premise: Kivy's own first run wrote its Linux [input] lines, as it does on a Pi.
    assert FIRST_RUN_INPUT.items() <= config_ini.items(), config_ini
    assert report["releases"] == [["MouseMotionEvent", "mouse"]], (
        f"one tap released Mute {len(report['releases'])} times: {report['releases']}; "
        f"[input] at start {report['input_config']}; providers {report['providers']}"
    )
    assert report["mute_calls"] == [True]
    assert report["muted"] is True and report["mute_text"] == "Unmute"
    # Only the kiosk's input line was left, so nothing opened the kernel's touchscreen.
    assert report["input_config"] == KIOSK_INPUT
    assert report["opened"] == []
    assert [p[0] for p in report["providers"]] == ["SDL2MotionEventProvider", "MouseMotionEventProvider"]


def test_control_the_emulated_pi_turns_one_tap_into_two_touches(tmp_path: Path) -> None:
    """The Pi's state before the fix: probesysfs starts mtdev on the panel and Mute flips twice."""
    require_libmtdev()
    report, _ = run_child("control", tmp_path)
    assert ["%(name)s", "probesysfs"] in report["input_config"]
    assert report["opened"] == [TOUCH_NODE]
    assert ["MTDMotionEventProvider", "event0", TOUCH_NODE] in report["providers"]
    assert sorted(report["releases"]) == [["MTDMotionEvent", "event0"], ["MouseMotionEvent", "mouse"]]
    assert report["mute_calls"] == [True, False]
    assert report["muted"] is False and report["mute_text"] == "Mute"


PROBE_CONFIG = """
import json, sys
from pathlib import Path
before = None
if sys.argv[1] == "kivy_imported_first":
    from kivy.config import Config
    before = Config.items("input")
from kiosk.ui.env import prepare_kivy
prepare_kivy(offscreen=True, kivy_home=Path(sys.argv[2]))
from kivy.config import Config
print(json.dumps({"before": before, "after": Config.items("input")}))
"""


@pytest.mark.parametrize("order", ["prepare_kivy_first", "kivy_imported_first"])
def test_kernel_touch_providers_in_config_ini_are_dropped(tmp_path: Path, order: str) -> None:
    """A config.ini with probesysfs, mtdev and hidinput lines leaves only the kiosk's input line.
    Kivy reads config.ini at `import kivy.config`, so the kiosk's lines must win over the file."""
    home = tmp_path / "kivy-home"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "KIVY_NO_ARGS": "1", "KIVY_NO_CONSOLELOG": "1"}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "KIVY_NO_CONFIG", "KIVY_USE_DEFAULTCONFIG"):
        env.pop(name, None)
    env["KIVY_HOME"] = str(home)

    def python(code: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    python("import kivy.config")  # Kivy writes its first-run config.ini, as on a Pi's first start
    ini = home / "config.ini"
    written = read_input_section(ini)
    extra = {key: value for key, value in {**FIRST_RUN_INPUT, **PI_DOCS_INPUT}.items() if key not in written}
    text = ini.read_text()
    assert text.count("[input]\n") == 1
    ini.write_text(text.replace("[input]\n", "[input]\n" + "".join(f"{k} = {v}\n" for k, v in extra.items())))
    edited = ini.read_text()
    assert {**FIRST_RUN_INPUT, **PI_DOCS_INPUT}.items() <= read_input_section(ini).items()

    seen = json.loads(python(PROBE_CONFIG, order, str(home)).strip().splitlines()[-1])
    if order == "kivy_imported_first":  # Kivy did read the file's lines
        assert {**FIRST_RUN_INPUT, **PI_DOCS_INPUT}.items() <= dict(seen["before"]).items()
    assert seen["after"] == KIOSK_INPUT
    assert ini.read_text() == edited  # the user's file is left as it was


# ----------------------------------------------------------------------------- the child process

# linux/input-event-codes.h
EV_SYN, EV_KEY, EV_ABS = 0x00, 0x01, 0x03
SYN_REPORT, BTN_TOUCH = 0x00, 0x14A
ABS_X, ABS_Y, ABS_MT_SLOT = 0x00, 0x01, 0x2F
ABS_MT_POSITION_X, ABS_MT_POSITION_Y, ABS_MT_TRACKING_ID = 0x35, 0x36, 0x39
# The panel's ABS capability bits as /sys/class/input/eventN/device/capabilities/abs shows them.
PANEL_ABS_BITS = sum(
    1 << code
    for code in (ABS_X, ABS_Y, ABS_MT_SLOT, ABS_MT_POSITION_X, ABS_MT_POSITION_Y, ABS_MT_TRACKING_ID)
)
PANEL_NAME = "generic ft5x06 (79)"  # like the Pi 7-inch display's touch controller; probesysfs ignores it
SDL_BUTTON_LEFT = 1
SDL_FINGER_ID = 0


class Touchscreen:
    """The panel and one finger on it. The kernel reports the finger on /dev/input/event0, and every
    reader of that node sees it: SDL2 always, and libmtdev when probesysfs started an mtdev provider."""

    def __init__(self) -> None:
        self.sdl_events: deque[tuple[Any, ...]] = deque()  # what Kivy's SDL2 poll() returns for it
        self.reports: queue.Queue[list[tuple[int, int, int]]] = queue.Queue()  # one per SYN_REPORT
        self.opened: list[str] = []  # nodes an (emulated) libmtdev was asked to open
        self.lock = threading.Lock()
        self.sent = 0  # kernel reports made
        self.taken = 0  # reports libmtdev's reader took
        self.done = 0  # reports the reader has fully passed on (it came back to idle() after them)
        self._tracking_id = 100

    def finger_down(self, x: int, y: int) -> None:
        """A finger at window pixel (x, y), top-left origin (the panel is the screen)."""
        self._tracking_id += 1
        self._kernel(
            [
                (EV_ABS, ABS_MT_SLOT, 0),
                (EV_ABS, ABS_MT_TRACKING_ID, self._tracking_id),
                (EV_ABS, ABS_MT_POSITION_X, x),
                (EV_ABS, ABS_MT_POSITION_Y, y),
                (EV_KEY, BTN_TOUCH, 1),  # the single-touch pointer emulation the driver adds
                (EV_ABS, ABS_X, x),
                (EV_ABS, ABS_Y, y),
                (EV_SYN, SYN_REPORT, 0),
            ]
        )
        # SDL_SendTouch: mouse motion and left press for the first finger, then the finger event.
        self.sdl_events.extend(
            [
                ("mousemotion", x, y),
                ("mousebuttondown", x, y, SDL_BUTTON_LEFT),
                ("fingerdown", SDL_FINGER_ID, x / WIDTH, y / HEIGHT, 1.0),
            ]
        )

    def finger_up(self, x: int, y: int) -> None:
        self._kernel([(EV_ABS, ABS_MT_TRACKING_ID, -1), (EV_KEY, BTN_TOUCH, 0), (EV_SYN, SYN_REPORT, 0)])
        self.sdl_events.extend(
            [
                ("mousebuttonup", x, y, SDL_BUTTON_LEFT),
                ("fingerup", SDL_FINGER_ID, x / WIDTH, y / HEIGHT, 0.0),
            ]
        )

    def _kernel(self, events: list[tuple[int, int, int]]) -> None:
        with self.lock:
            self.sent += 1
            self.reports.put(events)

    def passed_on(self) -> bool:
        """Every reader has handed Kivy all the panel reported (the providers dispatch it next frame)."""
        with self.lock:
            mtdev_done = not self.opened or self.done == self.sent
        return mtdev_done and not self.sdl_events


class EmulatedMtdevDevice:
    """Stands for `kivy.lib.mtdev.Device`, libmtdev on the evdev node, for Kivy's mtdev reader thread
    (`MTDMotionEventProvider._thread_run`): `get_abs`, `idle(ms)`, `get()`, `close()`."""

    panel: ClassVar[Touchscreen]

    def __init__(self, filename: str) -> None:
        if filename != TOUCH_NODE:
            raise FileNotFoundError(2, "No such file or directory", filename)
        self.panel.opened.append(filename)
        self._pending: deque[tuple[int, int, int]] = deque()

    def get_abs(self, index: int) -> Any:
        from kivy.lib.mtdev import MTDEV_ABS_POSITION_X, MTDEV_ABS_POSITION_Y, input_absinfo

        maximum = {MTDEV_ABS_POSITION_X: WIDTH - 1, MTDEV_ABS_POSITION_Y: HEIGHT - 1}.get(index, 0)
        return input_absinfo(minimum=0, maximum=maximum)

    def idle(self, ms: int) -> bool:
        """True while nothing is there to read (what mtdev_idle says), after waiting up to `ms`."""
        panel = self.panel
        with panel.lock:
            panel.done = panel.taken  # the reader is back: it has queued what it took
        if not self._pending:
            try:
                report = panel.reports.get(timeout=ms / 1000)
            except queue.Empty:
                return True
            with panel.lock:
                panel.taken += 1
            self._pending.extend(report)
        return False

    def get(self) -> Any:
        from kivy.lib.mtdev import input_event

        if not self._pending:
            return None
        kind, code, value = self._pending.popleft()
        return input_event(type=kind, code=code, value=value)

    def close(self) -> None:
        pass


class SdlWithTouchscreen:
    """`Window._win` (Kivy's SDL2 window storage) whose poll() first returns what SDL2 made of the
    panel's touches, as the tuples Kivy's `_window_sdl2.pyx` builds; then SDL's own events."""

    def __init__(self, real: Any, panel: Touchscreen) -> None:
        self._real = real
        self._panel = panel

    def poll(self) -> Any:
        if self._panel.sdl_events:
            return self._panel.sdl_events.popleft()
        return self._real.poll()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def emulate_pi_touchscreen(sysfs: Path, panel: Touchscreen) -> None:
    """Point Kivy's probesysfs at a sysfs tree with the panel at event0 and give Kivy's mtdev reader
    the emulated libmtdev. Call after Kivy's input providers are imported, before the app starts."""
    from kivy.input import MotionEventFactory
    from kivy.input.providers import mtdev, probesysfs

    device = sysfs / "class" / "input" / "event0" / "device"
    (device / "capabilities").mkdir(parents=True)
    (device / "name").write_text(PANEL_NAME + "\n")
    (device / "capabilities" / "abs").write_text(f"{PANEL_ABS_BITS:x}\n")

    class ProbeSysfsOnEmulatedSysfs(probesysfs.ProbeSysfsHardwareProbe):
        def probe(self) -> None:
            self.input_path = str(sysfs / "class" / "input")  # instead of /sys/class/input
            super().probe()

    # Replaces Kivy's entry for the provider name the first-run line uses; Kivy's probe then runs.
    MotionEventFactory.register("probesysfs", ProbeSysfsOnEmulatedSysfs)
    EmulatedMtdevDevice.panel = panel
    mtdev.Device = EmulatedMtdevDevice  # the name the reader thread opens the node with


async def scenario(tmp: Path, panel: Touchscreen) -> dict[str, Any]:
    from calls_support import make_user, running_server, wait_until
    from kivy.base import EventLoop
    from kivy.clock import Clock
    from kivy.config import Config
    from kivy.core.window import Window

    from kiosk.calls import Calls
    from kiosk.controller import KioskController
    from kiosk.media.emulated import EmulatedDevices
    from kiosk.ui.kivy_app import KioskApp

    async def frames(count: int) -> None:
        start = Clock.frames
        await wait_until(lambda: Clock.frames >= start + count, 10, f"{count} frames")

    report: dict[str, Any] = {}
    async with running_server(tmp / "server") as server:
        token = await make_user(server.url, "front-door", "Front door")
        calls = Calls(
            server.url,
            auth_token=token,
            devices=EmulatedDevices(width=160, height=120, fps=5),
            ice_host_addresses=["127.0.0.1"],
            recording_dir=tmp / "recordings",
        )
        await calls.login()
        mute_calls: list[bool] = []
        real_mute = calls.mute_audio

        def mute_audio(muted: bool) -> None:
            mute_calls.append(muted)
            real_mute(muted)

        calls.mute_audio = mute_audio
        controller = KioskController(calls)
        app = KioskApp(controller, device_name="Front door")
        report["input_config"] = [list(item) for item in Config.items("input")]
        real_win = Window._win
        Window._win = SdlWithTouchscreen(real_win, panel)
        runner = asyncio.ensure_future(app.async_run(async_lib="asyncio"))
        try:
            await wait_until(lambda: getattr(app, "manager", None) is not None, 10, "the app built")
            report["providers"] = [
                [type(p).__name__, p.device, getattr(p, "input_fn", None)] for p in EventLoop.input_providers
            ]
            if any(getattr(p, "input_fn", None) == TOUCH_NODE for p in EventLoop.input_providers):
                # its reader thread opens the node when the loop starts; a tap before that is not read
                await wait_until(lambda: panel.opened, 10, "libmtdev on the panel")
            await controller.join("front-door-touch")
            await wait_until(lambda: app.manager.current == "in_call", 10, "in-call screen")
            button = app.in_call.buttons["mute"]
            await wait_until(lambda: button.get_root_window() is not None and button.width > 40, 10, "Mute")
            await frames(3)  # laid out and drawn
            releases: list[list[str]] = []
            button.bind(
                on_release=lambda b: releases.append([type(b.last_touch).__name__, b.last_touch.device])
            )
            x, y = button.to_window(*button.center)
            tap = round(x), round(HEIGHT - y)  # the panel's pixels count from the top
            panel.finger_down(*tap)
            await wait_until(panel.passed_on, 10, "the finger read")
            await frames(3)  # a short tap: held for a few frames
            panel.finger_up(*tap)
            await wait_until(panel.passed_on, 10, "the release read")
            await frames(3)  # the providers' queues dispatched
            session = calls.session
            report.update(
                releases=releases,
                mute_calls=mute_calls,
                muted=bool(session is not None and session.audio_muted),
                mute_text=button.text,
                opened=panel.opened,
            )
        finally:
            Window._win = real_win
            app.stop()
            await asyncio.wait_for(runner, 10)
            await calls.close()
    return report


def _child(mode: str, tmp: Path, report: Path) -> None:
    sys.path.insert(0, str(HERE))  # calls_support
    from kiosk.ui.env import prepare_kivy

    prepare_kivy(width=WIDTH, height=HEIGHT, offscreen=True, kivy_home=tmp / "kivy-home")
    if mode == "control":
        from kivy.config import Config

        Config.set("input", "%(name)s", "probesysfs")  # Kivy's first-run line, as if prepare_kivy kept it
    panel = Touchscreen()
    emulate_pi_touchscreen(tmp / "sysfs", panel)
    report.write_text(json.dumps(asyncio.run(scenario(tmp, panel))))


if __name__ == "__main__":
    _child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
