"""What the gateway did, for the console (rates per route) and for Prometheus (counters).

Each request is recorded once, when its response starts, under its route template (never the
raw path, which holds session ids): a per-route pair of rate rings for the console's panel and
the `session_console_http_*` series for `/metrics`.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.clock import Clock

RATE_WINDOW_S = 10
# Request durations as Prometheus buckets (seconds): the gateway's own share is sub-millisecond,
# a turn with a real model takes seconds.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)


@dataclass(frozen=True, slots=True)
class RouteStats:
    route: str  # the template, e.g. "POST /v1/sessions/{id}/messages"
    requests: int
    errors: int  # responses with status >= 400
    requests_per_s: float
    errors_per_s: float


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """The console's view of the gateway: where it listens and what it serves now."""

    listen: str
    ready: bool
    connections: int
    streams: int
    requests: int
    errors: int
    requests_per_s: float
    routes: tuple[RouteStats, ...]  # busiest first


class Buckets:
    """One histogram child as plain numbers: an observation is a bisect and two additions
    (prometheus-client's Histogram takes a lock for its sum and for the bucket it counts).
    Exported in Prometheus' shape at scrape time by `histogram_family`."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last: +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1  # le: value <= bound
        self.sum += seconds


_LE = [floatToGoString(bound) for bound in (*DURATION_BUCKETS, math.inf)]


def histogram_family(
    name: str, documentation: str, label_names: tuple[str, ...],
    children: dict[tuple[str, ...], Buckets],
) -> HistogramMetricFamily:
    """The children as prometheus-client's own Histogram exports them (`_created` too)."""
    family = HistogramMetricFamily(name, documentation, labels=label_names)
    for labels, child in children.items():
        cumulative = accumulate(float(count) for count in child.counts)
        family.add_metric(labels, list(zip(_LE, cumulative, strict=True)), child.sum)
        family.add_sample(f"{name}_created", dict(zip(label_names, labels, strict=True)),
                          child.created)
    return family


class _Route:
    """A route's counts, and its Prometheus figures as plain numbers.

    Its rates come from its totals as they were at the start of each of the last
    RATE_WINDOW_S + 1 seconds: a request only adds to its totals (and notes them when a new
    second has begun), where a rate ring per count cost each request a clock reading and a
    pass over the ring's slots per count, an error twice a success's (issue 15)."""

    __slots__ = ("by_status", "duration", "errors", "marks", "requests", "second")

    def __init__(self, second: int) -> None:
        self.requests = 0
        self.errors = 0  # responses with status >= 400
        self.second = second  # the latest second seen (a clock stepping back keeps it)
        # (requests, errors) at the start of second t, at index t % (RATE_WINDOW_S + 1)
        self.marks = [(0, 0)] * (RATE_WINDOW_S + 1)
        self.duration = Buckets()  # the route's request durations
        self.by_status: dict[int, list[float]] = {}  # status -> [requests, created]

    def begin(self, second: int) -> None:
        """Seconds have begun since the latest seen: each began with the totals as they are."""
        marks = self.marks
        totals = (self.requests, self.errors)
        for t in range(max(self.second + 1, second - len(marks) + 1), second + 1):
            marks[t % len(marks)] = totals
        self.second = second

    def rates(self, second: int) -> tuple[float, float]:
        """Requests and errors per second over the last RATE_WINDOW_S completed seconds (the
        second in progress is left out: a partly counted second would drag them down)."""
        if second > self.second:
            self.begin(second)
        n = len(self.marks)
        requests, errors = self.marks[self.second % n]
        before_requests, before_errors = self.marks[(self.second - RATE_WINDOW_S) % n]
        return (
            (requests - before_requests) / RATE_WINDOW_S, (errors - before_errors) / RATE_WINDOW_S
        )


class GatewayMonitor(Collector):
    """Records each request once; a collector of `registry`, so /metrics reads the counts at
    scrape time and a request pays no prometheus-client call."""

    def __init__(self, clock: Clock, registry: CollectorRegistry) -> None:
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        self.streams = 0
        registry.register(self)

    def record(self, route: str, status: int, seconds: float) -> None:
        second = int(self._clock.now())
        stats = self._routes.get(route)
        if stats is None:
            stats = self._routes[route] = _Route(second)
        elif second > stats.second:
            stats.begin(second)
        stats.requests += 1
        if status >= 400:
            stats.errors += 1
        counter = stats.by_status.get(status)
        if counter is None:
            counter = stats.by_status[status] = [0, time.time()]
        counter[0] += 1
        stats.duration.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "session_console_http_requests", "HTTP requests by route and status",
            labels=("route", "status"),
        )
        for route, stats in self._routes.items():
            for status, (count, created) in stats.by_status.items():
                requests.add_metric((route, str(status)), count, created=created)
        yield requests
        yield histogram_family(
            "session_console_http_request_duration_seconds",
            "Time to the response's start (a streamed reply's first byte), by route",
            ("route",), {(route, ): stats.duration for route, stats in self._routes.items()},
        )

    def snapshot(self, listen: str, ready: bool, connections: int) -> GatewayStats:
        second = int(self._clock.now())
        routes = tuple(
            sorted(
                (
                    RouteStats(route, s.requests, s.errors, *s.rates(second))
                    for route, s in self._routes.items()
                ),
                key=lambda r: (-r.requests_per_s, -r.requests, r.route),
            )
        )
        return GatewayStats(
            listen=listen,
            ready=ready,
            connections=connections,
            streams=self.streams,
            requests=sum(r.requests for r in routes),
            errors=sum(r.errors for r in routes),
            requests_per_s=sum(r.requests_per_s for r in routes),
            routes=routes,
        )
