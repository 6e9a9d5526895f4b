"""Injectable time.

Everything time-dependent (expiry, sliding windows, rate limits, metrics) reads a `Clock`, so
tests advance a `ManualClock` instead of sleeping. `now()` is epoch seconds, so deadlines survive
a restart when they are persisted.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend until `now()` has advanced by `seconds`."""
        ...


class SystemClock:
    """Real time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Time that moves only when a test calls `advance`; sleepers wake when their time comes."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def step(self, seconds: float) -> None:
        """Jump the wall clock by `seconds`, either way, as an NTP step or an operator does.

        No time passes: sleepers wake after the duration they asked for, as `SystemClock`'s
        do (asyncio sleeps on the monotonic clock), so their deadlines move with the step.
        """
        self._now += seconds
        self._sleepers = [(due + seconds, order, f) for due, order, f in self._sleepers]

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
