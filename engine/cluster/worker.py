"""What one engine process does as a worker of a cluster, around the engine's own steps.

Any worker serves any session: the sessions live in the shared store (PostgreSQL) and each
worker holds copies. A copy is current while the session's version in Valkey/Redis is the one
the worker last read or wrote (engine/cluster/versions.py); otherwise it is read again from
the store before it is used. So before a call is authenticated (`sync`) the worker checks the
version (one round trip) and brings in a session it has not seen, refreshes one another worker
changed, or forgets one another worker ended. A turn then takes the session's lease through
the TurnGate (`start`): one turn at a time cluster-wide, and if another worker held the session
since, its copy is refreshed under the lease. `finish` settles and raises the version after
the store has the turn. Quotas and rates are decided in Valkey/Redis alone, never locally.
A turn's write says which worker served it (`served`) when that is not what the store already
says, so a rebuild puts the session's affinity back there.

The user's session cap holds cluster-wide too (`place_session`): a session evicted to make room
is ended in the store and its version raised, so every worker then refuses it as unknown. When
Valkey/Redis lost its data, the first decision that finds it gone rebuilds it from the store
(`rebuild`, engine/cluster/rebuild.py) before anything is decided.

A drain (`drain`) is remembered here, not only in Valkey/Redis: each heartbeat says the worker
drains and drains it again (the mark, and any session placed on it since), so a server that
came back empty learns it at the next heartbeat, and the other workers, which saw it at theirs,
place nothing on it meanwhile, the rebuild's placement included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from engine.cluster.alert_board import AlertBoard
from engine.cluster.connection import BACKEND
from engine.cluster.placement import Moved
from engine.cluster.rebuild import NotRebuilt
from engine.cluster.registry import WorkerLoad, WorkerView
from engine.cluster.session_board import PUBLISHED as SESSIONS_PUBLISHED
from engine.cluster.session_board import SessionBoard
from engine.cluster.session_counts import SessionCounts
from engine.cluster.standings import QuotaStandings
from engine.cluster.state import ClusterState
from engine.cluster.turns import RunningTurn, TurnWaits
from engine.cluster.user_sessions import Refused
from engine.config import DATABASE_URL_ENV, MASTER_KEY_ENV, REDIS_URL_ENV, EngineConfig
from engine.errors import (
    ClusterUnavailable,
    ConfigurationError,
    DecryptionFailed,
    EngineError,
    SessionBusy,
    SessionLimitReached,
)
from engine.monitor import Monitor, MonitorSnapshot
from engine.pool import PoolView
from engine.quotas import BYTES_PER_MB, QuotaManager, Reservation
from engine.restore import ColdAdoption, cold_session
from engine.security import KeyRing, TokenRecord
from engine.sessions import Session, SessionEvent, SessionRegistry, lookable_id
from engine.store import EndSession, Restored, Served, SessionRecord, Store
from engine.views import ClusterView, SessionView, WorkerAlerts, WorkerSessions

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE_POLL_S = 0.02  # how soon a turn waiting for another worker's turn first asks again
LEASE_POLL_MAX_S = 0.1  # and how long it waits between asks at most, the lapse aside
LEASE_LAPSE_MARGIN_S = 0.002  # asked again this long after the lease's PTTL ran out
REBUILD_POLL_S = 0.05  # how often a worker waiting for another's rebuild asks again
REBUILD_WAIT_S = 10.0  # how long a decision waits for another worker's rebuild
EVICTED = "user session cap reached"
EXPIRY_RETRY_S = 5.0  # a session whose expiry could not be checked is checked again after this


class ClusterWorker:
    def __init__(
        self,
        state: ClusterState,
        worker_id: str,
        config: EngineConfig,
        *,
        registry: SessionRegistry,
        quotas: QuotaManager,
        monitor: Monitor,
        adoption: ColdAdoption,
        store: Callable[[], Store],
        persist_later: Callable[..., None],
        forget: Callable[[Session], None],
        recent_sessions: Callable[[int], list[SessionView]],
    ) -> None:
        self.state = state
        self.worker_id = worker_id
        self._config = config
        self._registry = registry
        self._quotas = quotas
        self._monitor = monitor
        self._adoption = adoption
        self._store = store
        self._persist_later = persist_later
        self._forget = forget
        self._recent_sessions = recent_sessions
        self._tiers = adoption.tiers
        self.available = True  # the last call to Valkey/Redis was answered (readiness)
        self.members: tuple[WorkerView, ...] = ()  # the workers alive at the last heartbeat
        self._members_before: tuple[WorkerView, ...] = ()  # and at the one before
        self._renewing: dict[str, asyncio.Task[None]] = {}  # running turns' slots: renewals
        self._heartbeat: asyncio.Task[None] | None = None
        self.draining = False  # `drain` was called: every heartbeat drains again
        self.standings = QuotaStandings(
            state.client, state.quotas, config.clock, monitor,
            config.monitor.quota_watch_percent,
        )
        self.session_counts = SessionCounts(
            state.sessions, config.clock, config.sessions.lifetime_s
        )
        self._alert_board = AlertBoard(state.client, state.registry.dead_after_s)
        self._others_alerts: tuple[WorkerAlerts, ...] = ()
        self._alerts_read_at: float | None = None
        self._session_board = SessionBoard(state.client, state.registry.dead_after_s)
        self._others_sessions: tuple[WorkerSessions, ...] = ()
        self._reading: asyncio.Task[None] | None = None
        self._views_failing = False
        self._rebuilding = asyncio.Lock()  # one rebuild attempt at a time in this worker
        registry.subscribe(self._on_session_event)

    # -- membership ------------------------------------------------------------------------------
    def join(self, load: Callable[[], WorkerLoad]) -> None:
        """Appear in the worker registry, with `load()` at each heartbeat, until `leave()`;
        publish this worker's alerts and read the cluster's for the console as often."""
        self._heartbeat = asyncio.create_task(self._beat(load), name="cluster heartbeat")
        self._reading = asyncio.create_task(self._read_forever(), name="cluster views")

    async def _beat(self, load: Callable[[], WorkerLoad]) -> None:
        registry = self.state.registry
        while True:
            try:
                await registry.heartbeat(self.worker_id, replace(load(), draining=self.draining))
                self._members_before, self.members = self.members, await registry.alive()
                if self.draining:
                    await self._drain_again()
                self.available = True
            except ClusterUnavailable as exc:
                self.available = False
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            _stop_if_cancelled()
            await asyncio.sleep(registry.heartbeat_s)

    async def _read_forever(self) -> None:
        """Apart from the heartbeat, so a slow read never delays it (nor a turn)."""
        while True:
            try:
                await self.read_views()
            except Exception:
                log.exception("worker %s: reading the cluster's views failed", self.worker_id)
            _stop_if_cancelled()
            await asyncio.sleep(self.state.registry.heartbeat_s)

    async def read_views(self) -> None:
        """Exchange alerts and recent sessions with the other workers and read the users'
        quota standings and session counts. A failure keeps the last figures (their age shows)
        and is logged when reads start failing, not at every period (the heartbeat already says
        the server is down)."""
        now = self._config.clock.now()
        try:
            await self._exchange_alerts()
            self._alerts_read_at = now
            self._others_sessions = await self._session_board.exchange(
                self.worker_id, self._recent_sessions(SESSIONS_PUBLISHED),
                [m.worker_id for m in self.members],
            )
            await self.standings.poll()
            await self.session_counts.poll()
        except ClusterUnavailable as exc:
            if not self._views_failing:
                log.warning("worker %s: the cluster's alerts and quotas are not read: %s "
                            "(the console shows the last ones, with their age)",
                            self.worker_id, exc)
            self._views_failing = True
            return
        if self._views_failing:
            log.info("worker %s: reading the cluster's alerts and quotas again", self.worker_id)
        self._views_failing = False

    async def _exchange_alerts(self) -> None:
        board, monitor = self._alert_board, self._monitor
        for alert_id in await board.take_requests(self.worker_id):
            monitor.acknowledge(alert_id)
        self._others_alerts = await board.exchange(
            self.worker_id, monitor.alerts(), monitor.alert_manager.unacknowledged,
            [m.worker_id for m in self.members],
        )

    async def acknowledge_elsewhere(self, worker_id: str, alert_ids: Sequence[int]) -> None:
        """Ask another worker to acknowledge its alerts; it does before its next publish."""
        await self._answered(self._alert_board.request(worker_id, alert_ids))

    def view(self) -> ClusterView:
        return ClusterView(
            self.worker_id, self.available, self.members,
            alerts=self._others_alerts, alerts_read_at=self._alerts_read_at,
            quotas_read_at=self.standings.read_at, sessions=self._others_sessions,
        )

    async def leave(self) -> None:
        """Leave the registry at once (not after `worker_dead_after_s`) and disconnect."""
        for task in self._renewing.values():
            task.cancel()
        for task in (self._heartbeat, self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(ClusterUnavailable):
            await self.state.registry.deregister(self.worker_id)
        await self.state.aclose()

    async def _answered(self, call: Awaitable[T]) -> T:
        """`await call`, keeping `available` true to whether the server answers."""
        try:
            result = await call
        except ClusterUnavailable:
            self.available = False
            raise
        self.available = True
        return result

    # -- sessions --------------------------------------------------------------------------------
    async def sync(self, session_id: object) -> None:
        """Make this worker's copy of the session current before it is authenticated."""
        if not lookable_id(session_id):
            return
        version = await self._answered(self.state.versions.get(session_id))
        session = self._registry.get(session_id)
        if session is not None and session.version == version:
            return
        await self._reload(session_id, version)

    async def _reload(self, session_id: str, version: int) -> None:
        record = await self._store().load_record(session_id)
        session = self._registry.get(session_id)  # it may have come or gone meanwhile
        if record is None:
            if session is not None and not session.busy:
                self._forget(session)  # ended by another worker
            return
        if session is None:
            session = cold_session(record.row, record.figures)
            move = self._adoption.adopt(session)
            if move is not None:
                self._persist_later(move)
        else:
            self._refresh(session, record)
        session.version = version

    def _refresh(self, session: Session, record: SessionRecord) -> None:
        """Another worker changed the session: take its counters, token and tier from the
        store, and read the context again at its next use."""
        row = record.row
        if row.tier != session.tier and row.tier in self._tiers:
            session.tier = row.tier
            self._quotas.set_tier(session.user_id, row.tier)
        session.token = TokenRecord(row.token_hash, row.token_issued_at, row.token_expires_at)
        self._registry.touch(session, row.last_active_at)
        session.turns, session.errors = row.turns, row.errors
        session.prompt_tokens, session.completion_tokens = row.prompt_tokens, row.completion_tokens
        session.agent_type = row.agent_type
        session.served_by = row.served_by
        if session.hot:
            session.stale = True
            return
        figures = record.figures
        messages, size = (figures.messages, figures.bytes) if figures else (0, 0)
        change = (size - session.cold_bytes) / BYTES_PER_MB
        self._quotas.adjust(session.user_id, "storage_mb", change)
        session.cold_messages, session.cold_bytes = messages, size
        session.next_seq = figures.next_seq if figures else 0

    async def place_session(self, user_id: str, session_id: str, now: float) -> int:
        """Claim a new session's place under its user's cap, cluster-wide: the user's oldest
        idle sessions make room wherever they are served (SessionLimitReached when every one
        has a turn running). Returns the new session's version."""
        cap, lifetime = self._config.sessions.max_per_user, self._config.sessions.lifetime_s
        sessions = self.state.sessions
        got = await self._decided(
            lambda: sessions.claim(user_id, session_id, now, cap, lifetime)
        )
        if isinstance(got, Refused):
            raise SessionLimitReached(user_id, cap)
        if got.evicted:
            await self._end_evicted(got.evicted, now)
        candidates = self._taking() or [self.worker_id]
        await self._answered(self.state.placement.place(session_id, candidates))
        return got.version

    async def _end_evicted(self, evicted: Sequence[str], now: float) -> None:
        """End sessions the cap evicted: in the store first, then raise their versions, so a
        worker holding one reloads it, finds it gone and refuses it like an unknown session."""
        for session_id in evicted:
            if self._registry.get(session_id) is not None:  # the engine's listener ends it
                self._registry.remove(session_id, "evicted", now, EVICTED)
            else:  # not held here: nothing here forgets its worker either
                self._persist_later(EndSession(session_id, now, EVICTED))
                await self._answered(self.state.placement.forget(session_id))
        await self._store().flush()
        for session_id in evicted:
            await self.bump(session_id)

    def _on_session_event(self, event: SessionEvent, session: Session) -> None:
        """A session that ended, expired or was evicted leaves its user's cluster-wide count
        and its worker (in the background: the end itself does not wait for Valkey/Redis)."""
        if event.kind == "created":
            return
        task = asyncio.ensure_future(self._uncount(event.user_id, event.session_id))
        task.add_done_callback(_log_failure)

    async def _uncount(self, user_id: str, session_id: str) -> None:
        await self.state.sessions.remove(user_id, session_id)
        await self.state.placement.forget(session_id)

    async def drain(self) -> tuple[Moved, ...]:
        """Take no new sessions and move this worker's sessions' affinity to the others alive,
        the fewest moves there can be (engine/cluster/placement.py). Remembered: if this call
        fails or Valkey/Redis loses the mark, the next heartbeat drains again."""
        self.draining = True
        remaining = [w for w in self._taking() if w != self.worker_id]
        moves = await self._answered(self.state.placement.drain(self.worker_id, remaining))
        log.info(
            "worker %s draining: %d sessions' affinity moved to %s", self.worker_id, len(moves),
            ", ".join(remaining) or "no other worker",
        )
        return moves

    async def _drain_again(self) -> None:
        """At a draining worker's heartbeat: mark it again (a server that restarted empty lost
        the mark) and move any session placed on it since (by a worker that did not know)."""
        remaining = [w for w in self._taking() if w != self.worker_id]
        moves = await self.state.placement.drain(self.worker_id, remaining)
        if moves:
            log.warning(
                "worker %s draining: %d sessions placed on it since moved to %s",
                self.worker_id, len(moves), ", ".join(remaining),
            )

    def _taking(self) -> list[str]:
        """The workers alive at the last heartbeat that take new sessions (not draining)."""
        return [
            m.worker_id for m in self.members
            if not m.load.draining and not (m.worker_id == self.worker_id and self.draining)
        ]

    def expire_soon(self, sessions: Sequence[Session], now: float) -> None:
        """End the sessions past their deadline in this worker's copy once the store agrees
        (another worker's turns may have kept one alive: it is then re-armed instead)."""
        if sessions:
            task = asyncio.ensure_future(self._expire(sessions, now))
            task.add_done_callback(_log_failure)

    async def _expire(self, sessions: Sequence[Session], now: float) -> None:
        expired: list[str] = []
        for session in sessions:
            try:
                record = await self._store().load_record(session.session_id)
            except EngineError as exc:
                log.warning("session %s: checking its expiry: %s", session.session_id[:8], exc)
                self._registry.rearm(session, now + EXPIRY_RETRY_S)
                continue
            if self._registry.get(session.session_id) is not session:
                continue  # ended meanwhile
            if record is None:
                if not session.busy:
                    self._forget(session)  # ended by another worker
                continue
            self._registry.touch(session, record.row.last_active_at)
            reason = session.expiry_reason(now)
            if reason is None or session.busy:
                log.info("session %s: kept alive on another worker", session.session_id[:8])
                self._registry.rearm(session)
                continue
            self._registry.remove(session.session_id, "expired", now, reason)
            expired.append(session.session_id)
        if expired:
            await self._store().flush()
            for session_id in expired:  # every worker's copy finds it gone at its next use
                await self.bump(session_id)

    async def rebuild(self, restored: Restored | None = None) -> None:
        """Make sure the shared state is whole. If Valkey/Redis lost it and this worker claims
        the rebuild, replay it from `restored` (what the store holds; read now if None);
        otherwise wait for the worker that does (ClusterUnavailable past REBUILD_WAIT_S)."""
        rebuild = self.state.rebuild
        async with self._rebuilding:
            if await self._answered(rebuild.claim(self.worker_id)):
                try:
                    if restored is None:
                        restored = await self._store().load_live(self._config.clock.now())
                    replayed = await rebuild.replay(restored, self._config.sessions.lifetime_s)
                    await rebuild.done(self.worker_id)
                except BaseException:
                    with contextlib.suppress(ClusterUnavailable):
                        await rebuild.abandon(self.worker_id)
                    raise
                # After `done`: no decision reads the affinity, so no worker waits for it.
                try:
                    placed = await rebuild.place(restored, self._placeable())
                except ClusterUnavailable as exc:
                    placed = 0
                    log.warning("worker %s: placing the sessions after the rebuild: %s (those "
                                "not placed keep no affinity)", self.worker_id, exc)
                log.warning(
                    "worker %s rebuilt the cluster's shared state from the store: %d users, "
                    "%d sessions (%d placed), %d quota buckets", self.worker_id, replayed.users,
                    replayed.sessions, placed, replayed.quota_events,
                )
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REBUILD_WAIT_S
            while not await self._answered(rebuild.is_rebuilt()):
                if loop.time() >= deadline:
                    raise ClusterUnavailable(
                        BACKEND, self.state.client.url,
                        "it lost its data and another worker is still rebuilding it from the "
                        "store; retry shortly",
                    )
                await asyncio.sleep(REBUILD_POLL_S)

    def _placeable(self) -> list[str]:
        """The workers a rebuild places sessions on: this one and those alive at either of
        the last two heartbeats (the server that lost its data lost the registry too: a
        heartbeat since may list only the workers that beat again first), less those that
        drain as their latest heartbeat said (the server lost their marks too)."""
        latest = {m.worker_id: m.load.draining for m in (*self._members_before, *self.members)}
        latest[self.worker_id] = self.draining
        return sorted(worker for worker, draining in latest.items() if not draining)

    async def _decided(self, decide: Callable[[], Awaitable[T | NotRebuilt]]) -> T:
        """`await decide()`, rebuilding the shared state first if it was lost."""
        got = await self._answered(decide())
        if isinstance(got, NotRebuilt):
            await self.rebuild()
            got = await self._answered(decide())
            if isinstance(got, NotRebuilt):
                raise ClusterUnavailable(
                    BACKEND, self.state.client.url, "it lost its data again while rebuilding"
                )
        return got

    # -- turns -----------------------------------------------------------------------------------
    async def admit(self, session: Session, amounts: Mapping[str, float]) -> Reservation:
        """The session's and the user's rates, then the quota reservation, cluster-wide."""
        turns = self.state.turns
        return await self._decided(
            lambda: turns.admit(session.session_id, session.user_id, amounts)
        )

    async def start(self, session: Session, wait_s: float) -> RunningTurn:
        """Take the session's lease (waiting up to `wait_s` for another worker's turn on it)
        and a slot under the user's cap; `catch_up` next."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        cap = self._config.sessions.max_per_user
        poll = LEASE_POLL_S
        while True:
            got = await self._answered(
                self.state.turns.start(session.session_id, session.user_id, self.worker_id, cap)
            )
            if isinstance(got, RunningTurn):
                break
            left = deadline - loop.time()
            if left <= 0:
                raise SessionBusy("enqueue", 0)
            await asyncio.sleep(min(lease_wait(got, poll), left))
            poll = min(2 * poll, LEASE_POLL_MAX_S)
        self._renewing[got.slot] = asyncio.create_task(self._renew(got), name="lease renewal")
        return got

    def served(self, session: Session) -> tuple[Served, ...]:
        """What a turn's write adds to say this worker served it: nothing while the store says
        so already (the same worker's turns, the usual case), else one `Served`."""
        if session.served_by == self.worker_id:
            return ()
        return (Served(session.session_id, self.worker_id),)

    async def catch_up(self, session: Session, turn: RunningTurn) -> None:
        """Under the lease: read the session again if another worker changed it since."""
        if turn.version != session.version:
            await self._reload(session.session_id, turn.version)

    async def _renew(self, turn: RunningTurn) -> None:
        """Keep the lease while the turn runs (a turn may outlast the TTL: a slow model, a
        queue for an agent); the TTL only decides how soon a dead worker's sessions move."""
        lease = turn.lease
        while True:
            await asyncio.sleep(lease.ttl_s / 3)
            try:
                ok = await self.state.leases.renew(lease)
                if not ok:
                    return  # lapsed already: `finish` reports it
            except ClusterUnavailable as exc:
                log.warning("session %s: renewing its lease: %s", lease.session_id[:8], exc)

    def _stop_renewing(self, turn: RunningTurn) -> None:
        task = self._renewing.pop(turn.slot, None)
        if task is not None:
            task.cancel()

    async def finish(
        self, session: Session, turn: RunningTurn, reservation: Reservation,
        used: Mapping[str, float],
    ) -> None:
        """The turn is in the store: settle, leave, release the lease, raise the version.

        The reply is owed whatever happens here: if the server went away, the lease, slot and
        reservation lapse by themselves, and another worker's copy reloads when its write of
        the next message collides with this one's (a rejected write marks its copy stale)."""
        self._stop_renewing(turn)
        session.served_by = self.worker_id  # the turn's write said so (`served`)
        try:
            held, version = await self.state.turns.finish(turn, reservation, used)
        except ClusterUnavailable as exc:
            log.warning("session %s: finishing a stored turn: %s", session.session_id[:8], exc)
            return
        if not held:
            log.warning(
                "session %s: the lease passed to another worker before this turn finished",
                session.session_id[:8],
            )
        session.version = version

    def release_soon(self, turn: RunningTurn | None, reservation: Reservation) -> None:
        """A failed or cancelled turn (`turn` None: before it held the lease): give back its
        reservation, slot and lease, without making the failing caller wait (nor failing it
        again if the server is down: the reservation, slot and lease lapse by themselves)."""
        if turn is not None:
            self._stop_renewing(turn)
        task = asyncio.ensure_future(self._release(turn, reservation))
        task.add_done_callback(_log_failure)

    async def _release(self, turn: RunningTurn | None, reservation: Reservation) -> None:
        if turn is not None:
            await self.state.turns.finish(turn, reservation, None)
        else:
            await self.state.quotas.release(reservation)

    async def set_tier(self, user_id: str, tier: str) -> None:
        """Every worker's quota decisions use the tier from the next one on."""
        await self._answered(self.state.quotas.set_tier(user_id, tier))

    async def tier_changed(self, user_id: str) -> None:
        """After a tier change is in the store: every worker's copies of the user's sessions
        take it at their next use (their versions go up)."""
        for session_id in await self._answered(self.state.sessions.of_user(user_id)):
            await self.bump(session_id)

    async def bump(self, session_id: str) -> None:
        """After a change outside a turn (rotation, end) is in the store."""
        version = await self.state.versions.bump(session_id)
        session = self._registry.get(session_id)
        if session is not None:
            session.version = version


async def connect(config: EngineConfig) -> tuple[ClusterState, str]:
    """The cluster's shared state and this worker's name; its sessions must be in a shared
    store (ConfigurationError) and its Valkey/Redis must answer (ClusterUnavailable)."""
    if not config.store.database_url:
        raise ConfigurationError(
            "a worker of a cluster keeps its sessions in PostgreSQL, shared by every worker: "
            f"set {DATABASE_URL_ENV} (or StoreSettings.database_url) with {REDIS_URL_ENV}"
        )
    state = await ClusterState.open(config.cluster, config.clock, config.limits)
    worker_id = config.cluster.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        await state.placement.undrain(worker_id)  # a worker coming back takes sessions again
    except BaseException:
        await state.aclose()
        raise
    return state, worker_id


def lease_wait(waits: TurnWaits, poll: float) -> float:
    """How long a turn that cannot start yet waits before asking again. A holder that finishes
    frees the lease at once, so the turn asks again after `poll` (doubling from LEASE_POLL_S up
    to LEASE_POLL_MAX_S: a dead holder's lease is not asked for 50 times a second for the
    whole TTL); a lease held by a dead worker frees only when it lapses, so the turn never
    waits past the lapse its PTTL gave (then it takes it the moment it is free). A turn over
    its user's in-flight cap asks every LEASE_POLL_S: any of the user's turns ending frees a
    slot."""
    if waits.lease_left_s is None:
        return LEASE_POLL_S
    return min(poll, waits.lease_left_s + LEASE_LAPSE_MARGIN_S)


def worker_load(snap: MonitorSnapshot, pools: Sequence[PoolView], sessions: int) -> WorkerLoad:
    """What this worker reports of itself with each heartbeat."""
    capacity = sum(p.max_size for p in pools)
    return WorkerLoad(
        sessions=sessions, turns_per_s=snap.turns_rate, p99_s=snap.latency.p99,
        pool_occupancy=sum(p.in_use for p in pools) / capacity if capacity else 0.0,
    )


def check_cluster_key(keyring: KeyRing, wrapped_key: bytes) -> None:
    """Refuse to start a worker whose master key cannot unwrap the cluster's session keys,
    before it serves anything (it would answer every session as unreadable)."""
    try:
        keyring.unwrap(wrapped_key)
    except DecryptionFailed:
        raise ConfigurationError(
            "this worker's master key cannot unwrap the cluster's session keys: every worker "
            f"of a cluster needs the same {MASTER_KEY_ENV} (this worker's key fingerprints: "
            f"{', '.join(keyring.fingerprints())})"
        ) from None


def _stop_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled: a cancellation that arrived during a
    Valkey/Redis call can come out of redis-py as a connection error, which the loops above
    survive, and `leave()` would then wait for them forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _log_failure(task: asyncio.Future[None]) -> None:
    """For background updates (a failed turn's hold released, an ended session uncounted)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        if isinstance(exc, ClusterUnavailable):
            log.warning("a background cluster update: %s (what it held lapses by itself)", exc)
        else:
            log.error("a background cluster update failed", exc_info=exc)
