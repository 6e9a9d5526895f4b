"""Stored rows back into live sessions: compact records at start-up, contexts on first use.

The reverse of `engine.records`. `hold_stored` holds a stored session cold (its compact
record: owner, token hash, deadlines, counters; a packed row of engine.cold_records when it
packs, else an object through `adopt_cold`), reading no message; `place` is what a session
held as an object gets: a worker lane and the monitor's stats; `restore_quota_windows` counts the
users' stored quota use again. `warm` unwraps one session's key and decrypts its messages when
the engine first uses it; a session that fails there is the engine's to report, alone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from types import MappingProxyType

from engine.balancer import Balancer
from engine.cold_records import NO_METADATA
from engine.errors import DecryptionFailed
from engine.monitor import Monitor
from engine.quotas import BYTES_PER_MB, QuotaManager
from engine.security import KeyRing, TokenRecord
from engine.sessions import ROLES, Context, Message, Session, SessionRegistry
from engine.store import (
    Assign,
    ContextFigures,
    Restored,
    SessionRecord,
    SessionRow,
    StoredSession,
)
from engine.views import RestoreReport


def cold_session(row: SessionRow, figures: ContextFigures | None) -> Session:
    """A stored session as its compact record: no key unwrapped, no message read."""
    metadata = row.metadata_json
    return Session(
        session_id=row.session_id,
        # Names repeat across sessions: one string each in memory, not one per row read.
        user_id=sys.intern(row.user_id),
        metadata=NO_METADATA if metadata == "{}" else MappingProxyType(json.loads(metadata)),
        created_at=row.created_at,
        last_active_at=row.last_active_at,
        idle_timeout_s=row.idle_timeout_s,
        lifetime_s=row.lifetime_s,
        context=None,
        turns=row.turns,
        errors=row.errors,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        agent_type=sys.intern(row.agent_type),
        worker=sys.intern(row.worker or ""),
        tier=sys.intern(row.tier),
        origin=sys.intern(row.origin),
        token=TokenRecord(row.token_hash, row.token_issued_at, row.token_expires_at),
        next_seq=figures.next_seq if figures is not None else 0,
        cold_messages=figures.messages if figures is not None else 0,
        cold_bytes=figures.bytes if figures is not None else 0,
    )


def warm(
    session: Session,
    stored: StoredSession,
    keyring: KeyRing,
    *,
    context_max_messages: int,
    context_max_bytes: int,
) -> None:
    """Unwrap the session's key and decrypt its messages into a context: it is hot.

    Raises DecryptionFailed (the session untouched) if the key or any message fails.
    """
    cipher = keyring.unwrap(stored.wrapped_key)
    sid = session.session_id
    context = Context(context_max_messages, context_max_bytes)
    if any(m.role not in ROLES for m in stored.messages):
        raise DecryptionFailed("message", f"its stored role is not one of {', '.join(ROLES)}")
    context.extend([
        Message(
            m.role,  # type: ignore[arg-type]
            cipher.decrypt(m.ciphertext, session_id=sid, seq=m.seq, role=m.role), m.at,
        )
        for m in stored.messages
    ])
    # The wrapped key stays in the store: only a new session's first write carries it.
    session.cipher, session.context = cipher, context
    if stored.messages:
        session.next_seq = max(session.next_seq, stored.messages[-1].seq + 1)


def hold_stored(
    record: SessionRecord,
    *,
    registry: SessionRegistry,
    quotas: QuotaManager,
    balancer: Balancer,
    monitor: Monitor,
    tiers: frozenset[str],
    default_tier: str,
) -> Assign | None:
    """Hold a stored session cold (at open, or first seen by this worker of a cluster): a
    packed row until its first use, or an object if it does not pack; returns the op
    recording its move when it is placed on another worker lane (objects only: a row is
    placed when it becomes one, engine.sessions.SessionRegistry.promote)."""
    row = _known_tier(record.row, monitor, tiers, default_tier)
    if not registry.adopt_row(row, record.figures):
        return adopt_cold(
            cold_session(row, record.figures), registry=registry, quotas=quotas,
            balancer=balancer, monitor=monitor, tiers=tiers, default_tier=default_tier,
        )
    _count_user(row.user_id, row.tier, record.figures.bytes if record.figures else 0, quotas)
    return None


def adopt_cold(
    session: Session,
    *,
    registry: SessionRegistry,
    quotas: QuotaManager,
    balancer: Balancer,
    monitor: Monitor,
    tiers: frozenset[str],
    default_tier: str,
) -> Assign | None:
    """Hold a session read from the store as a cold object (see `hold_stored`)."""
    registry.adopt(session)
    if session.tier not in tiers:
        _unknown_tier(session.tier, monitor, default_tier)
        session.tier = default_tier
    _count_user(session.user_id, session.tier, session.cold_bytes, quotas)
    return place(session, balancer=balancer, monitor=monitor)


def place(session: Session, *, balancer: Balancer, monitor: Monitor) -> Assign | None:
    """A session now held as an object: a worker lane, and the monitor's per-session stats;
    the op recording its move when the lane is not the stored one."""
    monitor.session_started(session.session_id, session.user_id)
    worker = balancer.assign(session.session_id)
    if worker == session.worker:
        return None
    session.worker = worker
    return Assign(session.session_id, worker)


def _count_user(user_id: str, tier: str, stored_bytes: int, quotas: QuotaManager) -> None:
    """The user's tier as stored, and the session's stored bytes in their storage quota."""
    if tier != quotas.tier_of(user_id):
        quotas.set_tier(user_id, tier)
    quotas.adjust(user_id, "storage_mb", stored_bytes / BYTES_PER_MB)


def _known_tier(
    row: SessionRow, monitor: Monitor, tiers: frozenset[str], default_tier: str
) -> SessionRow:
    if row.tier in tiers:
        return row
    _unknown_tier(row.tier, monitor, default_tier)
    return dataclasses.replace(row, tier=default_tier)


def _unknown_tier(tier: str, monitor: Monitor, default_tier: str) -> None:
    monitor.alert_manager.fire(
        f"tier:{tier}", "configuration", "warning",
        f"restored sessions use tier {tier!r}, which is no longer "
        f"configured; their users get {default_tier!r}",
    )


def restore_quota_windows(restored: Restored, quotas: QuotaManager) -> RestoreReport:
    """Count the users' stored quota use in their windows again; the report of what open()
    read (sessions come in pages: engine.background_restore)."""
    for event in restored.quota:
        if quotas.window_of(event.user_id, event.resource) is not None:
            quotas.restore(event.user_id, event.resource, event.amount, event.at)
    counts = restored.counts
    return RestoreReport(
        sessions=counts.sessions,
        messages=counts.messages,
        purged=counts.purged,
        quota_buckets=counts.quota_buckets,
        clean_shutdown=restored.clean_shutdown,
    )
