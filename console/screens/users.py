"""Users: each user's sessions and quota usage (used / limit / percent / reset), as gauges.

Session counts come from the snapshot; quota reports are asked of the engine only for the rows
on screen and the selected user, so the cost follows the screen, not the user count.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Footer, Label

from console.screens.base import LiveScreen, StatusLine
from console.screens.detail import quota_gauges
from widgets import Column, GaugeList, VirtualTable, level_of

if TYPE_CHECKING:
    from engine import EngineSnapshot

RESOURCES = ("api_calls", "tokens", "storage_mb", "compute_seconds")

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


class UsersScreen(LiveScreen):
    VIEW_NAME = "Users"
    EXPORT_NAME = "users"

    def __init__(self) -> None:
        super().__init__()
        self._source: Any = None
        self._counts: Counter[str] = Counter()
        self._tiers: dict[str, str] = {}
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
        with Vertical(id="user-usage", classes="box"):
            yield Label("Usage", id="user-usage-title", classes="box-title")
            yield GaugeList(id="user-gauges")
        yield Footer()

    def on_mount(self) -> None:
        self.table.focus()
        self.watch(self.table, "cursor", lambda _: self._show_selected(), init=False)

    @property
    def table(self) -> VirtualTable[str]:
        return self.query_one("#users-table", VirtualTable)

    def usage(self, user_id: str) -> tuple[Any, ...]:
        """Quota report for a user, asked of the engine once per tick."""
        found = self._usage.get(user_id)
        if found is None:
            found = self._usage[user_id] = tuple(self.console.engine.quota_usage(user_id))
        return found

    def show(self, snapshot: EngineSnapshot) -> None:
        self._usage = {}
        if snapshot.sessions is not self._source:
            self._source = snapshot.sessions
            self._counts = Counter(v.user_id for v in snapshot.sessions)
            self._tiers = {v.user_id: v.tier for v in snapshot.sessions}
            hot = [q.user_id for q in snapshot.quotas if q.user_id in self._counts]
            rest = sorted(set(self._counts) - set(hot), key=lambda u: (-self._counts[u], u))
            self.table.set_rows(hot + rest)
        else:
            self.table.refresh_rows()
        self.query_one("#users-title", Label).update(
            f"Users {len(self._counts):,} with live sessions · nearest their limits first"
        )
        self._show_selected()

    def _show_selected(self) -> None:
        user = self.table.cursor_key
        title = self.query_one("#user-usage-title", Label)
        gauges = self.query_one("#user-gauges", GaugeList)
        if user is None:
            title.update("Usage")
            gauges.set_rows([])
            return
        title.update(f"Usage of {user} ({self._tiers.get(user, '?')}) · "
                     f"{self._counts.get(user, 0)} session(s)")
        gauges.set_rows(quota_gauges(self.usage(user)))

    def _render_row(self, user: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        percents = {u.resource: u.percent for u in self.usage(user)}
        worst = max(percents.values(), default=0.0)
        cells = (
            user,
            self._tiers.get(user, ""),
            str(self._counts.get(user, 0)),
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
                "user_id": user, "tier": self._tiers.get(user, ""),
                "sessions": self._counts.get(user, 0),
            }
            for u in self.usage(user):
                record[f"{u.resource}.used"] = u.used
                record[f"{u.resource}.limit"] = u.limit
                record[f"{u.resource}.percent"] = round(u.percent, 2)
                record[f"{u.resource}.reset_in_s"] = u.reset_in_s
            rows.append(record)
        return rows
