"""Modal screens: help overlay, confirmation, export format, a session id to open. The refresh
loop skips while one is open."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


def key_label(key: str) -> str:
    """`question_mark` -> `?`, `ctrl+d` -> `^d`, as the footer would show it."""
    names = {
        "question_mark": "?", "slash": "/", "plus": "+", "minus": "-", "colon": ":",
        "equals_sign": "=", "escape": "esc", "enter": "enter", "left_square_bracket": "[",
        "right_square_bracket": "]", "left_curly_bracket": "{", "right_curly_bracket": "}",
    }
    parts = []
    for one in key.split(","):
        one = one.strip()
        parts.append(names.get(one, one.replace("ctrl+", "^")))
    return " ".join(parts)


class HelpScreen(ModalScreen[None]):
    """Every key of the current view and of the app, built from the same Binding lists, and the
    view's filter syntax when it has a `/` filter."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close help"),
    ]

    def __init__(
        self,
        title: str,
        sections: Iterable[tuple[str, Iterable[tuple[str, str]]]],
        filter_help: str = "",
    ) -> None:
        super().__init__()
        self._title = title
        self._sections = [(name, list(rows)) for name, rows in sections]
        self._filter_help = filter_help

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Label(f"Keys · {self._title}", id="help-title")
            with VerticalScroll():
                if self._filter_help:
                    yield Static(Text(self._filter_help, style="dim"), id="help-filter")
                yield Static(self._table(), id="help-keys")
            yield Label("esc or ? closes · ctrl+p or : opens the command palette", id="help-hint")

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for name, rows in self._sections:
            if not rows:
                continue
            table.add_row(Text(name, style="underline"), "")
            for key, description in rows:
                table.add_row(key, description)
        return table


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no, with No focused: a destructive act takes a deliberate key."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Label(self.question, id="confirm-question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ExportScreen(ModalScreen[str | None]):
    """Choose the export format of the current view."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "choose('json')", "JSON"),
        Binding("c", "choose('csv')", "CSV"),
        Binding("escape", "choose(None)", "Cancel"),
    ]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box", classes="dialog"):
            yield Label(f"Export {self.what} as", id="export-question")
            with Horizontal(classes="buttons"):
                yield Button("JSON (j)", id="json", variant="primary")
                yield Button("CSV (c)", id="csv")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)


class GotoScreen(ModalScreen[str | None]):
    """A session id (or its start) to open; Enter opens, Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="goto-box", classes="dialog"):
            yield Label("Open session: its id, or the start of a listed one", id="goto-question")
            yield Input(placeholder="session id", id="goto-id")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
