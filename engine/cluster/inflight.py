"""Per-user cap on turns in flight across the cluster, so a user cannot take N workers' shares.

A user's turns in flight are one sorted set of slot ids scored by their expiry on the engine's
clock: entering drops expired slots (a dead worker's turns lapse), then adds one if the user is
under the cap, in one Lua script. Leaving removes the slot; `renew` pushes a long turn's expiry.
"""

from __future__ import annotations

import secrets

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.errors import InvalidInput

# Drop the user's expired slots; true if they have fewer than `cap` left.
HAS_ROOM_FN = r"""
local function has_room(slots, now, cap)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  return redis.call('ZCARD', slots) < tonumber(cap)
end
"""

# KEYS: the user's slots   ARGV: now, expiry, cap, slot id, gc ms   Returns 1 if entered.
ENTER = HAS_ROOM_FN + r"""
if not has_room(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: the user's slots   ARGV: now, new expiry, slot id, gc ms   Returns 1 if it was live.
RENEW = r"""
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not expiry or tonumber(expiry) <= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


def check_cap(cap: int) -> None:
    if cap < 1:
        raise InvalidInput(f"in-flight cap must be >= 1, got {cap!r}")


def new_slot() -> str:
    return secrets.token_hex(8)


class InFlightCaps:
    """Count each user's turns in flight cluster-wide, refusing entry at the cap."""

    def __init__(self, client: ClusterClient, clock: Clock, slot_ttl_s: float = 300.0) -> None:
        self._client = client
        self._clock = clock
        self.slot_ttl_s = slot_ttl_s
        self._enter = client.script(ENTER)
        self._renew = client.script(RENEW)

    async def enter(self, user_id: str, cap: int) -> str | None:
        """A slot id to `leave` with once the turn ends, or None when the user is at `cap`."""
        check_cap(cap)
        slot = new_slot()
        now = self._clock.now()
        entered = await self._client.call(
            self._enter, [self.key(user_id)],
            [repr(now), repr(now + self.slot_ttl_s), cap, slot, self.gc_ms],
        )
        return slot if entered == 1 else None

    async def renew(self, user_id: str, slot: str) -> bool:
        """Push a running turn's expiry out by the slot TTL; False if the slot already lapsed."""
        now = self._clock.now()
        renewed = await self._client.call(
            self._renew, [self.key(user_id)],
            [repr(now), repr(now + self.slot_ttl_s), slot, self.gc_ms],
        )
        return renewed == 1

    async def leave(self, user_id: str, slot: str) -> None:
        await self._client.run(self._client.redis.zrem(self.key(user_id), slot))

    async def count(self, user_id: str) -> int:
        """The user's turns in flight now (expired slots not counted)."""
        return await self._client.run(
            self._client.redis.zcount(self.key(user_id), f"({self._clock.now()!r}", "+inf")
        )

    @property
    def gc_ms(self) -> int:
        """How long the server keeps a user's slots untouched: past any slot's expiry."""
        return round(self.slot_ttl_s * 1000) + 60000

    def key(self, user_id: str) -> str:
        return self._client.key("inflight", user_id)
