"""What a run leaves behind: the stats table, the JSON report, Locust's CSV trio, `--fail-on`."""

from __future__ import annotations

import csv
import dataclasses
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import EngineConfig, EngineSnapshot
from loadgen.options import LoadOptions
from loadgen.stats import AGGREGATED, OPERATIONS, HistoryPoint, LoadStats, OperationStats

METRICS = ("failure_ratio", "failures", "requests", "rps", "avg_ms", "p50_ms", "p95_ms",
           "p99_ms", "max_ms")
_CONDITION = re.compile(
    r"^\s*(?:(?P<op>[A-Za-z_]+)\s*:\s*)?(?P<metric>[a-z0-9_]+)\s*(?P<cmp>>=|<=|>|<)"
    r"\s*(?P<value>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$"
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


@dataclass(frozen=True, slots=True)
class FailCondition:
    """`[OPERATION:]METRIC OP NUMBER`, e.g. `failure_ratio>0.05` or `send:p99_ms>500`.

    Without an operation it reads the Aggregated row; `rps` is the run's average.
    """

    metric: str
    comparison: str
    threshold: float
    operation: str | None = None

    @classmethod
    def parse(cls, text: str) -> FailCondition:
        example = "e.g. failure_ratio>0.05 or send:p99_ms>500"
        match = _CONDITION.match(text)
        if match is None:
            raise ValueError(f"cannot read condition {text!r}; use [OPERATION:]METRIC>NUMBER, "
                             f"{example}")
        op, metric = match["op"], match["metric"]
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} in {text!r}; one of {', '.join(METRICS)}"
                             f" ({example})")
        if op is not None and op not in OPERATIONS and op != AGGREGATED:
            raise ValueError(f"unknown operation {op!r} in {text!r}; one of "
                             f"{', '.join(OPERATIONS)} ({example})")
        return cls(metric, match["cmp"], float(match["value"]), op)

    def value(self, stats: LoadStats) -> float:
        if self.operation in (None, AGGREGATED):
            row: OperationStats | None = stats.total
        else:
            row = stats.operation(self.operation)
        if row is None:
            return 0.0
        if self.metric == "failure_ratio":
            return row.failure_ratio
        if self.metric == "rps":
            return row.requests / stats.elapsed_s if stats.elapsed_s else 0.0
        return float(getattr(row, self.metric))

    def met(self, stats: LoadStats) -> bool:
        return _COMPARE[self.comparison](self.value(stats), self.threshold)

    def __str__(self) -> str:
        prefix = f"{self.operation}:" if self.operation else ""
        return f"{prefix}{self.metric}{self.comparison}{self.threshold:g}"


def render_stats(stats: LoadStats, *, final: bool = False) -> str:
    """The Locust-style table; live rows show current req/s, the final one the run's average."""
    lines = [
        f"{'Operation':<16}{'Reqs':>9}{'Fails':>8}{'Fail%':>7}{'req/s':>9}"
        f"{'avg':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}  (ms)"
    ]
    for row in (*stats.operations, stats.total):
        rps = row.requests / stats.elapsed_s if final and stats.elapsed_s else row.rps
        lines.append(
            f"{row.name:<16}{row.requests:>9}{row.failures:>8}{row.failure_ratio:>7.1%}"
            f"{rps:>9.1f}{row.avg_ms:>8.1f}{row.p50_ms:>8.1f}{row.p95_ms:>8.1f}"
            f"{row.p99_ms:>8.1f}{row.max_ms:>9.1f}"
        )
    if stats.failures:
        lines.append("Failures by type:")
        lines.extend(f"  {f.operation:<16}{f.error:<24}{f.count:>8}" for f in stats.failures[:10])
        if len(stats.failures) > 10:
            lines.append(f"  ... {len(stats.failures) - 10} more in the report")
    lines.append(
        f"users {stats.live_users}/{stats.target_users} (+{stats.special_users} scripted)  "
        f"spawn {stats.spawn_rate:g}/s  sessions held {stats.sessions_open} (opened "
        f"{stats.sessions_opened}, ended {stats.sessions_ended}, abandoned "
        f"{stats.sessions_abandoned}, lost {stats.sessions_lost})"
    )
    lines.append(
        f"turns p50/p95/p99: client {stats.client_turn_p50_ms:.2f}/{stats.client_turn_p95_ms:.2f}"
        f"/{stats.client_turn_p99_ms:.2f} ms, engine overhead {stats.overhead_p50_ms:.2f}/"
        f"{stats.overhead_p95_ms:.2f}/{stats.overhead_p99_ms:.2f} ms, outside the engine "
        f"{stats.outside_engine_p50_ms:.2f}/{stats.outside_engine_p95_ms:.2f}/"
        f"{stats.outside_engine_p99_ms:.2f} ms  attacks succeeded {stats.attacks_succeeded}"
    )
    return "\n".join(lines)


def render_progress(stats: LoadStats, width: int = 30) -> str:
    if stats.duration_s is None:
        return f"{stats.elapsed_s:7.1f}s (until Ctrl-C)  {stats.phase}  seed {stats.seed}"
    done = min(1.0, stats.elapsed_s / stats.duration_s)
    bar = "#" * round(done * width) + "." * (width - round(done * width))
    return (f"[{bar}] {stats.elapsed_s:6.1f}s / {stats.duration_s:g}s  {stats.phase}  "
            f"seed {stats.seed}")


def render_engine(snap: EngineSnapshot) -> str:
    events = snap.session_events
    rules = Counter(alert.rule for alert in snap.monitor.alerts)
    return (
        f"engine: {snap.live_sessions} sessions, {snap.users} users, turns {snap.monitor.turns}, "
        f"expired {events.get('expired', 0)}, evicted {events.get('evicted', 0)}, "
        f"auth failures {snap.monitor.auth_failures}, alerts {len(snap.monitor.alerts)}"
        + (f" ({', '.join(f'{r} {n}' for r, n in sorted(rules.items()))})" if rules else "")
    )


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as JSON values; non-finite floats as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _operation_dict(row: OperationStats, elapsed_s: float) -> dict[str, Any]:
    out = jsonable(row)
    out["failure_ratio"] = row.failure_ratio
    out["rps_avg"] = row.requests / elapsed_s if elapsed_s else 0.0
    return out


def engine_config_section(config: EngineConfig) -> dict[str, Any]:
    """The in-process engine's settings that shape a run, for the report."""
    return {"llm": config.llm.backend, "base_url": config.llm.base_url,
            "sim": jsonable(config.llm.sim), "idle_timeout_s": config.sessions.idle_timeout_s,
            "turn_timeout_s": config.llm.turn_timeout_s}


def engine_section(snap: EngineSnapshot) -> dict[str, Any]:
    """The in-process engine's own counts at the end, to check the generator's against."""
    return {
        "sessions": snap.live_sessions,
        "users": snap.users,
        "session_events": dict(snap.session_events),
        "turns": snap.monitor.turns,
        "errors_by_type": dict(snap.monitor.errors_by_type),
        "auth_failures": snap.monitor.auth_failures,
        "alerts": [{"key": a.key, "rule": a.rule, "severity": a.severity, "count": a.count,
                    "message": a.message} for a in snap.monitor.alerts],
    }


def build_report(
    stats: LoadStats,
    options: LoadOptions,
    conditions: Sequence[FailCondition],
    exit_code: int,
    *,
    sections: dict[str, Any],
) -> dict[str, Any]:
    """The JSON report: options, summary, fail-on verdicts, per-second history, and the
    target's own `sections` (the in-process engine's config and counts)."""
    summary = {
        name: jsonable(getattr(stats, name))
        for name in ("phase", "seed", "elapsed_s", "duration_s", "target_users", "live_users",
                     "special_users", "spawn_rate", "sessions_open", "sessions_opened",
                     "sessions_ended", "sessions_abandoned", "sessions_lost", "failures",
                     "attacks_succeeded", "overhead_p50_ms", "overhead_p95_ms",
                     "overhead_p99_ms", "client_turn_p50_ms", "client_turn_p95_ms",
                     "client_turn_p99_ms", "outside_engine_p50_ms", "outside_engine_p95_ms",
                     "outside_engine_p99_ms")
    }
    summary["operations"] = [_operation_dict(op, stats.elapsed_s) for op in stats.operations]
    summary["total"] = _operation_dict(stats.total, stats.elapsed_s)
    return {
        "seed": stats.seed,
        "options": jsonable(options),
        **sections,
        "summary": summary,
        "fail_on": [{"condition": str(c), "value": c.value(stats), "met": c.met(stats)}
                    for c in conditions],
        "exit_code": exit_code,
        "history": jsonable(stats.history),
    }


def write_csv(prefix: str, stats: LoadStats) -> list[Path]:
    """Locust's trio: PREFIX_stats.csv, PREFIX_failures.csv, PREFIX_stats_history.csv."""
    paths = [Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv"),
             Path(f"{prefix}_stats_history.csv")]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    with paths[0].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["Name", "Requests", "Successes", "Failures", "Failure ratio", "Avg ms",
                      "p50 ms", "p95 ms", "p99 ms", "Max ms", "Requests/s"])
        for row in (*stats.operations, stats.total):
            out.writerow([row.name, row.requests, row.successes, row.failures,
                          f"{row.failure_ratio:.4f}", f"{row.avg_ms:.3f}", f"{row.p50_ms:.3f}",
                          f"{row.p95_ms:.3f}", f"{row.p99_ms:.3f}", f"{row.max_ms:.3f}",
                          f"{row.requests / stats.elapsed_s if stats.elapsed_s else 0:.2f}"])
    with paths[1].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["Operation", "Error", "Occurrences"])
        out.writerows([f.operation, f.error, f.count] for f in stats.failures)
    with paths[2].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow([f.name for f in dataclasses.fields(HistoryPoint)])
        out.writerows(
            [round(v, 3) if isinstance(v, float) else v for v in dataclasses.astuple(point)]
            for point in stats.history
        )
    return paths
