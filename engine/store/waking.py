"""Settling the writer's waiters a share per event-loop iteration.

Why: a finished batch can hold hundreds of writes, and a paced release as many. Settled all at
once, their tasks all resume in the loop's next iteration, one after another, and a timer,
a new request or a quiet user's turn that became ready meanwhile waits for all of them: at
10,000 users the loop's iterations ran 40-100 ms (`benchmarks/loop_lag.py`). Settled
`PER_ITERATION` at a time, in order, whatever else is ready runs between two shares. The
first share is settled at once, so a small batch costs no extra trip through the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

PER_ITERATION = 16  # a share: resumed turns take ~0.1-0.5 ms each, so a few ms an iteration

Outcome = tuple[asyncio.Future[Any], BaseException | None]  # None: the write succeeded


class Waker:
    """Settles futures in the order given, at most `per_iteration` per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_iteration: int = PER_ITERATION) -> None:
        self._loop = loop
        self._per_iteration = per_iteration
        self._due: deque[Outcome] = deque()
        self._scheduled = False

    @property
    def settling(self) -> bool:
        """Shares are still waiting for their iteration."""
        return bool(self._due)

    def settle(self, outcomes: Iterable[Outcome]) -> None:
        """Settle each future with None or its exception: the first share now, unless shares
        are already waiting their turn, the rest in the next iterations."""
        self._due.extend(outcomes)
        if not self._scheduled:
            self._settle_some()

    def _settle_some(self) -> None:
        self._scheduled = False
        due = self._due
        for _ in range(min(self._per_iteration, len(due))):
            future, error = due.popleft()
            if future.done():  # its waiter was cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if due:
            self._scheduled = True
            self._loop.call_soon(self._settle_some)
