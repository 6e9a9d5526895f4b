"""Stored rows back into live sessions: compact records at start-up, contexts on first use.

The reverse of `engine.records`. `ColdAdoption` holds a stored session cold (its compact
record: owner, token hash, deadlines, counters; a packed row of engine.cold_records when it
packs, else an object), reading no message, and places a session held as an object on a
worker lane; `restore_quota_windows` counts the users' stored quota use again. `warm` unwraps
one session's key and decrypts its messages when the engine first uses it; a session that
fails there is the engine's to report, alone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
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
        served_by=row.served_by,
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


@dataclass(frozen=True, slots=True)
class ColdAdoption:
    """How a session read from the store comes in cold, at open or when a worker of a cluster
    first sees it: its user's tier and stored bytes counted, no message read."""

    registry: SessionRegistry
    quotas: QuotaManager
    balancer: Balancer
    monitor: Monitor
    tiers: frozenset[str]
    default_tier: str

    def hold(self, record: SessionRecord) -> Assign | None:
        """A packed row until its first use (engine.cold_records), or an object if it does
        not pack; the op recording its move to another worker lane (objects only: a row is
        placed when it becomes one, engine.sessions.SessionRegistry.promote)."""
        row = record.row
        if row.tier not in self.tiers:
            self._unknown_tier(row.tier)
            row = dataclasses.replace(row, tier=self.default_tier)
        if not self.registry.adopt_row(row, record.figures):
            return self.adopt(cold_session(row, record.figures))
        self._count_user(row.user_id, row.tier, record.figures.bytes if record.figures else 0)
        return None

    def adopt(self, session: Session) -> Assign | None:
        """The session as a cold object; the op recording its move, as `hold`."""
        self.registry.adopt(session)
        if session.tier not in self.tiers:
            self._unknown_tier(session.tier)
            session.tier = self.default_tier
        self._count_user(session.user_id, session.tier, session.cold_bytes)
        return self.place(session)

    def place(self, session: Session) -> Assign | None:
        """A session now held as an object: a worker lane, and the monitor's per-session
        stats; the op recording its move when the lane is not the stored one."""
        self.monitor.session_started(session.session_id, session.user_id)
        worker = self.balancer.assign(session.session_id)
        if worker == session.worker:
            return None
        session.worker = worker
        return Assign(session.session_id, worker)

    def _count_user(self, user_id: str, tier: str, stored_bytes: int) -> None:
        """The user's tier as stored, and the session's stored bytes in their storage quota."""
        if tier != self.quotas.tier_of(user_id):
            self.quotas.set_tier(user_id, tier)
        self.quotas.adjust(user_id, "storage_mb", stored_bytes / BYTES_PER_MB)

    def _unknown_tier(self, tier: str) -> None:
        self.monitor.alert_manager.fire(
            f"tier:{tier}", "configuration", "warning",
            f"restored sessions use tier {tier!r}, which is no longer "
            f"configured; their users get {self.default_tier!r}",
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
