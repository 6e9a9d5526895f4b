"""Per-session and per-user state the monitor keeps, and a session's health score with reasons.

Apart from `engine.monitor` so that the score's rules (`HealthPolicy`, `session_health`) and
the records they read can be read and tested on their own; the monitor updates the records on
a turn's path and caches the score per session.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Any

from engine.metrics import LatencyHistogram, Percentiles


@dataclass(frozen=True, slots=True)
class Health:
    score: int  # 0..100
    reasons: tuple[str, ...]  # one per penalty, worst first


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds behind a session's health score; each breach costs points and names a reason."""

    error_turns: int = 10  # error rate over this many most recent turns
    error_percent: float = 20.0
    consecutive_errors: int = 2
    latency_turns: int = 20  # p95 over this many most recent turns
    p95_s: float = 2.0
    quota_percent: float = 80.0
    rate_limited: int = 3  # times within rate_limited_window_s
    rate_limited_window_s: float = 60.0


DEFAULT_HEALTH = HealthPolicy()


@dataclass(frozen=True, slots=True)
class SessionMetrics:
    """What the console's sessions table shows for one session."""

    session_id: str
    user_id: str
    turns: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency: Percentiles
    consecutive_errors: int
    last_error: str | None
    last_turn_at: float | None
    health: int  # Health.score
    health_reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserMetrics:
    user_id: str
    sessions: int
    turns: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    auth_failures: int
    quota: tuple[tuple[str, float], ...]  # (resource, percent used), as last observed



@dataclass(slots=True, eq=False)
class UserStats:
    user_id: str
    last_activity_at: float
    sessions: int = 0
    turns: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    auth_failures: int = 0
    quota: dict[str, float] = field(default_factory=dict)
    quota_version: int = 0
    reap_queued: bool = False


@dataclass(slots=True, eq=False)
class RecentTurns:
    """A session's bounded recent outcomes. Made at its first recorded turn or error, so the
    many sessions that only sit in the store (cold, idle since the restart) hold none of it."""

    policy: HealthPolicy
    failed: bytearray = field(default_factory=bytearray)  # recent outcomes, 1 = failed
    latencies: array[float] = field(default_factory=lambda: array("d"))
    rate_limited_at: list[float] | None = None  # made at the first refusal: most have none
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Trimmed from the front: a deque's first block alone is 64 slots (about 760 bytes); typed
    # arrays, as a list holds a float object (24 bytes) per latency besides its slot.

    def outcome(self, failed: bool) -> None:
        _append_bounded(self.failed, failed, self.policy.error_turns)

    def took(self, latency_s: float) -> None:
        _append_bounded(self.latencies, latency_s, self.policy.latency_turns)
        self.latency.record(latency_s)

    def rate_limited(self, now: float) -> None:
        if self.rate_limited_at is None:
            self.rate_limited_at = []
        _append_bounded(self.rate_limited_at, now, max(64, self.policy.rate_limited))


def _append_bounded(items: MutableSequence[Any], item: Any, bound: int) -> None:
    items.append(item)
    if len(items) > bound:
        del items[: len(items) - bound]


@dataclass(slots=True, eq=False)
class SessionStats:
    user: UserStats
    recent: RecentTurns | None = None  # None until the session's first turn or error
    turns: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_error: str | None = None
    consecutive_errors: int = 0
    last_turn_at: float | None = None
    version: int = 0  # bumped by every record; invalidates the cached health and view
    health: Health | None = None
    health_key: tuple[int, int] = (-1, -1)
    health_until: float = math.inf  # a time-based reason changes then
    view: SessionMetrics | None = None
    view_of: Health | None = None  # the health the view was built with


def session_health(
    stats: SessionStats, policy: HealthPolicy, now: float
) -> tuple[Health, float]:
    """100 minus penalties over bounded recent state: O(recent turns), not O(history).

    Also returns when a time-based reason ages out (math.inf if none), so the caller can cache
    the score until then or until the session's next record.
    """
    p = policy
    penalties: list[tuple[int, str]] = []
    recent = stats.recent
    n = len(recent.failed) if recent is not None else 0
    if recent is not None and n >= 3:
        percent = 100 * sum(recent.failed) / n
        if percent >= p.error_percent:
            penalties.append(
                (round(0.4 * percent), f"error rate {percent:.0f}% over last {n} turns")
            )
    if stats.consecutive_errors >= p.consecutive_errors:
        penalties.append(
            (
                min(30, 10 * stats.consecutive_errors),
                f"{stats.consecutive_errors} consecutive errors",
            )
        )
    if recent is not None and len(recent.latencies) >= 5:
        ordered = sorted(recent.latencies)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
        if p95 > p.p95_s:
            penalties.append(
                (25 if p95 > 2 * p.p95_s else 15, f"p95 latency {p95:.1f}s above {p.p95_s:g}s")
            )
    if stats.user.quota:
        resource, percent = max(stats.user.quota.items(), key=lambda item: item[1])
        if percent >= 100:
            penalties.append((20, f"user over quota: {resource} {percent:.0f}%"))
        elif percent >= p.quota_percent:
            penalties.append((10, f"user near quota: {resource} {percent:.0f}%"))
    limited: list[float] = []
    if recent is not None and recent.rate_limited_at is not None:
        limited = recent.rate_limited_at
        since = now - p.rate_limited_window_s
        stale = next((i for i, at in enumerate(limited) if at > since), None)
        del limited[: len(limited) if stale is None else stale]
    if len(limited) >= p.rate_limited:
        penalties.append(
            (10, f"rate limited {len(limited)} times in last {p.rate_limited_window_s:g}s")
        )
    until = limited[0] + p.rate_limited_window_s if limited else math.inf
    penalties.sort(key=lambda item: -item[0])
    score = max(0, 100 - sum(points for points, _ in penalties))
    return Health(score, tuple(reason for _, reason in penalties)), until
