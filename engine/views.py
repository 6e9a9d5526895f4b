"""What the engine hands out: replies to callers and plain, immutable views for the console.

Nothing here holds a secret or a live object; every view is a frozen record that a console
refresh, an export or a test can keep without holding engine state alive.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from engine.alerts import Alert
from engine.balancer import WorkerView
from engine.clients import ClientCacheStats
from engine.cluster.registry import WorkerView as ClusterMember
from engine.health import SessionMetrics
from engine.monitor import Monitor, MonitorSnapshot
from engine.pool import PoolView
from engine.quotas import QuotaUsage
from engine.sessions import Message, Session, SessionRegistry
from engine.store import StoreStats
from engine.view_table import FrozenViews, ViewTable


@dataclass(frozen=True, slots=True)
class CreatedSession:
    """What `create_session` returns. The token is shown once here and stored only as a hash."""

    session_id: str
    user_id: str
    token: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True, slots=True)
class Reply:
    session_id: str
    agent_type: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model_latency_s: float  # the model's share of latency_s; the rest is engine overhead


@dataclass(frozen=True, slots=True)
class SessionView:
    """One row of the console's sessions table: no content, no secrets."""

    session_id: str
    user_id: str
    tier: str
    agent_type: str
    worker: str
    state: str
    created_at: float
    last_active_at: float
    messages: int
    turns: int
    tokens: int
    errors: int
    health: int
    health_reasons: tuple[str, ...]
    origin: str = "python"  # "http" for sessions created through the gateway


@dataclass(frozen=True, slots=True)
class QuotaView:
    user_id: str
    tier: str
    highest_percent: float
    usage: tuple[QuotaUsage, ...]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What `open()` brought back from the store: every session cold, no message decrypted (a
    session that fails to decrypt is reported, alone, when it is first used)."""

    sessions: int
    messages: int
    purged: int
    quota_buckets: int
    clean_shutdown: bool
    pending: int = 0  # stored sessions still being paged in behind open() (background_restore)


@dataclass(frozen=True, slots=True)
class CacheView:
    """The hot-session cache: memory follows the sessions in use, the store holds the rest."""

    hot: int
    cold: int
    hot_bytes: int
    budget_bytes: int
    hits: int
    loads: int  # first uses that read a session from the store
    unreadable: int  # sessions whose key or messages failed to decrypt when loaded
    restoring: int = 0  # stored sessions not paged in yet since open (background_restore)

    @property
    def hit_ratio(self) -> float:
        uses = self.hits + self.loads
        return self.hits / uses if uses else 1.0


@dataclass(frozen=True, slots=True)
class SessionDetail:
    """Everything the operator may see of one session, content included (console detail view)."""

    view: SessionView
    metadata: Mapping[str, Any]
    messages: tuple[Message, ...]
    dropped_messages: int
    metrics: SessionMetrics | None
    quota: tuple[QuotaUsage, ...]
    alerts: tuple[Alert, ...]
    loaded: bool = True  # False for a cold session: messages are empty until loaded


@dataclass(frozen=True, slots=True)
class WorkerAlerts:
    """The alerts another worker of the cluster published: its newest, open ones first."""

    worker_id: str
    alerts: tuple[Alert, ...]  # newest first
    unacknowledged: int  # of all it holds, not only those published


@dataclass(frozen=True, slots=True)
class WorkerSessions:
    """The sessions another worker of the cluster published: those it changed last (a bounded
    share of what it holds), its views of them, the most recently active first."""

    worker_id: str
    sessions: tuple[SessionView, ...]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """This worker's view of its cluster: its name, whether Valkey/Redis answers, the workers
    alive at its last heartbeat with the load each reported, and the other workers' alerts and
    the users' quota standings as last read (`*_read_at` on the engine clock; None: not yet)."""

    worker_id: str
    available: bool
    members: tuple[ClusterMember, ...]
    alerts: tuple[WorkerAlerts, ...] = ()
    alerts_read_at: float | None = None
    quotas_read_at: float | None = None
    sessions: tuple[WorkerSessions, ...] = ()  # read with the alerts


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Plain immutable data for the console; building it costs the views changed since the
    last one (engine.view_table), not O(sessions).

    `sessions` lists the live sessions viewed so far: all of them but `unlisted`, which the
    next snapshots list (a snapshot builds a bounded number of views)."""

    taken_at: float
    sessions: Sequence[SessionView]  # in no particular order: the console sorts them
    sessions_by_id: Mapping[str, SessionView]
    users: int
    quotas: tuple[QuotaView, ...]
    monitor: MonitorSnapshot
    session_events: Mapping[str, int]
    pools: tuple[PoolView, ...]
    workers: tuple[WorkerView, ...]
    moves_total: int
    clients: ClientCacheStats | None
    store: StoreStats | None
    cache: CacheView | None = None
    cluster: ClusterView | None = None  # None: a single process
    unlisted: int = 0  # live sessions not in `sessions` yet (listed by the next snapshots)

    @property
    def live_sessions(self) -> int:
        """Every live session, listed or not."""
        return len(self.sessions) + self.unlisted


class SessionViews:
    """Each live session's `SessionView`, rebuilt when asked for rather than on every change.

    A session that turns many times between two console refreshes is rebuilt once. A session's
    first view waits for the first look too (a view and its metrics are about 280 B, and most
    engines run without a console), and then comes in bounded batches (`build`): a million
    restored sessions take about 7 s to view, which one snapshot must not hold the loop for.
    Sessions made or changed since the last look come first (the ones an operator is watching),
    then a pass over the registry finds the rest (restored ones, still packed rows), a batch at
    a time; `unlisted` says how many are still to come.

    With `recent_max`, the sessions changed last are remembered in order (one dict move a
    change), so a worker of a cluster publishes what it serves now (`recent`) without a pass
    over them all; a process alone remembers none.
    """

    __slots__ = (
        "_monitor", "_pass", "_recent", "_recent_max", "_registry", "_stale", "_unviewed",
        "_views",
    )

    RECENT_MAX = 256  # what a worker of a cluster remembers

    def __init__(
        self, registry: SessionRegistry, monitor: Monitor, recent_max: int = 0
    ) -> None:
        self._registry = registry
        self._monitor = monitor
        self._views: ViewTable[SessionView] = ViewTable()
        self._stale: set[str] = set()
        self._unviewed: dict[str, None] = {}  # an ordered set: sessions without a view yet
        self._pass: Iterator[Session] | None = None  # the registry pass under way, if any
        self._recent: dict[str, None] = {}  # session ids, the one changed last at the end
        self._recent_max = recent_max

    def invalidate(self, session: Session) -> None:
        """Mark the session's view out of date (or due to be built, once any view has been
        asked for: until then the registry pass of the first `build` finds them all)."""
        session_id = session.session_id
        if session_id in self._views:
            self._stale.add(session_id)
        elif self._views:
            self._unviewed[session_id] = None
        if self._recent_max:
            recent = self._recent
            recent.pop(session_id, None)
            recent[session_id] = None
            if len(recent) > self._recent_max:
                del recent[next(iter(recent))]

    def forget(self, session_id: str) -> None:
        self._views.pop(session_id)
        self._stale.discard(session_id)
        self._unviewed.pop(session_id, None)
        self._recent.pop(session_id, None)

    def recent(self, most: int) -> list[SessionView]:
        """Up to `most` up-to-date views of the sessions changed last, the most recently
        active first; costs at most `recent_max` views, whatever the number of sessions."""
        views, stale = self._views, self._stale
        chosen = []
        for session_id in reversed(self._recent):  # ties: the one changed last first
            session = self._registry.peek(session_id)
            if session is None:
                continue
            view = views.get(session_id)
            if view is None or session_id in stale:
                stale.discard(session_id)
                view = views[session_id] = self._build(session)
            chosen.append(view)
        return heapq.nlargest(most, chosen, key=attrgetter("last_active_at"))

    def view(self, session: Session) -> SessionView:
        """The session's view, up to date, built now if it is due (one session's detail)."""
        session_id = session.session_id
        view = self._views.get(session_id)
        if view is None or session_id in self._stale:
            self._stale.discard(session_id)
            self._unviewed.pop(session_id, None)
            view = self._views[session_id] = self._build(session)
        return view

    def freeze(self) -> FrozenViews[SessionView]:
        """The views built so far (see `build`), as of now: O(chunks changed), not O(views)
        (engine.view_table)."""
        return self._views.freeze()

    @property
    def unlisted(self) -> int:
        """Live sessions without a view yet: `build` lists them over the next calls."""
        return max(0, len(self._registry) - len(self._views))

    def build(self, limit: int) -> int:
        """Bring out-of-date views up to date and list sessions without one, looking at no more
        than `limit` sessions in all; returns how many views are still due (out of date
        or not built).

        Out-of-date views first, then sessions made or used since the last look, then the
        registry pass. A pass looks at each live session once (a packed row as a `Session`
        built for the look, ~5 us); rows added while it runs (paged in after `open`) are found
        by the next pass, which starts once this one ends with sessions still unlisted."""
        limit = self.refresh(limit)[1]
        registry, views, unviewed = self._registry, self._views, self._unviewed
        for session_id in list(itertools.islice(unviewed, limit)):  # the first seen first
            del unviewed[session_id]
            session = registry.held(session_id)
            if session is not None and session_id not in views:
                views[session_id] = self._build(session)
            limit -= 1
        while limit > 0 and len(views) < len(registry):
            if self._pass is None:
                self._pass = self._registry_pass()
            looked = 0
            for session in itertools.islice(self._pass, limit):
                looked += 1
                if session.session_id not in views:
                    views[session.session_id] = self._build(session)
            limit -= looked
            if limit > 0:  # the pass ended within the limit: a new one if any is unlisted
                self._pass = None
                if not looked:
                    break
        return len(self._stale) + self.unlisted

    def _registry_pass(self) -> Iterator[Session]:
        """Every live session once: the objects held when the pass starts (copied: the dict
        changes between batches), each if still held, then the rows still packed."""
        registry = self._registry
        for session in list(registry.objects()):
            if registry.held(session.session_id) is session:
                yield session
        yield from registry.cold.sessions()

    def refresh(self, limit: int) -> tuple[int, int]:
        """Rebuild up to `limit` out-of-date views now; returns how many are still out of date
        and how much of `limit` is left."""
        stale = self._stale
        while stale and limit > 0:
            session_id = stale.pop()
            session = self._registry.peek(session_id)
            if session is not None:
                self._views[session_id] = self._build(session)
            limit -= 1
        return len(stale), limit

    def _build(self, session: Session) -> SessionView:
        metrics = self._monitor.session_view(session.session_id)
        return SessionView(
            session_id=session.session_id,
            user_id=session.user_id,
            tier=session.tier,
            agent_type=session.agent_type,
            worker=session.worker,
            state="busy" if session.busy else "idle" if session.hot else "cold",
            created_at=session.created_at,
            last_active_at=session.last_active_at,
            messages=session.message_count,
            turns=session.turns,
            tokens=session.prompt_tokens + session.completion_tokens,
            errors=session.errors,
            health=metrics.health if metrics is not None else 100,
            health_reasons=metrics.health_reasons if metrics is not None else (),
            origin=session.origin,
        )
