"""Starting at most a share of turns per event-loop iteration.

Why: asyncio runs every callback that is ready in one iteration. Turns arrive together (a
socket read of many requests, the think timers of many users expiring while the loop was
busy), and each runs a few hundred microseconds before its first real wait, so under load an
iteration started a hundred turns and every timer, health check, console frame and quiet
user's I/O waited behind all of them: the loop lagged by 40-100 ms at 10,000 users
(`benchmarks/loop_lag.py`), and the longer an iteration, the more turns were ready for the
next one. Through the gate at most `per_iteration` turns start an iteration, first come first
served; the rest wait a loop iteration or a few. While nothing waits it costs a counter.

The wait is not hidden: `waited_s()` is how long the oldest waiting turn has waited, and the
overload probe counts it as loop lag (engine/overload.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

PER_ITERATION = 16  # turns started an iteration: ~5-10 ms of turn work on this project's machines


class TurnStartGate:
    """At most `per_iteration` turns start per loop iteration, the rest wait in order (not the
    cluster's `TurnGate`, which checks a turn's limits)."""

    def __init__(self, per_iteration: int = PER_ITERATION) -> None:
        if per_iteration < 1:
            raise ValueError("per_iteration must be >= 1")
        self._per_iteration = per_iteration
        self._started = 0  # turns started since the last round began
        self._waiting: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._round_scheduled = False
        self.waits = 0  # turns that waited for a later iteration, so far

    def enter(self) -> asyncio.Future[None] | None:
        """None: start now. Otherwise a future to await first (cancelling it is fine)."""
        if self._started < self._per_iteration and not self._waiting:
            self._started += 1
            self._schedule_round()
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((time.perf_counter(), future))
        self.waits += 1
        self._schedule_round()
        return future

    def waited_s(self) -> float:
        """How long the oldest turn still waiting has waited (0.0: none waits)."""
        waiting = self._waiting
        while waiting and waiting[0][1].done():  # cancelled meanwhile
            waiting.popleft()
        return time.perf_counter() - waiting[0][0] if waiting else 0.0

    def _schedule_round(self) -> None:
        if not self._round_scheduled:
            self._round_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_round)

    def _next_round(self) -> None:
        """A new iteration: let the next share of waiting turns start."""
        self._round_scheduled = False
        self._started = 0
        waiting = self._waiting
        while waiting and self._started < self._per_iteration:
            future = waiting.popleft()[1]
            if not future.done():
                future.set_result(None)
                self._started += 1
        if waiting or self._started:
            self._schedule_round()
