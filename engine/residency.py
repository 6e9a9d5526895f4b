"""What happens as a session comes into memory and leaves it.

A session is created, or restored cold at open; on first use its context is loaded from the
store (`load`, which engine.hot_sessions calls once per warm-up); it leaves when it ends,
expires or is evicted (`on_session_event`: everything held for it is forgotten and its rows and
wrapped key are deleted, a crypto-shred), or when its stored rows cannot be decrypted
(`forget_unreadable`: dropped from memory only, the rows kept for whoever can repair them).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.balancer import Balancer
from engine.config import SessionSettings
from engine.errors import DecryptionFailed
from engine.monitor import Monitor
from engine.quotas import BYTES_PER_MB, QuotaManager
from engine.ratelimit import RateLimiter
from engine.restore import warm
from engine.security import KeyRing
from engine.sessions import Session, SessionEvent, SessionRegistry
from engine.store import EndSession, Store
from engine.turns import PersistLater
from engine.views import SessionViews


class SessionResidency:
    def __init__(
        self,
        settings: SessionSettings,
        *,
        registry: SessionRegistry,
        views: SessionViews,
        quotas: QuotaManager,
        session_rate: RateLimiter,
        user_rate: RateLimiter,
        balancer: Balancer,
        monitor: Monitor,
        store: Callable[[], Store],
        keyring: Callable[[], KeyRing],
        persist_later: PersistLater,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._views = views
        self._quotas = quotas
        self._session_rate = session_rate
        self._user_rate = user_rate
        self._balancer = balancer
        self._monitor = monitor
        self._store = store
        self._keyring = keyring
        self._persist_later = persist_later
        self.unreadable = 0  # sessions found undecryptable when loaded
        registry.subscribe(self.on_session_event)

    async def load(self, session: Session) -> None:
        """Read, unwrap and decrypt a cold session into memory."""
        stored = await self._store().load_session(session.session_id)
        if stored is None or self._registry.held(session.session_id) is not session:
            return  # ended while loading
        before = session.cold_bytes
        if session.stale:
            # Refused writes left gaps after the last stored message: number on from that one
            # (every write queued before this read has committed or failed by now).
            session.next_seq = 0
        try:
            warm(
                session, stored, self._keyring(),
                context_max_messages=self._settings.context_max_messages,
                context_max_bytes=self._settings.context_max_bytes,
            )
        except DecryptionFailed as exc:
            self.forget_unreadable(session, str(exc))
            return
        assert session.context is not None
        if session.context.bytes != before:
            self._quotas.adjust(
                session.user_id, "storage_mb", (session.context.bytes - before) / BYTES_PER_MB
            )
        session.stale = False
        self._registry.hot.add(session)
        self._views.invalidate(session)

    def pack(self, session: Session) -> None:
        """A session idle past `hot_idle_s`, its context dropped, goes back to a packed row
        (engine.cold_records) unless it cannot: what is kept per session in memory beside it
        (monitor stats, placement, rate state) goes with the object; its counters,
        deadlines and token stay in the row, and its first use brings it all back."""
        if not self._registry.repack(session):
            return
        self._session_rate.forget(session.session_id)
        self._balancer.release(session.session_id)
        self._monitor.session_ended(session.session_id)
        self._views.invalidate(session)

    def forget_unreadable(self, session: Session, reason: str) -> None:
        """Drop an undecryptable session from memory only, with a critical alert."""
        self.unreadable += 1
        self._registry.discard(session.session_id)
        self._release(session, session.cold_bytes)
        self._monitor.alert_manager.fire(
            f"unreadable:{session.session_id}", "decryption", "critical",
            f"session {session.session_id[:8]} of user {session.user_id!r} cannot be decrypted "
            f"and was not loaded: {reason}",
            session.session_id,
        )

    def on_session_event(self, event: SessionEvent, session: Session) -> None:
        if event.kind == "created":
            self._monitor.session_started(session.session_id, session.user_id)
            return
        # ended, expired or evicted: forget everything held for the session.
        self._release(session, session.context_bytes)
        if not self._registry.count_of(session.user_id):
            self._user_rate.forget(session.user_id)
        # Crypto-shred: without the wrapped key nothing encrypted for this session can be read.
        self._persist_later(EndSession(session.session_id, event.at, event.reason or event.kind))
        session.cipher = None
        session.wrapped_key = None
        session.token = None

    def _release(self, session: Session, storage_bytes: int) -> None:
        """Forget the views, limits, placement, storage use and metrics held for a session."""
        self._views.forget(session.session_id)
        self._session_rate.forget(session.session_id)
        self._balancer.release(session.session_id)
        self._quotas.adjust(session.user_id, "storage_mb", -storage_bytes / BYTES_PER_MB)
        self._monitor.session_ended(session.session_id)
