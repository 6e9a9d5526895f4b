"""The engine's state as the store's rows: sessions, messages, alerts and the metrics roll-up.

`engine.restore` reads sessions back.

Content leaves memory only as ciphertext under the session's data key, bound to the row's
session id, seq and role so a row moved in the file no longer decrypts; the key leaves only
wrapped by the master key; the token only as its hash.
"""

from __future__ import annotations

import json

from engine.alerts import Alert
from engine.monitor import MonitorSnapshot
from engine.sessions import Message, Session
from engine.store import AlertRow, MessageRow, MetricsRow, SessionRow


def session_row(session: Session) -> SessionRow:
    assert session.token is not None and session.wrapped_key is not None
    return SessionRow(
        session_id=session.session_id,
        user_id=session.user_id,
        tier=session.tier,
        metadata_json=json.dumps(dict(session.metadata)),
        created_at=session.created_at,
        last_active_at=session.last_active_at,
        idle_timeout_s=session.idle_timeout_s,
        lifetime_s=session.lifetime_s,
        token_hash=session.token.token_hash,
        token_issued_at=session.token.issued_at,
        token_expires_at=session.token.expires_at,
        wrapped_key=session.wrapped_key,
        worker=session.worker or None,
        agent_type=session.agent_type,
        turns=session.turns,
        prompt_tokens=session.prompt_tokens,
        completion_tokens=session.completion_tokens,
        errors=session.errors,
        origin=session.origin,
    )


def message_row(session: Session, seq: int, message: Message) -> MessageRow:
    assert session.cipher is not None
    ciphertext = session.cipher.encrypt(
        message.content, session_id=session.session_id, seq=seq, role=message.role
    )
    return MessageRow(
        session_id=session.session_id,
        seq=seq,
        role=message.role,
        ciphertext=ciphertext,
        at=message.at,
        size=message.size,
    )


def alert_row(alert: Alert, worker: str) -> AlertRow:
    """`worker`: the worker of a cluster whose monitor holds the alert, "" for a process alone."""
    return AlertRow(
        alert.alert_id, alert.key, alert.rule, alert.severity, alert.message,
        alert.subject, alert.first_at, alert.last_at, alert.count,
        alert.acknowledged, alert.resolved_at, worker,
    )


class MetricsRollup:
    """The global figures of each minute since the last roll-up, for history that outlives the
    process (the monitor's own counters only grow)."""

    def __init__(self) -> None:
        self._last = (0, 0, 0, 0)  # turns, errors, tokens in/out at the last roll-up

    def row(self, now: float, snap: MonitorSnapshot) -> MetricsRow:
        totals = (snap.turns, snap.errors, snap.prompt_tokens, snap.completion_tokens)
        turns, errors, prompt, completion = (
            a - b for a, b in zip(totals, self._last, strict=True)
        )
        self._last = totals
        latency = snap.latency
        return MetricsRow(
            int(now // 60 * 60), "global", turns, errors, prompt, completion,
            latency.p50, latency.p95, latency.p99,
        )
