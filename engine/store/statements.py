"""Which statements apply a batch of ops, whatever the database.

A batch's ops are grouped by kind and applied in a fixed phase order: rows exist before what
refers to them, and ending a session comes after everything else written for it in the same
batch. Each kind's rows become the arguments of one statement, run once per row (executemany).
A backend gives its SQL (`Sql`) and, in a subclass, how the kinds it writes many rows of at
once (touches, messages, quota usage) become statements, the part where SQLite and PostgreSQL
differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.store.ops import (
    AlertRow,
    Assign,
    EndSession,
    MessageRow,
    MetricsRow,
    Op,
    Prune,
    QuotaEvent,
    Served,
    SessionRow,
    TokenUpdate,
    Touch,
    TrimMessages,
    UserTier,
)

Statement = tuple[str, list[tuple[Any, ...]]]  # SQL and the arguments of each execution
Statements = Iterator[Statement]

# What a SessionRow upsert writes, in _sessions_sql's order: every column but `served_by`,
# which only `Served` writes (an upsert keeps the stored one; SQLite's file has no such column).
UPSERTED_SESSION_COLUMNS = tuple(c for c in SessionRow.__dataclass_fields__ if c != "served_by")


@dataclass(frozen=True, slots=True)
class Sql:
    """A backend's statements for the kinds written one row per execution."""

    upsert_session: str
    user_tier: str
    assign: str
    update_token: str
    trim: str
    upsert_alert: str
    upsert_metrics: str
    audit_ended: str
    delete_session: str
    prune_quota: str
    prune_audit: str
    prune_alerts: str
    prune_metrics: str


class OpStatements:
    """The statements that apply ops, given the store's retention and pruning settings."""

    def __init__(
        self, sql: Sql, retention_s: float, alert_keep: int, metrics_keep_s: float
    ) -> None:
        self.sql = sql
        self.retention_s = retention_s
        self.alert_keep = alert_keep
        self.metrics_keep_s = metrics_keep_s
        self._phases: tuple[tuple[type, Callable[[list[Any]], Statements]], ...] = (
            (SessionRow, self._sessions_sql),
            (UserTier, self._tier_sql),
            (Assign, self._assign_sql),
            (Served, self._served_sql),
            (TokenUpdate, self._token_sql),
            (Touch, self._touch_sql),
            (MessageRow, self._messages_sql),
            (TrimMessages, self._trim_sql),
            (QuotaEvent, self._usage_sql),
            (AlertRow, self._alerts_sql),
            (MetricsRow, self._metrics_sql),
            (EndSession, self._end_sql),
            (Prune, self._prune_sql),
        )

    def of(self, ops: Sequence[Op]) -> list[Statement]:
        """The statements that apply `ops`, in phase order."""
        groups: dict[type, list[Any]] = {}
        for op in ops:
            groups.setdefault(type(op), []).append(op)
        return [
            statement
            for kind, statements in self._phases
            if (chosen := groups.get(kind))
            for statement in statements(chosen)
        ]

    def prune(self, now: float) -> Statements:
        return self._prune_sql([Prune(now)])

    # -- where the backends differ ---------------------------------------------------------------
    def _served_sql(self, ops: list[Served]) -> Statements:
        raise NotImplementedError

    def _touch_sql(self, ops: list[Touch]) -> Statements:
        raise NotImplementedError

    def _messages_sql(self, rows: list[MessageRow]) -> Statements:
        raise NotImplementedError

    def _usage_sql(self, events: list[QuotaEvent]) -> Statements:
        raise NotImplementedError

    # -- the same everywhere ---------------------------------------------------------------------
    def _sessions_sql(self, rows: list[SessionRow]) -> Statements:
        yield self.sql.upsert_session, [
            (
                r.session_id, r.user_id, r.tier, r.metadata_json, r.created_at,
                r.last_active_at, r.idle_timeout_s, r.lifetime_s, r.token_hash,
                r.token_issued_at, r.token_expires_at, r.wrapped_key, r.worker, r.agent_type,
                r.turns, r.prompt_tokens, r.completion_tokens, r.errors, r.origin,
            )
            for r in rows
        ]

    def _tier_sql(self, ops: list[UserTier]) -> Statements:
        yield self.sql.user_tier, [(op.user_id, op.tier) for op in ops]

    def _assign_sql(self, ops: list[Assign]) -> Statements:
        yield self.sql.assign, [(op.session_id, op.worker) for op in ops]

    def _token_sql(self, ops: list[TokenUpdate]) -> Statements:
        yield self.sql.update_token, [
            (op.session_id, op.token_hash, op.issued_at, op.expires_at) for op in ops
        ]

    def _trim_sql(self, ops: list[TrimMessages]) -> Statements:
        yield self.sql.trim, [(op.session_id, op.through_seq) for op in ops]

    def _alerts_sql(self, rows: list[AlertRow]) -> Statements:
        yield self.sql.upsert_alert, [
            (
                r.alert_id, r.key, r.rule, r.severity, r.message, r.subject, r.first_at,
                r.last_at, r.count, r.acknowledged, r.resolved_at, r.worker,
            )
            for r in rows
        ]

    def _metrics_sql(self, rows: list[MetricsRow]) -> Statements:
        yield self.sql.upsert_metrics, [
            (
                r.minute, r.scope, r.turns, r.errors, r.prompt_tokens, r.completion_tokens,
                r.p50_s, r.p95_s, r.p99_s,
            )
            for r in rows
        ]

    def _end_sql(self, ops: list[EndSession]) -> Statements:
        if self.retention_s > 0:
            yield self.sql.audit_ended, [(op.session_id, op.ended_at, op.reason) for op in ops]
        yield self.sql.delete_session, [(op.session_id,) for op in ops]

    def _prune_sql(self, ops: list[Prune]) -> Statements:
        now = max(op.now for op in ops)
        yield self.sql.prune_quota, [(now,)]
        yield self.sql.prune_audit, [(now - self.retention_s,)]
        yield self.sql.prune_alerts, [(self.alert_keep,)]
        yield self.sql.prune_metrics, [(now - self.metrics_keep_s,)]


def latest_touches(ops: list[Touch]) -> list[Touch]:
    """One touch per session: several in a batch merge into the last (counters move forward)."""
    latest: dict[str, Touch] = {}
    for op in ops:
        earlier = latest.get(op.session_id)
        latest[op.session_id] = op if earlier is None else earlier.then(op)
    return list(latest.values())
