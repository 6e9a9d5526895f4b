"""What the gateway did, for the console (rates per route) and for Prometheus (counters).

Each request is recorded once, when its response starts, under its route template (never the
raw path, which holds session ids): a per-route pair of rate rings for the console's panel and
the `session_console_http_*` series for `/metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.clock import Clock
from engine.metrics import RateRing

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


class _Route:
    """A route's counts and rings, and its Prometheus children: labels() looked up once, not
    on every request (it takes a lock and builds a key each call)."""

    __slots__ = ("by_status", "duration", "errors", "errors_ring", "requests", "requests_ring")

    def __init__(self, clock: Clock, duration: Any) -> None:
        self.requests = 0
        self.errors = 0
        self.requests_ring = RateRing(clock, 60)
        self.errors_ring = RateRing(clock, 60)
        self.duration = duration  # the route's request-duration histogram
        self.by_status: dict[int, Any] = {}  # status -> the route's request counter


class GatewayMonitor:
    def __init__(self, clock: Clock, registry: CollectorRegistry) -> None:
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        self._all = RateRing(clock, 60)
        self.streams = 0
        self._requests = Counter(
            "session_console_http_requests", "HTTP requests by route and status",
            ("route", "status"), registry=registry,
        )
        self._duration = Histogram(
            "session_console_http_request_duration_seconds",
            "Time to the response's start (a streamed reply's first byte), by route",
            ("route",), buckets=DURATION_BUCKETS, registry=registry,
        )

    def record(self, route: str, status: int, seconds: float) -> None:
        stats = self._routes.get(route)
        if stats is None:
            stats = self._routes[route] = _Route(self._clock, self._duration.labels(route))
        stats.requests += 1
        stats.requests_ring.add()
        self._all.add()
        if status >= 400:
            stats.errors += 1
            stats.errors_ring.add()
        counter = stats.by_status.get(status)
        if counter is None:
            counter = stats.by_status[status] = self._requests.labels(route, str(status))
        counter.inc()
        stats.duration.observe(seconds)

    def snapshot(self, listen: str, ready: bool, connections: int) -> GatewayStats:
        routes = tuple(
            sorted(
                (
                    RouteStats(
                        route, s.requests, s.errors,
                        s.requests_ring.rate(RATE_WINDOW_S), s.errors_ring.rate(RATE_WINDOW_S),
                    )
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
            requests_per_s=self._all.rate(RATE_WINDOW_S),
            routes=routes,
        )
