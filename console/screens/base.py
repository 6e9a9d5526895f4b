"""What every live view shares: a status line, and `show(snapshot)` called by the refresh loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.screen import Screen
from textual.widgets import Label, Static

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

    def update_status(self) -> None:
        console = self.console
        text = console.status_text(self.VIEW_NAME)
        for line in self.query(StatusLine):
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
