"""UDP sockets read dry at each wakeup of the loop.

asyncio's selector loop reads one datagram per socket per loop iteration (`_SelectorDatagramTransport.
_read_ready` calls `recvfrom` once). Every ICE socket of a call is such a transport, and on a kiosk the
loop also renders the UI, ticks each participant's audio playout and runs the signaling, so an
iteration can take 10-30 ms. A feed whose packets come faster than the loop turns (a 640x480 picture
is 100-200 packets a second, its audio 50 more on the same socket) then queues in the kernel's
receive buffer: its delay grows by seconds, and a muted talker is heard long after the mute, until
the buffer overflows and drops. Reading every waiting datagram (up to a bound, so one flooded socket
cannot starve the loop) keeps each socket's queue as short as the loop's slowest turn.

`read_datagrams_dry()` replaces the method on the class, once per process, before the first
transport is made (each transport registers its bound `_read_ready` when it is created). On a loop
without that transport (uvloop reads its sockets in batches already) it does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# At most this many datagrams per socket per wakeup: at 200 packets a second, a 300 ms turn of the loop.
DATAGRAMS_PER_WAKEUP = 64

_applied = False
_stock: Callable[[Any], None] | None = None  # asyncio's own method, kept for the benchmark's baseline


def read_datagrams_dry() -> bool:
    """Make asyncio's UDP transports read every waiting datagram per wakeup; whether it is in place."""
    global _applied, _stock
    if _applied:
        return True
    transport = _transport_class()
    if transport is None or not callable(getattr(transport, "_read_ready", None)):
        log.debug("this Python's asyncio has no selector datagram reader: UDP reads left as they are")
        return False
    _stock = transport._read_ready
    transport._read_ready = _read_ready_dry
    _applied = True
    return True


def stock_read_ready() -> Callable[[Any], None] | None:
    """asyncio's one-datagram reader (bench/udp_wakeup.py compares with it); None without one."""
    if _stock is not None:
        return _stock
    return getattr(_transport_class(), "_read_ready", None)


def _transport_class() -> Any:
    """asyncio's private datagram transport of the selector loop, or None in a Python without it."""
    try:
        from asyncio import selector_events
    except ImportError:
        return None
    return getattr(selector_events, "_SelectorDatagramTransport", None)


def _read_ready_dry(self: Any) -> None:
    """`_SelectorDatagramTransport._read_ready`, looped until the socket has nothing more to give."""
    for _ in range(DATAGRAMS_PER_WAKEUP):
        if self._conn_lost:
            return
        try:
            data, address = self._sock.recvfrom(self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
            return
        self._protocol.datagram_received(data, address)
