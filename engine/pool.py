"""A pool of praisonaiagents Agents for one agent type on one worker lane.

Waiters queue per user and are served round-robin across users, so one user with many sessions
cannot starve the others (a single FIFO would let them). A user who held no agent when it began
waiting is served before that round: a quiet user's one turn waits for the next free agent, not
for a turn of every busy user's (issue 15: behind 30 users sending as fast as they were let, a
quiet user's turn waited 0.4 s at the median for an agent). A per-user cap bounds how many agents
one user holds at once. An agent is reset and checked on release; one that fails the check or
keeps failing calls is replaced rather than offered again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.agents import AgentSpec, is_pristine, reset_agent
from engine.clock import Clock
from engine.errors import PoolTimeout

FAILURES_BEFORE_REPLACEMENT = 3


@dataclass(slots=True, eq=False)
class PooledAgent:
    """An Agent with its own model adapter: one call in flight per agent, one outcome slot."""

    agent: Any
    model: Any
    idle_since: float = 0.0
    consecutive_failures: int = 0
    turns: int = 0


@dataclass(frozen=True, slots=True)
class PoolView:
    agent_type: str
    worker: str
    in_use: int
    idle: int
    waiting: int
    max_size: int
    min_size: int
    created: int
    replaced: int
    reaped: int
    timeouts: int


@dataclass(slots=True, eq=False)
class _Waiter:
    user_id: str
    future: asyncio.Future[PooledAgent]


class AgentPool:
    def __init__(
        self,
        spec: AgentSpec,
        worker: str,
        factory: Callable[[AgentSpec], PooledAgent],
        clock: Clock,
        *,
        per_user_cap: int,
    ) -> None:
        self.spec = spec
        self.worker = worker
        self._factory = factory
        self._clock = clock
        self.per_user_cap = per_user_cap
        self._idle: deque[PooledAgent] = deque()  # right end = most recently used
        self._in_use = 0
        self._held: dict[str, int] = {}  # user -> agents held now
        self._queues: dict[str, deque[_Waiter]] = {}
        # Users with waiters, next served first: those who held no agent when they began
        # waiting (in arrival order), then the others in turn.
        self._first: deque[str] = deque()
        self._turn_order: deque[str] = deque()
        self._waiting = 0
        self.created = self.replaced = self.reaped = self.timeouts = 0

    @property
    def size(self) -> int:
        return self._in_use + len(self._idle)

    def prewarm(self) -> None:
        while self.size < self.spec.min_instances:
            self._idle.append(self._create())

    async def acquire(self, user_id: str, timeout_s: float) -> PooledAgent:
        """An agent for this user, waiting fairly up to `timeout_s`; PoolTimeout after that."""
        if self._held.get(user_id, 0) < self.per_user_cap and not self._queues.get(user_id):
            agent = self._take()
            if agent is not None:
                self._hand_to(user_id)
                return agent
        loop = asyncio.get_running_loop()
        waiter = _Waiter(user_id, loop.create_future())
        queue = self._queues.get(user_id)
        if queue is None:
            queue = self._queues[user_id] = deque()
            (self._turn_order if self._held.get(user_id) else self._first).append(user_id)
        queue.append(waiter)
        self._waiting += 1
        started = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                # An agent was handed over just as the wait ended: give it straight back.
                self.release(waiter.future.result(), user_id, failed=False)
            else:
                waiter.future.cancel()
                self._forget_waiter(waiter)
            if isinstance(exc, TimeoutError):
                self.timeouts += 1
                raise PoolTimeout(self.spec.name, loop.time() - started) from None
            raise

    def release(self, pooled: PooledAgent, user_id: str, *, failed: bool) -> None:
        """Return an agent after a turn: reset, verify, replace if broken, serve the next user."""
        self._in_use -= 1
        held = self._held.get(user_id, 0) - 1
        if held > 0:
            self._held[user_id] = held
        else:
            self._held.pop(user_id, None)
        pooled.consecutive_failures = pooled.consecutive_failures + 1 if failed else 0
        reset_agent(pooled.agent)
        if not is_pristine(pooled.agent) or (
            pooled.consecutive_failures >= FAILURES_BEFORE_REPLACEMENT
        ):
            self.replaced += 1
            pooled = self._create()
        pooled.idle_since = self._clock.now()
        self._idle.append(pooled)
        self._dispatch()

    def reap(self, now: float) -> int:
        """Drop agents idle past the type's idle timeout, keeping at least min_instances."""
        dropped = 0
        cutoff = now - self.spec.idle_timeout_s
        while self._idle and self.size > self.spec.min_instances:
            if self._idle[0].idle_since > cutoff:
                break
            self._idle.popleft()
            dropped += 1
        self.reaped += dropped
        return dropped

    def view(self) -> PoolView:
        return PoolView(
            agent_type=self.spec.name,
            worker=self.worker,
            in_use=self._in_use,
            idle=len(self._idle),
            waiting=self._waiting,
            max_size=self.spec.max_instances,
            min_size=self.spec.min_instances,
            created=self.created,
            replaced=self.replaced,
            reaped=self.reaped,
            timeouts=self.timeouts,
        )

    # -- internals -------------------------------------------------------------------------------
    def _create(self) -> PooledAgent:
        self.created += 1
        return self._factory(self.spec)

    def _take(self) -> PooledAgent | None:
        if self._idle:
            return self._idle.pop()
        if self.size < self.spec.max_instances:
            return self._create()
        return None

    def _hand_to(self, user_id: str) -> None:
        self._in_use += 1
        self._held[user_id] = self._held.get(user_id, 0) + 1

    def _dispatch(self) -> None:
        """Serve waiting users while agents are free, those who held none first, then the rest
        in turn; skip users at their cap. A user served who still waits goes to the back."""
        for order in (self._first, self._turn_order):
            for _ in range(len(order)):
                if not self._idle and self.size >= self.spec.max_instances:
                    return
                user_id = order.popleft()
                queue = self._queues[user_id]
                if self._held.get(user_id, 0) >= self.per_user_cap:
                    self._turn_order.append(user_id)
                    continue
                waiter = queue.popleft()
                self._waiting -= 1
                if queue:
                    self._turn_order.append(user_id)
                else:
                    del self._queues[user_id]
                agent = self._take()
                assert agent is not None
                self._hand_to(user_id)
                waiter.future.set_result(agent)

    def _forget_waiter(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.user_id)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self._waiting -= 1
        if not queue:
            del self._queues[waiter.user_id]
            order = self._first if waiter.user_id in self._first else self._turn_order
            order.remove(waiter.user_id)

