"""Request figures: plain frozen records out, Locust-style histograms inside.

Every request is counted once, success or failure, and response times go into rounded-bucket
histograms (constant memory at any request count).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from engine.clock import Clock
from engine.metrics import LatencyHistogram, RateRing, WindowedHistogram

OPERATIONS = (
    "create_session", "send", "history", "rotate_token", "end_session",
    "hog_send", "chatty_send", "attack",
)
ATTACK_SUCCEEDED = "attack_succeeded"  # the error recorded when a defence failed
CANCELLED = "Cancelled"  # the error recorded for a call cancelled mid-flight
AGGREGATED = "Aggregated"
RATE_WINDOW_S = 10  # "current" req/s and percentiles cover about this many seconds


@dataclass(frozen=True, slots=True)
class OperationStats:
    """One row of the stats table. Percentiles cover the run (since start or reset_stats)."""

    name: str
    requests: int  # counted when the call starts
    successes: int
    failures: int
    rps: float  # over the last few completed seconds
    failures_per_s: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def in_flight(self) -> int:
        return self.requests - self.successes - self.failures

    @property
    def failure_ratio(self) -> float:
        done = self.successes + self.failures
        return self.failures / done if done else 0.0


@dataclass(frozen=True, slots=True)
class FailureCount:
    operation: str
    error: str  # the error's category (an engine error's class name), or "attack_succeeded"
    count: int


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One second of the run, for charts and the stats-history CSV."""

    elapsed_s: int
    users: int
    target_users: int
    sessions_open: int
    rps: float
    failures_per_s: float
    p50_ms: float  # over the last RATE_WINDOW_S seconds
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Everything the stats table, the console's load panel and the reports show."""

    running: bool
    phase: str  # idle, ramping up, holding, ramping down, stopping, stopped
    seed: int
    elapsed_s: float
    duration_s: float | None
    target_users: int
    live_users: int  # ordinary users whose task is still running
    special_users: int  # hogs, chatty users and attackers still running
    spawn_rate: float
    # Session counters cover the generator's whole life, so they can be checked against the
    # engine's own counts; `reset_stats` leaves them alone.
    sessions_open: int  # held by users right now
    sessions_opened: int
    sessions_ended: int  # by their user, with end_session
    sessions_abandoned: int  # walked away from: left to idle expiry
    sessions_lost: int  # found expired, evicted or ended by someone else
    operations: tuple[OperationStats, ...]
    total: OperationStats
    failures: tuple[FailureCount, ...]  # most frequent first
    attacks_succeeded: int
    # Successful turns split: the client's round trip = engine overhead + the model's share +
    # what lies outside the engine (HTTP, the gateway, queueing; zero in-process).
    overhead_p50_ms: float  # the engine's time minus the model's
    overhead_p95_ms: float
    overhead_p99_ms: float
    client_turn_p50_ms: float  # the round trip the client measured
    client_turn_p95_ms: float
    client_turn_p99_ms: float
    outside_engine_p50_ms: float  # the round trip minus the engine's time
    outside_engine_p95_ms: float
    outside_engine_p99_ms: float
    history: tuple[HistoryPoint, ...]

    @property
    def total_rps(self) -> float:
        return self.total.rps

    def operation(self, name: str) -> OperationStats | None:
        return next((op for op in self.operations if op.name == name), None)


class OperationRecorder:
    """Counters and histograms of one operation (or of all: the Aggregated row)."""

    __slots__ = ("calls", "failed", "failures", "latency", "max_s", "name", "requests",
                 "successes", "total_s")

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.requests = self.successes = self.failures = 0
        self.total_s = self.max_s = 0.0
        self.latency = LatencyHistogram()
        self.calls = RateRing(clock, RATE_WINDOW_S + 2)
        self.failed = RateRing(clock, RATE_WINDOW_S + 2)

    def finish(self, seconds: float, failed: bool) -> None:
        if failed:
            self.failures += 1
            self.failed.add()
        else:
            self.successes += 1
        self.calls.add()
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        self.latency.record(seconds)

    def view(self, rate_window: int) -> OperationStats:
        done = self.successes + self.failures
        pct = self.latency.percentiles()
        return OperationStats(
            self.name, self.requests, self.successes, self.failures,
            self.calls.rate(rate_window), self.failed.rate(rate_window),
            self.total_s / done * 1000 if done else 0.0, self.max_s * 1000,
            pct.p50 * 1000, pct.p95 * 1000, pct.p99 * 1000,
        )


class RequestRecorder:
    """All request figures of one run; a reset swaps in a fresh one."""

    __slots__ = ("attacks_succeeded", "client_turn", "current", "errors", "ops", "outside_engine",
                 "overhead", "sampled", "total")

    def __init__(self, clock: Clock) -> None:
        self.ops = {name: OperationRecorder(name, clock) for name in OPERATIONS}
        self.total = OperationRecorder(AGGREGATED, clock)
        self.current = WindowedHistogram(clock, window_s=RATE_WINDOW_S, slots=RATE_WINDOW_S)
        # Successful turns: engine time minus model time, the client's round trip, and the
        # round trip minus the engine's time.
        self.overhead = LatencyHistogram()
        self.client_turn = LatencyHistogram()
        self.outside_engine = LatencyHistogram()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.attacks_succeeded = 0
        self.sampled = (0, 0, time.monotonic())  # requests, failures, when: for history deltas

    def begin(self, op: str) -> OperationRecorder:
        recorder = self.ops[op]
        recorder.requests += 1
        self.total.requests += 1
        return recorder

    def finish(self, recorder: OperationRecorder, seconds: float, error: str | None) -> None:
        recorder.finish(seconds, error is not None)
        self.total.finish(seconds, error is not None)
        self.current.record(seconds)
        if error is not None:
            self.errors[recorder.name, error] += 1
            if error == ATTACK_SUCCEEDED:
                self.attacks_succeeded += 1

    def turn(self, round_trip_s: float, engine_s: float | None, model_s: float) -> None:
        """Split a successful turn; `engine_s` None: the round trip is the engine's time."""
        engine = round_trip_s if engine_s is None else engine_s
        self.client_turn.record(round_trip_s)
        self.overhead.record(max(0.0, engine - model_s))
        if engine_s is not None:
            self.outside_engine.record(max(0.0, round_trip_s - engine_s))

    def failures(self) -> tuple[FailureCount, ...]:
        """Failure counts, most frequent first."""
        return tuple(
            FailureCount(op, error, n)
            for (op, error), n in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))
        )
