"""Messages the console's screens post to the app, handled in one place (`SessionConsole`).

Screens read through `app.operator`; every act on the engine is a message, so the app owns
confirmation, the call itself, the notification and the refresh that follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class OpenSession(Message):
    """Show a session's detail (Enter on a sessions row, or jump from an alert). In a cluster,
    a session this worker has not seen is looked for in the shared store first; `only_if_live`
    says so instead of showing an ended session's detail when there is none."""

    session_id: str
    only_if_live: bool = False


@dataclass
class EndSession(Message):
    """End a session and destroy its conversation, once the operator confirms."""

    session_id: str


@dataclass
class RotateToken(Message):
    """Invalidate a session's token; the new one is never shown."""

    session_id: str


@dataclass
class AcknowledgeAlerts(Message):
    """Acknowledge these alerts (none open among them is fine: the app says so), this engine's
    or, in a cluster, those of another `worker` (which acknowledges them itself)."""

    alert_ids: tuple[int, ...]
    worker: str | None = None


@dataclass
class AcknowledgeAllAlerts(Message):
    """Acknowledge every open alert, or every open alert of one severity."""

    severity: str | None
