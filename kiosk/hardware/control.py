"""The buttons without a Pi: the same controller actions from the keyboard or a local control socket.

`ControlServer` listens on a Unix socket for one command per line and answers one line each:
"ok", "error: <why>", or for `state` the kiosk's state as JSON. Commands: mute, video, end, end_hold,
answer, reject, audio_mode, volume_up, volume_down, door, call <uid>, state. Try it with
`socat - UNIX-CONNECT:<path>`.

`KeyboardControl` reads single keys from the terminal (stdin in cbreak mode, restored on close):
m mute, v video, e end press, E end hold, a audio mode, y answer, n reject, c call the contact,
o open the door (of the door kiosk in the call).

Both run on the asyncio loop and never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import stat
import sys
import termios
import tty
from pathlib import Path
from typing import Any, TextIO

from kiosk.controller import KioskController, KioskState
from kiosk.hardware.buttons import HardwareError

log = logging.getLogger(__name__)

_SIMPLE_COMMANDS = (
    "mute",
    "video",
    "end",
    "end_hold",
    "answer",
    "reject",
    "audio_mode",
    "volume_up",
    "volume_down",
    "door",
)
COMMANDS = (*_SIMPLE_COMMANDS, "call <uid>", "state")
KEYS = {
    "m": "mute",
    "v": "video",
    "e": "end",
    "E": "end_hold",
    "a": "audio_mode",
    "y": "answer",
    "n": "reject",
    "c": "call",
    "+": "volume_up",
    "=": "volume_up",  # + without shift
    "-": "volume_down",
    "o": "door",  # open the door of the door kiosk in the call
}
_MAX_LINE = 1024


def state_as_json(state: KioskState) -> str:
    """The state a screen would show, as one line of JSON."""
    return json.dumps(
        {
            "phase": state.phase.value,
            "peer_name": state.peer_name,
            "session_id": state.call.session_id if state.call is not None else None,
            "muted": state.muted,
            "video_paused": state.video_paused,
            "audio_mode": state.audio_mode,
            "volume": state.volume,
            "message": state.message,
        }
    )


class _Commands:
    """Command words to controller actions, shared by the socket and the keyboard."""

    def __init__(
        self, controller: KioskController, contact: str, press_answers: bool, hold_rejects: bool
    ) -> None:
        self.controller = controller
        self.contact = contact
        self.press_answers = press_answers
        self.hold_rejects = hold_rejects

    def start(self, word: str, argument: str = "") -> Any:
        """Start the action; returns what the controller returned (a task for the slower ones).
        Raises ValueError for a command that does not exist or is incomplete."""
        if word == "call":
            uid = argument or self.contact
            if not uid:
                raise ValueError("call needs a uid: call <uid>")
            return self.controller.dispatch(f"call:{uid}")
        if word not in _SIMPLE_COMMANDS:
            raise ValueError(f"unknown command {word!r} (commands: {', '.join(COMMANDS)})")
        if argument:
            raise ValueError(f"{word} takes no argument")
        # dispatch hands its options to the one action, so each gets only its own.
        options: dict[str, bool] = {}
        if word == "end":
            options["press_answers"] = self.press_answers
        elif word == "end_hold":
            options["hold_rejects"] = self.hold_rejects
        return self.controller.dispatch(word, **options)


class ControlServer:
    """A Unix socket taking one command per line; `await start()`, `await close()`."""

    def __init__(
        self,
        controller: KioskController,
        path: str | Path,
        *,
        contact: str = "",
        press_answers: bool = True,
        hold_rejects: bool = True,
    ) -> None:
        self.controller = controller
        self.path = Path(path)
        self._commands = _Commands(controller, contact, press_answers, hold_rejects)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        await self._clear_stale_socket()
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=_MAX_LINE)
        except OSError as exc:
            raise HardwareError(f"emulation.control_socket: cannot listen on {self.path}: {exc}") from None
        # Whoever can connect can answer and end calls: owner only.
        os.chmod(self.path, 0o600)
        log.info("control socket listening on %s", self.path)

    async def _clear_stale_socket(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise HardwareError(f"emulation.control_socket: {self.path} exists and is not a socket")
        try:
            _, writer = await asyncio.open_unix_connection(self.path)
        except OSError:
            self.path.unlink(missing_ok=True)  # left by a kiosk that is gone
            return
        writer.close()
        raise HardwareError(f"emulation.control_socket: {self.path} is in use by another running kiosk")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # longer than the limit
                    writer.write(b"error: line too long\n")
                    break
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                reply = await self.execute(line)
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def execute(self, line: str) -> str:
        """Run one command line; the reply line (without its newline)."""
        word, _, argument = line.strip().partition(" ")
        if word == "state":
            return state_as_json(self.controller.state)
        before = self.controller.state.message
        try:
            result = self._commands.start(word, argument.strip())
            if inspect.isawaitable(result):
                await result  # reply once the action has run, so "state" right after shows its effect
        except ValueError as exc:
            return f"error: {exc}"
        except Exception as exc:  # the socket must keep serving
            log.exception("control command %r failed", line)
            return f"error: {exc}"
        message = self.controller.state.message
        # The controller turns failures into a "Could not ..." message instead of raising.
        if message != before and message.startswith("Could not"):
            return f"error: {message}"
        return "ok"

    async def close(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        self.path.unlink(missing_ok=True)


class KeyboardControl:
    """Single keys from a terminal on stdin drive the controller. `start()` returns False (and does
    nothing) when stdin is not a terminal, e.g. under systemd."""

    def __init__(
        self,
        controller: KioskController,
        *,
        contact: str = "",
        press_answers: bool = True,
        hold_rejects: bool = True,
        stdin: TextIO | None = None,
    ) -> None:
        self.controller = controller
        self.stdin = stdin if stdin is not None else sys.stdin
        self._commands = _Commands(controller, contact, press_answers, hold_rejects)
        self._fd: int | None = None
        self._saved: list[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Put the terminal in cbreak mode and read keys on the running loop."""
        try:
            fd = self.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return False
        if not os.isatty(fd):
            return False
        self._loop = asyncio.get_running_loop()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # a key arrives without Enter and is not echoed; Ctrl-C still interrupts
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        log.info(
            "keys: m mute, v video, e end, E end (hold), a audio mode, y answer, n reject, o open the door, "
            "c call %s",
            self._commands.contact or "(no contact configured)",
        )
        return True

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self._stop_reading()
            return
        for key in data.decode("utf-8", "replace"):
            self.press(key)

    def press(self, key: str) -> None:
        """What a key does (also callable directly, e.g. from a UI's key handler)."""
        word = KEYS.get(key)
        if word is None:
            return
        log.info("key %s: %s", key, word)
        try:
            self._commands.start(word)
        except Exception as exc:
            log.warning("key %s: %s", key, exc)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)

    def close(self) -> None:
        """Stop reading and give the terminal back as it was."""
        self._stop_reading()
        if self._fd is not None and self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        self._fd = self._saved = self._loop = None
