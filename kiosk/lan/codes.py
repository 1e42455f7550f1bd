"""The building host's pairing code: six digits, one at a time, valid a few minutes, good for one
pairing, void after a few wrong tries (a new one is needed then).

Kept in `<data_dir>/lan/pairing-code.json` (0600) under a file lock, so that `kiosk pair-code`, a
separate process on the host, makes codes the running server accepts, and the host's own screen
shows the same one. Wall-clock times, for the same reason.

Synchronous (file access): from the event loop, call it through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kiosk.lan import LAN_DIR

CODE_DIGITS = 6
CODE_TTL = 300.0  # seconds
CODE_ATTEMPTS = 5  # wrong tries before the code is void
CODE_FILE = "pairing-code.json"
_LOCK_FILE = "pairing.lock"
_CODE_PATTERN = re.compile(rf"^[0-9]{{{CODE_DIGITS}}}$")


def is_code_shaped(text: str) -> bool:
    return bool(_CODE_PATTERN.match(text))


def show_code(code: str) -> str:
    """Read aloud or copied from a screen: "482 913"."""
    half = len(code) // 2
    return f"{code[:half]} {code[half:]}"


@dataclass(frozen=True)
class PairingCode:
    code: str
    expires_at: float  # seconds since the epoch
    attempts_left: int

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class Verdict(Enum):
    ACCEPTED = "accepted"  # the current code: pair, then `use()` it
    WRONG = "wrong"  # counted against the code
    NO_CODE = "no code"  # none is valid (never made, expired, used, or too many wrong tries)


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    attempts_left: int = 0


class PairingCodes:
    """The current pairing code of one host (its data directory)."""

    def __init__(
        self,
        data_dir: Path,
        ttl: float = CODE_TTL,
        attempts: int = CODE_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(data_dir) / LAN_DIR
        self.path = self.directory / CODE_FILE
        self.ttl = ttl
        self.attempts = attempts
        self._clock = clock

    def new_code(self) -> PairingCode:
        """A fresh code; the previous one, if any, stops working."""
        with self._locked():
            return self._fresh()

    def current(self) -> PairingCode | None:
        """The code valid now, if any."""
        with self._locked():
            return self._read()

    def current_or_new(self) -> PairingCode:
        """What the host's screen shows: the valid code, or a fresh one."""
        with self._locked():
            return self._read() or self._fresh()

    def check(self, presented: str) -> CheckResult:
        """Whether `presented` is the valid code. A wrong one is counted; the last allowed wrong one
        voids the code. The right one stays valid until `use()`, so that a pairing that fails for
        another reason (a uid taken) can be tried again with it."""
        with self._locked():
            code = self._read()
            if code is None:
                return CheckResult(Verdict.NO_CODE)
            if hmac.compare_digest(code.code.encode(), presented.encode()):
                return CheckResult(Verdict.ACCEPTED, code.attempts_left)
            left = code.attempts_left - 1
            if left <= 0:
                self.path.unlink(missing_ok=True)
            else:
                self._write(PairingCode(code.code, code.expires_at, left))
            return CheckResult(Verdict.WRONG, max(left, 0))

    def use(self, presented: str) -> bool:
        """The pairing with `presented` is done: the code is spent. False if it was no longer the
        valid code (replaced meanwhile)."""
        with self._locked():
            code = self._read()
            if code is None or not hmac.compare_digest(code.code.encode(), presented.encode()):
                return False
            self.path.unlink(missing_ok=True)
            return True

    # ------------------------------------------------------------------ the file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.directory / _LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._give_to_owner(lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _fresh(self) -> PairingCode:
        code = PairingCode(
            f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}", self._clock() + self.ttl, self.attempts
        )
        self._write(code)
        return code

    def _read(self) -> PairingCode | None:
        try:
            data = json.loads(self.path.read_text())
            code = PairingCode(str(data["code"]), float(data["expiresAt"]), int(data["attemptsLeft"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.path.unlink(missing_ok=True)  # unreadable: no valid code, a new one replaces it
            return None
        if code.expires_at <= self._clock() or code.attempts_left <= 0 or not is_code_shaped(code.code):
            self.path.unlink(missing_ok=True)
            return None
        return code

    def _write(self, code: PairingCode) -> None:
        data = {"code": code.code, "expiresAt": code.expires_at, "attemptsLeft": code.attempts_left}
        tmp = self.path.with_name(f".{CODE_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data))
        self._give_to_owner(tmp)
        os.replace(tmp, self.path)

    def _give_to_owner(self, path: Path) -> None:
        """`kiosk pair-code` run as root must leave files the kiosk's own user (which owns the data
        directory) can still read and replace."""
        if os.geteuid() != 0:
            return
        owner = os.stat(self.directory)
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)
