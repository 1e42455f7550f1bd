"""The idle timeout on its own (kiosk/calls/idle.py): it counts while alone, warns the warning's length
before the end, stops when someone comes, starts over on stay()."""

from __future__ import annotations

import asyncio

from kiosk.calls.idle import IDLE_WARNING_SECONDS, IdleTimer


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[int] = []
        self.expired = 0

    def timer(self, period: float, warning: float) -> IdleTimer:
        return IdleTimer(period, warn=self.warnings.append, expire=self.expire, warning_seconds=warning)

    def expire(self) -> None:
        self.expired += 1


async def test_it_warns_then_expires_while_alone() -> None:
    seen = Recorder()
    timer = seen.timer(0.3, 0.2)
    timer.update(alone=True)
    await asyncio.sleep(0.15)
    assert seen.warnings == [0] and seen.expired == 0  # warned at period - warning (0.1 s): 0.2 s left
    await asyncio.sleep(0.25)
    assert seen.expired == 1 and not timer.counting


async def test_a_period_shorter_than_the_warning_warns_at_once_with_what_is_left() -> None:
    seen = Recorder()
    timer = seen.timer(2.0, 60.0)
    timer.update(alone=True)
    await asyncio.sleep(0.05)
    assert seen.warnings == [2]
    timer.cancel()


async def test_company_stops_it_and_nothing_fires() -> None:
    seen = Recorder()
    timer = seen.timer(0.2, 0.1)
    timer.update(alone=True)
    await asyncio.sleep(0.05)
    timer.update(alone=False)
    assert not timer.counting
    await asyncio.sleep(0.3)
    assert seen.warnings == [] and seen.expired == 0


async def test_stay_starts_the_count_over() -> None:
    seen = Recorder()
    timer = seen.timer(0.3, 0.1)
    timer.update(alone=True)
    await asyncio.sleep(0.2)
    timer.stay()  # 0.1 s before the end: a new full period from now
    await asyncio.sleep(0.2)
    assert seen.expired == 0 and timer.counting
    await asyncio.sleep(0.2)
    assert seen.expired == 1


async def test_stay_while_not_counting_does_not_start_it() -> None:
    seen = Recorder()
    timer = seen.timer(0.1, 0.05)
    timer.stay()
    assert not timer.counting
    await asyncio.sleep(0.15)
    assert seen.expired == 0


async def test_a_period_over_the_warning_is_split_into_period_less_warning_then_the_warning() -> None:
    # The documents: 180 s by default, the warning 60 s before: waits of 120 s and 60 s, and the
    # warning says 60. The waits are recorded, not waited.
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    seen = Recorder()
    timer = IdleTimer(180, warn=seen.warnings.append, expire=seen.expire, sleep=record)
    timer.update(alone=True)
    for _ in range(5):
        await asyncio.sleep(0)
    assert IDLE_WARNING_SECONDS == 60
    assert waits == [120, 60] and seen.warnings == [60] and seen.expired == 1
