"""Admission pacing for writes that do not wait for their commit (`durable_ack=False`).

Why: unpaced, such writes return at once until the queue reaches its bound (`backlog_ops`);
there a write waits for its own commit, behind the whole backlog, so a few turns each stall
for a whole catch-up (a second or more) while every other turn waits nothing: a p99 hundreds
of times the p50. Pacing spreads the same waiting over every write while the writer is behind.
A write that finds more than `pacing_ops` queued waits until part of the queue ahead of it has
committed, a part that grows in proportion to the excess: none at `pacing_ops`, the whole
queue (its own commit, as at the bound) at `backlog_ops`. Under sustained overload each writer
then waits about as long as the others, about one round of everyone's writes, and the queue
settles a little above `pacing_ops` instead of filling to the bound and emptying in a stall.

Waits count committed ops, not time: the writer's own commits clock admission, so there is no
rate to estimate, and the policy is the same on a fast disk or a slow one and under any clock.
That clock ticks once a batch, so while writes are paced the writer takes batches of at most
`paced_batch_max` ops (writer.py): with batches of thousands of ops, a few hundred milliseconds
each, the queue swung across `pacing_ops` by a batch at a time, most writes waited for nothing
and the others for a whole batch (p99 hundreds of times p50 again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterator


class Pacer:
    """Holds paced writes until enough of the queue ahead of them has been through the writer.

    Positions are cumulative op counts kept by the writer: `taken` (ops handed to batches so
    far) when a write arrives, `done` (ops whose batch finished, committed or not) as batches
    end. Ops leave the queue in order, so a write that must see `need` queued ops through is
    released once `done` reaches `taken + need`.
    """

    def __init__(self, pacing_ops: int, backlog_ops: int) -> None:
        self.pacing_ops = pacing_ops
        self.backlog_ops = backlog_ops
        self.paced = 0  # writes held so far
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties in the heap go first come, first served

    def drain_needed(self, depth: int) -> int:
        """Queued ops that must be through the writer before a write that found `depth` ops
        queued may return: 0 up to `pacing_ops`, rising linearly to `backlog_ops` there."""
        excess = depth - self.pacing_ops
        if excess <= 0:
            return 0
        span = self.backlog_ops - self.pacing_ops
        return min(depth, -(-excess * self.backlog_ops // span))  # ceil(excess*backlog/span)

    def hold(
        self, loop: asyncio.AbstractEventLoop, taken: int, depth: int
    ) -> asyncio.Future[None] | None:
        """A future to await before returning, or None when the write need not wait."""
        need = self.drain_needed(depth)
        if need == 0:
            return None
        future = loop.create_future()
        heapq.heappush(self._waiting, (taken + need, next(self._order), future))
        self.paced += 1
        return future

    def release(self, done: int) -> Iterator[asyncio.Future[None]]:
        """The writes to let go now that their part of the queue is through (`done` ops so
        far), in the order they may go."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= done:
            yield heapq.heappop(waiting)[2]
