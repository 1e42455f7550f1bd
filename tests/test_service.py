"""systemd integration: sd_notify and the loop-fed watchdog (against a real Unix datagram socket), the
unit files (`systemd-analyze verify`, strictly), and scripts/install-pi.sh run twice into a temp root."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk import service

ROOT = Path(__file__).resolve().parent.parent
UNITS = ["kiosk.service", "kiosk-server.service"]


class NotifyListener:
    """A Unix datagram socket standing in for systemd's notify socket; records (arrival time, message)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        # A thread, not the loop under test: arrival times must not depend on that loop running.
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self, text: str) -> list[float]:
        return [at for at, message in self.received if message == text]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    # A short directory of our own: pytest's tmp_path can exceed the 108-byte limit of a socket path.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    listener = NotifyListener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


async def wait_for(predicate: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- sd_notify


async def test_ready_status_stopping_reach_the_socket(notify_socket: NotifyListener) -> None:
    assert service.ready()
    assert service.status("idle, 2 cameras")
    assert service.stopping()
    await wait_for(lambda: len(notify_socket.received) == 3)
    assert [m for _, m in notify_socket.received] == ["READY=1", "STATUS=idle, 2 cameras", "STOPPING=1"]


async def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"kiosk-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert service.ready("up")
        await wait_for(lambda: listener.received)
        assert listener.received[0][1] == "READY=1\nSTATUS=up"
    finally:
        listener.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert service.notify("READY=1") is False
    assert service.watchdog_interval() is None
    assert service.start_watchdog(asyncio.new_event_loop()) is None
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert service.ready() is False  # a vanished socket is reported, never raised


def test_watchdog_meant_for_another_process(
    monkeypatch: pytest.MonkeyPatch, notify_socket: NotifyListener
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert service.watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert service.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert service.watchdog_interval() is None


# ----------------------------------------------------------------------------- the watchdog


async def test_watchdog_feeds_at_half_the_timeout(
    monkeypatch: pytest.MonkeyPatch, notify_socket: NotifyListener
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a feed every 0.1 s
    task = service.start_watchdog(asyncio.get_running_loop())
    assert task is not None
    try:
        await asyncio.sleep(1.05)
    finally:
        task.cancel()
    await asyncio.sleep(0.1)
    feeds = notify_socket.messages("WATCHDOG=1")
    gaps = [b - a for a, b in zip(feeds, feeds[1:], strict=False)]
    # Never faster than the interval; on a busy machine a feed may come a little late, not much.
    assert 7 <= len(feeds) <= 12, feeds
    assert min(gaps) >= 0.08, gaps
    assert 0.09 <= sum(gaps) / len(gaps) <= 0.14, gaps
    count = len(feeds)
    await asyncio.sleep(0.25)
    assert len(notify_socket.messages("WATCHDOG=1")) == count  # cancelled: no more feeds


async def test_a_blocked_loop_stops_the_feed(
    monkeypatch: pytest.MonkeyPatch, notify_socket: NotifyListener
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # feeds every 0.1 s; systemd would act after 0.2 s
    loop = asyncio.get_running_loop()
    task = service.start_watchdog(loop)
    assert task is not None
    block: dict[str, float] = {}

    def stuck() -> None:  # what a hung driver call or a busy loop on the UI thread looks like
        block["start"] = time.monotonic()
        time.sleep(0.6)
        block["end"] = time.monotonic()

    try:
        await asyncio.sleep(0.35)
        loop.call_soon(stuck)
        await asyncio.sleep(0.35)
    finally:
        task.cancel()
    await asyncio.sleep(0.05)
    feeds = notify_socket.messages("WATCHDOG=1")
    # A datagram sent just before the block may be read by the listener a moment after it started.
    during = [at for at in feeds if block["start"] + 0.03 < at < block["end"]]
    assert during == [], (block, feeds)
    assert any(at < block["start"] for at in feeds)
    assert any(at >= block["end"] for at in feeds)  # fed again as soon as the loop ran again
    before = max(at for at in feeds if at < block["start"] + 0.03)
    after = min(at for at in feeds if at >= block["end"])
    assert after - before >= 0.55


# ----------------------------------------------------------------------------- unit files


def verify_unit(text: str, name: str, tmp: Path) -> list[str]:
    """Problems `systemd-analyze verify` finds in a unit, as lines; [] when clean.

    verify exits 0 on unknown keys and bad values (it only warns), so any output counts as a problem.
    The one thing left out is the missing /opt/kiosk binary of a machine where nothing is installed:
    the copy verified runs an executable that exists, so every other line still counts.
    """
    stand_in = tmp / "bin" / "kiosk"
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp / name
    unit.write_text(text.replace("/opt/kiosk/.venv/bin/kiosk", str(stand_in)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 and not lines:
        lines = [f"systemd-analyze exited {result.returncode}"]
    return lines


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_cleanly(name: str, tmp_path: Path) -> None:
    text = (ROOT / "systemd" / name).read_text()
    assert verify_unit(text, name, tmp_path) == []


@needs_systemd_analyze
def test_verify_check_catches_a_typo(tmp_path: Path) -> None:
    text = (ROOT / "systemd" / "kiosk.service").read_text().replace("Type=notify", "Typ=notify")
    problems = verify_unit(text, "kiosk.service", tmp_path)
    assert any("Typ" in line for line in problems), problems
    text = (ROOT / "systemd" / "kiosk.service").read_text().replace("WatchdogSec=30", "WatchdogSec=soon")
    assert verify_unit(text, "kiosk.service", tmp_path) != []


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_kiosk_unit_is_a_watched_notify_service_with_device_access() -> None:
    s = unit_settings("kiosk.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"] and s["Restart"] == ["always"]
    # A configuration mistake (exit 2) is not restarted every few seconds for ever.
    assert s["RestartPreventExitStatus"] == ["2"]
    assert int(s["WatchdogSec"][0]) >= 10
    assert s["ExecStart"] == ["/opt/kiosk/.venv/bin/kiosk run --config /etc/kiosk/kiosk.toml"]
    assert s["User"] == ["kiosk"] and s["WorkingDirectory"] == ["/var/lib/kiosk"]
    assert set(s["SupplementaryGroups"][0].split()) >= {"video", "audio", "gpio", "render", "input"}
    env = " ".join(s["Environment"])
    assert (
        "SDL_VIDEODRIVER=kmsdrm" in env and "KIVY_WINDOW=sdl2" in env and "KIVY_HOME=/var/lib/kiosk/" in env
    )
    # Anything that narrows /dev would cut off cameras, sound or GPIO.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert key not in s, key


# ----------------------------------------------------------------------------- scripts/install-pi.sh

INSTALLER = ROOT / "scripts" / "install-pi.sh"


def install(root: Path, *options: str) -> str:
    result = subprocess.run(
        ["bash", str(INSTALLER), "--root", str(root), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def manifest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root: its type, mode, and content hash, link target, and mtime for files."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[key] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[key] = ("file", stat.S_IMODE(info.st_mode), digest, info.st_mtime_ns)
    return entries


def test_installer_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root, "--with-server")
    assert "nothing changed" not in first
    after_first = manifest(root)
    for path in (
        "opt/kiosk/docs",
        "etc/kiosk/kiosk.toml",
        "etc/kiosk/server.env",
        "etc/systemd/system/kiosk.service",
        "etc/systemd/system/kiosk-server.service",
        "usr/local/bin/kiosk",
        "var/lib/kiosk",
    ):
        assert path in after_first, path
    if shutil.which("systemctl"):  # `systemctl --root` enables offline, in the prefix
        assert "etc/systemd/system/multi-user.target.wants/kiosk.service" in after_first
    assert after_first["etc/kiosk/kiosk.toml"][1] == 0o640  # may hold the auth token
    assert after_first["etc/kiosk/server.env"][1] == 0o600
    assert (root / "etc/systemd/system/kiosk.service").read_text() == (
        ROOT / "systemd/kiosk.service"
    ).read_text()
    second = install(root, "--with-server")
    assert "nothing changed" in second, second
    assert manifest(root) == after_first


def test_installer_keeps_an_existing_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc/kiosk/kiosk.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[server]\nurl = "http://calls.example:8080"\n')
    install(root)
    assert config.read_text() == '[server]\nurl = "http://calls.example:8080"\n'
    assert "kept the existing /etc/kiosk/kiosk.toml" in install(root)


def test_installer_updates_what_changed_and_removes_stale_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    unit = root / "etc/systemd/system/kiosk.service"
    unit.write_text("# edited by hand\n")
    stale = root / "opt/kiosk/docs/old.md"
    stale.write_text("gone from the checkout\n")
    output = install(root)
    assert "installed /etc/systemd/system/kiosk.service" in output
    assert unit.read_text() == (ROOT / "systemd/kiosk.service").read_text()
    assert not stale.exists()


def test_installer_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    output = install(root, "--dry-run", "--with-server")
    assert "would install /etc/systemd/system/kiosk.service" in output
    assert "would enable kiosk.service" in output
    assert list(root.iterdir()) == []


def test_installer_on_the_real_root_plans_packages_users_and_venv(tmp_path: Path) -> None:
    """The live path, as a dry run: the queries it makes are answered by stand-ins on PATH (a machine
    with nothing installed, no kiosk user, and no picamera2 in its apt sources), and nothing changes."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    scripts = {
        "dpkg-query": "exit 1",  # nothing installed
        "apt-cache": 'case "$2" in python3-picamera2) echo "  Candidate: (none)";; *) echo "  Candidate: 1.0";; esac',
        "getent": "exit 2",  # no such user or group
        "id": "exit 1",
        "systemctl": "exit 1",  # nothing enabled
    }
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    before = {path: path.exists() for path in (Path("/opt/kiosk"), Path("/etc/kiosk"))}
    result = subprocess.run(
        ["bash", str(INSTALLER), "--dry-run", "--with-server"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "warning: python3-picamera2 is not available here" in out
    install_line = line_with(out, "would run: apt-get install ")
    assert "python3-lgpio" in install_line and "libsdl2-2.0-0" in install_line
    assert "python3-picamera2" not in install_line
    assert "would run: useradd --system --user-group --home-dir /var/lib/kiosk " in out
    assert "would run: groupadd --system gpio" in out
    assert "would run: usermod --append --groups video,audio,gpio,render,input kiosk" in out
    assert "would run: python3 -m venv --system-site-packages /opt/kiosk/.venv" in out
    assert "would install /etc/kiosk/kiosk.toml" in out
    assert "would enable kiosk.service" in out and "would enable kiosk-server.service" in out
    assert {path: path.exists() for path in before} == before


def line_with(text: str, fragment: str) -> str:
    found = [line for line in text.splitlines() if fragment in line]
    assert found, f"no line with {fragment!r} in:\n{text}"
    return found[0]


def test_the_kiosk_app_tells_systemd_it_is_ready_and_feeds_the_watchdog(
    notify_socket: NotifyListener, tmp_path: Path
) -> None:
    """`kiosk run` as kiosk.service starts it: READY once the screen is up, WATCHDOG from its loop."""
    import sys

    root = Path(__file__).resolve().parent.parent
    config = tmp_path / "kiosk.toml"
    text = (root / "config" / "emulated.toml").read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
    text = text.replace('url = "http://127.0.0.1:8080"', 'url = "http://127.0.0.1:18765"')
    text = text.replace('control_socket = "kiosk-control.sock"', 'control_socket = ""')
    text = text.replace('directory = "recordings"', f'directory = "{tmp_path / "recordings"}"')
    config.write_text(text)
    env = {
        **os.environ,
        "SDL_VIDEODRIVER": "offscreen",
        "KIVY_NO_ARGS": "1",
        "KIVY_HOME": str(tmp_path / "kivy"),
        "WATCHDOG_USEC": "400000",  # feed every 0.2 s
    }
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "run", "--config", str(config), "--duration", "4"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    deadline = time.monotonic() + 2
    while not notify_socket.messages("STOPPING=1") and time.monotonic() < deadline:
        time.sleep(0.05)
    ready = [at for at, message in notify_socket.received if message.startswith("READY=1")]
    feeds = notify_socket.messages("WATCHDOG=1")
    assert ready, notify_socket.received
    assert len(feeds) >= 8, f"{len(feeds)} feeds in a 4 s run at 0.2 s"
    assert notify_socket.messages("STOPPING=1")
