"""The alerts the console lists: this engine's, and in a cluster every other worker's as last
read (engine/cluster/alert_board.py), each labelled with the worker that holds it.

Only the worker holding an alert can acknowledge it: this console acknowledges its own engine's
at once, and asks another worker to acknowledge its (it does at its next heartbeat).

A user's quota alerts are raised from the cluster's count by every worker that serves the user
(engine/cluster/standings.py), so in a cluster the list holds one line per user and condition
(the alert's key): the newest of them, an open one while any is open; the other open ones ride
along in `merged`, and acknowledging the line acknowledges them all, each on its own worker.
The titles count the cluster's unacknowledged alerts the same way: such a condition once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import EngineSnapshot
    from engine.alerts import Alert

MERGED_RULES = frozenset({"quota_near", "quota_exceeded"})  # raised by every worker serving a user


@dataclass(frozen=True, slots=True)
class AlertLine:
    worker: str  # the worker holding it; "" for a single process
    alert: Alert
    here: bool  # held by this console's engine
    merged: tuple[AlertLine, ...] = ()  # the same condition's other open alerts, other workers'

    @property
    def key(self) -> str:
        return f"{self.worker}:{self.alert.alert_id}"

    @property
    def open(self) -> bool:
        return not self.alert.acknowledged and self.alert.resolved_at is None


def alert_lines(snapshot: EngineSnapshot) -> list[AlertLine]:
    """Every alert the snapshot holds, newest first (by when each was first raised)."""
    cluster = snapshot.cluster
    here = cluster.worker_id if cluster is not None else ""
    lines = [AlertLine(here, a, True) for a in snapshot.monitor.alerts]
    if cluster is not None:
        for published in cluster.alerts:
            lines.extend(AlertLine(published.worker_id, a, False) for a in published.alerts)
        lines = _one_per_condition(lines)
        lines.sort(key=lambda line: line.alert.first_at, reverse=True)
    return lines


def _one_per_condition(lines: list[AlertLine]) -> list[AlertLine]:
    """One line per quota alert key (see the module docstring); other alerts as they are."""
    kept: list[AlertLine] = []
    groups: dict[str, list[AlertLine]] = {}
    for line in lines:
        if line.alert.rule in MERGED_RULES:
            groups.setdefault(line.alert.key, []).append(line)
        else:
            kept.append(line)
    for group in groups.values():
        shown = max(group, key=lambda line: (line.open, line.alert.last_at, line.alert.first_at))
        merged = tuple(line for line in group if line.open and line is not shown)
        kept.append(replace(shown, merged=merged) if merged else shown)
    return kept


def acknowledgements(line: AlertLine) -> dict[str | None, list[int]]:
    """What acknowledging `line` asks: per worker (None: this console's engine), the ids of
    its alert and of the open alerts merged into it."""
    asked: dict[str | None, list[int]] = {}
    for held in (line, *line.merged):
        asked.setdefault(None if held.here else held.worker, []).append(held.alert.alert_id)
    return asked


def unacknowledged_in_cluster(snapshot: EngineSnapshot) -> int | None:
    """The cluster's unacknowledged alerts, counted as the lines list them: every worker's
    (all each holds, not only those it published), a condition several workers raised once;
    None for a single process."""
    cluster = snapshot.cluster
    if cluster is None:
        return None
    total = snapshot.monitor.alerts_unacknowledged
    total += sum(published.unacknowledged for published in cluster.alerts)
    held: dict[str, int] = {}  # merged condition -> its unacknowledged alerts, on any worker
    for alerts in (snapshot.monitor.alerts, *(p.alerts for p in cluster.alerts)):
        for alert in alerts:
            if alert.rule in MERGED_RULES and not alert.acknowledged:
                held[alert.key] = held.get(alert.key, 0) + 1
    return total - sum(n - 1 for n in held.values())


def unacknowledged_title(snapshot: EngineSnapshot) -> str:
    """'N unacknowledged', and in a cluster the cluster's N, this worker's part and, when the
    other workers' alerts could not be read lately, how old they are."""
    here = snapshot.monitor.alerts_unacknowledged
    cluster, total = snapshot.cluster, unacknowledged_in_cluster(snapshot)
    if cluster is None or total is None:
        return f"{here} unacknowledged"
    age = read_age(cluster.alerts_read_at, snapshot.taken_at, cluster.available)
    return f"{total} unacknowledged · cluster ({here} here)" + (f" · {age}" if age else "")


def open_elsewhere(lines: Iterable[AlertLine], severity: str | None) -> dict[str, list[int]]:
    """Per other worker, the ids of its open alerts listed here (of `severity`, or all)."""
    found: dict[str, list[int]] = {}
    for line in lines:
        for held in (line, *line.merged):
            if not held.here and held.open and severity in (None, held.alert.severity):
                found.setdefault(held.worker, []).append(held.alert.alert_id)
    return found


def read_age(read_at: float | None, now: float, available: bool) -> str:
    """How stale the other workers' figures are, when that matters: '' while reads succeed
    (the cluster box says why they stopped: Valkey/Redis unreachable)."""
    if read_at is None:
        return "not read yet"
    if available:
        return ""
    return f"as of {max(0.0, now - read_at):.0f}s ago"
