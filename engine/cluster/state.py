"""The shared hot state of a cluster of engine processes, opened as one object.

`await ClusterState.open(config.cluster, clock, config.limits)` connects to Valkey/Redis (and
fails at once with ClusterUnavailable if it is down) and gives the parts a worker uses on a
turn: `quotas` and `rates` (the QuotaBackend and RateBackend of engine/limits.py), `leases`,
`inflight`, the worker `registry`, `turns`, which admits, starts and finishes a turn in one
round trip each, `sessions` (each user's sessions under the cluster-wide cap), `rebuild`
(putting the state back after the server lost it) and `placement` (each session's worker).
`aclose()` closes the connection pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.cluster.inflight import InFlightCaps
from engine.cluster.leases import SessionLeases
from engine.cluster.placement import ClusterPlacement
from engine.cluster.quotas import ClusterQuotas
from engine.cluster.rates import ClusterRates
from engine.cluster.rebuild import StateRebuild
from engine.cluster.registry import WorkerRegistry
from engine.cluster.turns import TurnGate
from engine.cluster.user_sessions import UserSessions
from engine.cluster.versions import SessionVersions
from engine.config import ClusterSettings, LimitSettings
from engine.errors import ConfigurationError


@dataclass(slots=True)
class ClusterState:
    client: ClusterClient
    quotas: ClusterQuotas
    rates: ClusterRates
    leases: SessionLeases
    inflight: InFlightCaps
    registry: WorkerRegistry
    turns: TurnGate
    versions: SessionVersions
    sessions: UserSessions
    rebuild: StateRebuild
    placement: ClusterPlacement

    @classmethod
    async def open(
        cls, settings: ClusterSettings, clock: Clock, limits: LimitSettings | None = None
    ) -> ClusterState:
        if not settings.redis_url:
            raise ConfigurationError(
                "cluster mode needs a Valkey/Redis URL: set SESSION_CONSOLE_REDIS_URL or "
                "ClusterSettings(redis_url=...)"
            )
        limits = limits or LimitSettings()
        client = ClusterClient(
            settings.redis_url, settings.key_prefix, settings.timeout_s, settings.max_connections
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        quotas = ClusterQuotas(
            client, clock, limits.tiers, limits.default_tier,
            reservation_ttl_s=settings.reservation_ttl_s,
        )
        rates = ClusterRates(
            client, clock, {"session": limits.session_rate, "user": limits.user_rate}
        )
        leases = SessionLeases(client, settings.lease_ttl_s)
        inflight = InFlightCaps(client, clock, settings.reservation_ttl_s)
        versions = SessionVersions(client)
        marker = client.key("rebuilt")
        sessions = UserSessions(client, leases.key(""), marker, versions)
        placement = ClusterPlacement(client)
        rebuild = StateRebuild(client, marker, quotas, sessions, placement)
        return cls(
            client=client,
            quotas=quotas,
            rates=rates,
            leases=leases,
            inflight=inflight,
            registry=WorkerRegistry(
                client, clock, settings.worker_dead_after_s, settings.heartbeat_s
            ),
            turns=TurnGate(
                client, clock, quotas, rates, leases, inflight, versions, rebuild.key
            ),
            versions=versions,
            sessions=sessions,
            rebuild=rebuild,
            placement=placement,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
