"""One session in full: metadata, health and why, counters, latency, its user's quota, its
conversation (the only place user content appears), and the operator's actions on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Label, Static

from console import format as fmt
from console.messages import AcknowledgeAlerts, EndSession, RotateToken
from console.screens.base import LiveScreen, StatusLine
from console.screens.dashboard import alert_rows, health_style, session_record
from widgets import AlertList, GaugeList, GaugeRow

if TYPE_CHECKING:
    from engine import EngineSnapshot

_HEALTH_STYLE = {"ok": "green", "warn": "yellow", "bad": "bold red"}


def quota_gauges(usage: Any) -> list[GaugeRow]:
    return [
        GaugeRow(
            u.resource,
            u.percent,
            f"{fmt.amount(u.used)}/{fmt.amount(u.limit)}"
            + (f" +{fmt.amount(u.reserved)} held" if u.reserved else "")
            + f" reset {fmt.duration(u.reset_in_s)}",
        )
        for u in usage
    ]


class SessionDetailScreen(LiveScreen):
    VIEW_NAME = "Session"
    EXPORT_NAME = "session"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+d", "end_session", "End session"),
        Binding("t", "rotate_token", "Rotate token"),
        Binding("A", "acknowledge", "Ack alerts"),
    ]

    def __init__(self, session_id: str) -> None:
        super().__init__()
        self.session_id = session_id
        self.detail: Any | None = None
        self.ended = False
        self._shown_messages: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="detail-top"):
            with Vertical(id="detail-left"):
                yield Static(id="detail-meta")
                yield Static(id="detail-health")
            with Vertical(id="detail-right"):
                yield Static(id="detail-counters")
                yield Label("Quota of this user", classes="box-title")
                yield GaugeList(id="detail-quota")
                yield Label("Alerts", classes="box-title")
                yield AlertList(id="detail-alerts")
        yield Label("Conversation", id="conversation-title")
        with VerticalScroll(id="conversation"):
            yield Static(id="conversation-text")
        yield Footer()

    # -- refresh ---------------------------------------------------------------------------------
    def show(self, snapshot: EngineSnapshot) -> None:
        now = snapshot.taken_at
        detail = None if self.ended else self.console.operator.inspect(self.session_id)
        if detail is None:
            self._show_ended()
            return
        self.detail = detail
        view = detail.view
        self.query_one("#detail-meta", Static).update(self._meta(view, detail.metadata, now))
        self.query_one("#detail-health", Static).update(self._health(view))
        self.query_one("#detail-counters", Static).update(self._counters(view, detail.metrics))
        self.query_one("#detail-quota", GaugeList).set_rows(quota_gauges(detail.quota))
        self.query_one("#detail-alerts", AlertList).set_rows(alert_rows(detail.alerts, now))
        if not detail.loaded:  # cold: read and decrypt it from the store, then show it
            self.query_one("#conversation-title", Label).update("Conversation (loading…)")
            self.run_worker(self._load(), group="load", exclusive=True)
            return
        self._show_conversation(detail.messages, detail.dropped_messages)

    async def _load(self) -> None:
        if await self.console.operator.load(self.session_id):
            self.show(self.console.engine.snapshot())

    def _show_ended(self) -> None:
        if self.ended and self.detail is None:
            return
        self.ended = True
        self.detail = None
        self._shown_messages = None
        self.query_one("#detail-health", Static).update(
            Text("Session ended: its conversation key was destroyed.", style="bold")
        )
        self.query_one("#conversation-title", Label).update("Conversation (gone)")
        self.query_one("#conversation-text", Static).update("")

    def _meta(self, view: Any, metadata: Any, now: float) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        rows = [
            ("Session", view.session_id),
            ("User", f"{view.user_id} ({view.tier})"),
            ("Agent", view.agent_type),
            ("Worker", view.worker),
            ("State", view.state),
            ("Age", fmt.duration(now - view.created_at)),
            ("Idle", fmt.duration(now - view.last_active_at)),
        ]
        rows += [(f"meta.{k}", v) for k, v in fmt.redact(metadata).items()]
        for name, value in rows:
            table.add_row(name, Text(str(value)))
        return table

    def _health(self, view: Any) -> Text:
        style = _HEALTH_STYLE[health_style(view.health)]
        text = Text.assemble(("Health ", "bold"), (f"{view.health}/100", style))
        for reason in view.health_reasons:
            text.append(f"\n  • {reason}")
        if not view.health_reasons:
            text.append("\n  no problems seen", "dim")
        return text

    def _counters(self, view: Any, metrics: Any) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_row("Messages", f"{view.messages}  turns {view.turns}")
        table.add_row("Tokens", fmt.count(view.tokens))
        table.add_row("Errors", str(view.errors))
        if metrics is not None:
            table.add_row(
                "Tokens in/out",
                f"{fmt.count(metrics.prompt_tokens)} / {fmt.count(metrics.completion_tokens)}",
            )
            lat = metrics.latency
            table.add_row(
                "Latency",
                f"p50 {fmt.latency(lat.p50)}  p95 {fmt.latency(lat.p95)}  "
                f"p99 {fmt.latency(lat.p99)}  ({lat.count} turns)",
            )
            if metrics.last_error:
                streak = metrics.consecutive_errors
                table.add_row(
                    "Last error",
                    metrics.last_error + (f" ({streak} failures in a row)" if streak > 1 else ""),
                )
        return table

    def _show_conversation(self, messages: tuple[Any, ...], dropped: int) -> None:
        if messages == self._shown_messages:
            return
        self._shown_messages = messages
        older = f", {dropped} older dropped from context" if dropped else ""
        self.query_one("#conversation-title", Label).update(
            f"Conversation ({len(messages)} messages, decrypted{older})"
        )
        scroller = self.query_one("#conversation", VerticalScroll)
        at_end = scroller.scroll_y >= scroller.max_scroll_y
        text = Text()
        for n, message in enumerate(messages):
            if n:
                text.append("\n")
            style = "bold cyan" if message.role == "user" else "bold magenta"
            text.append(f"{message.role}\n", style)
            text.append(message.content)  # plain Text: user content is never parsed as markup
            text.append("\n")
        if not messages:
            text.append("no messages yet", "dim")
        self.query_one("#conversation-text", Static).update(text)
        if at_end:
            scroller.call_after_refresh(scroller.scroll_end, animate=False)

    def export_rows(self) -> list[dict[str, Any]]:
        """Metadata and counters only: the conversation never leaves the engine unencrypted."""
        detail, snapshot = self.detail, self.console.snapshot
        if detail is None or snapshot is None:
            return []
        record = session_record(detail.view, snapshot.taken_at)
        record.update({f"meta.{k}": v for k, v in fmt.redact(detail.metadata).items()})
        return [record]

    # -- actions ---------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_end_session(self) -> None:
        if not self.ended:
            self.post_message(EndSession(self.session_id))

    def action_rotate_token(self) -> None:
        if not self.ended:
            self.post_message(RotateToken(self.session_id))

    def action_acknowledge(self) -> None:
        detail = self.detail
        if detail is not None:
            open_ids = tuple(a.alert_id for a in detail.alerts if not a.acknowledged)
            self.post_message(AcknowledgeAlerts(open_ids))
