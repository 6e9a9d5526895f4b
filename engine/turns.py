"""One user turn, from an authenticated session to a durable reply.

admit (the session's multitask strategy) -> rate limits -> quota reserve -> model call ->
settle -> append to the context -> store ops -> metrics. Every failure on that path releases
what the turn held (its reservation, its place in the session) before raising a typed
`EngineError`, so state stays consistent. This is the path a cluster changes (a lease per
session, quotas shared across processes), so it lives apart from the engine's other duties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, get_args

from engine.balancer import Balancer
from engine.clock import Clock
from engine.cluster.worker import ClusterWorker
from engine.config import EngineConfig
from engine.errors import (
    EngineError,
    Interrupted,
    InvalidInput,
    QuotaExceeded,
    SessionBusy,
    StoreError,
)
from engine.hot_sessions import HotSessions
from engine.monitor import Monitor
from engine.quota_watch import QuotaWatch
from engine.quotas import BYTES_PER_MB, QuotaManager, Reservation
from engine.ratelimit import RateLimiter
from engine.records import message_row
from engine.runner import AgentRunner, ModelReply
from engine.sessions import Message, Session, SessionRegistry
from engine.store import Op, QuotaEvent, Touch, TrimMessages
from engine.tokens import CHARS_PER_TOKEN, estimate_tokens
from engine.views import Reply, SessionViews

# What a turn sent while its session has one in flight does (LangGraph's double-texting names):
# "reject" refuses it, "enqueue" waits its turn (bounded by max_queued_turns), "interrupt"
# cancels the running turn, which keeps nothing, and then runs.
MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
MULTITASK_STRATEGIES: tuple[str, ...] = get_args(MultitaskStrategy)

Commit = Callable[..., Awaitable[None]]
"""`await commit(*ops)`: write ops and return once durable (with durable acknowledgement)."""
PersistLater = Callable[..., None]
"""`persist_later(*ops)`: queue ops without waiting."""


def check_strategy(strategy: object) -> MultitaskStrategy:
    if strategy not in MULTITASK_STRATEGIES:
        raise InvalidInput(
            f"multitask_strategy must be one of {', '.join(MULTITASK_STRATEGIES)} "
            f"(got {strategy!r})"
        )
    return strategy  # type: ignore[return-value]


def touch_op(session: Session) -> Touch:
    """The session's counters and activity as a store op."""
    return Touch(
        session.session_id, session.last_active_at, session.turns,
        session.prompt_tokens, session.completion_tokens, session.errors, session.agent_type,
    )


class TurnPipeline:
    """Runs turns and knows which are in flight (for drain)."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        registry: SessionRegistry,
        quotas: QuotaManager,
        quota_watch: QuotaWatch,
        session_rate: RateLimiter,
        user_rate: RateLimiter,
        runner: AgentRunner,
        hot: HotSessions,
        balancer: Balancer,
        monitor: Monitor,
        views: SessionViews,
        commit: Commit,
        persist_later: PersistLater,
    ) -> None:
        self._config = config
        self._clock: Clock = config.clock
        self._registry = registry
        self._quotas = quotas
        self._quota_watch = quota_watch
        self._session_rate = session_rate
        self._user_rate = user_rate
        self._runner = runner
        self._hot = hot
        self._balancer = balancer
        self._monitor = monitor
        self._views = views
        self._commit = commit
        self._persist_later = persist_later
        # A worker of a cluster (set at open): rates, quotas and the session's lease are then
        # decided in Valkey/Redis for every worker at once, never here.
        self.cluster: ClusterWorker | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # tasks running or awaiting a turn
        self._interrupted: set[asyncio.Task[Any]] = set()  # turns cancelled by a newer one

    async def run(
        self,
        session: Session,
        agent_type: str,
        text: str,
        strategy: MultitaskStrategy,
        on_delta: Callable[[str], None] | None,
    ) -> Reply:
        """Admit, limit and reserve on arrival (a waiting turn too), then run the turn."""
        try:
            self._admit(session, strategy)
            if self.cluster is None:
                self._check_rates(session)
                reservation = self._reserve(session, text)
            else:
                reservation = await self._reserve_in_cluster(self.cluster, session, text)
        except EngineError as exc:
            self._record_failure(session, exc, None)
            raise
        if strategy == "interrupt" and session.running_turn is not None:
            self._interrupted.add(session.running_turn)
            session.running_turn.cancel()
        return await self._run(session, agent_type, text, reservation, on_delta)

    def _admit(self, session: Session, strategy: MultitaskStrategy) -> None:
        """Refuse a turn its session's multitask strategy does not let in (SessionBusy)."""
        waiting = session.in_flight - (session.running_turn is not None)
        queue_full = waiting >= self._config.sessions.max_queued_turns
        if (strategy == "reject" and session.busy) or queue_full:
            raise SessionBusy(strategy, waiting)

    def _check_rates(self, session: Session) -> None:
        # Peek both before consuming either, so a refusal by one does not spend the other.
        for limiter, key in (
            (self._session_rate, session.session_id),
            (self._user_rate, session.user_id),
        ):
            if limiter.retry_after(key) > 0:
                limiter.acquire(key)  # raises RateLimited with the exact retry_after
        self._session_rate.acquire(session.session_id)
        self._user_rate.acquire(session.user_id)

    def _amounts(self, session: Session, text: str) -> dict[str, float]:
        """What a turn reserves: its call, the most tokens it can use, compute, storage."""
        llm = self._config.llm
        history_tokens = session.context_bytes // CHARS_PER_TOKEN
        text_bytes = len(text.encode("utf-8", errors="surrogatepass"))
        reply_bytes = llm.max_completion_tokens * CHARS_PER_TOKEN
        return {
            "api_calls": 1,
            "tokens": history_tokens + estimate_tokens(text) + llm.max_completion_tokens,
            "compute_seconds": self._config.limits.compute_reserve_s,
            "storage_mb": (text_bytes + reply_bytes) / BYTES_PER_MB,
        }

    def _reserve(self, session: Session, text: str) -> Reservation:
        try:
            return self._quotas.reserve(session.user_id, self._amounts(session, text))
        except QuotaExceeded as exc:
            self._quota_watch.refused(session.user_id, exc.resource)
            raise

    async def _reserve_in_cluster(
        self, cluster: ClusterWorker, session: Session, text: str
    ) -> Reservation:
        try:
            return await cluster.admit(session, self._amounts(session, text))
        except QuotaExceeded as exc:
            self._quota_watch.refused(session.user_id, exc.resource)
            raise

    async def _run(
        self,
        session: Session,
        agent_type: str,
        text: str,
        reservation: Reservation,
        on_delta: Callable[[str], None] | None,
    ) -> Reply:
        self._registry.begin_turn(session)
        self._balancer.mark_busy(session.session_id, True)
        self._views.invalidate(session)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        started = self._clock.now()
        cluster, running = self.cluster, None
        try:
            async with session.turn_lock:
                session.running_turn = task
                try:
                    if cluster is not None:  # one turn at a time on it, cluster-wide
                        running = await cluster.start(session, self._config.llm.turn_timeout_s)
                        await cluster.catch_up(session, running)
                    await self._hot.warm(session)
                    model = await self._runner.run(session, agent_type, text, on_delta)
                finally:
                    session.running_turn = None
        except BaseException as exc:
            # Cancelled by a newer turn alone (not by its own caller too): say why.
            interrupted = task in self._interrupted and task.cancelling() == 1
            if cluster is None:
                self._quotas.release(reservation)
            else:
                cluster.release_soon(running, reservation)
            self._end(session, task)
            if interrupted:
                task.uncancel()
                interruption = Interrupted()
                self._record_failure(session, interruption, self._clock.now() - started)
                raise interruption from None
            if isinstance(exc, EngineError):
                self._record_failure(session, exc, self._clock.now() - started)
            elif self._registry.get(session.session_id) is session:
                self._views.invalidate(session)
            raise
        latency = self._clock.now() - started
        self._end(session, task)
        used = {
            "api_calls": 1,
            "tokens": model.prompt_tokens + model.completion_tokens,
            "compute_seconds": latency,
            "storage_mb": 0,
        }
        if cluster is None:
            self._quotas.settle(reservation, used)
        ops = self._complete(session, agent_type, text, model, latency)
        if ops and cluster is not None:
            ops.extend(cluster.served(session))
        if ops:
            try:
                await self._commit(*ops)  # durable acknowledgement: the reply follows the commit
            except StoreError:
                # Memory holds what the store refused: reload the session before its next use,
                # so neither its history nor the model sees a turn that was not acknowledged.
                session.stale = True
                if cluster is not None:
                    cluster.release_soon(running, reservation)
                raise
        if cluster is not None and running is not None:
            await cluster.finish(session, running, reservation, used)
        return Reply(
            session.session_id, agent_type, model.text,
            model.prompt_tokens, model.completion_tokens, latency, model.model_latency_s,
        )

    def _end(self, session: Session, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self._interrupted.discard(task)
        self._registry.end_turn(session, self._clock.now())
        if not session.busy and self._registry.get(session.session_id) is session:
            self._balancer.mark_busy(session.session_id, False)

    def _complete(
        self, session: Session, agent_type: str, text: str, model: ModelReply, latency: float
    ) -> list[Op]:
        """Apply a finished turn in memory and return the store ops that make it durable."""
        now = self._clock.now()
        if self._registry.get(session.session_id) is not session:
            return []  # ended while the model was answering: nothing of it is kept
        assert session.context is not None
        before, dropped = session.context.bytes, session.context.dropped
        ops: list[Op] = []
        for message in (Message("user", text, now), Message("assistant", model.text, now)):
            session.context.append(message)
            ops.append(message_row(session, session.next_seq, message))
            session.next_seq += 1
        if session.context.dropped != dropped:
            first_kept = session.next_seq - len(session.context)
            ops.append(TrimMessages(session.session_id, first_kept - 1))
        self._quotas.adjust(
            session.user_id, "storage_mb", (session.context.bytes - before) / BYTES_PER_MB
        )
        session.turns += 1
        session.agent_type = agent_type
        session.prompt_tokens += model.prompt_tokens
        session.completion_tokens += model.completion_tokens
        self._registry.touch(session, now)
        self._registry.hot.add(session)  # most recent, its size re-estimated
        self._hot.shrink_to_budget()  # sessions that were busy at the last check may go now
        ops.append(touch_op(session))
        used = {
            "api_calls": 1,
            "tokens": model.prompt_tokens + model.completion_tokens,
            "compute_seconds": latency,
        }
        for resource, amount in used.items():
            window = self._quotas.window_of(session.user_id, resource)
            if amount and window is not None:
                ops.append(QuotaEvent(session.user_id, resource, now, amount, window))
        self._monitor.record_turn(
            session.session_id, session.user_id, latency,
            model.prompt_tokens, model.completion_tokens,
        )
        self._quota_watch.observe(session.user_id)
        self._views.invalidate(session)
        return ops

    def _record_failure(self, session: Session, exc: EngineError, latency: float | None) -> None:
        session.errors += 1
        self._monitor.record_error(session.session_id, session.user_id, exc, latency)
        if self._registry.get(session.session_id) is session:
            self._views.invalidate(session)
            self._persist_later(touch_op(session))
