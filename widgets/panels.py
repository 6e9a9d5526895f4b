"""Small dashboard panels fed plain tuples: figures with sparklines, bars, gauges, alerts.

Each panel keeps the data it was last given and repaints only when new data differs, so a
refresh tick where nothing moved costs a tuple comparison per panel.

Panels never scroll: a small box with a scrollbar thumb hides rows and wastes two columns. With
`height: auto` a panel is as tall as its rows; given less height (by CSS: `1fr` or a fixed height
in a fixed-height box) it shows the rows that fit and a last "+N more" line for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Label, Sparkline

BAR_WIDTH = 16

# Gauge levels: the colour changes at these percentages (the alert rules' near/over levels).
WARN_PERCENT = 80.0
BAD_PERCENT = 100.0


@dataclass(frozen=True, slots=True)
class Figure:
    """One header figure: a label, its current value as text, and optionally its recent series."""

    key: str
    label: str
    value: str
    series: tuple[float, ...] | None = None
    level: str | None = None  # "warn" / "bad" colour the value
    sub: str = ""  # second line when there is no series


@dataclass(frozen=True, slots=True)
class BarRow:
    """Occupancy of one pool or worker: in use + idle fill the bar, waiting shows beside it."""

    label: str
    in_use: int
    idle: int
    waiting: int
    maximum: int
    note: str = ""  # shown after the bar instead of in-use/idle/max when set


@dataclass(frozen=True, slots=True)
class GaugeRow:
    label: str
    percent: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AlertRow:
    severity: str  # "critical", "warning", "info"
    message: str
    detail: str = ""  # e.g. "x3, 2m ago"
    acknowledged: bool = False


def bar_width(room: int) -> int:
    """Bars shrink to the room left beside their labels, between 4 and BAR_WIDTH cells."""
    return max(4, min(BAR_WIDTH, room))


def level_of(percent: float) -> str:
    if percent >= BAD_PERCENT:
        return "bad"
    if percent >= WARN_PERCENT:
        return "warn"
    return "ok"


class FigureCard(Vertical):
    """Label and value on one line, the sparkline under it."""

    DEFAULT_CSS = """
    FigureCard { height: 2; width: 1fr; padding: 0 1 0 0; }
    FigureCard > Label { width: 1fr; height: 1; }
    FigureCard > Sparkline { height: 1; }
    FigureCard > .sub { color: $text-muted; }
    FigureCard > Label.-warn { color: $text-warning; }
    FigureCard > Label.-bad { color: $text-error; text-style: bold; }
    """

    def __init__(self, figure: Figure) -> None:
        super().__init__(id=f"figure-{figure.key}")
        self.figure = figure

    def compose(self) -> ComposeResult:
        yield Label(self._label_text(self.figure), classes="value")
        yield Sparkline(self.figure.series or (), id=f"spark-{self.figure.key}")
        yield Label(self.figure.sub, classes="sub")

    def on_mount(self) -> None:
        self._show_second_line(self.figure)

    def _show_second_line(self, figure: Figure) -> None:
        self.query_one(Sparkline).display = figure.series is not None
        self.query_one(".sub", Label).display = figure.series is None

    @staticmethod
    def _label_text(figure: Figure) -> Text:
        return Text.assemble((f"{figure.label} ", "dim"), (figure.value, "bold"))

    def update(self, figure: Figure) -> bool:
        """Show `figure`; False when it is the one shown (nothing to repaint)."""
        if figure == self.figure:
            return False
        relayout = (figure.series is None) != (self.figure.series is None)
        self.figure = figure
        label = self.query_one(".value", Label)
        label.update(self._label_text(figure), layout=False)  # one line, fixed width
        label.set_class(figure.level == "warn", "-warn")
        label.set_class(figure.level == "bad", "-bad")
        if relayout:
            self._show_second_line(figure)
        if figure.series is not None:
            self.query_one(Sparkline).data = list(figure.series)
        else:
            self.query_one(".sub", Label).update(figure.sub, layout=False)
        return True


class FigureStrip(Horizontal):
    """The dashboard's header: one card per figure, in the order first given."""

    DEFAULT_CSS = """
    FigureStrip { height: 2; }
    """

    def __init__(self, figures: Sequence[Figure], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._initial = tuple(figures)

    def compose(self) -> ComposeResult:
        for figure in self._initial:
            yield FigureCard(figure)

    def update(self, figures: Sequence[Figure]) -> None:
        for figure in figures:
            self.update_one(figure)

    def update_one(self, figure: Figure) -> bool:
        """Show one figure; False when it had not changed."""
        return self.query_one(f"#figure-{figure.key}", FigureCard).update(figure)


class _Panel(Widget):
    """A widget that renders a tuple of rows and repaints only when the tuple changes.

    Rows that do not fit its height are left out and counted on a "+N more" line, followed by
    `more_hint` (where to see them all, e.g. "a: all alerts").
    """

    DEFAULT_CSS = """
    _Panel { height: auto; text-wrap: nowrap; text-overflow: ellipsis; overflow: hidden; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "panel--ok",
        "panel--warn",
        "panel--bad",
        "panel--dim",
        "panel--info",
    }
    empty_text = "none"

    def __init__(
        self, *, id: str | None = None, classes: str | None = None, more_hint: str = ""
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: tuple[object, ...] = ()
        self.total = 0
        self.more_hint = more_hint

    def set_rows(self, rows: Sequence[object], total: int | None = None) -> None:
        """Show `rows`; `total` counts them all when `rows` is only the first of a longer list."""
        rows = tuple(rows)
        total = max(len(rows), total or 0)
        if rows != self.rows or total != self.total:
            resized = self._lines_wanted(rows, total) != self._lines_wanted(self.rows, self.total)
            self.rows, self.total = rows, total
            self.refresh(layout=resized)  # a layout pass repaints the whole screen: only if needed

    @staticmethod
    def _lines_wanted(rows: tuple[object, ...], total: int) -> int:
        return max(1, len(rows) + (total > len(rows)))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """`height: auto`: every row, and a "+N more" line if rows were left out upstream."""
        return self._lines_wanted(self.rows, self.total)

    @property
    def shown_rows(self) -> tuple[object, ...]:
        """The rows that fit the panel's height now (all of them before the first layout)."""
        room = self.size.height
        if not room or self._lines_wanted(self.rows, self.total) <= room:
            return self.rows
        return self.rows[: room - 1]  # the last line says how many more

    def style_of(self, name: str) -> str:
        return str(self.get_component_rich_style(f"panel--{name}", partial=True))

    def render(self) -> Text:
        if not self.rows:
            return Text(self.empty_text, style=self.style_of("dim"))
        shown = self.shown_rows
        lines = [self.render_row(row) for row in shown]
        hidden = self.total - len(shown)
        if hidden > 0:
            hint = f" · {self.more_hint}" if self.more_hint else ""
            lines.append(Text(f"+{hidden} more{hint}", style=self.style_of("dim")))
        return Text("\n").join(lines)

    def render_row(self, row: object) -> Text:
        raise NotImplementedError


class BarList(_Panel):
    """One bar per pool or worker: `█` in use, `▒` idle, `·` free up to max; waiters in red."""

    DEFAULT_CSS = """
    BarList { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    BarList > .panel--ok { color: $text-success; }
    BarList > .panel--warn { color: $text-warning; }
    BarList > .panel--bad { color: $text-error; text-style: bold; }
    BarList > .panel--dim { color: $text-muted; }
    BarList > .panel--info { color: $text-primary; }
    """
    empty_text = "no pools yet"

    def render_row(self, row: object) -> Text:
        assert isinstance(row, BarRow)
        numbers = f" {row.note or f'{row.in_use}/{row.idle}/{row.maximum}'}"
        label_width = 12 if self.size.width >= 40 else 9
        bar = bar_width(self.size.width - label_width - 1 - len(numbers))
        maximum = max(row.maximum, row.in_use + row.idle, 1)
        used = round(bar * row.in_use / maximum)
        idle = min(bar - used, round(bar * row.idle / maximum))
        free = bar - used - idle
        full = row.in_use >= row.maximum > 0
        text = Text.assemble(
            (f"{row.label[:label_width]:<{label_width}} ", ""),
            ("█" * used, self.style_of("warn" if full else "info")),
            ("▒" * idle, self.style_of("ok")),
            ("·" * free, self.style_of("dim")),
            numbers,
        )
        if row.waiting:
            text.append(f" +{row.waiting} waiting", self.style_of("bad"))
        return text


class GaugeList(_Panel):
    """Percent gauges coloured by level (ok below 80%, warn to 100%, bad at or above)."""

    DEFAULT_CSS = """
    GaugeList { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    GaugeList > .panel--ok { color: $text-success; }
    GaugeList > .panel--warn { color: $text-warning; }
    GaugeList > .panel--bad { color: $text-error; text-style: bold; }
    GaugeList > .panel--dim { color: $text-muted; }
    """
    empty_text = "no user near a limit"
    label_width = 22

    def render_row(self, row: object) -> Text:
        assert isinstance(row, GaugeRow)
        percent = max(0.0, row.percent)
        label_width = min(self.label_width, max(8, self.size.width - 12))
        bar = bar_width(self.size.width - label_width - 9)
        filled = min(bar, round(bar * percent / 100))
        style = self.style_of(level_of(percent))
        label = row.label[:label_width].ljust(label_width)
        return Text.assemble(
            (label, ""),
            " ",
            ("█" * filled, style),
            ("░" * (bar - filled), self.style_of("dim")),
            (f" {percent:5.1f}%", style),
            (f" {row.detail}" if row.detail else "", self.style_of("dim")),
        )


SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_SEVERITY_STYLE = {"critical": "bad", "warning": "warn", "info": "info"}
_SEVERITY_LABEL = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}


class AlertList(_Panel):
    """Alerts by severity, worst first; acknowledged ones dimmed."""

    DEFAULT_CSS = """
    AlertList { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    AlertList > .panel--ok { color: $text-success; }
    AlertList > .panel--warn { color: $text-warning; }
    AlertList > .panel--bad { color: $text-error; text-style: bold; }
    AlertList > .panel--dim { color: $text-muted; }
    AlertList > .panel--info { color: $text-primary; }
    """
    empty_text = "no alerts"

    def set_rows(self, rows: Sequence[object], total: int | None = None) -> None:
        ordered = sorted(
            rows,
            key=lambda r: (
                getattr(r, "acknowledged", False),
                SEVERITY_ORDER.get(getattr(r, "severity", ""), 3),
            ),
        )
        super().set_rows(ordered, total)

    def render_row(self, row: object) -> Text:
        assert isinstance(row, AlertRow)
        style = self.style_of("dim" if row.acknowledged else _SEVERITY_STYLE.get(row.severity, ""))
        return Text.assemble(
            (f"{_SEVERITY_LABEL.get(row.severity, row.severity[:4].upper())} ", style),
            (row.message, self.style_of("dim") if row.acknowledged else ""),
            (f"  {row.detail}" if row.detail else "", self.style_of("dim")),
        )
