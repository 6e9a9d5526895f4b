"""The dashboard: global figures, the sessions table, pools, quota gauges and alerts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Label, Static

from console import format as fmt
from console.alert_lines import AlertLine, alert_lines, read_age, unacknowledged_title
from console.cluster_sessions import listed_sessions
from console.messages import EndSession, OpenSession
from console.screens.base import StatusLine, set_lines, set_text
from console.screens.table_view import TableScreen, filter_bindings, sort_bindings
from console.sessions_model import COLUMNS, SessionsModel
from widgets import (
    AlertList,
    AlertRow,
    BarList,
    BarRow,
    Figure,
    FigureStrip,
    GaugeList,
    GaugeRow,
    VirtualTable,
)

if TYPE_CHECKING:
    from engine import CacheView, ClusterView, EngineSnapshot
    from engine.gateway import GatewayStats

HEALTH_WARN = 80
HEALTH_BAD = 50
# Rows handed to the side panels: more than they ever have room for; each panel shows what fits
# and a "+N more" line for the rest, counted from the full list.
DASHBOARD_ALERTS = 40
DASHBOARD_QUOTAS = 6
SPARK_SECONDS = 180  # "the last minutes"
HTTP_MARK = "↗"  # sessions created through the HTTP gateway (filter: via:http)
GATEWAY_ROUTES = 6  # routes listed in the gateway panel, busiest first
CLUSTER_WORKERS = 6  # workers listed in the cluster panel
REORDER_STEP_DELAY_S = 0.001  # between the steps of a big table's reorder (a timer needs > 0)

# Shift+letter sorts by a column, as in k9s; the same key again reverses.
SORT_BINDINGS = (
    ("I", "id"), ("U", "user"), ("T", "agent"), ("W", "worker"), ("A", "age"), ("L", "idle"),
    ("M", "messages"), ("K", "tokens"), ("E", "errors"), ("H", "health"), ("S", "state"),
)


def health_style(health: int) -> str:
    if health < HEALTH_BAD:
        return "bad"
    if health < HEALTH_WARN:
        return "warn"
    return "ok"


def session_record(view: Any, now: float) -> dict[str, Any]:
    """One session as an exported record: the table's columns, no content, no secrets."""
    return {
        "session_id": view.session_id,
        "user_id": view.user_id,
        "tier": view.tier,
        "agent_type": view.agent_type,
        "worker": view.worker,
        "age_s": round(now - view.created_at, 3),
        "idle_s": round(now - view.last_active_at, 3),
        "messages": view.messages,
        "turns": view.turns,
        "tokens": view.tokens,
        "errors": view.errors,
        "health": view.health,
        "health_reasons": "; ".join(view.health_reasons),
        "state": view.state,
        "origin": view.origin,
    }


def cache_summary(cache: CacheView | None, loads_per_s: float) -> str:
    """Once some sessions are cold (in the store only): how many are hot and cold, how often a
    use found its session hot, how many a second are read from the store, and the memory the
    hot ones hold, and while stored sessions are still being paged in after a restart, how
    many remain. Empty while every session is hot."""
    if cache is None or not (cache.cold or cache.restoring):
        return ""
    restoring = f" · restoring {cache.restoring:,} more" if cache.restoring else ""
    return (
        f"Cache  {cache.hot:,} hot · {cache.cold:,} cold · hit {cache.hit_ratio:.0%}"
        f" · loads {fmt.rate(loads_per_s)}/s"
        f" · {cache.hot_bytes / 2**20:.1f} of {cache.budget_bytes / 2**20:.0f} MB{restoring}"
    )


def _sessions_sub(snapshot: EngineSnapshot) -> str:
    cold = snapshot.cache.cold if snapshot.cache is not None else 0
    return f"users {snapshot.users:,}" + (f" · {cold:,} cold" if cold else "")


def figures(snapshot: EngineSnapshot) -> list[Figure]:
    m = snapshot.monitor
    lat = m.latency
    return [
        Figure("sessions", "Sessions", f"{snapshot.live_sessions:,}", sub=_sessions_sub(snapshot)),
        Figure("turns", "Turns/s", fmt.rate(m.turns_rate), _series(m.turns_per_s)),
        Figure("tokens", "Tokens/s", fmt.rate(m.tokens_rate), _series(m.tokens_per_s)),
        Figure(
            "errors", "Errors/s", fmt.rate(m.errors_rate), _series(m.errors_per_s),
            level="bad" if m.errors_rate >= 1 else "warn" if m.errors_rate > 0 else None,
        ),
        Figure(
            "latency", "p50", fmt.latency(lat.p50),
            sub=f"p95 {fmt.latency(lat.p95)} p99 {fmt.latency(lat.p99)}",
        ),
    ]


def gateway_title(stats: GatewayStats) -> str:
    state = "" if stats.ready else " · NOT READY"
    return (f"Gateway {stats.listen}{state} · {fmt.rate(stats.requests_per_s)} req/s · "
            f"{stats.connections} conn · {stats.streams} streams")


def gateway_lines(stats: GatewayStats, limit: int) -> str:
    """Busiest routes first: requests/s, errors/s and totals."""
    if not stats.routes:
        return "no requests yet: curl it (README, 'The gateway')"
    lines = [
        f"{r.route:<31.31} {fmt.rate(r.requests_per_s):>6}/s {fmt.rate(r.errors_per_s):>5} err/s"
        for r in stats.routes[:limit]
    ]
    if len(stats.routes) > limit:
        lines.append(f"+{len(stats.routes) - limit} more routes · GET /metrics for all")
    return "\n".join(lines)


def cluster_title(cluster: ClusterView) -> str:
    title = f"Cluster  {len(cluster.members)} workers · this one {cluster.worker_id}"
    return title if cluster.available else title + " · Valkey/Redis unreachable"


def cluster_lines(cluster: ClusterView, limit: int) -> str:
    """Every worker alive at the last heartbeat (this one marked *): sessions it holds,
    turns/s, p99, pool occupancy, how long ago it was heard from, and `drain` when it takes no
    new sessions (SIGTERM or `Engine.drain`: its sessions' affinity moved). 60 columns at most."""
    if not cluster.members:
        return "no heartbeat yet" if cluster.available else "workers unknown while unreachable"
    lines = [
        f"{'*' if m.worker_id == cluster.worker_id else ' '}{m.worker_id:<8.8}"
        f"{fmt.count(m.load.sessions):>6} sess{fmt.rate(m.load.turns_per_s):>6}/s"
        f" p99 {fmt.latency(m.load.p99_s):>6} pool{m.load.pool_occupancy:>4.0%}"
        f"{m.heartbeat_age_s:>5.1f}s{' drain' if m.load.draining else ''}"
        for m in cluster.members[:limit]
    ]
    if len(cluster.members) > limit:
        lines.append(f"+{len(cluster.members) - limit} more workers")
    return "\n".join(lines)


def _series(values: Sequence[float]) -> tuple[float, ...]:
    """The last minutes, without the second still in progress."""
    return tuple(values[-SPARK_SECONDS - 1 : -1])


def pool_rows(pools: Iterable[Any]) -> tuple[list[BarRow], list[BarRow]]:
    """Pool occupancy summed per agent type and per worker."""
    by_type: dict[str, list[int]] = {}
    by_worker: dict[str, list[int]] = {}
    for pool in pools:
        for key, table in ((pool.agent_type, by_type), (pool.worker, by_worker)):
            totals = table.setdefault(key, [0, 0, 0, 0])
            totals[0] += pool.in_use
            totals[1] += pool.idle
            totals[2] += pool.waiting
            totals[3] += pool.max_size
    return (
        [BarRow(name, *totals) for name, totals in sorted(by_type.items())],
        [BarRow(name, *totals) for name, totals in sorted(by_worker.items())],
    )


def worker_notes(workers: Iterable[Any]) -> dict[str, str]:
    notes = {}
    for worker in workers:
        sessions = worker.sessions
        moves = worker.moves_in + worker.moves_out
        draining = " draining" if worker.draining else ""
        notes[worker.worker_id] = f"{fmt.count(sessions)} sess, {moves} moves{draining}"
    return notes


def quota_rows(quotas: Iterable[Any], now: float, limit: int) -> list[GaugeRow]:
    rows = []
    for quota in list(quotas)[:limit]:
        worst = max(quota.usage, key=lambda u: u.percent, default=None)
        if worst is None:
            continue
        rows.append(
            GaugeRow(
                f"{quota.user_id} {worst.resource}",
                worst.percent,
                f"reset {fmt.duration(worst.reset_in_s)}",
            )
        )
    return rows


def quotas_title(cluster: ClusterView | None, now: float) -> str:
    """In a cluster the figures are the cluster's, as of its last read."""
    title = "Quotas nearest their limits"
    if cluster is None:
        return title
    age = read_age(cluster.quotas_read_at, now, cluster.available)
    return f"{title} · cluster" + (f" · {age}" if age else "")


def alerts_title(snapshot: EngineSnapshot) -> str:
    return f"Alerts  {unacknowledged_title(snapshot)}"


def line_rows(lines: Iterable[AlertLine], now: float, limit: int) -> list[AlertRow]:
    """The alerts box's rows: another worker's alert names it first."""
    rows = []
    for line in lines:
        a = line.alert
        rows.append(AlertRow(
            a.severity,
            a.message if line.here else f"{line.worker}: {a.message}",
            (f"x{a.count} " if a.count > 1 else "") + f"{fmt.duration(now - a.last_at)} ago",
            not line.open,
        ))
        if len(rows) >= limit:
            break
    return rows


def alert_rows(alerts: Iterable[Any], now: float, limit: int | None = None) -> list[AlertRow]:
    rows = [
        AlertRow(
            a.severity,
            a.message,
            (f"x{a.count} " if a.count > 1 else "") + f"{fmt.duration(now - a.last_at)} ago",
            a.acknowledged or a.resolved_at is not None,
        )
        for a in alerts
    ]
    return rows if limit is None else rows[:limit]


def table_title(model: SessionsModel, unlisted: int) -> str:
    """How many rows of how many listed, how many live sessions are still to be listed (a big
    store's views come in batches), and the order, with a mark while a reorder runs."""
    shown = len(model.rows)
    total = f"{shown:,} of {model.total:,}" if shown != model.total else f"{model.total:,}"
    listing = f" · listing {unlisted:,} more" if unlisted else ""
    sorting = " · sorting…" if model.reordering else ""
    return f"Sessions {total}{listing} · {model.describe()}{sorting}"


class DashboardScreen(TableScreen):
    VIEW_NAME = "Dashboard"
    EXPORT_NAME = "sessions"
    FILTER_HELP = (
        "Filter (/): user:ali  id:3fa9  state:busy  agent:research  worker:w1  health<60,"
        " or a bare word (user or id prefix); Enter applies, Esc clears."
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_session", "Detail", show=True),
        *filter_bindings(),
        Binding("ctrl+z,z", "toggle_unhealthy", "Unhealthy"),
        Binding("ctrl+d", "end_session", "End session"),
        *sort_bindings(SORT_BINDINGS),
    ]

    model: SessionsModel

    def __init__(self) -> None:
        super().__init__()
        self.model = SessionsModel()
        self._now = 0.0
        self._loads_seen: tuple[float, int] | None = None  # (taken_at, cache loads) last shown
        self._loads_rate = 0.0
        self._unlisted = 0  # live sessions the last snapshot had no view of yet
        self._reordering = False  # a reorder step is scheduled for the next frame

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield FigureStrip(
            [Figure("sessions", "Sessions", "-"), Figure("turns", "Turns/s", "-", ()),
             Figure("tokens", "Tokens/s", "-", ()), Figure("errors", "Errors/s", "-", ()),
             Figure("latency", "p50", "-")],
            id="figures",
        )
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Label("Sessions", id="table-title")
                yield Label("", id="cache-line")
                yield VirtualTable(
                    COLUMNS,
                    row_key=attrgetter("session_id"),
                    render_row=self._render_row,
                    empty_text="no live sessions",
                    id="sessions",
                )
                yield Input(placeholder="user:alice  id:3fa9  state:busy  health<60", id="filter")
            with Vertical(id="side"):
                with Vertical(classes="box", id="pools-box"):
                    yield Label("Pools  in use/idle/max", classes="box-title")
                    yield BarList(id="pools")
                    yield BarList(id="workers")
                with Vertical(classes="box", id="quotas-box"):
                    yield Label(
                        "Quotas nearest their limits", classes="box-title", id="quotas-title"
                    )
                    yield GaugeList(id="quotas", more_hint="u: users")
                with Vertical(classes="box", id="alerts-box"):
                    yield Label("Alerts", classes="box-title", id="alerts-title")
                    yield AlertList(id="alerts", more_hint="a: all alerts")
                with Vertical(classes="box", id="cluster-box"):
                    yield Label("Cluster", classes="box-title", id="cluster-title")
                    yield Static("", id="cluster")
                with Vertical(classes="box", id="gateway-box"):
                    yield Label("Gateway", classes="box-title", id="gateway-title")
                    yield Static("", id="gateway")
        yield Footer()

    # -- refresh ---------------------------------------------------------------------------------
    def _loads_per_s(self, snapshot: EngineSnapshot) -> float:
        """Sessions read from the store per second since the last refresh."""
        if snapshot.cache is None:
            return 0.0
        now, loads = snapshot.taken_at, snapshot.cache.loads
        seen = self._loads_seen
        if seen is not None and now <= seen[0]:
            return self._loads_rate  # the same instant again (a redraw): the same figure
        self._loads_seen = (now, loads)
        self._loads_rate = 0.0 if seen is None else (loads - seen[1]) / (now - seen[0])
        return self._loads_rate

    def show(self, snapshot: EngineSnapshot) -> None:
        for _ in self.show_in_steps(snapshot):
            pass

    def show_in_steps(self, snapshot: EngineSnapshot) -> Iterator[None]:
        """The table (which repaints its changed lines over the next frames), the titles and
        each changed figure at the top, then the side boxes in two steps."""
        self._now = snapshot.taken_at
        self._unlisted = snapshot.unlisted
        model = self.model
        if model.update(*listed_sessions(snapshot), complete=not snapshot.unlisted):
            self.table.set_rows(model.rows)
        else:
            self.table.refresh_rows()
        self._continue_reorder()
        yield
        self.show_title()
        self._show_cache(cache_summary(snapshot.cache, self._loads_per_s(snapshot)))
        strip = self.query_one(FigureStrip)
        for figure in figures(snapshot):  # a card a step: a sparkline costs a few ms to draw
            if strip.update_one(figure):
                yield
        types, workers = pool_rows(snapshot.pools)
        notes = worker_notes(snapshot.workers)
        self.query_one("#pools", BarList).set_rows(types)
        self.query_one("#workers", BarList).set_rows(
            [BarRow(r.label, r.in_use, r.idle, r.waiting, r.maximum,
                    f"{r.in_use}/{r.idle}/{r.maximum} {notes.get(r.label, '')}".rstrip())
             for r in workers]
        )
        self.query_one("#quotas", GaugeList).set_rows(
            quota_rows(snapshot.quotas, snapshot.taken_at, DASHBOARD_QUOTAS),
            total=len(snapshot.quotas),
        )
        yield
        lines = alert_lines(snapshot)
        listed = [line for line in lines if line.open] or lines
        set_text(self.query_one("#alerts-title", Label), alerts_title(snapshot))
        self.query_one("#alerts", AlertList).set_rows(
            line_rows(listed, snapshot.taken_at, DASHBOARD_ALERTS), total=len(listed)
        )
        self._show_gateway(self.console.gateway_stats)
        self._show_cluster(snapshot.cluster, snapshot.taken_at)
        yield

    def _show_cluster(self, cluster: ClusterView | None, now: float) -> None:
        box = self.query_one("#cluster-box")
        box.display = cluster is not None
        if cluster is None:
            return
        for title in (self.query_one("#quotas-title", Label),
                      self.query_one("#alerts-title", Label)):
            title.set_class(not cluster.available, "-down")
        set_text(self.query_one("#quotas-title", Label), quotas_title(cluster, now))
        title = self.query_one("#cluster-title", Label)
        set_text(title, cluster_title(cluster))
        title.set_class(not cluster.available, "-down")
        set_lines(self.query_one("#cluster", Static), cluster_lines(cluster, CLUSTER_WORKERS))

    def _show_cache(self, summary: str) -> None:
        line = self.query_one("#cache-line", Label)
        line.display = bool(summary)
        set_text(line, summary)

    def _show_gateway(self, stats: GatewayStats | None) -> None:
        box = self.query_one("#gateway-box")
        box.display = stats is not None
        if stats is None:
            return
        set_text(self.query_one("#gateway-title", Label), gateway_title(stats))
        set_lines(self.query_one("#gateway", Static), gateway_lines(stats, GATEWAY_ROUTES))

    def _continue_reorder(self) -> None:
        """A big table is reordered a step at a time (SessionsModel.step), whatever the ticks,
        each step on a one-shot timer of its own: callbacks after a refresh that repaints
        nothing run one after another in one slice of the loop, and so would every step."""
        if self.model.reordering and not self._reordering:
            self._reordering = True
            self.set_timer(REORDER_STEP_DELAY_S, self._reorder_step, name="reorder")

    def _reorder_step(self) -> None:
        self._reordering = False
        if not self.is_attached:
            return
        if self.model.step():
            self.table.set_rows(self.model.rows)
            self.show_title()
        self._continue_reorder()

    def show_title(self) -> None:
        set_text(self.query_one("#table-title", Label), table_title(self.model, self._unlisted))
        super().show_title()

    def _render_row(self, view: Any) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        live = self.model.current(view)
        now = self._now
        if live is None:  # ended since the last reorder; it goes at the next one
            cells = (view.session_id[:8], view.user_id, view.agent_type or "-", view.worker,
                     "", "", "", "", "", "", "ended")
            return cells, ("dim",) * len(cells)
        v = live
        cells = (
            HTTP_MARK + v.session_id[:7] if v.origin == "http" else v.session_id[:8],
            v.user_id,
            v.agent_type or "-",
            v.worker,
            fmt.duration(now - v.created_at),
            fmt.duration(now - v.last_active_at),
            str(v.messages),
            fmt.count(v.tokens),
            str(v.errors),
            str(v.health),
            v.state,
        )
        styles = (
            "dim", None, None, "dim", "dim", None, None, None,
            "bad" if v.errors else "dim", health_style(v.health),
            "warn" if v.state == "busy" else None,
        )
        return cells, styles

    def export_rows(self) -> list[dict[str, Any]]:
        rows = []
        for view in self.model.rows:
            live = self.model.current(view)
            if live is not None:
                rows.append(session_record(live, self._now))
        return rows

    # -- actions ---------------------------------------------------------------------------------
    def on_virtual_table_row_selected(self, event: VirtualTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenSession(event.key))

    def action_open_session(self) -> None:
        self.table.action_select()

    def action_toggle_unhealthy(self) -> None:
        self.model.toggle_unhealthy()
        self._reshow()

    def action_end_session(self) -> None:
        key = self.table.cursor_key
        if key is not None:
            self.post_message(EndSession(key))
