"""Start-up restore: stored rows back into live sessions, quota windows and alert numbering.

The reverse of `engine.records`. A session whose key or messages cannot be decrypted is left
on disk untouched and reported (with a critical alert) instead of failing the whole start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType

from engine.balancer import Balancer
from engine.errors import DecryptionFailed
from engine.monitor import Monitor
from engine.quotas import BYTES_PER_MB, QuotaManager
from engine.security import KeyRing, TokenRecord
from engine.sessions import Context, Message, Session, SessionRegistry
from engine.store import Assign, MessageRow, Op, Restored, SessionRow
from engine.views import RestoreReport


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored session that could not be decrypted; it stays on disk, untouched."""

    session_id: str
    user_id: str
    reason: str


def restore_session(
    row: SessionRow,
    messages: list[MessageRow],
    keyring: KeyRing,
    *,
    context_max_messages: int,
    context_max_bytes: int,
) -> Session | Unreadable:
    try:
        cipher = keyring.unwrap(row.wrapped_key)
        decrypted = [
            Message(
                m.role,  # type: ignore[arg-type]
                cipher.decrypt(m.ciphertext, session_id=row.session_id, seq=m.seq, role=m.role),
                m.at,
            )
            for m in messages
        ]
    except DecryptionFailed as exc:
        return Unreadable(row.session_id, row.user_id, str(exc))
    context = Context(context_max_messages, context_max_bytes)
    for message in decrypted:
        context.append(message)
    return Session(
        session_id=row.session_id,
        user_id=row.user_id,
        metadata=MappingProxyType(json.loads(row.metadata_json)),
        created_at=row.created_at,
        last_active_at=row.last_active_at,
        idle_timeout_s=row.idle_timeout_s,
        lifetime_s=row.lifetime_s,
        context=context,
        turns=row.turns,
        errors=row.errors,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        agent_type=row.agent_type,
        worker=row.worker or "",
        tier=row.tier,
        token=TokenRecord(row.token_hash, row.token_issued_at, row.token_expires_at),
        wrapped_key=row.wrapped_key,
        cipher=cipher,
        next_seq=messages[-1].seq + 1 if messages else 0,
    )


def adopt_restored(
    restored: Restored,
    keyring: KeyRing,
    *,
    registry: SessionRegistry,
    quotas: QuotaManager,
    balancer: Balancer,
    monitor: Monitor,
    tiers: frozenset[str],
    default_tier: str,
    context_max_messages: int,
    context_max_bytes: int,
) -> tuple[RestoreReport, list[Op]]:
    """Adopt what the store loaded; returns the report and the ops recording worker moves."""
    monitor.alert_manager.continue_after(restored.max_alert_id)
    unreadable: list[Unreadable] = []
    moved: list[Op] = []
    for row in restored.sessions:
        session = restore_session(
            row, restored.messages.get(row.session_id, []), keyring,
            context_max_messages=context_max_messages, context_max_bytes=context_max_bytes,
        )
        if isinstance(session, Unreadable):
            unreadable.append(session)
            continue
        registry.adopt(session)
        if session.tier not in tiers:
            monitor.alert_manager.fire(
                f"tier:{session.tier}", "configuration", "warning",
                f"restored sessions use tier {session.tier!r}, which is no longer "
                f"configured; their users get {default_tier!r}",
            )
            session.tier = default_tier
        if session.tier != quotas.tier_of(session.user_id):
            quotas.set_tier(session.user_id, session.tier)
        worker = balancer.assign(session.session_id)
        if worker != session.worker:
            session.worker = worker
            moved.append(Assign(session.session_id, worker))
        monitor.session_started(session.session_id, session.user_id)
        quotas.adjust(session.user_id, "storage_mb", session.context.bytes / BYTES_PER_MB)
    for event in restored.quota:
        if quotas.window_of(event.user_id, event.resource) is not None:
            quotas.restore(event.user_id, event.resource, event.amount, event.at)
    for lost in unreadable:
        monitor.alert_manager.fire(
            f"unreadable:{lost.session_id}", "decryption", "critical",
            f"session {lost.session_id[:8]} of user {lost.user_id!r} cannot be decrypted "
            f"and was not restored: {lost.reason}",
            lost.session_id,
        )
    counts = restored.counts
    report = RestoreReport(
        sessions=counts.sessions - len(unreadable),
        messages=counts.messages,
        purged=counts.purged,
        quota_buckets=counts.quota_buckets,
        unreadable=tuple(u.session_id for u in unreadable),
        clean_shutdown=restored.clean_shutdown,
    )
    return report, moved
