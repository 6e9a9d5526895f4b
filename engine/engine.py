"""The `Engine` facade: the one surface the console, the gateway, the load generator and
callers use.

It builds the parts and wires them: who may act on a session (engine.authentication), the turn
(engine.turns), sessions coming into memory and leaving it (engine.residency, engine.hot_sessions),
the store (engine.store_link), the views (engine.views), restore (engine.restore), the
operator's actions (engine.operator) and, in a cluster, this worker's part in it
(engine.cluster.worker). What stays here is the lifecycle (open, drain, close) and the calls of
the public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.fernet import Fernet

from engine import validation
from engine.admission import AuthFailures, AuthFailureStats
from engine.agents import load_agent_specs
from engine.authentication import Authenticator
from engine.background_restore import BackgroundRestore
from engine.balancer import Balancer, Move
from engine.cluster.worker import ClusterWorker, check_cluster_key, connect, worker_load
from engine.config import MASTER_KEY_ENV, EngineConfig, SimSettings
from engine.errors import (
    ClusterUnavailable,
    ConfigurationError,
    EngineClosed,
    EngineError,
)
from engine.hot_sessions import HotSessions
from engine.key_rotation import rotate_master_key
from engine.monitor import Monitor
from engine.operator import Operator
from engine.overload import LoadShedder, OverloadStats
from engine.quota_watch import QuotaWatch
from engine.quotas import QuotaManager
from engine.ratelimit import RateLimiter
from engine.records import MetricsRollup, alert_row, session_row
from engine.residency import SessionResidency
from engine.restore import ColdAdoption, restore_quota_windows
from engine.runner import AgentRunner
from engine.runtime import prepare_for_serving
from engine.security import KeyRing, issue_token, rotate
from engine.sessions import Message, Session, SessionRegistry, new_session_id
from engine.store import (
    Assign,
    Prune,
    RewrapReport,
    Store,
    TokenUpdate,
    UserTier,
    open_store,
)
from engine.store_link import StoreLink
from engine.turn_gate import TurnStartGate
from engine.turns import MultitaskStrategy, TurnPipeline, check_strategy
from engine.views import (
    CreatedSession,
    EngineSnapshot,
    Reply,
    RestoreReport,
    SessionViews,
)

log = logging.getLogger(__name__)

PRUNE_EVERY = 60  # housekeeping passes, about a minute
PRUNE_USERS_PER_PASS = 4096  # users' quota state looked at in one housekeeping pass


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
        limits = config.limits
        self._quotas = QuotaManager(
            self.clock, tiers=limits.tiers, default_tier=limits.default_tier
        )
        self._session_rate = RateLimiter(
            self.clock, limits.session_rate.rate_per_s, limits.session_rate.burst, "session"
        )
        self._user_rate = RateLimiter(
            self.clock, limits.user_rate.rate_per_s, limits.user_rate.burst, "user"
        )
        self._shedder = (
            None if limits.overload is None else LoadShedder(self.clock, limits.overload)
        )
        self._overload_probe: asyncio.Task[None] | None = None
        self._gate = TurnStartGate()
        self._monitor = Monitor(
            self.clock, max_alerts=config.monitor.max_alerts,
            cooldown_s=config.monitor.alert_cooldown_s,
            on_alert=lambda alert: self._link.later(alert_row(alert, self._alert_owner())),
        )
        self._link = StoreLink()
        self._rollup = MetricsRollup()
        self._restore_base: RestoreReport | None = None  # what open() read before paging
        specs = load_agent_specs(config.pools.agent_types_file)
        self.agent_types = tuple(specs)
        self._balancer = Balancer(config.pools.workers, on_move=self._on_move)
        self._runner = AgentRunner(
            config, specs.values(), (w.worker_id for w in self._balancer.snapshot()),
            self.clock, self._monitor,
        )
        self._keyring: KeyRing | None = None
        self._registry.on_promote = self._place_promoted
        self._views = SessionViews(  # a worker of a cluster publishes the sessions it serves
            self._registry, self._monitor,
            SessionViews.RECENT_MAX if config.cluster.redis_url else 0,
        )
        self._residency = SessionResidency(
            config.sessions, registry=self._registry, views=self._views, quotas=self._quotas,
            session_rate=self._session_rate, user_rate=self._user_rate,
            balancer=self._balancer, monitor=self._monitor, store=lambda: self.store,
            keyring=lambda: self.keyring, persist_later=self._link.later,
        )
        self._adoption = ColdAdoption(
            self._registry, self._quotas, self._balancer, self._monitor,
            frozenset(limits.tiers), limits.default_tier,
        )
        self._paging = BackgroundRestore(
            registry=self._registry, store=self._stored, adopt=self._adoption.hold,
            persist_later=self._link.later, clock=self.clock,
            enforce_cap=not config.cluster.redis_url,
            page_sessions=config.sessions.restore_page_sessions,
        )
        self._hot = HotSessions(
            self._registry, config.sessions, self._residency.load, self._views.invalidate,
            self._residency.pack,
        )
        self._auth = Authenticator(
            self.clock, self._registry, AuthFailures(self.clock, limits.auth_backoff),
            self._monitor, self._views,
        )
        self._quota_watch = QuotaWatch(
            self._quotas, self._monitor, config.monitor.quota_watch_percent
        )
        self._turns = TurnPipeline(
            config, registry=self._registry, quotas=self._quotas,
            quota_watch=self._quota_watch, session_rate=self._session_rate,
            user_rate=self._user_rate, runner=self._runner, hot=self._hot,
            balancer=self._balancer, monitor=self._monitor, views=self._views,
            commit=self._link.commit, persist_later=self._link.later,
        )
        self.operator = Operator(
            registry=self._registry, views=self._views, monitor=self._monitor,
            quotas=self._quota_watch, end=self._end, rotate=self._rotate, warm=self._hot.warm,
            set_tier=self._set_tier,
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self._housekeeping_passes = 0
        self._cluster: ClusterWorker | None = None  # a worker of a cluster (cluster.redis_url)
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
        self._link.store = await open_store(store.database_url or store.db_path, store)
        try:
            if self.config.cluster.redis_url:
                self._cluster = await self._join_cluster()
            self._restore_base = await self._restore()
        except BaseException:
            if self._cluster is not None:
                await self._cluster.leave()
            await self._link.aclose()
            raise
        self._runner.prewarm()
        if self.config.tune_gc:
            prepare_for_serving()
        self._housekeeping = asyncio.create_task(self._housekeep_forever(), name="housekeeping")
        if self._shedder is not None:
            store = self._link.store
            self._overload_probe = asyncio.create_task(
                self._shedder.watch(lambda: store.stats().queue_depth, self._gate.waited_s),
                name="overload probe",
            )
        self._state = "open"
        self._paging.start()
        return self

    @property
    def restore_report(self) -> RestoreReport | None:
        """What open() brought back; `pending` counts stored sessions still being paged in."""
        base = self._restore_base
        return None if base is None else self._paging.report(base)

    async def restored(self) -> RestoreReport:
        """Wait until every stored session is paged in (open() returns before, for a large
        store: engine.background_restore); the final report."""
        self._require_open()
        await self._paging.wait()
        report = self.restore_report
        assert report is not None
        return report

    @property
    def state(self) -> str:
        """new, open, draining or closed."""
        return self._state

    @property
    def ready(self) -> bool:
        """Serving turns: open, not draining, the store committing and, in a cluster, its
        Valkey/Redis answering (for /readyz)."""
        cluster_ok = self._cluster is None or self._cluster.available
        return self._state == "open" and self._link.ok and cluster_ok

    @property
    def turns_in_flight(self) -> int:
        """Turns running or waiting for their session's running turn."""
        return len(self._turns.tasks)

    async def drain(self, grace_s: float) -> int:
        """Stop taking turns, give those in flight `grace_s` to finish, then cancel the rest.

        New calls fail with EngineClosed from here on; returns how many turns were cancelled.
        Call `aclose()` afterwards to flush the store.
        """
        if self._state == "open":
            self._state = "draining"
            if self._cluster is not None:  # its sessions' affinity goes to the other workers
                with contextlib.suppress(ClusterUnavailable):
                    await self._cluster.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._turns.tasks and loop.time() < deadline:
            await asyncio.wait(set(self._turns.tasks), timeout=deadline - loop.time())
        cancelled = list(self._turns.tasks)
        for task in cancelled:
            task.cancel("engine draining: grace period over")
        if cancelled:
            await asyncio.wait(cancelled)
        return len(cancelled)

    async def aclose(self) -> None:
        """Stop housekeeping, flush and close the store, close the model clients."""
        self._state = "closed"
        await self._paging.aclose()
        if self._overload_probe is not None:
            self._overload_probe.cancel()
            self._overload_probe = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self._cluster is not None:
            await self._cluster.leave()
        await self._link.aclose()
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
            if self._cluster is not None:  # the user's quotas are decided cluster-wide
                await self._cluster.set_tier(user_id, tier)
        now = self.clock.now()
        session_id, version = None, 0
        if self._cluster is not None:  # the user's session cap holds cluster-wide: claim first
            session_id = new_session_id()
            version = await self._cluster.place_session(user_id, session_id, now)
        session = self._registry.create(user_id, meta, now, session_id)
        session.version = version
        session.origin = origin
        token, record = issue_token(now, cfg.sessions.lifetime_s)
        session.token = record
        session.cipher, session.wrapped_key = self.keyring.new_data_key()
        self._registry.hot.add(session)
        session.tier = self._quotas.tier_of(user_id)
        session.worker = self._balancer.assign(session.session_id)
        self._views.invalidate(session)
        try:
            tier_ops = () if tier is None else (UserTier(user_id, session.tier),)
            await self._link.committed(self.store.write(session_row(session), *tier_ops))
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
        strategy = check_strategy(multitask_strategy)
        if self._cluster is not None or self._paging.running:
            await self._make_current(session_id, token)
        session = self._auth.authenticate(session_id, token, client)
        if self._shedder is not None:
            self._shedder.admit(session.user_id)  # while overloaded, heaviest users first
        waiting = self._gate.enter()  # a share of turns an iteration (engine/turn_gate.py)
        if waiting is not None:
            await waiting
        return await self._turns.run(session, agent_type, text, strategy, on_delta)

    async def check(self, session_id: str, token: str, *, client: str | None = None) -> float:
        """Authenticate only (a gateway route that needs a caller's session); returns when the
        session expires at the latest. Raises as every call does; counts as activity."""
        self._require_open()
        if self._cluster is not None or self._paging.running:
            await self._make_current(session_id, token)
        return self._auth.authenticate(session_id, token, client).deadline

    async def history(
        self, session_id: str, token: str, *, client: str | None = None
    ) -> list[Message]:
        """The session's context, oldest first."""
        self._require_open()
        if self._cluster is not None or self._paging.running:
            await self._make_current(session_id, token)
        session = self._auth.authenticate(session_id, token, client)
        await self._hot.warm(session)
        assert session.context is not None
        return list(session.context)

    async def rotate_token(self, session_id: str, token: str, *, client: str | None = None) -> str:
        """Issue a new token for the session; the presented one stops working at once."""
        self._require_open()
        if self._cluster is not None or self._paging.running:
            await self._make_current(session_id, token)
        return await self._rotate(self._auth.authenticate(session_id, token, client))

    async def end_session(
        self, session_id: str, token: str, *, client: str | None = None
    ) -> None:
        self._require_open()
        if self._cluster is not None or self._paging.running:
            await self._make_current(session_id, token)
        session = self._auth.authenticate(session_id, token, client)
        await self._end(session, "ended by owner")

    # -- engine-wide controls --------------------------------------------------------------------
    # Per-session, per-user and per-alert actions without a token are on `self.operator`.
    @property
    def store(self) -> Store:
        if self._state != "draining":  # turns in flight still commit while draining
            self._require_open()
        assert self._link.store is not None
        return self._link.store

    async def rotate_master_key(self, new_key: bytes | None = None) -> RewrapReport:
        """Re-wrap every session key under a new master key (engine/key_rotation.py)."""
        if self.config.store.master_keys:
            raise ConfigurationError(
                f"master keys come from {MASTER_KEY_ENV}: put a new key first in "
                "that variable (comma-separated, old keys after it) and restart to rotate"
            )

        def use(ring: KeyRing) -> None:
            self._keyring = ring

        return await rotate_master_key(
            self.keyring, new_key or Fernet.generate_key(), self.config.store.master_key_file,
            self.store, self._registry.objects(), use,
        )

    def auth_failure_stats(self) -> AuthFailureStats:
        """Presenters that kept failing authentication and how many were refused unchecked."""
        return self._auth.stats()

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

        Each pass also looks at PRUNE_USERS_PER_PASS users' quota state for idle users to drop
        (a whole pass at once over a million restored sessions' users held the loop 200 ms);
        once in PRUNE_EVERY passes it prunes the store's history and rolls up the metrics.
        """
        now = self.clock.now()
        if self._cluster is None:
            expired = self._registry.expire_due(now)
        else:  # another worker may have kept one alive: the stored record decides
            expired = self._registry.due(now)
            self._cluster.expire_soon(expired, now)
        self._hot.demote_idle(now)
        self._runner.reap(now)
        self._monitor.tick()
        self._housekeeping_passes += 1
        if not self._link.ok:
            self._link.probe(now)
        self._quotas.prune(PRUNE_USERS_PER_PASS)
        if self._housekeeping_passes % PRUNE_EVERY == 0:
            self._link.later(Prune(now), self._rollup.row(now, self._monitor.snapshot()))
        return len(expired)

    def refresh_views(self, limit: int) -> int:
        """Bring up to `limit` session views up to date (out-of-date ones first, then sessions
        not listed yet); returns how many are still due.

        Changes no engine state: a caller that shares the loop with the turns (the console)
        calls it between two snapshots, so `snapshot()` has few views left to build at once."""
        return self._views.build(limit)

    def snapshot(self) -> EngineSnapshot:
        """At most `monitor.snapshot_views` session views are built for one snapshot: with
        more sessions than that unlisted (a million restored ones), `unlisted` says how many
        are still to come, and the next snapshots (and `refresh_views`) list them."""
        self._views.build(self.config.monitor.snapshot_views)
        views = self._views.freeze()
        return EngineSnapshot(
            taken_at=self.clock.now(),
            sessions=views.sequence(),
            sessions_by_id=views,
            unlisted=self._views.unlisted,
            users=self._registry.users(),
            quotas=self._quota_watch.nearest(),
            monitor=self._monitor.snapshot(),
            session_events=dict(self._registry.event_counts),
            pools=self._runner.pool_views(),
            workers=self._balancer.snapshot(),
            moves_total=self._balancer.moves_total,
            clients=self._runner.client_stats(),
            store=self._link.store.stats() if self._link.store is not None else None,
            cache=self._hot.view(self._residency.unreadable, self._paging.pending),
            cluster=self._cluster.view() if self._cluster is not None else None,
        )

    # -- authentication and cluster membership --------------------------------------------------
    # Each call authenticates in its own frame, `self._auth.authenticate(...)`, after this when
    # there is something to await first: a refusal unwinds one coroutine less (a coroutine
    # unwound by an exception cost about 2,000 instructions, an eighth of a refusal's own work).
    async def _make_current(self, session_id: object, token: object) -> None:
        """Before authenticating: a cluster worker makes its copy of the session current, and
        while paging in the session is read if it is not in yet; a presentation in backoff is
        refused first, before any round trip."""
        self._auth.refuse_backed_off(session_id, token)
        if self._cluster is not None:
            await self._cluster.sync(session_id)
        else:
            await self._paging.ensure(session_id)

    async def _join_cluster(self) -> ClusterWorker:
        state, worker_id = await connect(self.config)
        worker = ClusterWorker(
            state, worker_id, self.config, registry=self._registry, quotas=self._quotas,
            monitor=self._monitor, adoption=self._adoption, store=self._stored,
            persist_later=self._link.later,
            forget=lambda s: self._registry.remove(
                s.session_id, "ended", self.clock.now(), "ended on another worker"
            ),
            recent_sessions=self._views.recent,
        )
        self._turns.cluster = worker
        self._quota_watch.share(worker.standings)  # the console's quotas: the cluster's count
        self.operator.cluster = worker  # acknowledging other workers' alerts
        worker.join(lambda: worker_load(
            self._monitor.snapshot(), self._runner.pool_views(), len(self._registry)
        ))
        return worker

    # -- tokens, ending and durability ----------------------------------------------------------
    def _on_move(self, move: Move) -> None:
        """A session migrates: its next turn runs on the new worker's pools."""
        session = self._registry.get(move.session_id)
        if session is not None:
            session.worker = move.to_worker
            self._views.invalidate(session)
            self._link.later(Assign(move.session_id, move.to_worker))

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
        if self._cluster is not None:  # the other workers' copies take the new token's hash
            await self._cluster.bump(session.session_id)
        return new_token

    async def _set_tier(self, user_id: str, tier: str) -> None:
        """The operator's tier change: here, with the user's stored sessions (it outlasts a
        restart) and, in a cluster, in Valkey/Redis, where every worker's quotas read it."""
        self._quotas.set_tier(user_id, tier)  # validates first
        for session in self._registry.of_user(user_id):
            session.tier = tier
            self._views.invalidate(session)
        await self._link.commit(UserTier(user_id, tier))
        if self._cluster is not None:
            await self._cluster.set_tier(user_id, tier)
            await self.store.flush()  # in the store before other workers read it
            await self._cluster.tier_changed(user_id)

    async def _end(self, session: Session, reason: str) -> None:
        """End a session now and return once its rows and wrapped key are deleted on disk."""
        self._registry.remove(session.session_id, "ended", self.clock.now(), reason)
        await self.store.flush()
        if self._cluster is not None:  # the other workers forget it at its next use
            await self._cluster.bump(session.session_id)

    async def _restore(self) -> RestoreReport:
        """Bring back the users' quota windows and the first page of live sessions (cold: no
        message read); `self._paging` brings the rest after open() returns."""
        store = self._link.store
        assert store is not None and self._keyring is not None
        restored = await store.load_live(self.clock.now(), sessions=False)
        self._monitor.alert_manager.continue_after(
            restored.max_alert_ids.get(self._alert_owner(), 0)
        )
        counting = asyncio.ensure_future(self._paging.count())  # beside the first page
        try:
            first = await self._paging.read_page()
        finally:
            await counting
        if self._cluster is not None and first:
            check_cluster_key(self._keyring, first[0].row.wrapped_key)
        self._paging.adopt_page(first)  # before the quota windows: it sets the users' tiers
        report = restore_quota_windows(restored, self._quotas)
        if self._cluster is not None:  # the first worker after Valkey/Redis lost its data
            await self._cluster.rebuild()
        return report

    def _place_promoted(self, session: Session) -> None:
        """A cold row of the registry became an object (its first use): place it on a lane.
        The placement is not written: a row's stored lane says where it last ran, and a write
        at a first use put a commit of its own ahead of the turn's (0.45 ms more at the p50)."""
        self._adoption.place(session)

    def _alert_owner(self) -> str:
        """Whose numbering the monitor's alerts follow in the store: this worker's name in a
        cluster (each worker numbers its own), "" for a process alone."""
        return self._cluster.worker_id if self._cluster is not None else ""

    def _stored(self) -> Store:
        """The store, open or not yet (start-up reads it before the engine is open)."""
        assert self._link.store is not None
        return self._link.store

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

