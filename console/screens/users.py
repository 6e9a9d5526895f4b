"""Users: each user's sessions and quota usage (used / limit / percent / reset), as gauges.

In a cluster the table lists the users of the sessions the sessions table lists (this worker's
and those the others published), each with the cluster's count of their live sessions.

Sorting, the header marks and the `/` filter work as on the sessions table (see `TableScreen`);
the order and the counts live in `UsersModel`. Full quota reports (with reset times) are asked
of the engine once per user per tick, and only for the rows on screen and the selected user;
sorting by a quota column asks every listed user's cheaper `quota_percents` instead, within the
model's reorder budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Input, Label

from console.alert_lines import read_age
from console.cluster_sessions import listed_sessions
from console.screens.base import StatusLine, set_text
from console.screens.detail import quota_gauges
from console.screens.table_view import TableScreen, filter_bindings, sort_bindings
from console.users_model import RESOURCES, UsersModel
from widgets import Column, GaugeList, VirtualTable, level_of

if TYPE_CHECKING:
    from engine import EngineSnapshot

USER_COLUMNS = (
    Column("user", "USER", 12, flex=True, priority=9),
    Column("tier", "TIER", 10, priority=5),
    Column("sessions", "SESS", 5, "right", priority=8),
    Column("api_calls", "CALLS%", 6, "right", priority=4),
    Column("tokens", "TOKENS%", 7, "right", priority=7),
    Column("storage_mb", "STORE%", 6, "right", priority=3),
    Column("compute_seconds", "CPU%", 6, "right", priority=2),
    Column("worst", "WORST", 6, "right", priority=6),
)

# Shift+letter sorts by a column, as on the sessions table (U and K mean the same there); the
# same key again reverses. C and M follow k9s (CPU, memory) for compute and storage.
SORT_BINDINGS = (
    ("U", "user"), ("T", "tier"), ("S", "sessions"), ("A", "api_calls"), ("K", "tokens"),
    ("M", "storage_mb"), ("C", "compute_seconds"), ("W", "worst"),
)


class UsersScreen(TableScreen):
    VIEW_NAME = "Users"
    EXPORT_NAME = "users"
    FILTER_HELP = (
        "Filter (/): tier:pro  user:ali, or a bare word (part of a user id);"
        " Enter applies, Esc clears."
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        *filter_bindings(),
        *sort_bindings(SORT_BINDINGS),
    ]

    model: UsersModel

    def __init__(self) -> None:
        super().__init__()
        in_cluster = bool(self.console.engine.config.cluster.redis_url)
        self.model = UsersModel(self.percents, live=self.live_sessions if in_cluster else None)
        self._usage: dict[str, tuple[Any, ...]] = {}

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield Label("Users", id="users-title")
        yield VirtualTable(
            USER_COLUMNS,
            row_key=lambda user: user,
            render_row=self._render_row,
            empty_text="no users with live sessions",
            id="users-table",
        )
        yield Input(placeholder="tier:pro  user:ali  or part of a user id", id="filter")
        with Vertical(id="user-usage", classes="box"):
            yield Label("Usage", id="user-usage-title", classes="box-title")
            yield GaugeList(id="user-gauges")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.table, "cursor", lambda _: self._show_selected(), init=False)

    def percents(self, user_id: str) -> tuple[tuple[str, float], ...]:
        """For sorting: every listed user's, once per reorder, so the cheap form."""
        return self.console.operator.quota_percents(user_id)

    def live_sessions(self, user_id: str) -> int | None:
        """The user's sessions on every worker of the cluster (None: not read yet)."""
        return self.console.operator.live_sessions(user_id)

    def usage(self, user_id: str) -> tuple[Any, ...]:
        """Quota report for a user, asked of the engine once per tick."""
        found = self._usage.get(user_id)
        if found is None:
            found = self._usage[user_id] = tuple(self.console.operator.quota_usage(user_id))
        return found

    def show(self, snapshot: EngineSnapshot) -> None:
        self._usage = {}
        if self.model.update(listed_sessions(snapshot)[0]):
            self.table.set_rows(self.model.rows)
        else:
            self.table.refresh_rows()
        self.show_title()
        self._show_selected()

    def show_title(self) -> None:
        model = self.model
        shown, total = len(model.rows), model.total
        count = f"{shown:,} of {total:,}" if shown != total else f"{total:,}"
        set_text(
            self.query_one("#users-title", Label),
            f"Users {count} with live sessions · {model.describe()}{self._quota_source()}",
        )
        super().show_title()

    def _quota_source(self) -> str:
        """In a cluster the counts and percents are the cluster's, as of its last read (a user
        shows '-' and the listed sessions until a read has reached them: the next, once the
        table asked)."""
        snapshot = self.console.snapshot
        cluster = snapshot.cluster if snapshot is not None else None
        if cluster is None:
            return ""
        age = read_age(cluster.quotas_read_at, snapshot.taken_at, cluster.available)
        return " · sessions and quotas: the cluster's" + (f", {age}" if age else "")

    def _show_selected(self) -> None:
        user = self.table.cursor_key
        title = self.query_one("#user-usage-title", Label)
        gauges = self.query_one("#user-gauges", GaugeList)
        if user is None:
            title.update("Usage")
            gauges.set_rows([])
            return
        title.update(f"Usage of {user} ({self.model.tiers.get(user, '?')}) · "
                     f"{self.model.sessions_of(user)} session(s)")
        gauges.set_rows(quota_gauges(self.usage(user)))

    def _render_row(self, user: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        percents = {u.resource: u.percent for u in self.usage(user)}
        worst = max(percents.values(), default=0.0)
        cells = (
            user,
            self.model.tiers.get(user, ""),
            str(self.model.sessions_of(user)),
            *(f"{percents[r]:.0f}" if r in percents else "-" for r in RESOURCES),
            f"{worst:.0f}%",
        )
        styles = (
            None, "dim", None,
            *(level_of(percents.get(r, 0.0)) if percents.get(r, 0.0) >= 50 else "dim"
              for r in RESOURCES),
            level_of(worst),
        )
        return cells, styles

    def export_rows(self) -> list[dict[str, Any]]:
        rows = []
        for user in self.table.rows:
            record: dict[str, Any] = {
                "user_id": user, "tier": self.model.tiers.get(user, ""),
                "sessions": self.model.sessions_of(user),
            }
            for u in self.usage(user):
                record[f"{u.resource}.used"] = u.used
                record[f"{u.resource}.limit"] = u.limit
                record[f"{u.resource}.percent"] = round(u.percent, 2)
                record[f"{u.resource}.reset_in_s"] = u.reset_in_s
            rows.append(record)
        return rows
