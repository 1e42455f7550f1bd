"""What the two measured processes of bench.memory share: RSS readings and the line protocol.

Kept free of kiosk and aiortc imports, so that importing it adds nothing to the bare baseline's
resident memory. The harness sends one JSON object per line on the process's stdin; the process
answers with one JSON object per line on its stdout (its logging goes to stderr).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, FPS = 640, 480, 30
FIRST_FRAME_TIMEOUT = 20.0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb(collect: bool = True) -> float:
    """VmRSS of this process in MB (2**20 bytes), after a full garbage collection if `collect`."""
    if collect:
        gc.collect()
    return _status_mb("VmRSS")


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def settled_reading() -> dict[str, Any]:
    """The growth reading: VmRSS after gc.collect() and glibc's malloc_trim(0).

    malloc keeps memory that was freed and gives it back to the system only now and then;
    malloc_trim gives the free pages back first, as gc.collect() frees garbage first, so what is
    read is what the process uses. (bench.memory also runs these processes with one malloc arena:
    memory parked in other threads' arenas is not given back by a trim in the main thread.) The
    untrimmed VmRSS, the peak VmRSS and malloc's in-use/free totals are reported too.
    """
    untrimmed = rss_mb(collect=True)
    libc = _libc()
    trimmed = False
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
        trimmed = True
    return {
        "rss_mb": rss_mb(collect=False),
        "rss_untrimmed_mb": untrimmed,
        "peak_rss_mb": _status_mb("VmHWM"),  # the highest VmRSS so far
        "trimmed": trimmed,
        "heap_mb": heap_mb(),
    }


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_mb() -> dict[str, float] | None:
    """glibc's malloc statistics over all arenas: bytes handed out (`in_use`, including mmapped
    blocks) and bytes free but kept by malloc (`free`), in MB; None without glibc's mallinfo2.

    Telling them apart tells a leak (in_use grows) from fragmentation (free grows, RSS with it).
    """
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "in_use": (info.uordblks + info.hblkhd) / 2**20,
        "free": info.fordblks / 2**20,
        "arena": info.arena / 2**20,
    }


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def command() -> dict[str, Any]:
    """The harness's next command; end of input counts as quit."""
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        return {"cmd": "quit"}
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"not a command: {line!r}")
    return message


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.005)


async def in_call_readings(count: int, interval: float) -> list[float]:
    """`count` RSS readings `interval` apart, without collecting: the call keeps running meanwhile."""
    readings = []
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        readings.append(rss_mb(collect=False))
    return readings


def run_child(serve: Coroutine[Any, Any, None]) -> int:
    """A benchmark child's main: run its command loop; a failure is reported to the parent, then raised."""
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        asyncio.run(serve)
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0
