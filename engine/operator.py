"""The operator's surface: what a trusted, in-process operator (the console) may do.

Callers with a session token use the `Engine`'s own methods; the operator acts on any session,
user or alert by id and takes no token, so it is handed only to code the deployment trusts.
Reads return the same frozen views the snapshot carries; nothing here shows a token or a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from engine.alerts import Severity
from engine.errors import AuthenticationError, InvalidInput
from engine.monitor import Monitor
from engine.quota_watch import QuotaWatch
from engine.quotas import QuotaUsage
from engine.sessions import Session, SessionRegistry
from engine.views import SessionDetail, SessionViews

if TYPE_CHECKING:
    from engine.cluster.worker import ClusterWorker


class Operator:
    """End sessions, rotate their tokens, acknowledge alerts, set tiers, inspect and report."""

    __slots__ = (
        "_end", "_monitor", "_quotas", "_registry", "_rotate", "_set_tier", "_views", "_warm",
        "cluster",
    )

    def __init__(
        self,
        *,
        registry: SessionRegistry,
        views: SessionViews,
        monitor: Monitor,
        quotas: QuotaWatch,
        end: Callable[[Session, str], Awaitable[None]],
        rotate: Callable[[Session], Awaitable[str]],
        warm: Callable[[Session], Awaitable[None]],
        set_tier: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._registry = registry
        self._views = views
        self._monitor = monitor
        self._quotas = quotas
        self._end = end
        self._rotate = rotate
        self._warm = warm
        self._set_tier = set_tier
        self.cluster: ClusterWorker | None = None  # set when the engine joins a cluster

    # -- sessions --------------------------------------------------------------------------------
    def inspect(self, session_id: str) -> SessionDetail | None:
        """A session's full detail, decrypted context included; None if it is not live.

        A cold session's detail has no messages yet (`loaded` False): `load` brings them in.
        """
        session = self._registry.get(session_id)
        if session is None:
            return None
        view = self._views.view(session)
        context = session.context
        return SessionDetail(
            view=view,
            metadata=session.metadata,
            messages=context.messages() if context is not None else (),
            dropped_messages=context.dropped if context is not None else 0,
            loaded=context is not None,
            metrics=self._monitor.session_view(session_id),
            quota=self._quotas.usage(session.user_id),
            alerts=tuple(
                a for a in self._monitor.alerts() if a.subject in (session_id, session.user_id)
            ),
        )

    async def load(self, session_id: str) -> bool:
        """Make a cold session hot (for the detail view); False if it is not live or could not
        be decrypted (then reported alone, with a critical alert)."""
        session = self._registry.get(session_id)
        if session is None:
            return False
        try:
            await self._warm(session)
        except AuthenticationError:
            return False
        return True

    def session_exists(self, session_id: str) -> bool:
        return self._registry.get(session_id) is not None

    async def locate(self, session_id: str) -> bool:
        """Whether the session is live. In a cluster, one this worker has not seen (created
        and served by another) is read from the shared store first, so the console can open
        any session of the cluster. ClusterUnavailable or StoreError when it cannot look."""
        if self._registry.get(session_id) is None and self.cluster is not None:
            await self.cluster.sync(session_id)
        return self._registry.get(session_id) is not None

    async def end_session(self, session_id: str) -> bool:
        """End the session and shred its data; False if it had already ended."""
        session = self._registry.get(session_id)
        if session is None:
            return False
        await self._end(session, "ended by operator")
        return True

    async def rotate_token(self, session_id: str) -> bool:
        """Invalidate the token; the new one is never shown, so the user must start over."""
        session = self._registry.get(session_id)
        if session is None or session.token is None:
            return False
        await self._rotate(session)
        return True

    # -- alerts ----------------------------------------------------------------------------------
    def acknowledge(self, alert_id: int) -> bool:
        """False when no such alert is held or it was already acknowledged."""
        return self._monitor.acknowledge(alert_id)

    def acknowledge_all(self, severity: Severity | None = None) -> int:
        """Acknowledge every open alert, or those of one severity; returns how many."""
        return self._monitor.acknowledge_all(severity)

    @property
    def worker_id(self) -> str | None:
        """This worker's name in its cluster (the owner of the monitor's alerts); None alone."""
        return self.cluster.worker_id if self.cluster is not None else None

    async def acknowledge_on(self, worker_id: str, alert_ids: Sequence[int]) -> None:
        """Ask another worker of the cluster to acknowledge its alerts: the request goes
        through Valkey/Redis and that worker acknowledges them before it next publishes its
        alerts (within a heartbeat); a worker that died takes its alerts with it.
        ClusterUnavailable when the request cannot be left."""
        if self.cluster is None:
            raise InvalidInput("not a worker of a cluster: alerts are acknowledged here")
        await self.cluster.acknowledge_elsewhere(worker_id, alert_ids)

    # -- users and quotas ------------------------------------------------------------------------
    async def set_tier(self, user_id: str, tier: str) -> None:
        """InvalidInput for a tier that is not configured. The user's stored sessions keep it
        (a restart restores it) and in a cluster every worker enforces it from the next turn."""
        await self._set_tier(user_id, tier)

    def quota_usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        """In a cluster, as the cluster counted it at its last read (() before the first)."""
        return self._quotas.usage(user_id)

    def live_sessions(self, user_id: str) -> int | None:
        """In a cluster, the user's live sessions on every worker as last read (None before a
        read: asking puts the user on the next one); None for a process alone, whose
        snapshot lists them all."""
        if self.cluster is None:
            return None
        return self.cluster.session_counts.count(user_id)

    def quota_percents(self, user_id: str) -> tuple[tuple[str, float], ...]:
        """(resource, percent taken) per quota: `quota_usage` without the reset times, and much
        cheaper, for ordering many users by how full their quotas are."""
        return self._quotas.percents(user_id)
