"""What every live view shares: a status line, and `show(snapshot)` called by the refresh loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.screen import Screen
from textual.widgets import Label, Static

from widgets import VirtualTable

if TYPE_CHECKING:
    from console.app import SessionConsole
    from engine import EngineSnapshot


def set_text(label: Label, text: str) -> None:
    """Update a one-line, full-width label only when its text changed, without a layout pass."""
    if str(label.content) != text:
        label.update(text, layout=False)


def set_lines(static: Static, text: str) -> None:
    """Update a `height: auto` block of short lines only when its text changed; a layout pass
    (which repaints the whole screen) only when its number of lines changed."""
    shown = str(static.content)
    if shown != text:
        static.update(text, layout=not shown or shown.count("\n") != text.count("\n"))


class StatusLine(Static):
    """Title, view, refresh rate, and a visible PAUSED mark so frozen numbers never surprise."""

    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text; padding: 0 1; }
    StatusLine.-paused { background: $warning; color: $text; text-style: bold; }
    """
    shown_text = ""


class LiveScreen(Screen[None]):
    """A view the app feeds with each engine snapshot while it is the visible screen."""

    VIEW_NAME: ClassVar[str] = "view"
    EXPORT_NAME: ClassVar[str] = "view"
    _status_lines: tuple[StatusLine, ...] = ()
    _tables: list[VirtualTable[Any]] | None = None

    @property
    def console(self) -> SessionConsole:
        return cast("SessionConsole", self.app)

    def show(self, snapshot: EngineSnapshot) -> None:
        """Update the widgets from `snapshot` at once (called inside `App.batch_update`)."""

    def show_in_steps(self, snapshot: EngineSnapshot) -> Iterator[None]:
        """`show` as steps, each repainting a part of the screen: the refresh loop runs one step
        per frame, so no slice of the loop it shares with the engine repaints the whole view.
        One step unless a view splits it."""
        self.show(snapshot)
        yield

    def export_rows(self) -> list[dict[str, Any]]:
        """The view's current rows as plain records, for `e` (export)."""
        return []

    @property
    def status_lines(self) -> tuple[StatusLine, ...]:
        """The view's status lines, looked up once (a query walks the whole DOM)."""
        if not self._status_lines:
            self._status_lines = tuple(self.query(StatusLine))
        return self._status_lines

    @property
    def tables(self) -> list[VirtualTable[Any]]:
        """The view's tables, looked up once."""
        if self._tables is None:
            self._tables = list(self.query(VirtualTable))
        return self._tables

    def update_status(self) -> None:
        console = self.console
        text = console.status_text(self.VIEW_NAME)
        for line in self.status_lines:
            if line.shown_text != text:
                line.shown_text = text
                line.update(text, layout=False)  # one line, full width: no layout pass
            line.set_class(console.paused, "-paused")

    def on_screen_resume(self) -> None:
        """Coming back to a view shows the latest data at once, not at the next tick."""
        snapshot = self.console.snapshot
        if snapshot is not None:
            self.show(snapshot)
        self.update_status()
