"""The `Engine` facade: the one surface the console, the load generator and callers use.

A user turn runs authenticate -> rate limit -> quota reserve -> model call -> settle -> append ->
metrics. Every failure on that path raises a typed `EngineError` after releasing what the turn
held (its quota reservation, its place in the session), so state stays consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, NoReturn, get_args

from cryptography.fernet import Fernet

from engine import validation
from engine.admission import IN_PROCESS, AuthFailures, AuthFailureStats, presentation_key
from engine.agents import load_agent_specs
from engine.alerts import Alert
from engine.balancer import Balancer, Move
from engine.config import MASTER_KEY_ENV, EngineConfig, SimSettings
from engine.errors import (
    AuthBackoff,
    AuthenticationError,
    ConfigurationError,
    DecryptionFailed,
    EngineClosed,
    EngineError,
    Interrupted,
    InvalidInput,
    QuotaExceeded,
    SessionBusy,
    SessionExpired,
    StoreError,
)
from engine.hot_sessions import HotSessions
from engine.monitor import Monitor
from engine.operator import Operator
from engine.overload import LoadShedder, OverloadStats
from engine.quotas import BYTES_PER_MB, QuotaManager, Reservation
from engine.ratelimit import RateLimiter
from engine.records import message_row, session_row
from engine.restore import adopt_restored, warm
from engine.runner import AgentRunner, ModelReply
from engine.runtime import prepare_for_serving
from engine.security import KeyRing, check_token, issue_token, rotate
from engine.sessions import Message, Session, SessionEvent, SessionRegistry
from engine.store import (
    AlertRow,
    Assign,
    EndSession,
    MetricsRow,
    Op,
    Prune,
    QuotaEvent,
    RewrapReport,
    Store,
    TokenUpdate,
    Touch,
    TrimMessages,
)
from engine.tokens import CHARS_PER_TOKEN, estimate_tokens
from engine.views import (
    CreatedSession,
    EngineSnapshot,
    QuotaView,
    Reply,
    RestoreReport,
    SessionViews,
)

log = logging.getLogger(__name__)

TOP_QUOTA_USERS = 20
PRUNE_EVERY = 60  # housekeeping passes, about a minute
# What a turn sent while its session has one in flight does (LangGraph's double-texting names):
# "reject" refuses it, "enqueue" waits its turn (bounded by max_queued_turns), "interrupt"
# cancels the running turn, which keeps nothing, and then runs.
MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
MULTITASK_STRATEGIES: tuple[str, ...] = get_args(MultitaskStrategy)




class Engine:
    """Multi-user session engine on the caller's asyncio loop."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.clock = config.clock
        self._registry = SessionRegistry(
            max_per_user=config.sessions.max_per_user,
            idle_timeout_s=config.sessions.idle_timeout_s,
            lifetime_s=config.sessions.lifetime_s,
            context_max_messages=config.sessions.context_max_messages,
            context_max_bytes=config.sessions.context_max_bytes,
        )
        self._registry.subscribe(self._on_session_event)
        self._quotas = QuotaManager(
            self.clock, tiers=config.limits.tiers, default_tier=config.limits.default_tier
        )
        limits = config.limits
        self._session_rate = RateLimiter(
            self.clock, limits.session_rate.rate_per_s, limits.session_rate.burst, "session"
        )
        self._user_rate = RateLimiter(
            self.clock, config.limits.user_rate.rate_per_s, config.limits.user_rate.burst, "user"
        )
        self._auth_failures = AuthFailures(self.clock, config.limits.auth_backoff)
        self._shedder = (
            None if config.limits.overload is None
            else LoadShedder(self.clock, config.limits.overload)
        )
        self._overload_probe: asyncio.Task[None] | None = None
        self._monitor = Monitor(
            self.clock, max_alerts=config.monitor.max_alerts,
            cooldown_s=config.monitor.alert_cooldown_s,
            on_alert=self._on_alert,
        )
        self._store: Store | None = None
        self._rolled_up = (0, 0, 0, 0)  # turns, errors, tokens in/out at the last roll-up
        self.restore_report: RestoreReport | None = None
        specs = load_agent_specs(config.pools.agent_types_file)
        self.agent_types = tuple(specs)
        self._balancer = Balancer(config.pools.workers, on_move=self._on_move)
        self._runner = AgentRunner(
            config, specs.values(), (w.worker_id for w in self._balancer.snapshot()),
            self.clock, self._monitor,
        )
        self._keyring: KeyRing | None = None
        self._views = SessionViews(self._registry, self._monitor)
        self._hot = HotSessions(
            self._registry, config.sessions, self._load, self._invalidate_view
        )
        self.operator = Operator(
            registry=self._registry, views=self._views, monitor=self._monitor,
            quotas=self._quotas, end=self._end, rotate=self._rotate, warm=self._hot.warm,
        )
        self._quota_watch: set[str] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._housekeeping_passes = 0
        self._turn_tasks: set[asyncio.Task[Any]] = set()  # tasks running a turn (drain)
        self._interrupted: set[asyncio.Task[Any]] = set()  # turns cancelled by a newer one
        self._store_ok = True  # the last durable write committed (readiness)
        self._unreadable = 0  # sessions found undecryptable when loaded
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> Engine:
        if self._state != "new":
            raise EngineClosed("engine was already opened; create a new Engine")
        store = self.config.store
        self._keyring = await asyncio.to_thread(
            KeyRing.load, store.master_key_file, store.master_keys,
            given_source=f"StoreSettings.master_keys ({MASTER_KEY_ENV})",
        )
        self._store = await Store.open(store.db_path, store)
        try:
            self.restore_report = await self._restore()
        except BaseException:
            await self._store.aclose()
            raise
        self._runner.prewarm()
        if self.config.tune_gc:
            prepare_for_serving()
        self._housekeeping = asyncio.create_task(self._housekeep_forever(), name="housekeeping")
        if self._shedder is not None:
            store = self._store
            self._overload_probe = asyncio.create_task(
                self._shedder.watch(lambda: store.stats().queue_depth), name="overload probe"
            )
        self._state = "open"
        return self

    @property
    def state(self) -> str:
        """new, open, draining or closed."""
        return self._state

    @property
    def ready(self) -> bool:
        """Serving turns: open, not draining, and the store committing (for /readyz)."""
        return self._state == "open" and self._store_ok

    @property
    def turns_in_flight(self) -> int:
        """Turns running or waiting for their session's running turn."""
        return len(self._turn_tasks)

    async def drain(self, grace_s: float) -> int:
        """Stop taking turns, give those in flight `grace_s` to finish, then cancel the rest.

        New calls fail with EngineClosed from here on; returns how many turns were cancelled.
        Call `aclose()` afterwards to flush the store.
        """
        if self._state == "open":
            self._state = "draining"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._turn_tasks and loop.time() < deadline:
            await asyncio.wait(set(self._turn_tasks), timeout=deadline - loop.time())
        cancelled = list(self._turn_tasks)
        for task in cancelled:
            task.cancel("engine draining: grace period over")
        if cancelled:
            await asyncio.wait(cancelled)
        return len(cancelled)

    async def aclose(self) -> None:
        """Stop housekeeping, flush and close the store, close the model clients."""
        self._state = "closed"
        if self._overload_probe is not None:
            self._overload_probe.cancel()
            self._overload_probe = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self._store is not None:
            await self._store.aclose()
        await self._runner.aclose()

    async def __aenter__(self) -> Engine:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def keyring(self) -> KeyRing:
        self._require_open()
        assert self._keyring is not None
        return self._keyring

    # -- sessions --------------------------------------------------------------------------------
    async def create_session(
        self, user_id: str, metadata: Mapping[str, Any] | None = None, *, origin: str = "python"
    ) -> CreatedSession:
        """A new session for `user_id`; `origin` labels who created it in the console."""
        self._require_open()
        cfg = self.config
        user_id = validation.user_id(user_id, cfg.sessions.max_user_id_chars)
        meta = validation.metadata(metadata, cfg.sessions.max_metadata_bytes)
        tier = meta.get("tier")
        if tier is not None:
            self._quotas.set_tier(user_id, tier)  # validates before anything is created
        now = self.clock.now()
        session = self._registry.create(user_id, meta, now)
        session.origin = origin
        token, record = issue_token(now, cfg.sessions.lifetime_s)
        session.token = record
        session.cipher, session.wrapped_key = self.keyring.new_data_key()
        self._registry.hot.add(session)
        session.tier = self._quotas.tier_of(user_id)
        session.worker = self._balancer.assign(session.session_id)
        self._invalidate_view(session)
        try:
            await self._committed(self.store.save_session(session_row(session)))
        except EngineError:
            self._registry.remove(session.session_id, "ended", now, "could not be saved")
            raise
        return CreatedSession(session.session_id, user_id, token, session.deadline)

    async def send(
        self,
        session_id: str,
        token: str,
        text: str,
        *,
        agent_type: str = "assistant",
        multitask_strategy: MultitaskStrategy = "enqueue",
        on_delta: Callable[[str], None] | None = None,
        client: str | None = None,
    ) -> Reply:
        """Run one user turn and return the assistant's reply.

        `multitask_strategy` says what happens when the session already has a turn in flight
        (see MultitaskStrategy); a waiting turn is rate-limited and quota-reserved on arrival.
        `on_delta` receives the reply's text in pieces as the model produces them; the Reply
        still carries the whole text. `client` names the caller (the gateway passes the HTTP
        client's address) so that one that keeps failing authentication is backed off; None
        is the in-process caller.
        """
        self._require_open()
        text = validation.text(text, self.config.sessions.max_text_bytes)
        agent_type = validation.agent_type(agent_type, self.agent_types)
        if multitask_strategy not in MULTITASK_STRATEGIES:
            raise InvalidInput(
                f"multitask_strategy must be one of {', '.join(MULTITASK_STRATEGIES)} "
                f"(got {multitask_strategy!r})"
            )
        session = self._authenticate(session_id, token, client)
        if self._shedder is not None:
            self._shedder.admit(session.user_id)  # while overloaded, heaviest users first
        try:
            self._admit(session, multitask_strategy)
            self._check_rates(session)
            reservation = self._reserve(session, text)
        except EngineError as exc:
            self._record_failure(session, exc, None)
            raise
        if multitask_strategy == "interrupt" and session.running_turn is not None:
            self._interrupted.add(session.running_turn)
            session.running_turn.cancel()
        return await self._run_turn(session, agent_type, text, reservation, on_delta)

    async def check(self, session_id: str, token: str, *, client: str | None = None) -> float:
        """Authenticate only (a gateway route that needs a caller's session); returns when the
        session expires at the latest. Raises as every call does; counts as activity."""
        self._require_open()
        return self._authenticate(session_id, token, client).deadline

    async def history(
        self, session_id: str, token: str, *, client: str | None = None
    ) -> list[Message]:
        """The session's context, oldest first."""
        self._require_open()
        session = self._authenticate(session_id, token, client)
        await self._hot.warm(session)
        assert session.context is not None
        return list(session.context)

    async def rotate_token(self, session_id: str, token: str, *, client: str | None = None) -> str:
        """Issue a new token for the session; the presented one stops working at once."""
        self._require_open()
        return await self._rotate(self._authenticate(session_id, token, client))

    async def end_session(
        self, session_id: str, token: str, *, client: str | None = None
    ) -> None:
        self._require_open()
        session = self._authenticate(session_id, token, client)
        await self._end(session, "ended by owner")

    # -- engine-wide controls --------------------------------------------------------------------
    # Per-session, per-user and per-alert actions without a token are on `self.operator`.
    @property
    def store(self) -> Store:
        if self._state != "draining":  # turns in flight still commit while draining
            self._require_open()
        assert self._store is not None
        return self._store

    async def rotate_master_key(self, new_key: bytes | None = None) -> RewrapReport:
        """Re-wrap every session key under a new master key; message ciphertext is untouched.

        The key file first holds the new key and the old ones, so a crash mid-way leaves every
        key readable; once all are re-wrapped it holds the new key alone.
        """
        if self.config.store.master_keys:
            raise ConfigurationError(
                f"master keys come from {MASTER_KEY_ENV}: put a new key first in "
                "that variable (comma-separated, old keys after it) and restart to rotate"
            )
        key_file = self.config.store.master_key_file
        ring = self.keyring.rotate(new_key or Fernet.generate_key())
        await asyncio.to_thread(ring.save, key_file)
        self._keyring = ring
        report = await self.store.rewrap_keys(ring.rewrap)
        for session in self._registry:
            if session.wrapped_key is not None:
                session.wrapped_key = ring.rewrap(session.wrapped_key)
        if not report.failed:
            self._keyring = ring.drop_old_keys()
            await asyncio.to_thread(self._keyring.save, key_file)
        return report

    def auth_failure_stats(self) -> AuthFailureStats:
        """Presenters that kept failing authentication and how many were refused unchecked."""
        return self._auth_failures.stats()

    def overload_stats(self) -> OverloadStats | None:
        """Whether turns are being shed now, and how many were; None when shedding is off."""
        return self._shedder.stats() if self._shedder is not None else None

    @property
    def sim_settings(self) -> SimSettings:
        return self._runner.sim_settings

    def set_sim(self, settings: SimSettings) -> None:
        """Change the `sim` backend's latency and fault rates live (fault drills, load spikes).

        ConfigurationError for impossible settings; no effect on the `openai` backend.
        """
        self._runner.set_sim(settings)

    def rebalance(self) -> tuple[Move, ...]:
        """Even the load across workers, moving the fewest idle sessions; never a busy one."""
        return self._balancer.rebalance()

    def housekeep(self) -> int:
        """Expire due sessions and evaluate alert rules; the background task calls this.

        Once in PRUNE_EVERY passes it also drops idle per-user quota state, a scan over users
        that is kept out of the per-second path.
        """
        now = self.clock.now()
        expired = self._registry.expire_due(now)
        self._hot.demote_idle(now)
        self._runner.reap(now)
        self._monitor.tick()
        self._housekeeping_passes += 1
        if self._housekeeping_passes % PRUNE_EVERY == 0:
            self._quotas.prune()
            self._persist_later(Prune(now), self._metrics_rollup(now))
        return len(expired)

    def snapshot(self) -> EngineSnapshot:
        views = MappingProxyType(dict(self._views.current()))
        return EngineSnapshot(
            taken_at=self.clock.now(),
            sessions=tuple(views.values()),
            sessions_by_id=views,
            users=self._registry.users(),
            quotas=self._hot_quotas(),
            monitor=self._monitor.snapshot(),
            session_events=dict(self._registry.event_counts),
            pools=self._runner.pool_views(),
            workers=self._balancer.snapshot(),
            moves_total=self._balancer.moves_total,
            clients=self._runner.client_stats(),
            store=self._store.stats() if self._store is not None else None,
            cache=self._hot.view(self._unreadable),
        )

    # -- loading a cold session (when: engine.hot_sessions) --------------------------------------
    async def _load(self, session: Session) -> None:
        """Read, unwrap and decrypt a cold session into memory; `HotSessions.warm` calls it once."""
        stored = await self.store.load_session(session.session_id)
        if stored is None or self._registry.get(session.session_id) is not session:
            return  # ended while loading
        before = session.cold_bytes
        try:
            warm(
                session, stored, self.keyring,
                context_max_messages=self.config.sessions.context_max_messages,
                context_max_bytes=self.config.sessions.context_max_bytes,
            )
        except DecryptionFailed as exc:
            self._forget_unreadable(session, str(exc))
            return
        assert session.context is not None
        if session.context.bytes != before:
            self._quotas.adjust(
                session.user_id, "storage_mb", (session.context.bytes - before) / BYTES_PER_MB
            )
        self._registry.hot.add(session)
        self._invalidate_view(session)

    def _forget_unreadable(self, session: Session, reason: str) -> None:
        """Drop an undecryptable session from memory only, with a critical alert."""
        self._unreadable += 1
        self._registry.discard(session.session_id)
        self._views.forget(session.session_id)
        self._session_rate.forget(session.session_id)
        self._balancer.release(session.session_id)
        self._quotas.adjust(session.user_id, "storage_mb", -session.cold_bytes / BYTES_PER_MB)
        self._monitor.session_ended(session.session_id)
        self._monitor.alert_manager.fire(
            f"unreadable:{session.session_id}", "decryption", "critical",
            f"session {session.session_id[:8]} of user {session.user_id!r} cannot be decrypted "
            f"and was not loaded: {reason}",
            session.session_id,
        )

    # -- the turn --------------------------------------------------------------------------------
    def _authenticate(self, session_id: object, token: object, client: str | None) -> Session:
        """Unknown session, wrong, revoked or expired token: one error, one cost.

        A right token on a session past its idle or absolute limit is `SessionExpired`, which
        reveals nothing: only the token's holder can see it. A session id and token that
        already failed and are backing off are refused before anything else (AuthBackoff).
        """
        presentation = presentation_key(session_id, token)
        wait = self._auth_failures.refuse_unchecked(presentation)
        if wait > 0:
            self._refuse(session_id, wait)
        now = self.clock.now()
        session = self._registry.get(session_id) if isinstance(session_id, str) else None
        record = session.token if session is not None else None
        if not check_token(record, token):
            self._refuse_checked(session_id, presentation, client)
        assert session is not None and record is not None
        reason = session.expiry_reason(now)
        if reason is not None and not session.busy:
            self._registry.remove(session.session_id, "expired", now, reason)
            raise SessionExpired(reason)
        if record.expired(now):
            self._refuse_checked(session_id, presentation, client)
        self._registry.touch(session, now)
        self._invalidate_view(session)
        return session

    def _refuse_checked(
        self, session_id: object, presentation: int, client: str | None
    ) -> NoReturn:
        """The token was checked and is not right: strike its presenters, then refuse."""
        wait = self._auth_failures.failed(presentation, client or IN_PROCESS)
        self._refuse(session_id, wait)

    def _refuse(self, session_id: object, retry_after: float) -> NoReturn:
        self._monitor.record_auth_failure(session_id if isinstance(session_id, str) else None)
        if retry_after > 0:
            raise AuthBackoff(retry_after)
        raise AuthenticationError()

    def _admit(self, session: Session, strategy: MultitaskStrategy) -> None:
        """Refuse a turn its session's multitask strategy does not let in (SessionBusy)."""
        waiting = session.in_flight - (session.running_turn is not None)
        queue_full = waiting >= self.config.sessions.max_queued_turns
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

    def _reserve(self, session: Session, text: str) -> Reservation:
        history_tokens = session.context_bytes // CHARS_PER_TOKEN
        text_bytes = len(text.encode("utf-8", errors="surrogatepass"))
        reply_bytes = self.config.llm.max_completion_tokens * CHARS_PER_TOKEN
        try:
            return self._quotas.reserve(
                session.user_id,
                {
                    "api_calls": 1,
                    "tokens": history_tokens + estimate_tokens(text)
                    + self.config.llm.max_completion_tokens,
                    "compute_seconds": self.config.limits.compute_reserve_s,
                    "storage_mb": (text_bytes + reply_bytes) / BYTES_PER_MB,
                },
            )
        except QuotaExceeded as exc:
            self._monitor.observe_quota(session.user_id, exc.resource, 100.0)
            self._quota_watch.add(session.user_id)
            raise

    async def _run_turn(
        self,
        session: Session,
        agent_type: str,
        text: str,
        reservation: Reservation,
        on_delta: Callable[[str], None] | None,
    ) -> Reply:
        self._registry.begin_turn(session)
        self._balancer.mark_busy(session.session_id, True)
        self._invalidate_view(session)
        task = asyncio.current_task()
        assert task is not None
        self._turn_tasks.add(task)
        started = self.clock.now()
        try:
            async with session.turn_lock:
                session.running_turn = task
                try:
                    await self._hot.warm(session)
                    model = await self._runner.run(session, agent_type, text, on_delta)
                finally:
                    session.running_turn = None
        except BaseException as exc:
            # Cancelled by a newer turn alone (not by its own caller too): say why.
            interrupted = task in self._interrupted and task.cancelling() == 1
            self._quotas.release(reservation)
            self._end_turn(session, task)
            if interrupted:
                task.uncancel()
                interruption = Interrupted()
                self._record_failure(session, interruption, self.clock.now() - started)
                raise interruption from None
            if isinstance(exc, EngineError):
                self._record_failure(session, exc, self.clock.now() - started)
            elif self._registry.get(session.session_id) is session:
                self._invalidate_view(session)
            raise
        latency = self.clock.now() - started
        self._end_turn(session, task)
        self._quotas.settle(
            reservation,
            {
                "api_calls": 1,
                "tokens": model.prompt_tokens + model.completion_tokens,
                "compute_seconds": latency,
                "storage_mb": 0,
            },
        )
        ops = self._complete_turn(session, agent_type, text, model, latency)
        if ops:
            # Durable acknowledgement: the reply follows the commit.
            await self._committed(self.store.write(*ops))
        return Reply(
            session.session_id, agent_type, model.text,
            model.prompt_tokens, model.completion_tokens, latency, model.model_latency_s,
        )

    def _end_turn(self, session: Session, task: asyncio.Task[Any]) -> None:
        self._turn_tasks.discard(task)
        self._interrupted.discard(task)
        self._registry.end_turn(session, self.clock.now())
        if not session.busy and self._registry.get(session.session_id) is session:
            self._balancer.mark_busy(session.session_id, False)

    def _on_move(self, move: Move) -> None:
        """A session migrates: its next turn runs on the new worker's pools."""
        session = self._registry.get(move.session_id)
        if session is not None:
            session.worker = move.to_worker
            self._invalidate_view(session)
            self._persist_later(Assign(move.session_id, move.to_worker))

    def _complete_turn(
        self, session: Session, agent_type: str, text: str, model: ModelReply, latency: float
    ) -> list[Op]:
        """Apply a finished turn in memory and return the store ops that make it durable."""
        now = self.clock.now()
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
        ops.append(self._touch_op(session))
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
        self._observe_quotas(session.user_id)
        self._invalidate_view(session)
        return ops

    @staticmethod
    def _touch_op(session: Session) -> Touch:
        return Touch(
            session.session_id, session.last_active_at, session.turns,
            session.prompt_tokens, session.completion_tokens, session.errors, session.agent_type,
        )

    def _record_failure(self, session: Session, exc: EngineError, latency: float | None) -> None:
        session.errors += 1
        self._monitor.record_error(session.session_id, session.user_id, exc, latency)
        if self._registry.get(session.session_id) is session:
            self._invalidate_view(session)
            self._persist_later(self._touch_op(session))

    # -- views and quotas ------------------------------------------------------------------------
    def _observe_quotas(self, user_id: str) -> None:
        highest = 0.0
        for resource, percent in self._quotas.percents(user_id):
            self._monitor.observe_quota(user_id, resource, percent)
            highest = max(highest, percent)
        if highest >= self.config.monitor.quota_watch_percent:
            self._quota_watch.add(user_id)

    def _hot_quotas(self) -> tuple[QuotaView, ...]:
        """Users nearest their limits; only users seen above the watch level are examined."""
        views = []
        for user_id in list(self._quota_watch):
            percent = self._quotas.highest_percent(user_id)
            if percent < self.config.monitor.quota_watch_percent:
                self._quota_watch.discard(user_id)
                continue
            views.append((percent, user_id))
        return tuple(
            QuotaView(user_id, self._quotas.tier_of(user_id), percent, self._quotas.usage(user_id))
            for percent, user_id in heapq.nlargest(TOP_QUOTA_USERS, views)
        )

    def _invalidate_view(self, session: Session) -> None:
        self._views.invalidate(session)

    def _on_session_event(self, event: SessionEvent, session: Session) -> None:
        if event.kind == "created":
            self._monitor.session_started(session.session_id, session.user_id)
            return
        # ended, expired or evicted: forget everything held for the session.
        self._views.forget(session.session_id)
        self._session_rate.forget(session.session_id)
        self._balancer.release(session.session_id)
        if not self._registry.of_user(session.user_id):
            self._user_rate.forget(session.user_id)
        self._quotas.adjust(session.user_id, "storage_mb", -session.context_bytes / BYTES_PER_MB)
        self._monitor.session_ended(session.session_id)
        # Crypto-shred: without the wrapped key nothing encrypted for this session can be read.
        self._persist_later(EndSession(session.session_id, event.at, event.reason or event.kind))
        session.cipher = None
        session.wrapped_key = None
        session.token = None

    async def _rotate(self, session: Session) -> str:
        """Replace the session's token (same expiry) and store its hash; returns the new one."""
        assert session.token is not None
        now = self.clock.now()
        new_token, record = rotate(
            session.token, now, session.created_at + session.lifetime_s - now
        )
        session.token = record
        await self.store.write(
            TokenUpdate(session.session_id, record.token_hash, record.issued_at, record.expires_at)
        )
        return new_token

    async def _end(self, session: Session, reason: str) -> None:
        """End a session now and return once its rows and wrapped key are deleted on disk."""
        self._registry.remove(session.session_id, "ended", self.clock.now(), reason)
        await self.store.flush()

    async def _committed(self, write: Awaitable[None]) -> None:
        """Await a store write, remembering whether the store is committing (readiness)."""
        try:
            await write
        except StoreError:
            self._store_ok = False
            raise
        self._store_ok = True

    def _persist_later(self, *ops: Op) -> None:
        """Queue ops without making the caller wait (events raised outside any request).

        Queued in order behind everything already written, so a later `flush()` covers them.
        """
        if self._store is not None and self._state != "closed":
            self._store.write_nowait(*ops)

    def _on_alert(self, alert: Alert) -> None:
        self._persist_later(
            AlertRow(
                alert.alert_id, alert.key, alert.rule, alert.severity, alert.message,
                alert.subject, alert.first_at, alert.last_at, alert.count,
                alert.acknowledged, alert.resolved_at,
            )
        )

    def _metrics_rollup(self, now: float) -> MetricsRow:
        """The last minute's global figures, for history that outlives the process."""
        snap = self._monitor.snapshot()
        totals = (snap.turns, snap.errors, snap.prompt_tokens, snap.completion_tokens)
        turns, errors, prompt, completion = (
            a - b for a, b in zip(totals, self._rolled_up, strict=True)
        )
        self._rolled_up = totals
        latency = snap.latency
        return MetricsRow(
            int(now // 60 * 60), "global", turns, errors, prompt, completion,
            latency.p50, latency.p95, latency.p99,
        )

    async def _restore(self) -> RestoreReport:
        """Bring back live sessions (cold: no message read) and the users' quota windows."""
        assert self._store is not None and self._keyring is not None
        restored = await self._store.load_live(self.clock.now())
        report, moved = adopt_restored(
            restored,
            registry=self._registry, quotas=self._quotas, balancer=self._balancer,
            monitor=self._monitor, tiers=frozenset(self.config.limits.tiers),
            default_tier=self.config.limits.default_tier,
        )
        if moved:
            await self._store.write(*moved)
        return report

    async def _housekeep_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.monitor.housekeeping_interval_s)
            try:
                self.housekeep()
            except Exception:
                log.exception("housekeeping failed; will retry on the next tick")

    def _require_open(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            raise EngineClosed("engine is not open; use `async with Engine(config)` or open()")
        if self._state == "draining":
            raise EngineClosed("engine is draining for shutdown; retry on another instance")
        raise EngineClosed()

