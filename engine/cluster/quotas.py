"""Per-user quotas shared by every worker of a cluster: engine/quotas.py's rules, in Valkey/Redis.

Reserve checks used + reserved + amount <= limit and records the reservation in one Lua script,
so the workers together never grant more than the limit (LiteLLM's per-pod checks let through
the limit times the pods). A reservation carries an expiry (`reservation_ttl_s` on the engine's
clock): one left by a worker that died mid-turn lapses instead of holding quota forever. Settle
replaces it by the actual use. Tiers and windows are the local manager's, and so is what a
refusal carries (`QuotaExceeded` with resource, limit and retry_after).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import EllipsisType, MappingProxyType

from engine.clock import Clock
from engine.cluster import quota_lua
from engine.cluster.connection import ClusterClient
from engine.errors import ConfigurationError, InvalidInput, QuotaExceeded
from engine.quotas import (
    DEFAULT_TIERS,
    RESERVATION_RETRY_S,
    RESOURCES,
    QuotaLimit,
    QuotaUsage,
    Reservation,
    check_resource,
    check_tiers,
    percent_taken,
    validated_amounts,
)


class ClusterQuotas:
    """The `QuotaBackend` (engine/limits.py) whose state every worker shares."""

    def __init__(
        self,
        client: ClusterClient,
        clock: Clock,
        tiers: Mapping[str, Mapping[str, QuotaLimit]] = DEFAULT_TIERS,
        default_tier: str = "free",
        buckets_per_window: int = 60,
        reservation_ttl_s: float = 300.0,
    ) -> None:
        check_tiers(tiers, default_tier, buckets_per_window)
        self._client = client
        self._clock = clock
        self._tiers = {name: dict(limits) for name, limits in tiers.items()}
        self._default_tier = default_tier
        self.buckets = str(buckets_per_window)
        self._ids = client.key("quota-ids")
        self._reservation_ttl_s = reservation_ttl_s
        self._specs = _tier_specs(self._tiers, default_tier)
        self._reserve = client.script(quota_lua.RESERVE)
        self._settle = client.script(quota_lua.SETTLE)
        self._release = client.script(quota_lua.RELEASE)
        self._change = client.script(quota_lua.CHANGE)
        self._usage = client.script(quota_lua.USAGE)

    # Tiers and overrides.

    async def set_tier(self, user_id: str, tier: str) -> None:
        if tier not in self._tiers:
            raise InvalidInput(f"unknown tier {tier!r}; use one of {', '.join(self._tiers)}")
        cfg = self._key(user_id, "cfg")
        if tier == self._default_tier:
            await self._client.run(self._client.redis.hdel(cfg, "tier"))
        else:
            await self._client.run(self._client.redis.hset(cfg, "tier", tier))

    async def tier_of(self, user_id: str) -> str:
        tier = await self._client.run(self._client.redis.hget(self._key(user_id, "cfg"), "tier"))
        return tier if tier in self._tiers else self._default_tier

    async def set_override(
        self,
        user_id: str,
        resource: str,
        limit: float,
        window_s: float | EllipsisType | None = ...,
    ) -> None:
        """Replace the tier's limit for one user; `...` keeps the window the tier has right now."""
        check_resource(resource)
        if window_s is ...:
            window_s = self._tiers[await self.tier_of(user_id)][resource].window_s
        try:
            override = QuotaLimit(limit, window_s)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"override for {resource}: {exc}") from None
        encoded = f"{float(override.limit)!r} {float(override.window_s or 0)!r}"
        await self._client.run(
            self._client.redis.hset(self._key(user_id, "cfg"), f"o:{resource}", encoded)
        )

    async def clear_override(self, user_id: str, resource: str) -> None:
        check_resource(resource)
        await self._client.run(
            self._client.redis.hdel(self._key(user_id, "cfg"), f"o:{resource}")
        )

    async def window_of(self, user_id: str, resource: str) -> float | None:
        """The window `resource` is counted over for this user (None: a running total)."""
        check_resource(resource)
        tier, override = await self._client.run(
            self._client.redis.hmget(self._key(user_id, "cfg"), ["tier", f"o:{resource}"])
        )
        if override is not None:
            window = float(override.split()[1])
            return window or None
        return self._tiers[tier if tier in self._tiers else self._default_tier][resource].window_s

    # Reserve, settle, release, record, adjust.

    async def reserve(self, user_id: str, amounts: Mapping[str, float]) -> Reservation:
        """Hold every amount or none: the first resource that would overrun raises QuotaExceeded."""
        wanted = validated_amounts(amounts)
        now = self._clock.now()
        reply = await self._client.call(
            self._reserve,
            self.reserve_keys(user_id, wanted),
            [repr(now), self.buckets, *self.reserve_args(now), *self.triples(wanted)],
        )
        return self.reserved(user_id, wanted, reply)

    async def settle(self, reservation: Reservation, actual: Mapping[str, float]) -> None:
        """Drop the hold and record what was really used (even above the estimate).

        A reservation already settled, released or lapsed is left alone (no double count).
        """
        used = self.used(actual)
        await self._client.call(
            self._settle,
            self.settle_keys(reservation.user_id, used),
            [repr(self._clock.now()), self.buckets, str(reservation.id), *self.triples(used)],
        )

    async def release(self, reservation: Reservation) -> None:
        """Drop the hold without recording anything (the call failed or was refused)."""
        await self._client.call(
            self._release,
            self.settle_keys(reservation.user_id, ())[1:],
            [repr(self._clock.now()), self.buckets, str(reservation.id)],
        )

    async def record(self, user_id: str, resource: str, amount: float) -> None:
        """Consume without a check: the usage already happened."""
        (amount,) = validated_amounts({resource: amount}).values()
        if amount:
            await self._change_usage(user_id, resource, amount, "record")

    async def adjust(self, user_id: str, resource: str, delta: float) -> None:
        """Move a no-window total up or down (storage freed); it never goes below zero."""
        check_resource(resource)
        if not (isinstance(delta, int | float) and math.isfinite(delta)):
            raise InvalidInput(f"delta for {resource} must be a finite number, got {delta!r}")
        reply = await self._change_usage(user_id, resource, float(delta), "adjust")
        if reply[0] == 0:
            raise InvalidInput(
                f"{resource} is measured over a {float(reply[1]):g}s window and expires on its "
                "own; use record() to add to it"
            )

    async def restore(self, user_id: str, resource: str, amount: float, at: float) -> None:
        """Re-count usage recorded at `at` (the cluster's data was lost); windowed resources
        only. Usage already out of its window is not counted. Exactly one worker should do it:
        see engine/cluster/rebuild.py."""
        (amount,) = validated_amounts({resource: amount}).values()
        reply = await self._change_usage(user_id, resource, amount, "restore", at)
        if reply[0] == 0:
            raise InvalidInput(f"{resource} has no window; restore it with adjust()")

    # Reports.

    async def usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        keys, args = self._usage_call(user_id, repr(self._clock.now()))
        return self._standing(await self._client.call(self._usage, keys, args))[1]

    async def standings(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[str, tuple[QuotaUsage, ...]]]:
        """Several users' tiers and usage reports in one round trip (the console's periodic
        read, engine/cluster/standings.py)."""
        if not user_ids:
            return {}
        now = repr(self._clock.now())
        async with self._client.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                await self._client.queue(pipe, self._usage, *self._usage_call(user_id, now))
            replies = await self._client.run(pipe.execute())
        return {
            user_id: self._standing(reply)
            for user_id, reply in zip(user_ids, replies, strict=True)
        }

    def _standing(self, reply: object) -> tuple[str, tuple[QuotaUsage, ...]]:
        """USAGE's reply: the user's tier and one QuotaUsage per resource."""
        assert isinstance(reply, str)
        fields = reply.split(" ")
        tier = fields[4 * len(RESOURCES)] if len(fields) > 4 * len(RESOURCES) else ""
        report = []
        for n, resource in enumerate(RESOURCES):
            limit, used, reserved, reset_in = map(float, fields[4 * n : 4 * n + 4])
            report.append(QuotaUsage(
                resource=resource, used=used, reserved=reserved, limit=limit,
                percent=percent_taken(used + reserved, limit), reset_in_s=reset_in,
            ))
        return tier if tier in self._tiers else self._default_tier, tuple(report)

    def _usage_call(self, user_id: str, now: str) -> tuple[list[str], list[str]]:
        """USAGE's keys and arguments for one user."""
        specs = self._specs
        return self.settle_keys(user_id, RESOURCES), [
            now, self.buckets, *(part for res in RESOURCES for part in (res, specs[res]))
        ]

    # Keys, arguments and replies of the scripts, shared with engine/cluster/turns.py.

    def reserve_keys(self, user_id: str, resources: Iterable[str]) -> list[str]:
        """cfg, resv, resa, rsum, the id counter, then a usage key per resource."""
        return [
            *self._reservation_keys(user_id), self._ids,
            *(self._key(user_id, "use", res) for res in resources),
        ]

    def reserve_args(self, now: float) -> list[str]:
        """After now and buckets: the reservation's expiry and the retry_after reservations
        give (the wanted triples follow)."""
        return [repr(now + self._reservation_ttl_s), repr(RESERVATION_RETRY_S)]

    def reserved(self, user_id: str, wanted: Mapping[str, float], reply: object) -> Reservation:
        """The reservation a reserve reply grants, or the QuotaExceeded it carries."""
        assert isinstance(reply, list)
        if reply[0] == 0:
            _, resource, limit, retry = reply
            raise QuotaExceeded(resource, float(limit), float(retry))
        return Reservation(int(reply[1]), user_id, MappingProxyType(dict(wanted)))

    def settle_keys(self, user_id: str, resources: Iterable[str]) -> list[str]:
        """cfg, resv, resa, rsum, then a usage key per resource."""
        return [
            *self._reservation_keys(user_id),
            *(self._key(user_id, "use", res) for res in resources),
        ]

    @staticmethod
    def used(actual: Mapping[str, float]) -> dict[str, float]:
        """The actual use worth recording: validated, zeros left out."""
        return {res: amount for res, amount in validated_amounts(actual).items() if amount}

    def triples(self, amounts: Mapping[str, float]) -> list[str]:
        """(resource, amount, tier spec) per resource, as the scripts read them."""
        specs = self._specs
        return [part for res, x in amounts.items() for part in (res, repr(x), specs[res])]

    def _key(self, user_id: str, *parts: str) -> str:
        # One hash tag per user: a user's keys share a slot on a sharded Redis.
        return self._client.key("q", f"{{{user_id}}}", *parts)

    def _reservation_keys(self, user_id: str) -> list[str]:
        return [self._key(user_id, part) for part in ("cfg", "resv", "resa", "rsum")]

    async def _change_usage(
        self, user_id: str, resource: str, amount: float, mode: str, at: float = 0.0
    ) -> list[object]:
        reply = await self._client.call(
            self._change,
            [self._key(user_id, "cfg"), self._key(user_id, "use", resource)],
            [repr(self._clock.now()), self.buckets, resource, repr(amount),
             self._specs[resource], mode, repr(at)],
        )
        assert isinstance(reply, list)
        return reply


def _tier_specs(
    tiers: Mapping[str, Mapping[str, QuotaLimit]], default_tier: str
) -> dict[str, str]:
    """Per resource, every tier's "<tier> <limit> <window, 0: none>", the default tier first."""
    for name in tiers:
        if not name or any(c.isspace() for c in name):
            raise ConfigurationError(f"tier names cannot be empty or hold spaces, got {name!r}")
    order = [default_tier, *(name for name in tiers if name != default_tier)]
    return {
        res: " ".join(
            f"{name} {float(tiers[name][res].limit)!r} {float(tiers[name][res].window_s or 0)!r}"
            for name in order
        )
        for res in RESOURCES
    }
