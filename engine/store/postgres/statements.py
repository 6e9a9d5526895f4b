"""The SQL that applies each kind of op, built on the event loop and run by asyncpg.

As in SQLite (engine/store/sqlite/statements.py), a batch's ops are grouped by kind and applied
in a fixed phase order: rows exist before what refers to them, and ending a session comes after
everything else written for it in the same batch. Each statement is one `Statement`: its SQL and
the arguments of each execution, run as one `execute` or one pipelined `executemany` (a single
round trip either way).

Kinds a turn writes in bulk (messages, touches, quota usage) go as one statement over arrays
(`unnest`), one execution for the whole batch. PostgreSQL refuses an `INSERT ... ON CONFLICT DO
UPDATE` that meets one key twice, where SQLite applied rows one after the other, so quota
events are summed per bucket and touches merged per session here first, with the same result.
The others (session upserts, alerts, ...) keep SQLite's row-after-row semantics through
`executemany`.
"""

from __future__ import annotations

from engine.store.ops import (
    AlertRow,
    MessageRow,
    MetricsRow,
    QuotaEvent,
    Served,
    SessionRow,
    Touch,
)
from engine.store.statements import (
    UPSERTED_SESSION_COLUMNS,
    OpStatements,
    Sql,
    Statements,
    latest_touches,
)

SESSION_COLUMNS = ", ".join(SessionRow.__dataclass_fields__)
_AUDIT = (
    "session_id", "user_id", "tier", "metadata_json", "created_at", "last_active_at",
    "ended_at", "reason", "turns", "prompt_tokens", "completion_tokens", "messages",
)
_AUDIT_SELECT = (
    "SELECT session_id, user_id, tier, metadata_json, created_at, last_active_at, {ended_at},"
    " {reason}, turns, prompt_tokens, completion_tokens,"
    " (SELECT count(*) FROM messages m WHERE m.session_id = s.session_id)"
    " FROM sessions s WHERE {where}"
    " ON CONFLICT (session_id) DO UPDATE SET ({columns}) = ({excluded})"
)
DEADLINE = "least(last_active_at + idle_timeout_s, created_at + lifetime_s)"
EXPIRED = f"{DEADLINE} <= $1::float8"


def _audit_insert(ended_at: str, reason: str, where: str) -> str:
    return f"INSERT INTO session_audit ({', '.join(_AUDIT)}) " + _AUDIT_SELECT.format(
        ended_at=ended_at,
        reason=reason,
        where=where,
        columns=", ".join(_AUDIT[1:]),
        excluded=", ".join(f"excluded.{column}" for column in _AUDIT[1:]),
    )


def _forward(table: str, *columns: str) -> str:
    return ",\n    ".join(f"{c} = greatest({table}.{c}, excluded.{c})" for c in columns)


_UPSERT_SESSION = f"""
INSERT INTO sessions ({", ".join(UPSERTED_SESSION_COLUMNS)})
VALUES ({", ".join(f"${n}" for n in range(1, len(UPSERTED_SESSION_COLUMNS) + 1))})
ON CONFLICT (session_id) DO UPDATE SET
    tier = excluded.tier,
    metadata_json = excluded.metadata_json,
    idle_timeout_s = excluded.idle_timeout_s,
    lifetime_s = excluded.lifetime_s,
    token_hash = excluded.token_hash,
    token_issued_at = excluded.token_issued_at,
    token_expires_at = excluded.token_expires_at,
    worker = excluded.worker,
    agent_type = coalesce(nullif(excluded.agent_type, ''), sessions.agent_type),
    {_forward("sessions", "last_active_at", "turns", "prompt_tokens", "completion_tokens",
              "errors")}
"""
_UPDATE_TOKEN = (
    "UPDATE sessions SET token_hash = $2, token_issued_at = $3, token_expires_at = $4"
    " WHERE session_id = $1"
)
_ASSIGN = "UPDATE sessions SET worker = $2 WHERE session_id = $1"
_SERVED = "UPDATE sessions SET served_by = $2 WHERE session_id = $1"
_USER_TIER = "UPDATE sessions SET tier = $2 WHERE user_id = $1"
_TOUCH = """
UPDATE sessions SET
    last_active_at = greatest(sessions.last_active_at, t.last_active_at),
    turns = greatest(sessions.turns, t.turns),
    prompt_tokens = greatest(sessions.prompt_tokens, t.prompt_tokens),
    completion_tokens = greatest(sessions.completion_tokens, t.completion_tokens),
    errors = greatest(sessions.errors, t.errors),
    agent_type = coalesce(nullif(t.agent_type, ''), sessions.agent_type)
FROM unnest($1::text[], $2::float8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
            $7::text[])
    AS t(session_id, last_active_at, turns, prompt_tokens, completion_tokens, errors, agent_type)
WHERE sessions.session_id = t.session_id
"""
# WITH ORDINALITY ... ORDER BY: ids follow the order the messages were written in.
_INSERT_MESSAGES = """
INSERT INTO messages (session_id, seq, role, ciphertext, at, size)
SELECT session_id, seq, role, ciphertext, at, size
FROM unnest($1::text[], $2::int8[], $3::text[], $4::bytea[], $5::float8[], $6::int8[])
    WITH ORDINALITY AS t(session_id, seq, role, ciphertext, at, size, n)
ORDER BY n
"""
_TRIM = "DELETE FROM messages WHERE session_id = $1 AND seq <= $2"
_ADD_USAGE = f"""
INSERT INTO quota_usage (user_id, resource, window_s, bucket, at, amount, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::int8[], $5::float8[],
                     $6::float8[], $7::float8[])
ON CONFLICT (user_id, resource, window_s, bucket) DO UPDATE SET
    amount = quota_usage.amount + excluded.amount,
    {_forward("quota_usage", "at", "expires_at")}
"""
_ALERT_COLUMNS = tuple(AlertRow.__dataclass_fields__)
_ALERT_VALUES = tuple(c for c in _ALERT_COLUMNS if c not in ("worker", "alert_id"))
_UPSERT_ALERT = (
    f"INSERT INTO alerts ({', '.join(_ALERT_COLUMNS)})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(_ALERT_COLUMNS) + 1))})"
    f" ON CONFLICT (worker, alert_id) DO UPDATE SET ({', '.join(_ALERT_VALUES)})"
    f" = ({', '.join(f'excluded.{c}' for c in _ALERT_VALUES)})"
)
_METRICS_COLUMNS = tuple(MetricsRow.__dataclass_fields__)
_UPSERT_METRICS = (
    f"INSERT INTO metrics_minute ({', '.join(_METRICS_COLUMNS)})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(_METRICS_COLUMNS) + 1))})"
    f" ON CONFLICT (minute, scope) DO UPDATE SET ({', '.join(_METRICS_COLUMNS[2:])})"
    f" = ({', '.join(f'excluded.{c}' for c in _METRICS_COLUMNS[2:])})"
)
_AUDIT_ENDED = _audit_insert("$2::float8", "$3::text", "session_id = $1")
AUDIT_EXPIRED = _audit_insert(
    DEADLINE,
    "CASE WHEN created_at + lifetime_s <= last_active_at + idle_timeout_s"
    " THEN 'absolute lifetime reached while the engine was stopped'"
    " ELSE 'idle timeout while the engine was stopped' END",
    EXPIRED,
)
DELETE_EXPIRED = f"DELETE FROM sessions WHERE {EXPIRED}"
_DELETE_SESSION = "DELETE FROM sessions WHERE session_id = $1"
_PRUNE_QUOTA = "DELETE FROM quota_usage WHERE expires_at <= $1"
_PRUNE_AUDIT = "DELETE FROM session_audit WHERE ended_at <= $1"
# The cluster's newest `alert_keep` alerts by when each was first raised, whichever worker
# raised them (ids are numbered per worker; kept per worker, the table would grow with every
# worker name ever used). Both halves walk the alerts_first index.
_PRUNE_ALERTS = (
    "DELETE FROM alerts WHERE (first_at, worker, alert_id) <="
    " (SELECT first_at, worker, alert_id FROM alerts"
    " ORDER BY first_at DESC, worker DESC, alert_id DESC LIMIT 1 OFFSET $1)"
)
_PRUNE_METRICS = "DELETE FROM metrics_minute WHERE minute < $1::float8"



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


class PostgresStatements(OpStatements):
    """PostgreSQL's statements; many rows of a kind go in one statement as arrays (unnest)."""

    def __init__(self, retention_s: float, alert_keep: int, metrics_keep_s: float) -> None:
        super().__init__(SQL, retention_s, alert_keep, metrics_keep_s)

    def _served_sql(self, ops: list[Served]) -> Statements:
        yield _SERVED, [(op.session_id, op.worker) for op in ops]

    def _touch_sql(self, ops: list[Touch]) -> Statements:
        touches = latest_touches(ops)
        yield _TOUCH, [(
            [t.session_id for t in touches],
            [t.last_active_at for t in touches],
            [t.turns for t in touches],
            [t.prompt_tokens for t in touches],
            [t.completion_tokens for t in touches],
            [t.errors for t in touches],
            [t.agent_type for t in touches],
        )]

    def _messages_sql(self, rows: list[MessageRow]) -> Statements:
        yield _INSERT_MESSAGES, [(
            [r.session_id for r in rows],
            [r.seq for r in rows],
            [r.role for r in rows],
            [r.ciphertext for r in rows],
            [r.at for r in rows],
            [r.size for r in rows],
        )]

    def _usage_sql(self, events: list[QuotaEvent]) -> Statements:
        buckets: dict[tuple[str, str, float, int], list[float]] = {}
        for e in events:
            key = (e.user_id, e.resource, e.window_s, e.bucket)
            summed = buckets.get(key)
            if summed is None:
                buckets[key] = [e.at, e.amount, e.at + e.window_s]
            else:
                summed[0] = max(summed[0], e.at)
                summed[1] += e.amount
                summed[2] = max(summed[2], e.at + e.window_s)
        keys, sums = list(buckets), list(buckets.values())
        yield _ADD_USAGE, [(
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            [s[0] for s in sums],
            [s[1] for s in sums],
            [s[2] for s in sums],
        )]
