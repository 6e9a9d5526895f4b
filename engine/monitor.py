"""Per-session, per-user and engine-wide metrics, session health with reasons, and alerting.

The records and the health score's rules live in `engine.health`; this module keeps them up to
date, rolls them up engine-wide and fires the alerts.

The engine calls `record_*` on a turn's path and `tick()` about once a second. Event rules
(quota, pool waits) are evaluated by the call that reports the event, authentication bursts when
the failures the authenticator logged are counted (every AUTH_LOG_BATCH, each tick, each read);
windowed rules (engine-wide error rate, p95 latency) by `tick()`, at O(window) cost, never
O(sessions). A session's state goes with `session_ended`; a user's goes `user_retention_s` after
their last session ended with no activity since, found through a heap of deadlines, not a scan.
Records for a session that was never started (or has ended) count engine-wide and per user only.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat

from engine.alerts import (
    DEFAULT_RULES,
    Alert,
    AlertManager,
    AlertRules,
    AuthBurstRule,
    Severity,
)
from engine.clock import Clock
from engine.errors import ConfigurationError, EngineError, RateLimited, Refusal
from engine.health import (
    DEFAULT_HEALTH,
    Health,
    HealthPolicy,
    RecentTurns,
    SessionMetrics,
    SessionStats,
    UserMetrics,
    UserStats,
    session_health,
)
from engine.metrics import LatencyHistogram, Percentiles, RateRing, WindowedHistogram

_MAX_AUTH_IDS = 1024  # presented session ids tracked for bursts; attacker-chosen, so bounded
_AUTH_SLOTS = 1024  # presented ids noted after one failure (a power of two)
_AUTH_SLOT_MASK = _AUTH_SLOTS - 1
AUTH_LOG_BATCH = 64  # failed authentications logged before they are counted
_MAX_ID_CHARS = 64
# An auth-burst alert is raised or refreshed (count, message, stored row) at most this often:
# refreshing it on every failure cost two store writes per failed authentication, which under
# a storm of stale tokens filled the commit queue and starved every turn (issue 15).
_AUTH_ALERT_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    agent_type: str
    waits: int
    timeouts: int
    wait: Percentiles


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    at: float
    sessions: int  # tracked by the monitor
    users: int
    turns: int
    errors: int
    failures: int  # errors that are not refusals (errors.Refusal)
    errors_by_type: tuple[tuple[str, int], ...]
    prompt_tokens: int
    completion_tokens: int
    auth_failures: int
    turns_per_s: tuple[float, ...]  # oldest first, one per second; last = second in progress
    tokens_per_s: tuple[float, ...]
    errors_per_s: tuple[float, ...]
    turns_rate: float  # per second over the last 10 completed seconds
    tokens_rate: float
    errors_rate: float
    latency: Percentiles  # current window
    latency_total: Percentiles
    pools: tuple[PoolMetrics, ...]
    alerts: tuple[Alert, ...]  # newest first
    alerts_unacknowledged: int
    alerts_dropped: int


@dataclass(slots=True, eq=False)
class PoolStats:
    waits: int = 0
    timeouts: int = 0
    wait: LatencyHistogram = field(default_factory=LatencyHistogram)


class Monitor:
    """Metrics, health and alerts for one engine; every method is synchronous and loop-owned."""

    def __init__(
        self,
        clock: Clock,
        alert_rules: AlertRules = DEFAULT_RULES,
        max_alerts: int = 500,
        cooldown_s: float = 60.0,
        *,
        health_policy: HealthPolicy = DEFAULT_HEALTH,
        window_s: float = 60.0,
        history_s: int = 300,
        user_retention_s: float = 300.0,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        if alert_rules.error_rate is not None and alert_rules.error_rate.window_s > history_s:
            raise ConfigurationError("error_rate.window_s cannot exceed history_s")
        self._clock = clock
        self._rules = alert_rules
        self._policy = health_policy
        self._user_retention_s = user_retention_s
        self.alert_manager = AlertManager(clock, max_alerts, cooldown_s, on_alert)
        self._sessions: dict[str, SessionStats] = {}
        self._users: dict[str, UserStats] = {}
        self._user_reap: list[tuple[float, str]] = []
        self._pools: dict[str, PoolStats] = {}
        # Per presented id failing twice or more: (failures, when the first of them was, when
        # its alert last fired). An id's first failure only takes a slot of two flat arrays
        # (its hash, when), picked by its hash: an attacker's ids are all fresh, a failure must
        # cost no more than a success (issue 15), and an entry per fresh id cost more than that.
        # Two ids sharing a slot overwrite each other (a first failure can be forgotten).
        self._auth_ids: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._auth_first_hash = array("q", bytes(8 * _AUTH_SLOTS))
        self._auth_first_at = array("d", [-math.inf]) * _AUTH_SLOTS  # -inf: an empty slot
        self._auth_global_alerted_at = -math.inf
        burst = alert_rules.auth_burst
        self._auth_recent: deque[float] = deque(maxlen=burst.global_count if burst else 1)
        self._turns_ring = RateRing(clock, history_s)
        self._tokens_ring = RateRing(clock, history_s)
        self._errors_ring = RateRing(clock, history_s)
        self._failures_ring = RateRing(clock, history_s)
        self._latency = LatencyHistogram()
        self._window = WindowedHistogram(clock, window_s)
        self._turns = 0
        self._errors = 0
        self._failures = 0
        self._errors_by_type: dict[str, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._auth_failures = 0
        # Failed authentications logged and not counted yet, each the presented id (or None).
        # The authenticator appends to it (one C call per failure) and has it counted once
        # AUTH_LOG_BATCH are waiting; tick() and every read of what they change count it first.
        # One loop over a batch costs a failure less than a call of its own (issue 15: a
        # failure must cost no more than a success); an alert is at most a batch or a tick late.
        self.auth_failure_log: list[str | None] = []

    # -- sessions and users ----------------------------------------------------------------------
    def session_started(self, session_id: str, user_id: str) -> None:
        if session_id in self._sessions:
            return
        self._sessions[session_id] = SessionStats(self._user(user_id, joining=1))

    def session_ended(self, session_id: str) -> None:
        if self.auth_failure_log:  # counted while the session's user can still be found
            self.count_auth_failures()
        stats = self._sessions.pop(session_id, None)
        if stats is not None:
            self._user(stats.user.user_id, joining=-1)  # queued for reaping if it was the last

    def _user(self, user_id: str, joining: int = 0) -> UserStats:
        """Get or create a user's state, mark activity, and queue it for reaping if sessionless."""
        now = self._clock.now()
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = UserStats(user_id, now)
        user.last_activity_at = now
        user.sessions += joining
        if not user.sessions and not user.reap_queued:
            user.reap_queued = True
            heapq.heappush(self._user_reap, (now + self._user_retention_s, user_id))
        return user

    def _reap_users(self, now: float) -> None:
        heap = self._user_reap
        while heap and heap[0][0] <= now:
            _, user_id = heapq.heappop(heap)
            user = self._users[user_id]
            due = user.last_activity_at + self._user_retention_s
            if user.sessions:
                user.reap_queued = False  # session_ended queues it again
            elif due <= now:
                del self._users[user_id]
            else:
                heapq.heappush(heap, (due, user_id))

    # -- records ---------------------------------------------------------------------------------
    def record_turn(
        self,
        session_id: str,
        user_id: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self._turns += 1
        self._prompt_tokens += prompt_tokens
        self._completion_tokens += completion_tokens
        self._turns_ring.add()
        self._tokens_ring.add(prompt_tokens + completion_tokens)
        self._latency.record(latency_s)
        self._window.record(latency_s)
        user = self._user(user_id)
        user.turns += 1
        user.prompt_tokens += prompt_tokens
        user.completion_tokens += completion_tokens
        stats = self._sessions.get(session_id)
        if stats is None:
            return
        stats.turns += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.consecutive_errors = 0
        recent = self._recent(stats)
        recent.outcome(False)
        recent.took(latency_s)
        stats.last_turn_at = self._clock.now()
        stats.version += 1

    def record_error(
        self, session_id: str, user_id: str, error: EngineError, latency_s: float | None
    ) -> None:
        """Count a failed turn, by its error's class name; a `Refusal` is not a failure."""
        failure = not isinstance(error, Refusal)
        error_type = type(error).__name__
        self._errors += 1
        self._errors_by_type[error_type] = self._errors_by_type.get(error_type, 0) + 1
        self._errors_ring.add()
        if failure:
            self._failures += 1
            self._failures_ring.add()
        if latency_s is not None:
            self._latency.record(latency_s)
            self._window.record(latency_s)
        self._user(user_id).errors += 1
        stats = self._sessions.get(session_id)
        if stats is None:
            return
        stats.errors += 1
        stats.last_error = error_type
        recent = self._recent(stats)
        if failure:
            stats.consecutive_errors += 1
            recent.outcome(True)
        if latency_s is not None:
            recent.took(latency_s)
        if isinstance(error, RateLimited):
            recent.rate_limited(self._clock.now())
        stats.version += 1

    def _recent(self, stats: SessionStats) -> RecentTurns:
        if stats.recent is None:
            stats.recent = RecentTurns(self._policy)
        return stats.recent

    def record_auth_failure(self, session_id_presented: str | None) -> None:
        """A wrong token or unknown session, counted at once (the authenticator logs them in
        `auth_failure_log` instead, counted in batches)."""
        self.auth_failure_log.append(session_id_presented)
        self.count_auth_failures()

    def count_auth_failures(self) -> None:
        """Count the logged failed authentications, as of now: per user, bursts per presented
        id and engine-wide, with their alerts. One loop of plain dict and array work."""
        log = self.auth_failure_log
        if not log:
            return
        logged = log.copy()
        log.clear()  # an alert's store write that failed below must not count these twice
        now = self._clock.now()
        self._auth_failures += len(logged)
        rule = self._rules.auth_burst
        if rule is not None:
            self._count_auth_burst(len(logged), now, rule)
        sessions, ids = self._sessions, self._auth_ids
        first_hash, first_at_of = self._auth_first_hash, self._auth_first_at
        per_id, window_s = (rule.per_id, rule.window_s) if rule is not None else (0, 0.0)
        bursts = rule is not None
        for presented in logged:
            if presented is None:
                continue
            presented = presented[:_MAX_ID_CHARS]
            stats = sessions.get(presented)
            if stats is not None:
                self._user(stats.user.user_id).auth_failures += 1
            if not bursts:
                continue
            tracked = ids.get(presented)
            if tracked is None:
                if per_id > 1:
                    key_hash = hash(presented)
                    slot = key_hash & _AUTH_SLOT_MASK
                    first_at = first_at_of[slot]
                    if first_hash[slot] != key_hash or now - first_at >= window_s:
                        first_hash[slot] = key_hash
                        first_at_of[slot] = now
                        continue  # its first failure: noted in a slot, nothing to count yet
                    first_at_of[slot] = -math.inf  # tracked below from now on
                    failures = 2
                else:
                    first_at, failures = now, 1
                if len(ids) >= _MAX_AUTH_IDS:
                    ids.popitem(last=False)  # the longest tracked goes first, in O(1)
                alerted_at = -math.inf
            elif now - tracked[1] >= window_s:
                failures, first_at, alerted_at = 1, now, tracked[2]  # a new window from now
            else:
                failures, first_at, alerted_at = tracked[0] + 1, tracked[1], tracked[2]
            if failures >= per_id and now - alerted_at >= _AUTH_ALERT_REFRESH_S:
                assert rule is not None
                alerted_at = now
                self.alert_manager.fire(
                    f"auth_burst:{presented}",
                    "auth_burst",
                    rule.severity,
                    f"{failures} failed authentications for session {presented!r} "
                    f"in {now - first_at:.0f}s",
                    presented,
                )
            ids[presented] = (failures, first_at, alerted_at)

    def _count_auth_burst(self, failures: int, now: float, rule: AuthBurstRule) -> None:
        """`failures` more engine-wide; the alert once `global_count` fall within the window."""
        recent = self._auth_recent
        recent.extend(repeat(now, min(failures, rule.global_count)))
        if (
            now - self._auth_global_alerted_at >= _AUTH_ALERT_REFRESH_S
            and len(recent) == rule.global_count
            and now - recent[0] < rule.window_s
        ):
            self._auth_global_alerted_at = now
            self.alert_manager.fire(
                "auth_burst:global",
                "auth_burst",
                rule.severity,
                f"{len(recent)} failed authentications in {now - recent[0]:.0f}s engine-wide",
            )

    def record_pool_wait(self, agent_type: str, waited_s: float, timed_out: bool) -> None:
        """One agent acquire; `agent_type` must come from the engine's fixed set of types."""
        pool = self._pools.get(agent_type)
        if pool is None:
            pool = self._pools[agent_type] = PoolStats()
        pool.waits += 1
        pool.timeouts += timed_out
        pool.wait.record(waited_s)
        rule = self._rules.pool_wait
        if rule is None or not (timed_out or waited_s > rule.wait_s):
            return
        what = "timed out after" if timed_out else "waited"
        self.alert_manager.fire(
            f"pool_wait:{agent_type}",
            "pool_wait",
            rule.severity,
            f"{agent_type!r} agent acquire {what} {waited_s:.2f}s (threshold {rule.wait_s:g}s)",
            agent_type,
        )

    def observe_quota(self, user_id: str, resource: str, percent: float) -> None:
        """The quota module's latest usage figure for one user and resource."""
        self.observe_quotas(user_id, ((resource, percent),))

    def observe_quotas(self, user_id: str, percents: Iterable[tuple[str, float]]) -> None:
        """The quota module's latest usage figures for one user, (resource, percent) each.

        On every turn's path, so an alert key is built only when there is an alert to fire or
        an open one of its rule that it might resolve."""
        user = self._user(user_id)
        quota = user.quota
        near, over = self._rules.quota_near, self._rules.quota_exceeded
        alerts = self.alert_manager
        for resource, percent in percents:
            if quota.get(resource) != percent:
                quota[resource] = percent
                user.quota_version += 1
            exceeded = over is not None and percent >= over.percent
            if over is not None:
                if exceeded:
                    alerts.fire(
                        f"quota_exceeded:{user_id}:{resource}",
                        "quota_exceeded",
                        over.severity,
                        f"user {user_id!r} exceeded the {resource} quota ({percent:.0f}%)",
                        user_id,
                    )
                elif alerts.has_open("quota_exceeded"):
                    alerts.resolve(f"quota_exceeded:{user_id}:{resource}")
            if near is not None:
                if percent < near.percent:
                    if alerts.has_open("quota_near"):
                        alerts.resolve(f"quota_near:{user_id}:{resource}")
                elif not exceeded:
                    alerts.fire(
                        f"quota_near:{user_id}:{resource}",
                        "quota_near",
                        near.severity,
                        f"user {user_id!r} at {percent:.0f}% of the {resource} quota",
                        user_id,
                    )

    # -- periodic --------------------------------------------------------------------------------
    def tick(self) -> None:
        """Count logged failed authentications, evaluate windowed rules, reap idle users, forget
        spent cooldowns (~1/s; no scans)."""
        self.count_auth_failures()
        now = self._clock.now()
        rate_rule = self._rules.error_rate
        if rate_rule is not None:
            failed = self._failures_ring.total(rate_rule.window_s)
            samples = failed + self._turns_ring.total(rate_rule.window_s)
            percent = 100 * failed / samples if samples else 0.0
            if samples >= rate_rule.min_samples and percent >= rate_rule.percent:
                self.alert_manager.fire(
                    "error_rate:global",
                    "error_rate",
                    rate_rule.severity,
                    f"error rate {percent:.0f}% over last {rate_rule.window_s}s "
                    f"({failed:.0f} of {samples:.0f} turns failed)",
                )
            else:
                self.alert_manager.resolve("error_rate:global")
        latency_rule = self._rules.latency
        if latency_rule is not None:
            current = self._window.percentiles()
            if current.count >= latency_rule.min_samples and current.p95 > latency_rule.p95_s:
                self.alert_manager.fire(
                    "latency:global",
                    "latency",
                    latency_rule.severity,
                    f"p95 latency {current.p95:.1f}s over last {self._window.window_s:g}s "
                    f"above {latency_rule.p95_s:g}s ({current.count} turns)",
                )
            else:
                self.alert_manager.resolve("latency:global")
        self._reap_users(now)
        self.alert_manager.prune()

    # -- health and views ------------------------------------------------------------------------
    def health(self, session_id: str) -> Health | None:
        """Cached per session; recomputed after a record, a quota change or a reason aging out."""
        stats = self._sessions.get(session_id)
        if stats is None:
            return None
        now = self._clock.now()
        key = (stats.version, stats.user.quota_version)
        if stats.health is None or stats.health_key != key or now >= stats.health_until:
            stats.health, stats.health_until = session_health(stats, self._policy, now)
            stats.health_key = key
        return stats.health

    def session_view(self, session_id: str) -> SessionMetrics | None:
        health = self.health(session_id)
        if health is None:
            return None
        stats = self._sessions[session_id]
        # Every record bumps the version, which makes health() build a new Health object.
        if stats.view is None or stats.view_of is not health:
            stats.view_of = health
            stats.view = SessionMetrics(
                session_id,
                stats.user.user_id,
                stats.turns,
                stats.errors,
                stats.prompt_tokens,
                stats.completion_tokens,
                stats.recent.latency.percentiles() if stats.recent else Percentiles(),
                stats.consecutive_errors,
                stats.last_error,
                stats.last_turn_at,
                health.score,
                health.reasons,
            )
        return stats.view

    def user_view(self, user_id: str) -> UserMetrics | None:
        self.count_auth_failures()
        user = self._users.get(user_id)
        if user is None:
            return None
        return UserMetrics(
            user_id,
            user.sessions,
            user.turns,
            user.errors,
            user.prompt_tokens,
            user.completion_tokens,
            user.auth_failures,
            tuple(sorted(user.quota.items())),
        )

    def snapshot(self) -> MonitorSnapshot:
        self.count_auth_failures()
        alerts = self.alert_manager
        return MonitorSnapshot(
            at=self._clock.now(),
            sessions=len(self._sessions),
            users=len(self._users),
            turns=self._turns,
            errors=self._errors,
            failures=self._failures,
            errors_by_type=tuple(sorted(self._errors_by_type.items())),
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            auth_failures=self._auth_failures,
            turns_per_s=self._turns_ring.series(),
            tokens_per_s=self._tokens_ring.series(),
            errors_per_s=self._errors_ring.series(),
            turns_rate=self._turns_ring.rate(),
            tokens_rate=self._tokens_ring.rate(),
            errors_rate=self._errors_ring.rate(),
            latency=self._window.percentiles(),
            latency_total=self._latency.percentiles(),
            pools=tuple(
                PoolMetrics(name, pool.waits, pool.timeouts, pool.wait.percentiles())
                for name, pool in sorted(self._pools.items())
            ),
            alerts=alerts.alerts(),
            alerts_unacknowledged=alerts.unacknowledged,
            alerts_dropped=alerts.dropped,
        )

    # -- alerts ----------------------------------------------------------------------------------
    def alerts(self, include_acknowledged: bool = True) -> tuple[Alert, ...]:
        self.count_auth_failures()
        return self.alert_manager.alerts(include_acknowledged)

    def acknowledge(self, alert_id: int) -> bool:
        return self.alert_manager.acknowledge(alert_id)

    def acknowledge_all(self, severity: Severity | None = None) -> int:
        return self.alert_manager.acknowledge_all(severity)
