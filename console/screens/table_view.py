"""A live view over one sortable, filterable table, with the k9s habits every such view shares.

Shift+letter sorts by a column and the same key again reverses; a click on a header does the
same; the header marks the sort column. `/` opens the filter line: Enter applies, Esc clears it
(and, with no filter to clear, Esc falls through to the app: back to the dashboard). The view
composes a `VirtualTable` and an `Input` with id `filter`, gives itself a `model` (see
`TableModel`), and lists `filter_bindings()` and `sort_bindings(...)` in its own BINDINGS, so the
help and the command palette, which read `BINDINGS`, show them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

from textual.binding import Binding
from textual.widgets import Input

from console.ordering import SortState
from console.screens.base import LiveScreen
from widgets import VirtualTable


class TableModel(Protocol):
    """What a table view asks of its data half (SessionsModel, UsersModel)."""

    order: SortState
    filter: Any  # truthy when a filter is set

    def sort_by(self, column: str) -> None: ...

    def set_filter(self, query: str) -> None: ...  # ValueError says what is wrong

    def describe_filter(self) -> str: ...


def sort_bindings(keys: Iterable[tuple[str, str]]) -> list[Binding]:
    """One hidden binding per (key, column): the footer stays short, help folds them in one row."""
    return [
        Binding(key, f"sort('{column}')", f"Sort by {column}", show=False) for key, column in keys
    ]


def filter_bindings() -> list[Binding]:
    return [
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]


class TableScreen(LiveScreen):
    """Sorting and the `/` filter for a view whose rows come from `self.model`."""

    FILTER_HELP: ClassVar[str] = ""  # the filter syntax, for the help overlay
    model: TableModel

    @property
    def table(self) -> VirtualTable[Any]:
        return self.query_one(VirtualTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    def on_mount(self) -> None:
        self.filter_input.display = False
        self.table.focus()

    def show_title(self) -> None:
        """The view's title line; also called before the first snapshot. Marks the sort column."""
        order = self.model.order
        self.table.set_sort_indicator(order.column, order.reverse)

    def _reshow(self) -> None:
        """Apply a sort or filter change now, even when paused (it is the operator's own act)."""
        snapshot = self.console.snapshot
        if snapshot is not None:
            self.show(snapshot)
        else:
            self.show_title()

    # -- sorting ---------------------------------------------------------------------------------
    def action_sort(self, column: str) -> None:
        if column in self.model.order.columns:
            self.model.sort_by(column)
            self._reshow()

    def on_virtual_table_header_clicked(self, event: VirtualTable.HeaderClicked) -> None:
        event.stop()
        self.action_sort(event.column)

    # -- the `/` filter --------------------------------------------------------------------------
    def action_filter(self) -> None:
        field = self.filter_input
        field.display = True
        field.value = self.model.describe_filter()
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        event.stop()
        try:
            self.model.set_filter(event.value)
        except ValueError as exc:
            self.notify(str(exc), title="Filter", severity="error")
            return
        event.input.display = bool(event.value.strip())
        self.table.focus()
        self._reshow()

    def action_clear_filter(self) -> None:
        field = self.filter_input
        field.value = ""
        field.display = False
        self.model.set_filter("")
        self.table.focus()
        self._reshow()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Esc clears only when there is a filter line or a filter; otherwise the app has it."""
        if action == "clear_filter":
            fields = self.query("#filter")
            return bool(self.model.filter) or any(f.display for f in fields)
        return True
