"""Messages the console's screens post to the app, handled in one place (`SessionConsole`)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class OpenSession(Message):
    """Show a session's detail (Enter on a sessions row, or jump from an alert)."""

    session_id: str
