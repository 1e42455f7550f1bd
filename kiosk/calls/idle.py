"""The idle timeout of the documents: a session ends by itself when its user has been alone in it
for the idle timeout period (180 s by default), with a warning IDLE_WARNING_SECONDS before the end.

`IdleTimer` counts while the session says it is alone (`update(alone=True)`), stops when someone is
there again, and starts over on `stay()` (the warning's "stay" answer). A period of at most the
warning's length warns at once, with what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

IDLE_WARNING_SECONDS = 60


class IdleTimer:
    def __init__(
        self,
        period: float,
        *,
        warn: Callable[[int], None],
        expire: Callable[[], None],
        warning_seconds: float = IDLE_WARNING_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,  # tests give a recording one
    ) -> None:
        self._sleep = sleep
        self.period = period
        self.warning_seconds = warning_seconds
        self._warn = warn
        self._expire = expire
        self._task: asyncio.Task[None] | None = None

    @property
    def counting(self) -> bool:
        return self._task is not None and not self._task.done()

    def update(self, alone: bool) -> None:
        """Count while alone; stop when not."""
        if alone and not self.counting:
            self._task = asyncio.ensure_future(self._countdown())
        elif not alone:
            self.cancel()

    def stay(self) -> None:
        """Start the count over, if it is counting."""
        if self.counting:
            self.cancel()
            self.update(alone=True)

    def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not _current_task():
            task.cancel()

    async def _countdown(self) -> None:
        warn_after = max(0.0, self.period - self.warning_seconds)
        await self._sleep(warn_after)
        self._warn(int(round(self.period - warn_after)))
        await self._sleep(self.period - warn_after)
        self._expire()


def _current_task() -> asyncio.Task[object] | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.current_task()
    return None
