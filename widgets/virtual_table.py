"""A table that renders only the rows on screen, so 100,000 rows cost what 40 do.

`DataTable` measures and stores every cell of every row; at 10k rows a rebuild costs seconds.
This widget keeps a reference to the caller's ordered sequence and formats a row only when
`render_line` asks for it (Textual's Line API, as Toolong's log view does). Rendered lines are
cached by what they show (least recently used out first), so an unchanged row on a new tick
costs one formatting call and a lookup, and a changed row costs one strip. Sorting and
filtering are the caller's job, on plain data, before `set_rows`.

The table shares its event loop with whatever it shows (the engine, in the console), so a
refresh never repaints every changed line in one go: at most `LINES_PER_FRAME` changed lines
are marked for each screen update, and the rest follow in the next frames.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Row = TypeVar("Row")

# A row as shown: one string per column, and optional per-cell style names (component suffixes:
# "ok", "warn", "bad", "dim") so colours come from CSS and follow the theme.
Cells = tuple[str, ...]
CellStyles = tuple[str | None, ...] | None

_MAX_CACHED_LINES = 2_000
_GAP = 1  # spaces between columns
# Changed lines repainted per screen update: a screen update costs ~1-2 ms whatever it repaints
# (Textual re-reads every widget whose container overlaps the update), and ~0.2 ms per line.
LINES_PER_FRAME = 10
# After new rows, the cursor follows its row if it moved by at most this many rows; otherwise it
# stays at its index (the search costs ~3 ms at this bound, whatever the number of rows).
FOLLOW_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int
    align: Literal["left", "right"] = "left"
    priority: int = 0  # when the table is too narrow, the lowest priority columns go first
    flex: bool = False  # takes the width left over (one such column is enough)


class VirtualTable(ScrollView, Generic[Row], can_focus=True):
    """Rows of any type, formatted lazily by `render_row`, identified by `row_key`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "virtual-table--header",
        "virtual-table--cursor",
        "virtual-table--ok",
        "virtual-table--warn",
        "virtual-table--bad",
        "virtual-table--dim",
        "virtual-table--empty",
    }

    DEFAULT_CSS = """
    VirtualTable {
        overflow-x: hidden;
        overflow-y: auto;
        background: $surface;
    }
    VirtualTable > .virtual-table--header { text-style: bold; color: $text-accent; }
    VirtualTable > .virtual-table--cursor { background: $block-cursor-blurred-background; }
    VirtualTable:focus > .virtual-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    VirtualTable > .virtual-table--ok { color: $text-success; }
    VirtualTable > .virtual-table--warn { color: $text-warning; }
    VirtualTable > .virtual-table--bad { color: $text-error; text-style: bold; }
    VirtualTable > .virtual-table--dim { color: $text-muted; }
    VirtualTable > .virtual-table--empty { color: $text-muted; text-style: italic; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup,ctrl+b", "page_up", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page_down", "Page down", show=False),
        Binding("home,g", "first", "First row", show=False),
        Binding("end,G", "last", "Last row", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    class RowSelected(Message):
        """Enter (or a double click) on a row."""

        def __init__(self, table: VirtualTable[Any], key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> VirtualTable[Any]:
            return self.table

    class HeaderClicked(Message):
        """A click on a column's header: the owner decides what sorting means."""

        def __init__(self, table: VirtualTable[Any], column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

        @property
        def control(self) -> VirtualTable[Any]:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        row_key: Callable[[Row], str],
        render_row: Callable[[Row], tuple[Cells, CellStyles]],
        empty_text: str = "nothing to show",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = tuple(columns)
        self._cell_index = {c.key: i for i, c in enumerate(self.columns)}
        self._row_key = row_key
        self._render_row = render_row
        self.empty_text = empty_text
        self.rows: Sequence[Row] = ()
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._cursor_key: str | None = None
        self._layout: tuple[tuple[Column, int], ...] = ()
        self._layout_width = -1
        self._lines: LRUCache[tuple[Any, ...], Strip] = LRUCache(_MAX_CACHED_LINES)
        self._shown: dict[int, tuple[Any, ...] | None] = {}  # screen line -> what it shows
        self._styles: dict[tuple[str | None, bool, bool], Style] = {}  # (name, cursor, focus)
        self._to_paint: dict[int, None] = {}  # screen lines changed and not yet repainted
        self._painting = False  # a `_paint_some` is scheduled after the next screen update

    # -- data ------------------------------------------------------------------------------------
    def set_rows(self, rows: Sequence[Row]) -> None:
        """Show `rows` (already sorted and filtered); the cursor stays on the same row key (if
        it moved by at most `FOLLOW_ROWS`)."""
        old_index = self.cursor
        self.rows = rows
        key = self._cursor_key
        index = old_index
        stayed = 0 <= old_index < len(rows) and self._row_key(rows[old_index]) == key
        if key is not None and not stayed:
            # Looked for near where it was: a full search of a million rows costs ~300 ms.
            start = max(0, old_index - FOLLOW_ROWS)
            near = rows[start:old_index + FOLLOW_ROWS]
            try:
                index = start + operator.indexOf(map(self._row_key, near), key)
            except ValueError:
                index = old_index
        self.virtual_size = Size(self._width, len(rows) + 1)
        self._set_cursor(index, scroll=index != old_index)
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Repaint only the screen lines whose content changed since they were last drawn, a
        few per frame (`LINES_PER_FRAME`).

        Formatting a visible row is cheap; repainting it is not: unchanged lines are skipped."""
        top = round(self.scroll_offset.y)
        width = self._width
        focused = self.has_focus
        shown = self._shown
        for y in range(1, self.size.height):
            index = top + y - 1
            key: tuple[Any, ...] | None = None
            if index < len(self.rows):
                cells, styles = self._render_row(self.rows[index])
                selected = index == self.cursor
                key = (cells, styles, selected and focused, selected, width)
            if shown.get(y, ()) != key:
                self._to_paint[y] = None
        if not self._painting:
            self._paint_some()

    @property
    def painting(self) -> bool:
        """Changed lines wait for the next frames, or the last of them for the next repaint (a
        caller pacing its own repaints can wait, so a frame never repaints the table and other
        widgets together)."""
        return self._painting

    def _paint_some(self) -> None:
        """Mark the next few changed lines for repaint; the others wait for the next frame."""
        self._painting = False
        lines = self._to_paint
        batch = sorted(list(lines)[:LINES_PER_FRAME])
        for y in batch:
            del lines[y]
        start = 0
        for n, y in enumerate(batch):  # one region per run of adjacent lines
            if n + 1 == len(batch) or batch[n + 1] != y + 1:
                self.refresh(Region(0, batch[start], self.size.width, y - batch[start] + 1))
                start = n + 1
        if batch:  # painting until the frame after the last batch has been drawn
            self._painting = self.call_after_refresh(self._paint_some)

    def set_sort_indicator(self, column: str | None, reverse: bool) -> None:
        if (column, reverse) != (self.sort_column, self.sort_reverse):
            self.sort_column, self.sort_reverse = column, reverse
            self.refresh(Region(0, 0, self.size.width, 1))

    @property
    def cursor_row(self) -> Row | None:
        if 0 <= self.cursor < len(self.rows):
            return self.rows[self.cursor]
        return None

    @property
    def cursor_key(self) -> str | None:
        row = self.cursor_row
        return None if row is None else self._row_key(row)

    def visible_rows(self) -> list[Row]:
        """The rows on screen now, top to bottom (what a test or an export of the view sees)."""
        top = round(self.scroll_offset.y)
        return list(self.rows[top : top + max(0, self.size.height - 1)])

    # -- cursor ----------------------------------------------------------------------------------
    def _set_cursor(self, index: int, scroll: bool = True) -> None:
        index = max(0, min(index, len(self.rows) - 1))
        old = self.cursor
        self.cursor = index
        row = self.cursor_row
        self._cursor_key = None if row is None else self._row_key(row)
        if scroll:
            self._scroll_cursor_into_view()
        if old != index:  # the two lines whose cursor mark changed (a scroll repaints them all)
            top = round(self.scroll_offset.y)
            for row in (old, index):
                if 0 <= row - top < self.size.height - 1:
                    self.refresh(Region(0, row - top + 1, self.size.width, 1))

    def _scroll_cursor_into_view(self) -> None:
        page = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + page:
            self.scroll_to(y=self.cursor - page + 1, animate=False, immediate=True)

    def action_cursor_up(self) -> None:
        self._set_cursor(self.cursor - 1)

    def action_cursor_down(self) -> None:
        self._set_cursor(self.cursor + 1)

    def action_page_up(self) -> None:
        self._set_cursor(self.cursor - max(1, self.size.height - 2))

    def action_page_down(self) -> None:
        self._set_cursor(self.cursor + max(1, self.size.height - 2))

    def action_first(self) -> None:
        self._set_cursor(0)

    def action_last(self) -> None:
        self._set_cursor(len(self.rows) - 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def _on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self._column_at(event.x)
            if column is not None:
                self.post_message(self.HeaderClicked(self, column))
            return
        index = round(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.rows):
            self._set_cursor(index, scroll=False)
            if event.chain >= 2:
                self.action_select()

    def _column_at(self, x: int) -> str | None:
        start = 0
        for column, width in self._columns_for(self._width):
            if start <= x < start + width + _GAP:
                return column.key
            start += width + _GAP
        return None

    # -- rendering -------------------------------------------------------------------------------
    def on_resize(self) -> None:
        self.virtual_size = Size(self._width, len(self.rows) + 1)
        self._scroll_cursor_into_view()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._styles.clear()

    def _style(self, name: str | None, cursor: bool) -> Style:
        """The widget's style with a cell's component style (and the cursor's) on top, cached:
        `rich_style` walks the ancestors and costs more than drawing the cell."""
        key = (name, cursor, self.has_focus)
        style = self._styles.get(key)
        if style is None:
            style = self.rich_style
            if cursor:
                style += self.get_component_rich_style("virtual-table--cursor")
            if name is not None:
                style += self.get_component_rich_style(f"virtual-table--{name}")
                if cursor:
                    style += self.get_component_rich_style("virtual-table--cursor")
            self._styles[key] = style
        return style

    def _columns_for(self, width: int) -> tuple[tuple[Column, int], ...]:
        """Column widths for `width` cells: drop low-priority columns, give the rest to flex."""
        if width == self._layout_width:
            return self._layout
        kept = list(self.columns)
        while len(kept) > 1 and sum(c.width + _GAP for c in kept) - _GAP > width:
            kept.remove(min(kept, key=lambda c: c.priority))
        spare = max(0, width - (sum(c.width + _GAP for c in kept) - _GAP))
        flex = [c for c in kept if c.flex] or kept[-1:]
        share, extra = divmod(spare, len(flex))
        layout = []
        for column in kept:
            grow = 0
            if column in flex:
                grow = share + (1 if extra > 0 else 0)
                extra -= 1
            layout.append((column, column.width + grow))
        self._layout, self._layout_width = tuple(layout), width
        self._lines.clear()
        return self._layout

    @property
    def _width(self) -> int:
        """Cells for the columns: the widget's width less the vertical scrollbar."""
        return self.scrollable_content_region.width

    def render_line(self, y: int) -> Strip:
        width = self._width
        layout = self._columns_for(width)
        if y == 0:
            return self._header(layout, width)
        index = round(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            self._shown[y] = None
            if index == 0:
                style = self.rich_style + self.get_component_rich_style("virtual-table--empty")
                return Strip([Segment(set_cell_size(f" {self.empty_text}", width), style)], width)
            return Strip.blank(width, self.rich_style)
        cells, styles = self._render_row(self.rows[index])
        selected = index == self.cursor
        focused = self.has_focus
        key = (cells, styles, selected and focused, selected, width)
        self._shown[y] = key
        strip = self._lines.get(key)
        if strip is None:
            strip = self._row_strip(layout, cells, styles, selected, width)
            self._lines.set(key, strip)
        return strip

    def _header(self, layout: tuple[tuple[Column, int], ...], width: int) -> Strip:
        style = self.rich_style + self.get_component_rich_style("virtual-table--header")
        parts = []
        for column, w in layout:
            label = column.label
            if column.key == self.sort_column and w > 1:
                # The mark matters more than the label's last letter: shorten the label for it.
                label = set_cell_size(label, min(cell_len(label), w - 1))
                label += "▼" if self.sort_reverse else "▲"
            parts.append(_fit(label, w, column.align))
        text = (" " * _GAP).join(parts)
        return Strip([Segment(set_cell_size(text, width), style)], width)

    def _row_strip(
        self,
        layout: tuple[tuple[Column, int], ...],
        cells: Cells,
        styles: CellStyles,
        selected: bool,
        width: int,
    ) -> Strip:
        base = self._style(None, selected)
        segments: list[Segment] = []
        gap = Segment(" " * _GAP, base)
        used = 0
        for n, (column, w) in enumerate(layout):
            if n:
                segments.append(gap)
                used += _GAP
            i = self._cell_index[column.key]
            text = cells[i] if i < len(cells) else ""
            style_name = styles[i] if styles is not None and i < len(styles) else None
            style = base if style_name is None else self._style(style_name, selected)
            segments.append(Segment(_fit(text, w, column.align), style))
            used += w
        if used < width:
            segments.append(Segment(" " * (width - used), base))
        return Strip(segments, width).crop(0, width)


def _fit(text: str, width: int, align: str) -> str:
    """Pad or truncate to exactly `width` cells; truncation shows an ellipsis."""
    if width <= 0:
        return ""
    text = text.replace("\n", " ")
    length = cell_len(text)
    if length > width:
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - length)
    return pad + text if align == "right" else text + pad
