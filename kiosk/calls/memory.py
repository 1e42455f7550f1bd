"""Giving memory back to the system after a call.

A call allocates tens of megabytes (codec contexts, frame buffers, aiortc's packet history) in many
small pieces. When it ends Python frees them, but glibc's malloc keeps freed pages for reuse, so the
process's resident memory stays at its in-call peak and each new call can raise it further before
it settles. A kiosk on a 1 GB Raspberry Pi runs for months; after each call it collects garbage and
asks malloc to return free pages (malloc_trim), which brings resident memory back to its idle level.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def return_freed_memory() -> float:
    """Collect garbage and hand free heap pages back to the system; returns the seconds it took."""
    started = time.perf_counter()
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    elapsed = time.perf_counter() - started
    log.debug("returned freed memory in %.1f ms", elapsed * 1000)
    return elapsed
