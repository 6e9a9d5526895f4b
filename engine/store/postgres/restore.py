"""The reads: everything live at start-up (no message content), and one session on demand.

As in SQLite (engine/store/sqlite/restore.py): sessions and each conversation's figures (count,
bytes, next seq), never a ciphertext; messages are read per session when the engine first uses
it. `load_live` reads in one repeatable-read snapshot, so its parts agree with one another even
while other workers of a cluster write.
"""

from __future__ import annotations

import asyncpg

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
from engine.store.postgres.statements import SESSION_COLUMNS

_SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY session_id"
_SELECT_CONTEXTS = (
    "SELECT session_id, count(*), sum(size)::bigint, max(seq) + 1 FROM messages"
    " GROUP BY session_id"
)
_SELECT_PAGE = (
    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id > $1 ORDER BY session_id LIMIT $2"
)
_SELECT_PAGE_CONTEXTS = (
    "SELECT session_id, count(*), sum(size)::bigint, max(seq) + 1 FROM messages"
    " WHERE session_id > $1 AND session_id <= $2 GROUP BY session_id"
)
_SELECT_RECORD = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
_SELECT_CONTEXT = (
    "SELECT count(*), sum(size)::bigint, max(seq) + 1 FROM messages WHERE session_id = $1"
)
_SELECT_KEY = "SELECT wrapped_key FROM sessions WHERE session_id = $1"
_SELECT_MESSAGES = (
    "SELECT session_id, seq, role, ciphertext, at, size FROM messages"
    " WHERE session_id = $1 ORDER BY seq"
)
_SELECT_QUOTA = (
    "SELECT user_id, resource, at, amount, window_s FROM quota_usage"
    " WHERE expires_at > $1 ORDER BY at"
)
_SELECT_ALERTS = (
    f"SELECT {', '.join(AlertRow.__dataclass_fields__)} FROM alerts"
    " WHERE resolved_at IS NULL AND NOT acknowledged ORDER BY first_at, worker, alert_id"
)
# At most `alert_keep` rows to group: the prune keeps the table that small.
_SELECT_MAX_ALERT_IDS = "SELECT worker, max(alert_id) FROM alerts GROUP BY worker"
_SELECT_METRICS = (
    f"SELECT {', '.join(MetricsRow.__dataclass_fields__)} FROM metrics_minute"
    " WHERE minute >= $1::float8 ORDER BY minute, scope"
)


async def read_live(
    conn: asyncpg.Connection, now: float, clean_shutdown: bool, purged: int, *, sessions: bool
) -> Restored:
    """Everything live as of `now`; `purged` (sessions the purge before deleted) is counted.
    Without `sessions`, none of them (`read_page` reads them, `count_sessions` counts them)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows: list[SessionRow] = []
        contexts: dict[str, ContextFigures] = {}
        if sessions:
            rows = [SessionRow(*row) for row in await conn.fetch(_SELECT_SESSIONS)]
            contexts = {
                row[0]: ContextFigures(row[1], row[2], row[3])
                for row in await conn.fetch(_SELECT_CONTEXTS)
            }
        stored = len(rows)
        quota = [QuotaEvent(*row) for row in await conn.fetch(_SELECT_QUOTA, now)]
        alerts = [AlertRow(*row) for row in await conn.fetch(_SELECT_ALERTS)]
        metrics = [
            MetricsRow(*row) for row in await conn.fetch(_SELECT_METRICS, now - METRICS_RESTORE_S)
        ]
        max_alert_ids = dict(await conn.fetch(_SELECT_MAX_ALERT_IDS))
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
            messages=sum(figures.messages for figures in contexts.values()),
            quota_buckets=len(quota),
            alerts=len(alerts),
        ),
    )


async def read_page(conn: asyncpg.Connection, after: str, limit: int) -> list[SessionRecord]:
    """Up to `limit` sessions with ids after `after`, in id order, with their conversations'
    figures, in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = [SessionRow(*row) for row in await conn.fetch(_SELECT_PAGE, after, limit)]
        if not rows:
            return []
        contexts = {
            row[0]: ContextFigures(row[1], row[2], row[3])
            for row in await conn.fetch(_SELECT_PAGE_CONTEXTS, after, rows[-1].session_id)
        }
    return [SessionRecord(row, contexts.get(row.session_id)) for row in rows]


async def read_record(conn: asyncpg.Connection, session_id: str) -> SessionRecord | None:
    """One session's compact record and its conversation's figures; None once it has ended.
    Both reads run either way: an unknown id costs what a stored one does."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(_SELECT_RECORD, session_id)
        messages, size, next_seq = await conn.fetchrow(_SELECT_CONTEXT, session_id)
    if row is None:
        return None
    figures = ContextFigures(messages, size, next_seq) if messages else None
    return SessionRecord(SessionRow(*row), figures)


async def read_session(conn: asyncpg.Connection, session_id: str) -> StoredSession | None:
    """One session's wrapped key and messages, oldest first; None once it has ended."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        key = await conn.fetchrow(_SELECT_KEY, session_id)
        if key is None:
            return None
        messages = [MessageRow(*row) for row in await conn.fetch(_SELECT_MESSAGES, session_id)]
    return StoredSession(key[0], messages)
