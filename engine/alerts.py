"""Alert rules and the alert list: severity, dedup by key, cooldown, bounded history, acknowledge.

An alert is identified by a dedup key ("error_rate:global", "quota_exceeded:alice:tokens").
While the alert holding a key is open (neither acknowledged nor resolved), firing the key again
only bumps its count, last_at and message. Once acknowledged or resolved, the key stays quiet
for `cooldown_s`, so a flapping condition cannot flood the list. History keeps the newest
`max_alerts`; older ones are dropped and counted, never kept without bound.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from engine.clock import Clock
from engine.errors import ConfigurationError

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: int
    key: str
    rule: str
    severity: Severity
    message: str
    subject: str | None  # session id, user id, agent type, or None for engine-wide
    first_at: float
    last_at: float
    count: int = 1
    acknowledged: bool = False
    resolved_at: float | None = None  # set when the condition cleared by itself


@dataclass(frozen=True, slots=True)
class ErrorRateRule:
    """Share of failed turns engine-wide over a rolling window; `min_samples` keeps noise out."""

    percent: float = 20.0
    window_s: int = 60
    min_samples: int = 20
    severity: Severity = "critical"


@dataclass(frozen=True, slots=True)
class LatencyRule:
    """Engine-wide p95 turn latency over the monitor's current window."""

    p95_s: float = 5.0
    min_samples: int = 20
    severity: Severity = "warning"


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """A user's usage of one resource at or above `percent` of its limit."""

    percent: float
    severity: Severity


@dataclass(frozen=True, slots=True)
class PoolWaitRule:
    """An agent acquire that timed out or waited longer than `wait_s`."""

    wait_s: float = 2.0
    severity: Severity = "warning"


@dataclass(frozen=True, slots=True)
class AuthBurstRule:
    """`per_id` failures for one presented session id within `window_s` of its first, or
    `global_count` in all within `window_s`."""

    per_id: int = 5
    global_count: int = 20
    window_s: float = 60.0
    severity: Severity = "critical"


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Which rules run and with what thresholds; None switches a rule off."""

    error_rate: ErrorRateRule | None = ErrorRateRule()
    latency: LatencyRule | None = LatencyRule()
    quota_near: QuotaRule | None = QuotaRule(80.0, "warning")
    quota_exceeded: QuotaRule | None = QuotaRule(100.0, "critical")
    pool_wait: PoolWaitRule | None = PoolWaitRule()
    auth_burst: AuthBurstRule | None = AuthBurstRule()


DEFAULT_RULES = AlertRules()


class AlertManager:
    """The bounded alert list. `on_change` sees every new or changed alert (to persist it)."""

    def __init__(
        self,
        clock: Clock,
        max_alerts: int = 500,
        cooldown_s: float = 60.0,
        on_change: Callable[[Alert], None] | None = None,
    ) -> None:
        if max_alerts < 1:
            raise ConfigurationError("max_alerts must be at least 1")
        self._clock = clock
        self.max_alerts = max_alerts
        self.cooldown_s = cooldown_s
        self._on_change = on_change
        self._ids = itertools.count(1)
        self._history: dict[int, Alert] = {}  # insertion order = alert_id order, oldest first
        self._open: dict[str, int] = {}  # key -> id of the open alert holding it
        self._open_rules: dict[str, int] = {}  # rule -> how many open alerts it holds
        self._quiet: dict[str, float] = {}  # key -> end of its cooldown
        self._quiet_heap: list[tuple[float, str]] = []
        self._view: tuple[Alert, ...] | None = None
        self.dropped = 0
        self.suppressed = 0  # fires swallowed by a cooldown
        self.unacknowledged = 0

    def fire(
        self, key: str, rule: str, severity: Severity, message: str, subject: str | None = None
    ) -> Alert | None:
        """Raise or re-raise `key`; None when the key is cooling down."""
        now = self._clock.now()
        open_id = self._open.get(key)
        if open_id is not None:
            old = self._history[open_id]
            return self._store(replace(old, message=message, last_at=now, count=old.count + 1))
        # A cooldown ending further off than cooldown_s is one the clock stepped back into:
        # it no longer silences the key, rather than for the length of the step.
        if 0 < self._quiet.get(key, now) - now <= self.cooldown_s:
            self.suppressed += 1
            return None
        alert = Alert(next(self._ids), key, rule, severity, message, subject, now, now)
        self._open[key] = alert.alert_id
        self._open_rules[rule] = self._open_rules.get(rule, 0) + 1
        self.unacknowledged += 1
        self._store(alert)
        while len(self._history) > self.max_alerts:
            self._drop_oldest()
        return alert

    def resolve(self, key: str) -> bool:
        """The condition behind `key` cleared: close its open alert and start the cooldown."""
        open_id = self._open.pop(key, None)
        if open_id is None:
            return False
        now = self._clock.now()
        alert = self._history[open_id]
        self._closed(alert.rule)
        self._store(replace(alert, resolved_at=now))
        self._cool(key, now)
        return True

    def has_open(self, rule: str) -> bool:
        """Whether any alert of `rule` is open: when none is, resolving its keys is a no-op,
        so a caller on a hot path can skip building them."""
        return rule in self._open_rules

    def continue_after(self, alert_id: int) -> None:
        """Number new alerts after `alert_id` (the highest stored), so none overwrites one."""
        self._ids = itertools.count(alert_id + 1)

    def acknowledge(self, alert_id: int) -> bool:
        """True when the alert existed and was not yet acknowledged."""
        alert = self._history.get(alert_id)
        if alert is None or alert.acknowledged:
            return False
        if self._open.get(alert.key) == alert_id:
            del self._open[alert.key]
            self._closed(alert.rule)
            self._cool(alert.key, self._clock.now())
        self.unacknowledged -= 1
        self._store(replace(alert, acknowledged=True))
        return True

    def acknowledge_all(self, severity: Severity | None = None) -> int:
        pending = [
            a.alert_id
            for a in self._history.values()
            if not a.acknowledged and (severity is None or a.severity == severity)
        ]
        return sum(self.acknowledge(alert_id) for alert_id in pending)

    def alerts(self, include_acknowledged: bool = True) -> tuple[Alert, ...]:
        """Newest first (by when each alert was first raised)."""
        if self._view is None:
            self._view = tuple(reversed(self._history.values()))
        if include_acknowledged:
            return self._view
        return tuple(a for a in self._view if not a.acknowledged)

    def prune(self) -> None:
        """Forget cooldowns that have run out; keeps the cooldown table bounded."""
        now = self._clock.now()
        heap = self._quiet_heap
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            if self._quiet.get(key) == until:
                del self._quiet[key]

    @property
    def cooling(self) -> int:
        return len(self._quiet)

    def _closed(self, rule: str) -> None:
        left = self._open_rules[rule] - 1
        if left:
            self._open_rules[rule] = left
        else:
            del self._open_rules[rule]

    def _cool(self, key: str, now: float) -> None:
        until = now + self.cooldown_s
        self._quiet[key] = until
        heapq.heappush(self._quiet_heap, (until, key))

    def _store(self, alert: Alert) -> Alert:
        self._history[alert.alert_id] = alert
        self._view = None
        if self._on_change is not None:
            self._on_change(alert)
        return alert

    def _drop_oldest(self) -> None:
        oldest = self._history.pop(next(iter(self._history)))
        self._view = None
        self.dropped += 1
        if not oldest.acknowledged:
            self.unacknowledged -= 1
        if self._open.get(oldest.key) == oldest.alert_id:
            del self._open[oldest.key]
            self._closed(oldest.rule)
