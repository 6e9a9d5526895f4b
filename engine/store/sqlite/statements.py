"""The SQL that applies each kind of op, built on the event loop, run on the connection thread.

A batch's ops are grouped by kind and applied in a fixed phase order: rows exist before what
refers to them, and ending a session comes after everything else written for it in the same
batch. Many rows of one kind go in one statement (`_ManyRows`). The schema these statements
write is in `migrations.py`.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from engine.store.ops import (
    AlertRow,
    MessageRow,
    QuotaEvent,
    Served,
    Touch,
)
from engine.store.statements import (
    UPSERTED_SESSION_COLUMNS,
    OpStatements,
    Sql,
    Statements,
    latest_touches,
)

# One process's file has no `served_by` (only a cluster's workers, on PostgreSQL, serve turns of
# one session): rows read back carry None.
SESSION_COLUMNS = ", ".join(UPSERTED_SESSION_COLUMNS)
EXPIRED = "min(last_active_at + idle_timeout_s, created_at + lifetime_s) <= ?1"
_AUDIT_COLUMNS = (
    "session_id, user_id, tier, metadata_json, created_at, last_active_at, {ended_at}, {reason},"
    " turns, prompt_tokens, completion_tokens,"
    " (SELECT count(*) FROM messages m WHERE m.session_id = s.session_id)"
)

_UPSERT_SESSION = f"""
INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({", ".join("?" * len(UPSERTED_SESSION_COLUMNS))})
ON CONFLICT (session_id) DO UPDATE SET
    tier = excluded.tier,
    metadata_json = excluded.metadata_json,
    last_active_at = max(last_active_at, excluded.last_active_at),
    idle_timeout_s = excluded.idle_timeout_s,
    lifetime_s = excluded.lifetime_s,
    token_hash = excluded.token_hash,
    token_issued_at = excluded.token_issued_at,
    token_expires_at = excluded.token_expires_at,
    worker = excluded.worker,
    agent_type = coalesce(nullif(excluded.agent_type, ''), agent_type),
    turns = max(turns, excluded.turns),
    prompt_tokens = max(prompt_tokens, excluded.prompt_tokens),
    completion_tokens = max(completion_tokens, excluded.completion_tokens),
    errors = max(errors, excluded.errors)
"""
_UPDATE_TOKEN = (
    "UPDATE sessions SET token_hash = ?2, token_issued_at = ?3, token_expires_at = ?4"
    " WHERE session_id = ?1"
)
_ASSIGN = "UPDATE sessions SET worker = ?2 WHERE session_id = ?1"
_USER_TIER = "UPDATE sessions SET tier = ?2 WHERE user_id = ?1"
_TRIM = "DELETE FROM messages WHERE session_id = ?1 AND seq <= ?2"
_AUDIT_ENDED = (
    "INSERT OR REPLACE INTO session_audit SELECT "
    + _AUDIT_COLUMNS.format(ended_at="?2", reason="?3")
    + " FROM sessions s WHERE session_id = ?1"
)
AUDIT_EXPIRED = (
    "INSERT OR REPLACE INTO session_audit SELECT "
    + _AUDIT_COLUMNS.format(
        ended_at="min(last_active_at + idle_timeout_s, created_at + lifetime_s)",
        reason=(
            "CASE WHEN created_at + lifetime_s <= last_active_at + idle_timeout_s"
            " THEN 'absolute lifetime reached while the engine was stopped'"
            " ELSE 'idle timeout while the engine was stopped' END"
        ),
    )
    + f" FROM sessions s WHERE {EXPIRED}"
)
_DELETE_SESSION = "DELETE FROM sessions WHERE session_id = ?"
_UPSERT_ALERT = "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_METRICS = "INSERT OR REPLACE INTO metrics_minute VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PRUNE_QUOTA = "DELETE FROM quota_usage WHERE expires_at <= ?"
_PRUNE_AUDIT = "DELETE FROM session_audit WHERE ended_at <= ?"
_PRUNE_ALERTS = (
    "DELETE FROM alerts WHERE alert_id <="
    " (SELECT alert_id FROM alerts ORDER BY alert_id DESC LIMIT 1 OFFSET ?)"
)
_PRUNE_METRICS = "DELETE FROM metrics_minute WHERE minute < ?"



class _ManyRows:
    """A statement that takes many rows per execution, in chunks of a few fixed sizes.

    The sqlite3 module releases the GIL around every step of a statement and must take it
    back from a busy event loop, so `executemany` costs the connection thread a handoff per
    row. One statement whose VALUES list holds N rows is one step: draining a backlog of
    20,000 turns' writes (6 rows each) beside a loop kept 80% busy took 0.58 s instead of
    0.83-0.92 s. Chunk sizes are powers of two, so a batch needs few executions and the
    connection's statement cache holds few texts.
    """

    CHUNKS = tuple(2**i for i in range(9, -1, -1))  # 512 rows of up to 7 columns: 3,584 bound

    def __init__(self, template: str, row: str) -> None:
        """`template` has `{rows}` where the VALUES list goes; `row` is one row's `(?, ...)`."""
        self._sql = {n: template.format(rows=", ".join([row] * n)) for n in self.CHUNKS}

    def statements(self, rows: list[tuple[Any, ...]]) -> Statements:
        start = 0
        for size in self.CHUNKS:
            while len(rows) - start >= size:
                chunk = rows[start:start + size]
                yield self._sql[size], [tuple(chain.from_iterable(chunk))]
                start += size


_INSERT_MESSAGES = _ManyRows(
    "INSERT INTO messages (session_id, seq, role, ciphertext, at, size) VALUES {rows}",
    "(?, ?, ?, ?, ?, ?)",
)
# A bucket's rows in one statement add up: each row after the first takes the DO UPDATE path.
_ADD_USAGE = _ManyRows(
    """
INSERT INTO quota_usage (user_id, resource, window_s, bucket, at, amount, expires_at)
VALUES {rows}
ON CONFLICT (user_id, resource, window_s, bucket) DO UPDATE SET
    amount = amount + excluded.amount,
    at = max(at, excluded.at),
    expires_at = max(expires_at, excluded.expires_at)
""",
    "(?, ?, ?, ?, ?, ?, ?)",
)
# One row per session: with two, UPDATE ... FROM would apply an arbitrary one (see _touch_sql).
_TOUCH = _ManyRows(
    """
UPDATE sessions SET
    last_active_at = max(last_active_at, t.column2),
    turns = max(turns, t.column3),
    prompt_tokens = max(prompt_tokens, t.column4),
    completion_tokens = max(completion_tokens, t.column5),
    errors = max(errors, t.column6),
    agent_type = coalesce(nullif(t.column7, ''), agent_type)
FROM (VALUES {rows}) AS t
WHERE sessions.session_id = t.column1
""",
    "(?, ?, ?, ?, ?, ?, ?)",
)


SQL = Sql(
    upsert_session=_UPSERT_SESSION,
    user_tier=_USER_TIER,
    assign=_ASSIGN,
    update_token=_UPDATE_TOKEN,
    trim=_TRIM,
    upsert_alert=_UPSERT_ALERT,
    upsert_metrics=_UPSERT_METRICS,
    audit_ended=_AUDIT_ENDED,
    delete_session=_DELETE_SESSION,
    prune_quota=_PRUNE_QUOTA,
    prune_audit=_PRUNE_AUDIT,
    prune_alerts=_PRUNE_ALERTS,
    prune_metrics=_PRUNE_METRICS,
)


class SqliteStatements(OpStatements):
    """SQLite's statements; many rows of a kind go in one multi-row statement (`_ManyRows`)."""

    def __init__(self, retention_s: float, alert_keep: int, metrics_keep_s: float) -> None:
        super().__init__(SQL, retention_s, alert_keep, metrics_keep_s)

    def _served_sql(self, ops: list[Served]) -> Statements:
        """Nothing to record: no other process serves this file's sessions."""
        yield from ()

    def _alerts_sql(self, rows: list[AlertRow]) -> Statements:
        """One process's alerts, keyed by alert_id alone: the file has no worker column (the
        workers of a cluster share PostgreSQL, never an SQLite file), so the worker is left
        out."""
        for sql, args in super()._alerts_sql(rows):
            yield sql, [row[:-1] for row in args]

    def _touch_sql(self, ops: list[Touch]) -> Statements:
        yield from _TOUCH.statements([
            (
                op.session_id, op.last_active_at, op.turns, op.prompt_tokens,
                op.completion_tokens, op.errors, op.agent_type,
            )
            for op in latest_touches(ops)
        ])

    def _messages_sql(self, rows: list[MessageRow]) -> Statements:
        yield from _INSERT_MESSAGES.statements(
            [(r.session_id, r.seq, r.role, r.ciphertext, r.at, r.size) for r in rows]
        )

    def _usage_sql(self, events: list[QuotaEvent]) -> Statements:
        yield from _ADD_USAGE.statements([
            (
                e.user_id, e.resource, e.window_s,
                e.bucket, e.at, e.amount,
                e.at + e.window_s,
            )
            for e in events
        ])
