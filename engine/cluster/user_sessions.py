"""Each user's live sessions across the cluster, so the per-user session cap holds cluster-wide.

One process caps a user's sessions in its own registry; over N workers that would let a user
hold N times the cap. Here a user's sessions are one sorted set of session ids scored by their
creation time, and creating a session claims a place in it in one Lua script: under the cap the
new id is added; at the cap the user's oldest idle sessions (idle: no turn holds the session's
lease on any worker) are taken out and named, for the caller to end everywhere; when none is
idle the claim is refused and nothing changes. Sessions past their absolute lifetime are dropped
first: no worker may be left to end them.

A session leaves the set when it ends, expires or is evicted (`remove`, idempotent). Like every
cluster decision the claim waits for the shared state to be rebuilt after a loss
(engine/cluster/rebuild.py): an emptied set would let a user past the cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.cluster.connection import ClusterClient
from engine.cluster.rebuild import NOT_REBUILT, REBUILT_FN, NotRebuilt
from engine.cluster.versions import VERSION_FN, SessionVersions

# KEYS: the user's sessions, the rebuild marker, the new session's version
# ARGV: now, lifetime, cap, new session id, lease key prefix, gc ms
# Returns {1, the new session's version, evicted id...}, {0} (at the cap, none idle) or
# {'rebuild'} (NOT_REBUILT).
CLAIM = REBUILT_FN + VERSION_FN + r"""
if not rebuilt(KEYS[2]) then return {'rebuild'} end
local ids, now, cap = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', ids, '-inf', now - tonumber(ARGV[2]))
local over = redis.call('ZCARD', ids) - cap + 1
local evicted = {}
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', ids, 0, -1)) do
    if redis.call('EXISTS', ARGV[5] .. id) == 0 then
      evicted[#evicted + 1] = id
      if #evicted == over then break end
    end
  end
  if #evicted < over then return {0} end
  redis.call('ZREM', ids, unpack(evicted))
end
redis.call('ZADD', ids, now, ARGV[4])
redis.call('PEXPIRE', ids, ARGV[6])
return {1, current_version(KEYS[3]), unpack(evicted)}
"""


# ARGV: the sets' key prefix, the oldest creation time still live (exclusive: "(t"), the user
# ids joined by newlines (a user id is printable). Returns the counts joined by commas.
# One argument in and one string out for many users: a pipeline of one ZCOUNT a user cost the
# client ~50 us a user to encode and parse, a key and a reply element each ~15 us.
COUNT = r"""
local counts = {}
for user in string.gmatch(ARGV[3], '[^\n]+') do
  counts[#counts + 1] = redis.call('ZCOUNT', ARGV[1] .. user, ARGV[2], '+inf')
end
return table.concat(counts, ',')
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """The new session holds a place, at `version`; `evicted` must now be ended on every
    worker."""

    version: int
    evicted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """The user is at the cap and every session of theirs has a turn running."""


class UserSessions:
    """Claim a place under a user's cluster-wide session cap; leave it when a session ends."""

    def __init__(
        self,
        client: ClusterClient,
        lease_prefix: str,
        rebuilt_key: str,
        versions: SessionVersions,
    ) -> None:
        self._client = client
        self._versions = versions
        self._lease_prefix = lease_prefix
        self._rebuilt_key = rebuilt_key
        self._claim = client.script(CLAIM)
        self._count = client.script(COUNT)

    async def claim(
        self, user_id: str, session_id: str, now: float, cap: int, lifetime_s: float
    ) -> Claimed | Refused | NotRebuilt:
        reply = await self._client.call(
            self._claim,
            [self.key(user_id), self._rebuilt_key, self._versions.key(session_id)],
            [repr(now), repr(lifetime_s), cap, session_id, self._lease_prefix,
             self._gc_ms(lifetime_s)],
        )
        assert isinstance(reply, list)
        if reply[0] == NOT_REBUILT:
            return NotRebuilt()
        if reply[0] == 0:
            return Refused()
        return Claimed(int(reply[1]), tuple(reply[2:]))

    async def remove(self, user_id: str, session_id: str) -> None:
        await self._client.run(self._client.redis.zrem(self.key(user_id), session_id))

    async def add(
        self, user_id: str, sessions: Iterable[tuple[str, float]], lifetime_s: float
    ) -> None:
        """Put back live sessions (id, created_at) read from the store: the rebuild."""
        key = self.key(user_id)
        async with self._client.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, dict(sessions)).pexpire(key, self._gc_ms(lifetime_s))
            await self._client.run(pipe.execute())

    async def of_user(self, user_id: str) -> tuple[str, ...]:
        """The user's live session ids, oldest first."""
        return tuple(await self._client.run(self._client.redis.zrange(self.key(user_id), 0, -1)))

    async def counts(
        self, user_ids: Sequence[str], now: float, lifetime_s: float
    ) -> list[int]:
        """Each user's live sessions (those past their lifetime left out, as a claim drops
        them), in one script."""
        if not user_ids:
            return []
        reply = await self._client.call(
            self._count, [], [self.key(""), f"({now - lifetime_s!r}", "\n".join(user_ids)]
        )
        assert isinstance(reply, str)
        return [int(n) for n in reply.split(",")]

    def key(self, user_id: str) -> str:
        return self._client.key("user-sessions", user_id)

    @staticmethod
    def _gc_ms(lifetime_s: float) -> int:
        """Kept untouched past any member's lifetime, then dropped by the server."""
        return round(lifetime_s * 1000) + 60_000
