"""A turn's cluster checks in three round trips instead of seven.

A turn is admitted when it arrives (the session's and the user's rates, then the quota
reservation: the order and the outcomes of engine/engine.py's path, so a quota refusal leaves
the rates counted as it does locally), starts when it runs (the session's lease and a slot under
the user's in-flight cap, both or neither), and finishes (settle or release the reservation,
leave the slot, release the lease). Each step is one Lua script built from the functions the
single-purpose scripts run, so its answers are theirs; the single-purpose objects stay the way
to renew a lease or a slot while a long turn runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from engine.clock import Clock
from engine.cluster import quota_lua
from engine.cluster.connection import ClusterClient
from engine.cluster.inflight import HAS_ROOM_FN, InFlightCaps, check_cap, new_slot
from engine.cluster.leases import ACQUIRE_FN, RELEASE_FN, Lease, SessionLeases, held_ms
from engine.cluster.quotas import ClusterQuotas
from engine.cluster.rates import GCRA_FN, ClusterRates
from engine.cluster.rebuild import NOT_REBUILT, REBUILT_FN, NotRebuilt
from engine.cluster.versions import VERSION_FN, SessionVersions
from engine.errors import RateLimited
from engine.quotas import Reservation, validated_amounts

# KEYS: a TAT per rate check, then the reserve keys (quota_lua.RESERVE's), the rebuild marker
# ARGV: now, buckets, expiry, reservation retry, number of rate checks, their interval and
# tolerance, then (resource, amount, tier spec)...
# Returns {'rebuild'} while the shared state is not rebuilt after a loss (nothing counted),
# {2, index of the refusing check, wait}, or quota_lua.RESERVE's reply.
ADMIT = quota_lua.COMMON + GCRA_FN + quota_lua.RESERVE_FN + REBUILT_FN + r"""
if not rebuilt(KEYS[#KEYS]) then return {'rebuild'} end
local n = tonumber(ARGV[5])
local rate_keys = {}
for i = 1, n do rate_keys[i] = KEYS[i] end
local refused, wait = gcra(rate_keys, now, ARGV, 6, false)
if refused ~= 0 then return {2, refused, fmt(wait)} end
local k, wanted = reserve_args(n + 1, 6 + 2 * n)
return reserve(k, wanted, ARGV[3], ARGV[4])
"""

# KEYS: lease, fence counter, the user's slots, the session's version
# ARGV: now, worker id, lease ttl ms, slot expiry, cap, slot id, slots gc ms
# Returns {1, token, version}, {0, 'cap'} or {0, 'lease', ms left}.
START = HAS_ROOM_FN + ACQUIRE_FN + VERSION_FN + r"""
if not has_room(KEYS[3], ARGV[1], ARGV[5]) then return {0, 'cap'} end
local got = acquire_lease(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
if got[1] == 0 then return {0, 'lease', got[3]} end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return {1, got[2], current_version(KEYS[4])}
"""

# KEYS: the user's slots, lease, the session's version, then the settle keys (quota_lua.SETTLE's)
# ARGV: now, buckets, reservation id, slot id, lease value, "settle" or "release", then
# (resource, amount, tier spec)... of the actual use. A settled turn was committed: its
# session's version goes up before the lease is free. Returns {1 if the lease was still held,
# the session's version}.
FINISH = quota_lua.COMMON + quota_lua.SETTLE_FN + RELEASE_FN + VERSION_FN + r"""
redis.call('ZREM', KEYS[1], ARGV[4])
local version
if ARGV[6] == 'settle' then version = next_version(KEYS[3])
else version = current_version(KEYS[3]) end
local held = release_lease(KEYS[2], ARGV[5])
local k, used = settle_args(4, 7)
if ARGV[6] == 'settle' then settle(k, ARGV[3], used)
else take(k.resv, k.resa, k.rsum, ARGV[3]) end
return {held, version}
"""


@dataclass(frozen=True, slots=True)
class RunningTurn:
    """A turn holding its session's lease and one of its user's in-flight slots."""

    lease: Lease
    user_id: str
    slot: str
    version: int  # the session's version when the lease was taken


@dataclass(frozen=True, slots=True)
class TurnWaits:
    """Why a turn cannot start yet: the session's lease is held elsewhere (for up to
    `lease_left_s` unless renewed), or the user is at their in-flight cap."""

    reason: Literal["lease", "cap"]
    lease_left_s: float | None = None


class TurnGate:
    """Admit, start and finish turns, one round trip each."""

    def __init__(
        self,
        client: ClusterClient,
        clock: Clock,
        quotas: ClusterQuotas,
        rates: ClusterRates,
        leases: SessionLeases,
        inflight: InFlightCaps,
        versions: SessionVersions,
        rebuilt_key: str,
    ) -> None:
        self._client = client
        self._rebuilt_key = rebuilt_key
        self._versions = versions
        self._clock = clock
        self._quotas = quotas
        self._rates = rates
        self._leases = leases
        self._inflight = inflight
        self._admit = client.script(ADMIT)
        self._start = client.script(START)
        self._finish = client.script(FINISH)

    async def admit(
        self, session_id: str, user_id: str, amounts: Mapping[str, float]
    ) -> Reservation | NotRebuilt:
        """Count the request against the session's and the user's rates (RateLimited), then
        reserve the amounts (QuotaExceeded, the rates staying counted). NotRebuilt, nothing
        counted, while the shared state is lost and not yet rebuilt (engine/cluster/rebuild.py).
        """
        wanted = validated_amounts(amounts)
        checks = [("session", session_id), ("user", user_id)]
        now = self._clock.now()
        quotas = self._quotas
        reply = await self._client.call(
            self._admit,
            [*self._rates.keys(checks), *quotas.reserve_keys(user_id, wanted),
             self._rebuilt_key],
            [repr(now), quotas.buckets, *quotas.reserve_args(now), str(len(checks)),
             *self._rates.params(checks), *quotas.triples(wanted)],
        )
        assert isinstance(reply, list)
        if reply[0] == NOT_REBUILT:
            return NotRebuilt()
        if reply[0] == 2:
            raise RateLimited(checks[reply[1] - 1][0], float(reply[2]))
        return quotas.reserved(user_id, wanted, reply)

    async def start(
        self, session_id: str, user_id: str, worker_id: str, cap: int
    ) -> RunningTurn | TurnWaits:
        """Take the session's lease and a slot under the user's cap, both or neither."""
        check_cap(cap)
        ttl = self._leases.checked_ttl(None)
        slot = new_slot()
        now = self._clock.now()
        reply = await self._client.call(
            self._start,
            [self._leases.key(session_id), self._leases.fence_key, self._inflight.key(user_id),
             self._versions.key(session_id)],
            [repr(now), worker_id, held_ms(ttl), repr(now + self._inflight.slot_ttl_s), cap, slot,
             self._inflight.gc_ms],
        )
        assert isinstance(reply, list)
        if reply[0] == 1:
            lease = Lease(session_id, worker_id, int(reply[1]), ttl)
            return RunningTurn(lease, user_id, slot, int(reply[2]))
        if reply[1] == "lease":
            return TurnWaits("lease", max(0, int(reply[2])) / 1000)
        return TurnWaits("cap")

    async def finish(
        self,
        turn: RunningTurn,
        reservation: Reservation,
        actual: Mapping[str, float] | None,
    ) -> tuple[bool, int]:
        """Settle the reservation with `actual` (None: release it, the turn failed), leave the
        slot and release the lease; a settled turn (committed) raises the session's version.
        Returns whether the lease was still held (False: it had passed to another worker, and
        whatever the turn wrote under its token may have been overtaken), and the version."""
        used = self._quotas.used(actual) if actual is not None else {}
        quotas = self._quotas
        reply = await self._client.call(
            self._finish,
            [self._inflight.key(turn.user_id), self._leases.key(turn.lease.session_id),
             self._versions.key(turn.lease.session_id),
             *quotas.settle_keys(reservation.user_id, used)],
            [repr(self._clock.now()), quotas.buckets, str(reservation.id), turn.slot,
             turn.lease.value, "settle" if actual is not None else "release",
             *quotas.triples(used)],
        )
        assert isinstance(reply, list)
        return reply[0] == 1, int(reply[1])
