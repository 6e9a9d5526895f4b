"""The reads at start-up: everything live, in bulk, on a read-only connection of their own.

`load_live` first purges and prunes on the writer's connection; nothing else writes while that
job runs, so a second connection reads exactly what was just committed, in one worker thread:
no hop to the loop per chunk, no GIL ping-pong. Reads are ordered by (session_id, seq), never a
query per session, so each conversation comes out whole and in order.
"""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

from engine.store.ops import (
    AlertRow,
    MessageRow,
    MetricsRow,
    QuotaEvent,
    RestoreCounts,
    Restored,
    SessionRow,
)
from engine.store.sqlite.checks import read_only_uri
from engine.store.sqlite.statements import SESSION_COLUMNS

METRICS_RESTORE_S = 3600.0  # roll-ups handed back on restore, enough for the console's charts

_SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY session_id"
_SELECT_MESSAGES = (
    "SELECT session_id, seq, role, ciphertext, at, size FROM messages ORDER BY session_id, seq"
)
_SELECT_QUOTA = (
    "SELECT user_id, resource, at, amount, window_s FROM quota_usage"
    " WHERE expires_at > ? ORDER BY at"
)
_SELECT_ALERTS = (
    "SELECT * FROM alerts WHERE resolved_at IS NULL AND NOT acknowledged ORDER BY alert_id"
)
_SELECT_METRICS = "SELECT * FROM metrics_minute WHERE minute >= ? ORDER BY minute, scope"


def read_live(path: Path, now: float, clean_shutdown: bool, purged: int) -> Restored:
    """Everything live as of `now`; `purged` (sessions the purge before deleted) is counted."""
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects would trigger many pointless collections
    try:
        sessions = [SessionRow(*row) for row in conn.execute(_SELECT_SESSIONS)]
        messages: dict[str, list[MessageRow]] = {}
        count = 0
        current_id: str | None = None
        current: list[MessageRow] = []
        for row in conn.execute(_SELECT_MESSAGES):
            if row[0] != current_id:
                current_id = row[0]
                current = messages[current_id] = []
            current.append(MessageRow(*row))
            count += 1
        quota = [QuotaEvent(*row) for row in conn.execute(_SELECT_QUOTA, (now,))]
        alerts = [AlertRow(*row[:9], bool(row[9]), row[10]) for row in conn.execute(_SELECT_ALERTS)]
        since = (now - METRICS_RESTORE_S,)
        metrics = [MetricsRow(*row) for row in conn.execute(_SELECT_METRICS, since)]
        (max_alert_id,) = conn.execute("SELECT coalesce(max(alert_id), 0) FROM alerts").fetchone()
    finally:
        if collecting:
            gc.enable()
        conn.close()
    return Restored(
        sessions=sessions,
        messages=messages,
        quota=quota,
        alerts=alerts,
        metrics=metrics,
        max_alert_id=max_alert_id,
        clean_shutdown=clean_shutdown,
        counts=RestoreCounts(
            sessions=len(sessions),
            purged=purged,
            messages=count,
            quota_buckets=len(quota),
            alerts=len(alerts),
        ),
    )
