"""`/metrics`: the engine's figures in Prometheus' text format, read at scrape time.

Counters and gauges come from one `engine.snapshot()` per scrape (a custom collector), so the
turn path pays nothing for them; the gateway's own request counters and the turn-latency
histograms of turns served over HTTP are counted in plain numbers and exported the same way,
by collectors in the same registry, in prometheus-client's own shapes. Names follow Prometheus
conventions: `session_console_` prefix, base units, `_total` on counters.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.engine import Engine
from engine.gateway.stats import Buckets, histogram_family

# Error class names that are refusals by a limit, exported as their own counter.
REFUSALS = {"RateLimited": "rate", "QuotaExceeded": "quota"}


class EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        ready = GaugeMetricFamily("session_console_ready", "1 while the engine takes turns")
        ready.add_metric([], 1.0 if engine.ready else 0.0)
        yield ready
        try:
            snap = engine.snapshot()
        except Exception:  # closed or not yet open: readiness alone says so
            return
        mon = snap.monitor
        yield CounterMetricFamily("session_console_turns", "Completed turns", value=mon.turns)
        errors = CounterMetricFamily(
            "session_console_turn_errors", "Failed turns by error type", labels=("type",)
        )
        refusals = CounterMetricFamily(
            "session_console_refusals", "Turns refused by a rate limit or quota",
            labels=("limit",),
        )
        counts = dict(mon.errors_by_type)
        for error_type, count in sorted(counts.items()):
            errors.add_metric([error_type], count)
        for error_type, limit in REFUSALS.items():
            refusals.add_metric([limit], counts.get(error_type, 0))
        yield errors
        yield refusals
        yield CounterMetricFamily(
            "session_console_auth_failures", "Wrong tokens and unknown sessions presented",
            value=mon.auth_failures,
        )
        tokens = CounterMetricFamily(
            "session_console_tokens", "Model tokens used", labels=("kind",)
        )
        tokens.add_metric(["prompt"], mon.prompt_tokens)
        tokens.add_metric(["completion"], mon.completion_tokens)
        yield tokens
        latency = GaugeMetricFamily(
            "session_console_turn_latency_seconds",
            "Turn latency quantiles over the last minute (all turns, in-process ones too)",
            labels=("quantile",),
        )
        for quantile, value in (("0.5", mon.latency.p50), ("0.95", mon.latency.p95),
                                ("0.99", mon.latency.p99)):
            latency.add_metric([quantile], value)
        yield latency
        yield GaugeMetricFamily("session_console_sessions", "Live sessions",
                                value=snap.live_sessions)
        yield GaugeMetricFamily("session_console_users", "Users with a live session",
                                value=snap.users)
        agents = GaugeMetricFamily(
            "session_console_pool_agents", "Pooled agents by state",
            labels=("agent_type", "worker", "state"),
        )
        waiting = GaugeMetricFamily(
            "session_console_pool_waiting", "Turns waiting for an agent",
            labels=("agent_type", "worker"),
        )
        capacity = GaugeMetricFamily(
            "session_console_pool_max_agents", "Pool size limit", labels=("agent_type", "worker")
        )
        for pool in snap.pools:
            agents.add_metric([pool.agent_type, pool.worker, "in_use"], pool.in_use)
            agents.add_metric([pool.agent_type, pool.worker, "idle"], pool.idle)
            waiting.add_metric([pool.agent_type, pool.worker], pool.waiting)
            capacity.add_metric([pool.agent_type, pool.worker], pool.max_size)
        yield agents
        yield waiting
        yield capacity
        yield GaugeMetricFamily(
            "session_console_alerts_unacknowledged", "Alerts not yet acknowledged",
            value=mon.alerts_unacknowledged,
        )
        if snap.store is not None:
            yield GaugeMetricFamily(
                "session_console_store_queue_ops", "Store ops waiting to commit",
                value=snap.store.queue_depth,
            )


class TurnHistograms(Collector):
    """Latency of turns served over HTTP: the engine's total and its overhead (no model);
    a collector of `registry`, counted in plain numbers and exported at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # agent type -> its (total, overhead) buckets
        self._children: dict[str, tuple[Buckets, Buckets]] = {}
        registry.register(self)

    def observe(self, agent_type: str, latency_s: float, model_latency_s: float) -> None:
        children = self._children.get(agent_type)
        if children is None:
            children = self._children[agent_type] = (Buckets(), Buckets())
        children[0].observe(latency_s)
        children[1].observe(max(0.0, latency_s - model_latency_s))

    def collect(self) -> Iterator[Metric]:
        yield histogram_family(
            "session_console_turn_duration_seconds", "Turn time in the engine, model included",
            ("agent_type",), {(name,): pair[0] for name, pair in self._children.items()},
        )
        yield histogram_family(
            "session_console_turn_overhead_seconds", "Turn time in the engine outside the model",
            ("agent_type",), {(name,): pair[1] for name, pair in self._children.items()},
        )
