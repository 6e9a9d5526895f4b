"""Alerts: filter by severity, acknowledge one or all, jump to the session an alert is about.

In a cluster the list holds every worker's alerts (a WORKER column says whose); acknowledging
another worker's asks that worker to, and it shows acknowledged a heartbeat later. A user's
quota alert raised by several workers is one line ("w2 +1": and one other worker's), and
acknowledging it acknowledges it on each (console/alert_lines.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Label

from console import format as fmt
from console.alert_lines import (
    AlertLine,
    acknowledgements,
    alert_lines,
    unacknowledged_title,
)
from console.messages import AcknowledgeAlerts, AcknowledgeAllAlerts, OpenSession
from console.screens.base import LiveScreen, StatusLine
from widgets import Column, VirtualTable

if TYPE_CHECKING:
    from engine import EngineSnapshot

SEVERITIES = (None, "critical", "warning", "info")
_STYLE = {"critical": "bad", "warning": "warn", "info": None}

ALERT_COLUMNS = (
    Column("id", "#", 5, "right", priority=5),
    Column("severity", "SEV", 8, priority=9),
    Column("rule", "RULE", 14, priority=4),
    Column("subject", "SUBJECT", 10, priority=3),
    Column("message", "MESSAGE", 20, flex=True, priority=9),
    Column("count", "N", 4, "right", priority=2),
    Column("last", "LAST", 5, "right", priority=6),
    Column("status", "STATUS", 8, priority=8),
)
WORKER_COLUMN = Column("worker", "WORKER", 10, priority=7)  # in a cluster, after the id


def status_of(alert: Any) -> str:
    if alert.acknowledged:
        return "acked"
    if alert.resolved_at is not None:
        return "resolved"
    return "open"


def alert_record(alert: Any, worker: str = "") -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "worker": worker,
        "severity": alert.severity,
        "rule": alert.rule,
        "subject": alert.subject or "",
        "message": alert.message,
        "count": alert.count,
        "first_at": alert.first_at,
        "last_at": alert.last_at,
        "status": status_of(alert),
    }


class AlertsScreen(LiveScreen):
    VIEW_NAME = "Alerts"
    EXPORT_NAME = "alerts"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "cycle_severity", "Severity"),
        Binding("A", "acknowledge", "Ack"),
        Binding("ctrl+a", "acknowledge_all", "Ack all"),
        Binding("enter", "jump", "Go to session"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.severity: str | None = None
        self._now = 0.0
        self._with_worker = False  # a worker of a cluster: every worker's alerts, labelled

    def compose(self) -> ComposeResult:
        columns = ALERT_COLUMNS
        self._with_worker = bool(self.console.engine.config.cluster.redis_url)
        if self._with_worker:
            columns = (columns[0], WORKER_COLUMN, *columns[1:])
        yield StatusLine(id="status")
        yield Label("Alerts", id="alerts-view-title")
        yield VirtualTable(
            columns,
            row_key=lambda line: line.key,
            render_row=self._render_row,
            empty_text="no alerts",
            id="alerts-table",
        )
        yield Footer()

    def on_mount(self) -> None:
        self.table.focus()

    @property
    def table(self) -> VirtualTable[Any]:
        return self.query_one("#alerts-table", VirtualTable)

    def show(self, snapshot: EngineSnapshot) -> None:
        self._now = snapshot.taken_at
        rows = [
            line for line in alert_lines(snapshot) if self.severity in (None, line.alert.severity)
        ]
        self.table.set_rows(rows)
        m = snapshot.monitor
        dropped = f" · {m.alerts_dropped} dropped (oldest)" if m.alerts_dropped else ""
        self.query_one("#alerts-view-title", Label).update(
            f"Alerts {len(rows)} shown · {unacknowledged_title(snapshot)}"
            f" · severity {self.severity or 'all'}{dropped}"
        )

    def _render_row(self, line: AlertLine) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        alert = line.alert
        status = status_of(alert)
        done = status != "open"
        cells = (
            str(alert.alert_id),
            alert.severity,
            alert.rule,
            (alert.subject or "engine")[:36],
            alert.message,
            str(alert.count),
            fmt.duration(self._now - alert.last_at),
            status,
        )
        sev = "dim" if done else _STYLE.get(alert.severity)
        styles = ("dim", sev, None, None, "dim" if done else None, None, "dim", sev)
        if self._with_worker:
            worker = f"{line.worker} +{len(line.merged)}" if line.merged else line.worker
            cells = (cells[0], worker, *cells[1:])
            styles = (styles[0], None if line.here else "dim", *styles[1:])
        return cells, styles

    def export_rows(self) -> list[dict[str, Any]]:
        return [alert_record(line.alert, line.worker) for line in self.table.rows]

    def _reshow(self) -> None:
        snapshot = self.console.snapshot
        if snapshot is not None:
            self.show(snapshot)

    def action_cycle_severity(self) -> None:
        self.severity = SEVERITIES[(SEVERITIES.index(self.severity) + 1) % len(SEVERITIES)]
        self._reshow()

    def action_acknowledge(self) -> None:
        line = self.table.cursor_row
        if line is not None:
            for worker, alert_ids in acknowledgements(line).items():
                self.post_message(AcknowledgeAlerts(tuple(alert_ids), worker))

    def action_acknowledge_all(self) -> None:
        self.post_message(AcknowledgeAllAlerts(self.severity))

    def on_virtual_table_row_selected(self, event: VirtualTable.RowSelected) -> None:
        event.stop()
        self.action_jump()

    def action_jump(self) -> None:
        line = self.table.cursor_row
        if line is None:
            return
        subject = line.alert.subject
        if subject and self.console.operator.session_exists(subject):
            self.post_message(OpenSession(subject))
        elif subject and not line.here:  # maybe a session only that worker has served yet
            self.post_message(OpenSession(subject, only_if_live=True))
        elif subject:
            self.notify(not_a_session(subject), severity="warning")
        else:
            self.notify("This alert is engine-wide: no session to show.")


def not_a_session(subject: str) -> str:
    return (f"{subject!r} is not a live session (this alert is about a user, an agent type, "
            "or a session that has ended).")
