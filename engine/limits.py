"""The interface a turn enforces quotas and request rates through, and its in-process side.

One process keeps them in memory (`LocalQuotas`, `LocalRates` over engine/quotas.py and
engine/ratelimit.py); a cluster keeps them in Valkey/Redis (engine/cluster/), so that every
worker enforces the same limit. The methods are async because the cluster's are network calls;
the local ones return at once. Both raise the same errors with the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import EllipsisType
from typing import Protocol

from engine.clock import Clock
from engine.quotas import QuotaManager, QuotaUsage, Reservation
from engine.ratelimit import RateLimit, RateLimiter


class QuotaBackend(Protocol):
    """Per-user quotas: tiers, overrides, reserve-then-settle, usage (engine/quotas.py's rules)."""

    async def set_tier(self, user_id: str, tier: str) -> None: ...

    async def tier_of(self, user_id: str) -> str: ...

    async def set_override(
        self,
        user_id: str,
        resource: str,
        limit: float,
        window_s: float | EllipsisType | None = ...,
    ) -> None: ...

    async def clear_override(self, user_id: str, resource: str) -> None: ...

    async def window_of(self, user_id: str, resource: str) -> float | None: ...

    async def reserve(self, user_id: str, amounts: Mapping[str, float]) -> Reservation:
        """Hold every amount or none; QuotaExceeded(resource, limit, retry_after) otherwise."""
        ...

    async def settle(self, reservation: Reservation, actual: Mapping[str, float]) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def record(self, user_id: str, resource: str, amount: float) -> None: ...

    async def adjust(self, user_id: str, resource: str, delta: float) -> None: ...

    async def restore(self, user_id: str, resource: str, amount: float, at: float) -> None:
        """Re-count windowed usage recorded at `at` (after a restart or a loss of data)."""
        ...

    async def usage(self, user_id: str) -> tuple[QuotaUsage, ...]: ...


class RateBackend(Protocol):
    """Request rates by GCRA, one configured `RateLimit` per scope ("session", "user")."""

    async def acquire(self, checks: Sequence[tuple[str, str]]) -> None:
        """Count one request for each (scope, key), all or none; RateLimited(scope, retry_after)
        names the first scope that refuses."""
        ...

    async def retry_after(self, scope: str, key: str) -> float:
        """Seconds until `key` may make a request in `scope` (0 if now), without counting one."""
        ...


class LocalQuotas:
    """`QuotaBackend` for one process: the in-memory QuotaManager behind the async interface."""

    def __init__(self, manager: QuotaManager) -> None:
        self.manager = manager

    async def set_tier(self, user_id: str, tier: str) -> None:
        self.manager.set_tier(user_id, tier)

    async def tier_of(self, user_id: str) -> str:
        return self.manager.tier_of(user_id)

    async def set_override(
        self,
        user_id: str,
        resource: str,
        limit: float,
        window_s: float | EllipsisType | None = ...,
    ) -> None:
        self.manager.set_override(user_id, resource, limit, window_s)

    async def clear_override(self, user_id: str, resource: str) -> None:
        self.manager.clear_override(user_id, resource)

    async def window_of(self, user_id: str, resource: str) -> float | None:
        return self.manager.window_of(user_id, resource)

    async def reserve(self, user_id: str, amounts: Mapping[str, float]) -> Reservation:
        return self.manager.reserve(user_id, amounts)

    async def settle(self, reservation: Reservation, actual: Mapping[str, float]) -> None:
        self.manager.settle(reservation, actual)

    async def release(self, reservation: Reservation) -> None:
        self.manager.release(reservation)

    async def record(self, user_id: str, resource: str, amount: float) -> None:
        self.manager.record(user_id, resource, amount)

    async def adjust(self, user_id: str, resource: str, delta: float) -> None:
        self.manager.adjust(user_id, resource, delta)

    async def restore(self, user_id: str, resource: str, amount: float, at: float) -> None:
        self.manager.restore(user_id, resource, amount, at)

    async def usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        return self.manager.usage(user_id)


class LocalRates:
    """`RateBackend` for one process: a RateLimiter per scope."""

    def __init__(self, clock: Clock, limits: Mapping[str, RateLimit]) -> None:
        self.limiters = {
            scope: RateLimiter(clock, limit.rate_per_s, limit.burst, scope)
            for scope, limit in limits.items()
        }

    async def acquire(self, checks: Sequence[tuple[str, str]]) -> None:
        # Peek all before consuming any, so a refusal by one does not spend the others.
        for scope, key in checks:
            limiter = self.limiters[scope]
            if limiter.retry_after(key) > 0:
                limiter.acquire(key)  # raises RateLimited with the exact retry_after
        for scope, key in checks:
            self.limiters[scope].acquire(key)

    async def retry_after(self, scope: str, key: str) -> float:
        return self.limiters[scope].retry_after(key)
