"""Load panel: start and stop the simulated users, set their number and spawn rate (Locust's two
knobs), and read the generator's own figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Label, Static

from console import format as fmt
from console.screens.base import LiveScreen, StatusLine

if TYPE_CHECKING:
    from engine import EngineSnapshot

USERS_STEP = 10
RATE_STEP = 1.0


OPERATION_FIELDS = (
    "name", "requests", "failures", "rps", "failures_per_s", "avg_ms", "p50_ms", "p95_ms",
    "p99_ms", "max_ms",
)


def operation_record(op: Any) -> dict[str, Any]:
    return {name: getattr(op, name) for name in OPERATION_FIELDS}


def stats_table(stats: Any) -> Group:
    """The generator's figures the way Locust shows them: users, then a row per operation."""
    summary = Text.assemble(
        ("Users ", "bold"), f"{stats.live_users} of {stats.target_users}",
        f" (+{stats.special_users} scripted)" if stats.special_users else "",
        ("   Sessions open ", "bold"), str(stats.sessions_open),
        ("   Elapsed ", "bold"), fmt.duration(stats.elapsed_s),
        ("   Engine overhead ", "bold"),
        f"p50 {stats.overhead_p50_ms:.1f} p95 {stats.overhead_p95_ms:.1f} "
        f"p99 {stats.overhead_p99_ms:.1f} ms",
    )
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
    for label in ("Operation", "Reqs", "Fails", "RPS", "Fail/s", "p50 ms", "p95 ms", "p99 ms",
                  "Max ms"):
        table.add_column(label, justify="left" if label == "Operation" else "right")
    for op in (*stats.operations, stats.total):
        table.add_row(
            op.name, f"{op.requests:,}", f"{op.failures:,}", f"{op.rps:.1f}",
            f"{op.failures_per_s:.1f}", f"{op.p50_ms:.0f}", f"{op.p95_ms:.0f}",
            f"{op.p99_ms:.0f}", f"{op.max_ms:.0f}",
            style="bold" if op is stats.total else None,
        )
    failures = Text()
    for failure in stats.failures[:5]:
        failures.append(f"\n{failure.count:>6} x {failure.operation}: {failure.error}", "red")
    return Group(summary, Text(""), table, failures)


class LoadScreen(LiveScreen):
    VIEW_NAME = "Load"
    EXPORT_NAME = "load"
    AUTO_FOCUS = ""  # keys drive the panel; the inputs are for typing exact figures

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("right_square_bracket", f"users({USERS_STEP})", f"Users +{USERS_STEP}"),
        Binding("left_square_bracket", f"users(-{USERS_STEP})", f"Users -{USERS_STEP}"),
        Binding("right_curly_bracket", f"spawn_rate({RATE_STEP})", "Spawn rate +1"),
        Binding("left_curly_bracket", f"spawn_rate(-{RATE_STEP})", "Spawn rate -1"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.users = 0
        self.spawn_rate = 0.0

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Vertical(id="load-box", classes="box"):
            yield Label("Load generator", classes="box-title")
            yield Label("", id="load-state")
            with Horizontal(id="load-inputs"):
                yield Label("Users", classes="input-label")
                yield Input(id="load-users", type="integer", placeholder="users")
                yield Label("Spawn rate /s", classes="input-label")
                yield Input(id="load-rate", type="number", placeholder="users per second")
            yield Static(id="load-stats")
        yield Footer()

    def on_mount(self) -> None:
        load = self.console.load
        load.ensure()  # creates the generator's default options when none were given
        options = load.options
        self.users = int(getattr(options, "users", 0) or 0)
        self.spawn_rate = float(getattr(options, "spawn_rate", 0.0) or 0.0)
        self.query_one("#load-users", Input).value = str(self.users)
        self.query_one("#load-rate", Input).value = f"{self.spawn_rate:g}"

    def show(self, snapshot: EngineSnapshot) -> None:
        load = self.console.load
        load.ensure()
        state = self.query_one("#load-state", Label)
        if load.unavailable:
            state.update(load.unavailable)
            self.query_one("#load-stats", Static).update("")
            return
        stats = load.stats()
        phase = stats.phase if stats is not None else "stopped"
        state.update(
            f"{phase} · target {self.users} users · spawn rate {self.spawn_rate:g}/s"
            " · s start, x stop, [ ] users, { } spawn rate"
        )
        self.query_one("#load-stats", Static).update(
            stats_table(stats) if stats is not None else ""
        )

    def export_rows(self) -> list[dict[str, Any]]:
        """Locust's stats table: one row per operation plus the aggregate."""
        stats = self.console.load.stats()
        if stats is None:
            return []
        return [operation_record(op) for op in (*stats.operations, stats.total)]

    def _reshow(self) -> None:
        snapshot = self.console.snapshot
        if snapshot is not None:
            self.show(snapshot)

    def action_start(self) -> None:
        load = self.console.load
        if load.ensure() is None:
            self.notify(load.unavailable or "load generator unavailable", severity="warning")
            return
        load.set_users(self.users)
        load.set_spawn_rate(self.spawn_rate)
        if load.start():
            self.notify(f"Load started: {self.users} users at {self.spawn_rate:g}/s.")
        self._reshow()

    async def action_stop(self) -> None:
        if await self.console.load.stop():
            self.notify("Load stopped.")
        self._reshow()

    def action_users(self, delta: int) -> None:
        self._set_users(self.users + delta)

    def action_spawn_rate(self, delta: float) -> None:
        self._set_rate(self.spawn_rate + delta)

    def _set_users(self, users: int) -> None:
        self.users = max(0, users)
        self.query_one("#load-users", Input).value = str(self.users)
        self.console.load.set_users(self.users)
        self._reshow()

    def _set_rate(self, rate: float) -> None:
        self.spawn_rate = max(0.0, rate)
        self.query_one("#load-rate", Input).value = f"{self.spawn_rate:g}"
        self.console.load.set_spawn_rate(self.spawn_rate)
        self._reshow()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            if event.input.id == "load-users":
                self._set_users(int(event.value))
            else:
                self._set_rate(float(event.value))
        except ValueError:
            self.notify(f"not a number: {event.value!r}", severity="error")
