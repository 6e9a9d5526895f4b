"""The alerts the console lists: this engine's, and in a cluster every other worker's as last
read (engine/cluster/alert_board.py), each labelled with the worker that holds it.

Only the worker holding an alert can acknowledge it: this console acknowledges its own engine's
at once, and asks another worker to acknowledge its (it does at its next heartbeat).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import EngineSnapshot
    from engine.alerts import Alert


@dataclass(frozen=True, slots=True)
class AlertLine:
    worker: str  # the worker holding it; "" for a single process
    alert: Alert
    here: bool  # held by this console's engine

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
    if cluster is not None and cluster.alerts:
        for published in cluster.alerts:
            lines.extend(AlertLine(published.worker_id, a, False) for a in published.alerts)
        lines.sort(key=lambda line: line.alert.first_at, reverse=True)
    return lines


def unacknowledged_elsewhere(snapshot: EngineSnapshot) -> int | None:
    """Other workers' unacknowledged alerts (all they hold); None for a single process."""
    cluster = snapshot.cluster
    if cluster is None:
        return None
    return sum(published.unacknowledged for published in cluster.alerts)


def open_elsewhere(lines: Iterable[AlertLine], severity: str | None) -> dict[str, list[int]]:
    """Per other worker, the ids of its open alerts listed here (of `severity`, or all)."""
    found: dict[str, list[int]] = {}
    for line in lines:
        if not line.here and line.open and severity in (None, line.alert.severity):
            found.setdefault(line.worker, []).append(line.alert.alert_id)
    return found


def read_age(read_at: float | None, now: float, available: bool) -> str:
    """How stale the other workers' figures are, when that matters: '' while reads succeed
    (the cluster box says why they stopped: Valkey/Redis unreachable)."""
    if read_at is None:
        return "not read yet"
    if available:
        return ""
    return f"as of {max(0.0, now - read_at):.0f}s ago"
