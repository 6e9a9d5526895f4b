"""Warnings the engine logs show as the console's notifications, never written over its screen.

Without a handler, Python prints a WARNING record to stderr, which is the terminal Textual is
drawing on: the line lands in the middle of the dashboard. While the console runs, records of
WARNING and above become toasts (as k9s flashes its errors), from whichever thread logged them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from textual.app import App
from textual.notifications import SeverityLevel

_SEVERITY: dict[int, SeverityLevel] = {logging.WARNING: "warning"}


class NotifyHandler(logging.Handler):
    def __init__(self, app: App[object]) -> None:
        super().__init__(logging.WARNING)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        severity: SeverityLevel = _SEVERITY.get(record.levelno, "error")
        message = f"{record.name}: {record.getMessage()}"
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the screen is gone too
            self._loop.call_soon_threadsafe(self._notify, message, severity)

    def _notify(self, message: str, severity: SeverityLevel) -> None:
        self._app.notify(message, severity=severity, timeout=6)

    def install(self) -> None:
        """On the app's running loop, from mounting to unmounting."""
        self._loop = asyncio.get_running_loop()
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)
