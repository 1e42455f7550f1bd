"""Debian's Janus (VideoRoom plugin, HTTP transport) for tests, from a generated configuration.

`JanusServer(tmp_dir)` writes a configs folder holding only what the kiosk uses: the VideoRoom plugin,
the plain HTTP transport bound to 127.0.0.1 on a free port, no admin API, no event handlers or loggers,
a small RTP port range, ICE gathering on one local address only, and runs `janus -F <configs>`;
`start()` waits until `GET /janus/info` answers. It is a context manager, and `running_janus(tmp_path)`
is the body of a pytest fixture. Janus missing is a failure with a clear message, not a skip:
scripts/setup.sh --tests installs it.

ICE cannot run on loopback here: libnice (Janus) skips loopback interfaces even when
`ice_enforce_list` names "lo" or 127.0.0.1, and aioice never offers 127.0.0.1 either. So Janus gathers
on the host's first non-loopback IPv4 address only (`ice_address`), and the aiortc side of a test
calls `restrict_host_addresses([janus.ice_address])` so both offer exactly that address; the media
never leaves the host.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Debian's multiarch library folder; the janus binary knows its own, but a generated janus.jcfg must name it.
JANUS_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu/janus",
    "/usr/lib/aarch64-linux-gnu/janus",
    "/usr/lib/arm-linux-gnueabihf/janus",
    "/usr/lib/janus",
)
START_TIMEOUT = 15.0
VIDEOROOM_ADMIN_KEY = "test-videoroom-admin-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_udp_range(size: int) -> tuple[int, int]:
    """A start port whose next `size` UDP ports are free now (a test's Janus uses a few of them)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            start = int(s.getsockname()[1])
        if start + size >= 65535:
            continue
        ok = True
        for port in range(start, start + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + size - 1
    raise RuntimeError("no free UDP port range for Janus")


def host_ice_address() -> str:
    """The first non-loopback IPv4 address of this host, as aioice finds it."""
    import aioice.ice

    from kiosk.calls.ice import _original

    addresses = [a for a in _original(use_ipv4=True, use_ipv6=False) if not a.startswith("127.")]
    if not addresses:
        raise AssertionError("Janus needs a non-loopback IPv4 address for ICE; this host has none")
    assert aioice.ice  # the discovery used is aioice's own, whatever a test restricted it to
    return addresses[0]


def janus_lib_dir() -> Path:
    for folder in JANUS_LIB_DIRS:
        if (Path(folder) / "plugins" / "libjanus_videoroom.so").exists():
            return Path(folder)
    raise AssertionError(
        "Janus is not installed (no libjanus_videoroom.so): run scripts/setup.sh --tests, or apt-get install janus"
    )


class JanusServer:
    """One private Janus process; `url` is its HTTP API root (http://127.0.0.1:<port>/janus)."""

    def __init__(self, tmp_dir: Path, *, admin_key: str | None = VIDEOROOM_ADMIN_KEY, debug_level: int = 2):
        binary = shutil.which("janus")
        if binary is None:
            raise AssertionError(
                "`janus` is not installed: run scripts/setup.sh --tests (it installs Debian's janus), "
                "or apt-get install janus"
            )
        self.binary = binary
        self.lib = janus_lib_dir()
        self.dir = Path(tmp_dir) / "janus"
        self.admin_key = admin_key
        self.debug_level = debug_level
        self.port = 0
        self.rtp_range = (0, 0)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "janus.log"
        self.ice_address = host_ice_address()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    def command(self) -> list[str]:
        return [self.binary, "-F", str(self.dir / "conf"), "-d", str(self.debug_level), "-o", "-N",
                "-L", str(self.log_path)]  # fmt: skip

    def _write_config(self) -> None:
        conf = self.dir / "conf"
        plugins, transports, empty = self.dir / "plugins", self.dir / "transports", self.dir / "empty"
        for folder in (conf, plugins, transports, empty):
            folder.mkdir(parents=True, exist_ok=True)
        # Only the two modules the kiosk uses: Janus loads every library of its folders.
        for folder, name in ((plugins, "libjanus_videoroom.so"), (transports, "libjanus_http.so")):
            link = folder / name
            if not link.exists():
                link.symlink_to(self.lib / folder.name / name)
        self.port = _free_port()
        self.rtp_range = _free_udp_range(200)
        (conf / "janus.jcfg").write_text(
            "general: {\n"
            f'  configs_folder = "{conf}"\n'
            f'  plugins_folder = "{plugins}"\n'
            f'  transports_folder = "{transports}"\n'
            f'  events_folder = "{empty}"\n'
            f'  loggers_folder = "{empty}"\n'
            f"  debug_level = {self.debug_level}\n"
            "  session_timeout = 60\n"
            '  server_name = "kiosk-test-janus"\n'
            "}\n"
            "certificates: {}\n"
            "media: {\n"
            f'  rtp_port_range = "{self.rtp_range[0]}-{self.rtp_range[1]}"\n'
            "}\n"
            "nat: {\n"
            "  nice_debug = false\n"
            "  full_trickle = false\n"
            "  ignore_mdns = true\n"
            f'  ice_enforce_list = "{self.ice_address}"\n'
            "}\n"
            "plugins: {}\n"
            "transports: {}\n"
            "events: { broadcast = false }\n"
            "loggers: {}\n"
        )
        (conf / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '  json = "plain"\n'
            '  base_path = "/janus"\n'
            "  http = true\n"
            f"  port = {self.port}\n"
            '  ip = "127.0.0.1"\n'
            "  https = false\n"
            "}\n"
            "admin: { admin_http = false\n admin_https = false }\n"
            "cors: {}\n"
        )
        key = f'  admin_key = "{self.admin_key}"\n' if self.admin_key else ""
        (conf / "janus.plugin.videoroom.jcfg").write_text(f"general: {{\n{key}  events = false\n}}\n")

    def info(self, timeout: float = 1.0) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/info", timeout=timeout) as response:
            return dict(json.loads(response.read()))

    def start(self) -> JanusServer:
        self._write_config()
        return self._launch()

    def restart(self) -> JanusServer:
        """Stop and start again on the same port and configuration: everything in Janus's memory
        (sessions, rooms) is gone, as after a real restart."""
        self.stop()
        return self._launch()

    def _launch(self) -> JanusServer:
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"janus exited with {self.process.returncode} at start:\n{self.log_tail()}"
                )
            try:
                info = self.info()
                if "janus.plugin.videoroom" in info.get("plugins", {}):
                    return self
                raise AssertionError(f"janus runs without the VideoRoom plugin:\n{self.log_tail()}")
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"janus did not answer /janus/info in {START_TIMEOUT} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # Janus's clean shutdown
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def __enter__(self) -> JanusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_janus(tmp_dir: Path, **options: Any) -> Iterator[JanusServer]:
    """A started Janus, stopped on exit (the body of a pytest fixture: `with running_janus(tmp_path) as j`)."""
    server = JanusServer(tmp_dir, **options)
    with server:
        yield server


def janus_pids() -> list[int]:
    """Process ids of every running janus (for checks that a test left none behind)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "janus":
                    out.append(int(entry.name))
    return out


__all__ = ["JanusServer", "running_janus", "janus_pids", "VIDEOROOM_ADMIN_KEY"]
