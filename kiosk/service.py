"""Talking to systemd: readiness, status, and the watchdog, with no dependency beyond the standard library.

systemd starts a `Type=notify` unit and passes `$NOTIFY_SOCKET`, a Unix datagram socket (a path, or
an abstract-namespace name written with a leading "@"). A service says `READY=1` when it is up,
`STATUS=...` for `systemctl status`, `STOPPING=1` when it shuts down, and with `WatchdogSec=` it must
send `WATCHDOG=1` more often than `$WATCHDOG_USEC`, or systemd kills and restarts it.

The watchdog is fed by a task on the asyncio loop, not by a thread: a thread would keep feeding while
the loop (the whole app: UI, calls, buttons) is stuck, which is exactly when a restart is wanted.

    from kiosk import service

    service.start_watchdog()   # on the loop, early in start-up
    service.ready()            # once the screen is up
    ...
    service.stopping()

Every function is a no-op returning False/None when not run by systemd (no $NOTIFY_SOCKET), so the
same code runs from a terminal and in tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _address(value: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: the address starts with a NUL byte and has no file.
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(state: str) -> bool:
    """Send one sd_notify message (e.g. "READY=1"); True if it was sent, False when not under systemd
    or when the socket is gone (a failed notification must never take the kiosk down)."""
    target = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not target or target[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), _address(target))
    except OSError as exc:
        log.debug("sd_notify %r to %s failed: %s", state, target, exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Start-up is complete: systemd moves the unit from "activating" to "active"."""
    return notify("READY=1" if status_text is None else f"READY=1\nSTATUS={status_text}")


def stopping() -> bool:
    """The service is shutting down on its own (systemctl shows "deactivating")."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line state shown by `systemctl status` (e.g. "in a call with Reception")."""
    return notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Seconds between feeds (half of $WATCHDOG_USEC, as sd_watchdog_enabled advises), or None when the
    watchdog is off or meant for another process ($WATCHDOG_PID names a different pid)."""
    pid = os.environ.get(WATCHDOG_PID_ENV)
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    if usec <= 0 or not os.environ.get(NOTIFY_SOCKET_ENV):
        return None
    return usec / 2_000_000


async def _feed(interval: float) -> None:
    due = time.monotonic()
    while True:
        notify("WATCHDOG=1")
        late = time.monotonic() - due
        if late > interval:  # the loop was blocked: say so in the journal before systemd acts on it
            log.warning("event loop was blocked for %.1f s (watchdog interval %.1f s)", late, interval)
        due = time.monotonic() + interval
        await asyncio.sleep(interval)


def start_watchdog(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[None] | None:
    """Feed systemd's watchdog from `loop` (default: the running loop) until the task is cancelled.

    Call it on the loop's own thread. Returns the task, or None when systemd asked for no watchdog.
    Keep a reference to the task (asyncio holds only a weak one).
    """
    interval = watchdog_interval()
    if interval is None:
        return None
    if loop is None:
        loop = asyncio.get_running_loop()
    log.info("feeding the systemd watchdog every %.1f s", interval)
    return loop.create_task(_feed(interval), name="systemd-watchdog")
