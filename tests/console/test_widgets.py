"""The reusable widgets on plain data, without an engine."""

from __future__ import annotations

from dataclasses import dataclass

from rendered import screen_lines
from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from widgets import (
    AlertList,
    AlertRow,
    BarList,
    BarRow,
    Column,
    Figure,
    FigureStrip,
    GaugeList,
    GaugeRow,
    VirtualTable,
    level_of,
)
from widgets.virtual_table import LINES_PER_FRAME

COLUMNS = (
    Column("name", "NAME", 10, flex=True, priority=9),
    Column("size", "SIZE", 6, "right", priority=5),
    Column("note", "NOTE", 12, priority=1),
)


@dataclass(frozen=True, slots=True)
class Item:
    name: str
    size: int
    note: str = ""


class TableApp(App[None]):
    def __init__(self, rows: list[Item]) -> None:
        super().__init__()
        self.initial = rows
        self.rendered: list[str] = []
        self.events: list[object] = []

    def render_row(self, item: Item):
        self.rendered.append(item.name)
        styles = (None, "warn" if item.size > 5 else None, None)
        return (item.name, str(item.size), item.note), styles

    def compose(self) -> ComposeResult:
        yield VirtualTable(COLUMNS, row_key=lambda i: i.name, render_row=self.render_row)

    def on_mount(self) -> None:
        table = self.query_one(VirtualTable)
        table.set_rows(self.initial)
        table.focus()

    def on_virtual_table_row_selected(self, event: VirtualTable.RowSelected) -> None:
        self.events.append(("selected", event.key))

    def on_virtual_table_header_clicked(self, event: VirtualTable.HeaderClicked) -> None:
        self.events.append(("header", event.column))


def items(n: int) -> list[Item]:
    return [Item(f"row{i:06d}", i % 10, f"note {i}") for i in range(n)]


async def test_virtual_table_formats_only_the_rows_on_screen():
    app = TableApp(items(100_000))
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        lines = screen_lines(app)
        assert lines[0].split() == ["NAME", "SIZE", "NOTE"]
        assert lines[1].startswith("row000000")
        assert lines[11].startswith("row000010")
        assert len(set(app.rendered)) <= 2 * 12  # not 100,000


async def test_virtual_table_cursor_paging_and_selection():
    app = TableApp(items(1000))
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(VirtualTable)
        await pilot.press("down", "j", "j")
        assert table.cursor == 3 and table.cursor_key == "row000003"
        await pilot.press("pagedown")
        assert table.cursor == 3 + 10
        await pilot.press("G")
        assert table.cursor == 999
        await pilot.pause()
        assert screen_lines(app)[-1].startswith("row000999")
        assert table.visible_rows()[-1].name == "row000999"
        await pilot.press("home", "enter")
        await pilot.pause()
        assert app.events == [("selected", "row000000")]


async def test_virtual_table_keeps_the_cursor_on_its_row_across_updates():
    rows = items(50)
    app = TableApp(rows)
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(VirtualTable)
        await pilot.press("down", "down")
        assert table.cursor_key == "row000002"
        table.set_rows(list(reversed(rows)))
        assert table.cursor_key == "row000002" and table.cursor == 47
        table.set_rows([r for r in rows if r.name != "row000002"])
        assert table.cursor == 47  # its row left: the cursor keeps its place, clamped
        table.set_rows(rows[:10])
        assert table.cursor == 9
        table.set_rows([])
        assert table.cursor_row is None and table.cursor_key is None


async def test_virtual_table_header_click_and_row_click():
    app = TableApp(items(20))
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(VirtualTable)
        await pilot.click(VirtualTable, offset=(1, 0))
        await pilot.click(VirtualTable, offset=(50, 0))
        await pilot.click(VirtualTable, offset=(2, 4))
        await pilot.pause()
        assert ("header", "name") in app.events and ("header", "note") in app.events
        assert table.cursor == 3


async def test_virtual_table_drops_low_priority_columns_when_narrow_and_shows_sort():
    app = TableApp(items(5))
    async with app.run_test(size=(22, 8)) as pilot:
        table = app.query_one(VirtualTable)
        table.set_sort_indicator("size", True)
        await pilot.pause()
        header = screen_lines(app)[0]
        assert "NOTE" not in header and "NAME" in header and "SIZE▼" in header


async def test_virtual_table_repaints_only_changed_rows():
    rows = items(30)
    app = TableApp(rows)
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(VirtualTable)
        await pilot.pause()
        app.rendered.clear()
        changed = list(rows)
        changed[4] = Item("row000004", 99, "changed")
        table.set_rows(changed)
        await pilot.pause()
        # Every visible row is formatted to compare, but only the changed one is redrawn.
        assert app.rendered.count("row000004") == 2
        assert all(app.rendered.count(r.name) == 1 for r in rows[:11] if r.name != "row000004")
        assert "changed" in screen_lines(app)[5]


async def test_virtual_table_repaints_a_few_changed_lines_per_frame():
    rows = items(60)
    app = TableApp(rows)
    async with app.run_test(size=(60, 40)) as pilot:
        table = app.query_one(VirtualTable)
        await pilot.pause()
        assert LINES_PER_FRAME < 39  # every visible line changes below
        table.set_rows([Item(r.name, r.size, "new") for r in rows])
        assert table.painting  # the lines past the first few wait for the next frames
        while table.painting:
            await pilot.pause()
        lines = screen_lines(app)
        assert all(" new" in line for line in lines[1:40])


async def test_virtual_table_says_when_empty():
    app = TableApp([])
    async with app.run_test(size=(40, 6)) as pilot:
        await pilot.pause()
        assert "nothing to show" in screen_lines(app)[1]


class PanelsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield FigureStrip([Figure("a", "Turns/s", "1.0", (1.0, 2.0)), Figure("b", "p50", "-")])
        yield BarList(id="bars")
        yield GaugeList(id="gauges")
        yield AlertList(id="alerts")


async def test_panels_render_plain_rows_and_skip_unchanged_updates():
    app = PanelsApp()
    async with app.run_test(size=(80, 20)) as pilot:
        app.query_one(FigureStrip).update(
            [Figure("a", "Turns/s", "12.5", (1.0, 5.0, 3.0)),
             Figure("b", "p50", "85ms", sub="p95 1s")]
        )
        bars = app.query_one(BarList)
        bars.set_rows([BarRow("assistant", 3, 1, 2, 8), BarRow("w0", 1, 1, 0, 4, note="12 sess")])
        gauges = app.query_one(GaugeList)
        gauges.set_rows([GaugeRow("alice tokens", 85.0, "reset 12m"), GaugeRow("bob calls", 120)])
        alerts = app.query_one(AlertList)
        alerts.set_rows([
            AlertRow("info", "fyi"), AlertRow("critical", "fire", "x3"),
            AlertRow("warning", "old", acknowledged=True), AlertRow("warning", "hot"),
        ])
        await pilot.pause()
        text = "\n".join(screen_lines(app))
        assert "Turns/s 12.5" in text and "p95 1s" in text
        assert "assistant" in text and "3/1/8 +2 waiting" in text and "12 sess" in text
        assert "85.0%" in text and "120.0%" in text
        assert [r.message for r in alerts.rows] == ["fire", "hot", "fyi", "old"]
        before = alerts.rows
        alerts.set_rows(list(before))
        assert alerts.rows is before  # equal data: nothing to repaint


def test_gauge_levels():
    assert [level_of(p) for p in (0, 79.9, 80, 99.9, 100, 150)] == [
        "ok", "ok", "warn", "warn", "bad", "bad",
    ]


class BoxedPanelsApp(App[None]):
    """Panels the way the dashboard's narrow layout boxes them: a fixed height, a title line."""

    CSS = """
    .box { height: 6; border: round $panel; }
    .box > AlertList { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        with Vertical(classes="box", id="box"):
            yield Label("Alerts")
            yield AlertList(id="fill", more_hint="a: all alerts")
        yield GaugeList(id="auto")


async def test_a_panel_too_short_for_its_rows_shows_a_count_line_not_a_scrollbar():
    app = BoxedPanelsApp()
    async with app.run_test(size=(60, 20)) as pilot:
        alerts = app.query_one("#fill", AlertList)
        alerts.set_rows([AlertRow("warning", f"alert {n}") for n in range(10)])
        await pilot.pause()
        box = app.query_one("#box")
        assert alerts.size.height == 3  # 6 less the border and the title
        assert not alerts.show_vertical_scrollbar and not box.show_vertical_scrollbar
        assert [r.message for r in alerts.shown_rows] == ["alert 0", "alert 1"]
        lines = screen_lines(app)
        assert "alert 1" in lines[3] and "+8 more · a: all alerts" in lines[4]
        assert "alert 2" not in "\n".join(lines)
        alerts.set_rows([AlertRow("warning", "one"), AlertRow("info", "two")])
        await pilot.pause()
        assert len(alerts.shown_rows) == 2 and "more" not in "\n".join(screen_lines(app))


async def test_a_sized_to_content_panel_counts_rows_left_out_upstream():
    app = BoxedPanelsApp()
    async with app.run_test(size=(60, 20)) as pilot:
        gauges = app.query_one("#auto", GaugeList)
        gauges.set_rows([GaugeRow("a", 10), GaugeRow("b", 20)], total=5)
        await pilot.pause()
        assert gauges.size.height == 3  # two rows and the count line
        assert "+3 more" in "\n".join(screen_lines(app))
        gauges.set_rows([GaugeRow("a", 10), GaugeRow("b", 20)])
        await pilot.pause()
        assert gauges.size.height == 2 and "more" not in "\n".join(screen_lines(app))


class NarrowColumnApp(App[None]):
    def compose(self) -> ComposeResult:
        yield VirtualTable(
            (Column("name", "NAME", 6, flex=True), Column("calls", "CALLS%", 6, "right")),
            row_key=lambda i: i.name,
            render_row=lambda i: ((i.name, str(i.size)), None),
        )


async def test_virtual_table_sort_mark_stays_visible_in_a_full_width_header():
    app = NarrowColumnApp()
    async with app.run_test(size=(30, 6)) as pilot:
        table = app.query_one(VirtualTable)
        table.set_rows(items(3))
        table.set_sort_indicator("calls", True)
        await pilot.pause()
        assert screen_lines(app)[0].split() == ["NAME", "CALLS▼"]
        table.set_sort_indicator("name", False)
        await pilot.pause()
        assert screen_lines(app)[0].split() == ["NAME▲", "CALLS%"]
