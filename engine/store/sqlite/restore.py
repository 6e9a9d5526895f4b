"""The reads: everything live at start-up (no message content), and one session on demand.

`load_live` first purges and prunes on the writer's connection; nothing else writes while that
job runs, so a second connection reads exactly what was just committed, in one worker thread:
no hop to the loop per chunk, no GIL ping-pong. It reads sessions and each conversation's
figures (count, bytes, next seq), never a ciphertext: messages are read per session, by
`read_session`, when the engine first uses that session.
"""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

from engine.store.ops import (
    METRICS_RESTORE_S,
    AlertRow,
    ContextFigures,
    MessageRow,
    MetricsRow,
    QuotaEvent,
    RestoreCounts,
    Restored,
    SessionRecord,
    SessionRow,
    StoredSession,
)
from engine.store.sqlite.checks import read_only_uri
from engine.store.sqlite.statements import SESSION_COLUMNS

_SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY session_id"
_SELECT_CONTEXTS = (
    "SELECT session_id, count(*), sum(size), max(seq) + 1 FROM messages GROUP BY session_id"
)
_SELECT_PAGE = (
    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id > ? ORDER BY session_id LIMIT ?"
)
_SELECT_PAGE_CONTEXTS = (
    "SELECT session_id, count(*), sum(size), max(seq) + 1 FROM messages"
    " WHERE session_id > ? AND session_id <= ? GROUP BY session_id"
)
_SELECT_RECORD = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
_SELECT_CONTEXT = "SELECT count(*), sum(size), max(seq) + 1 FROM messages WHERE session_id = ?"
_SELECT_KEY = "SELECT wrapped_key FROM sessions WHERE session_id = ?"
_SELECT_MESSAGES = (
    "SELECT session_id, seq, role, ciphertext, at, size FROM messages"
    " WHERE session_id = ? ORDER BY seq"
)
_SELECT_QUOTA = (
    "SELECT user_id, resource, at, amount, window_s FROM quota_usage"
    " WHERE expires_at > ? ORDER BY at"
)
_SELECT_ALERTS = (
    "SELECT * FROM alerts WHERE resolved_at IS NULL AND NOT acknowledged ORDER BY alert_id"
)
_SELECT_METRICS = "SELECT * FROM metrics_minute WHERE minute >= ? ORDER BY minute, scope"


def read_live(
    path: Path, now: float, clean_shutdown: bool, purged: int, *, sessions: bool
) -> Restored:
    """Everything live as of `now`; `purged` (sessions the purge before deleted) is counted.
    Without `sessions`, none of them (`read_page` reads them, `count_sessions` counts them)."""
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects would trigger many pointless collections
    try:
        rows: list[SessionRow] = []
        contexts: dict[str, ContextFigures] = {}
        if sessions:
            rows = [SessionRow(*row) for row in conn.execute(_SELECT_SESSIONS)]
            contexts = {
                row[0]: ContextFigures(row[1], row[2], row[3])
                for row in conn.execute(_SELECT_CONTEXTS)
            }
        stored = len(rows)
        count = sum(figures.messages for figures in contexts.values())
        quota = [QuotaEvent(*row) for row in conn.execute(_SELECT_QUOTA, (now,))]
        alerts = [AlertRow(*row[:9], bool(row[9]), row[10]) for row in conn.execute(_SELECT_ALERTS)]
        since = (now - METRICS_RESTORE_S,)
        metrics = [MetricsRow(*row) for row in conn.execute(_SELECT_METRICS, since)]
        # One process's file: its alerts are all its own (the worker "").
        max_alert_ids = dict(conn.execute("SELECT '', max(alert_id) FROM alerts HAVING count(*)"))
    finally:
        if collecting:
            gc.enable()
        conn.close()
    return Restored(
        sessions=rows,
        contexts=contexts,
        quota=quota,
        alerts=alerts,
        metrics=metrics,
        max_alert_ids=max_alert_ids,
        clean_shutdown=clean_shutdown,
        counts=RestoreCounts(
            sessions=stored,
            purged=purged,
            messages=count,
            quota_buckets=len(quota),
            alerts=len(alerts),
        ),
    )


def count_sessions(path: Path) -> int:
    """How many sessions are stored, through a read-only connection of its own."""
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        (stored,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
    finally:
        conn.close()
    return int(stored)


def read_page(path: Path, after: str, limit: int) -> list[SessionRecord]:
    """Up to `limit` sessions with ids after `after`, in id order, with their conversations'
    figures, through a read-only connection of its own (a page is read beside the commits)."""
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        rows = [SessionRow(*row) for row in conn.execute(_SELECT_PAGE, (after, limit))]
        if not rows:
            return []
        contexts = {
            row[0]: ContextFigures(row[1], row[2], row[3])
            for row in conn.execute(_SELECT_PAGE_CONTEXTS, (after, rows[-1].session_id))
        }
    finally:
        conn.close()
    return [SessionRecord(row, contexts.get(row.session_id)) for row in rows]


def read_record(session_id: str, conn: sqlite3.Connection) -> SessionRecord | None:
    """One session's compact record and its conversation's figures; None once it has ended.
    Both reads run either way: an unknown id costs what a stored one does."""
    row = conn.execute(_SELECT_RECORD, (session_id,)).fetchone()
    messages, size, next_seq = conn.execute(_SELECT_CONTEXT, (session_id,)).fetchone()
    if row is None:
        return None
    figures = ContextFigures(messages, size, next_seq) if messages else None
    return SessionRecord(SessionRow(*row), figures)


def read_session(session_id: str, conn: sqlite3.Connection) -> StoredSession | None:
    """One session's wrapped key and messages, oldest first; None once it has ended."""
    key = conn.execute(_SELECT_KEY, (session_id,)).fetchone()
    if key is None:
        return None
    messages = [MessageRow(*row) for row in conn.execute(_SELECT_MESSAGES, (session_id,))]
    return StoredSession(key[0], messages)
