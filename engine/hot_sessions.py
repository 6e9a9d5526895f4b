"""When a session is made hot and when it goes cold again: the engine's memory policy.

`sessions.HotCache` keeps the hot sessions in order with their bytes; this decides. A session is
loaded on its first use (once, however many uses wait for it), idle ones past `hot_idle_s` are
demoted and packed back into rows (engine.cold_records, through `pack`), and the least
recently used go while the cache is over `hot_budget_bytes` (their context only: they were in
use lately); a busy or loading session is never demoted. Apart from `engine.engine` so the
policy reads on its own; the engine supplies how a session is loaded (store, keys, quotas),
what a demotion invalidates and how a session is packed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engine.config import SessionSettings
from engine.errors import AuthenticationError
from engine.sessions import Session, SessionRegistry
from engine.views import CacheView


class HotSessions:
    """The hot-session policy over the registry's `HotCache`; loop-owned, synchronous but `warm`."""

    __slots__ = ("_load", "_on_demote", "_pack", "_registry", "_settings")

    def __init__(
        self,
        registry: SessionRegistry,
        settings: SessionSettings,
        load: Callable[[Session], Awaitable[None]],
        on_demote: Callable[[Session], None],
        pack: Callable[[Session], None],
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._load = load
        self._on_demote = on_demote
        self._pack = pack  # an idle session demoted goes back to a packed row

    async def warm(self, session: Session) -> None:
        """Make the session hot: read, unwrap and decrypt it on its first use, once.

        Concurrent first uses await the same load. A session whose key or messages fail to
        decrypt is reported alone and forgotten (its rows stay on disk, untouched); its caller
        gets AuthenticationError, as for a session that does not exist.
        """
        cache = self._registry.hot
        if session.stale and session.hot and _reloadable(session):
            cache.discard(session)
            session.drop_context()
        if session.hot:
            cache.hits += 1
            cache.add(session)
            return
        if session.loading is None:
            cache.loads += 1
            session.loading = asyncio.ensure_future(self._load(session))
        try:
            await asyncio.shield(session.loading)
        finally:
            if session.loading is not None and session.loading.done():
                session.loading = None
        if not session.hot:
            raise AuthenticationError()
        self.shrink_to_budget(keep=session)

    def demote_idle(self, now: float) -> None:
        """Idle past hot_idle_s leave the cache; then the least recent while over budget."""
        idle_before = now - self._settings.hot_idle_s
        victims = []
        for session in self._registry.hot.oldest_first():
            if session.last_active_at > idle_before:
                break
            if _demotable(session):
                victims.append(session)
        self._demote(victims)
        for session in victims:
            self._pack(session)
        self.shrink_to_budget()

    def shrink_to_budget(self, keep: Session | None = None) -> None:
        """Demote least recently used sessions, never a busy one (nor `keep`, about to be
        used), until within budget."""
        cache = self._registry.hot
        excess = cache.bytes - self._settings.hot_budget_bytes
        if excess <= 0:
            return
        victims = []
        for session in cache.oldest_first():
            if excess <= 0:
                break
            if session is not keep and _demotable(session):
                victims.append(session)
                excess -= session.hot_bytes
        self._demote(victims)

    def view(self, unreadable: int, restoring: int) -> CacheView:
        cache = self._registry.hot
        return CacheView(
            hot=len(cache), cold=len(self._registry) - len(cache), hot_bytes=cache.bytes,
            budget_bytes=self._settings.hot_budget_bytes, hits=cache.hits, loads=cache.loads,
            unreadable=unreadable, restoring=restoring,
        )

    def _demote(self, sessions: list[Session]) -> None:
        for session in sessions:
            self._registry.hot.discard(session)
            session.demote()
            self._on_demote(session)


def _demotable(session: Session) -> bool:
    return not session.busy and session.loading is None


def _reloadable(session: Session) -> bool:
    """No other turn is using the context: none runs, or the one running is the caller."""
    running = session.running_turn
    return session.loading is None and (running is None or running is asyncio.current_task())
