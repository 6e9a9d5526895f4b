"""Which worker of the cluster each session has its affinity to, and moving it on a drain.

Any worker can serve any session (engine/cluster/worker.py); a session's affinity says which
one should: the one a router sends it to, that keeps it warm. A new session goes to the alive
worker with the fewest sessions placed on it (not one draining). A worker that drains hands its
sessions to the others with the fewest moves there can be: only its own sessions move, each
once, every one to the remaining worker with the fewest at that moment, so the others end as
even as they can; no session on another worker moves. Each decision is one Lua script.
After Valkey/Redis lost its data, the rebuild (engine/cluster/rebuild.py) puts every live
session back (`restore`): on the worker that served it last if that one is a candidate (alive,
not draining), else on the candidate with the fewest at that moment.

Keys: `placed` hash session -> worker; `placed:<worker>` set of its sessions (its count is the
set's size); `draining` set of workers that take no new sessions (a draining worker marks itself
again at every heartbeat, so the mark outlasts a server that lost its data: worker.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.cluster.connection import ClusterClient

# Choose the candidate with the fewest sessions, the first of them on a tie.
LEAST_FN = r"""
local function counts(prefix, candidates)
  local n = {}
  for i, w in ipairs(candidates) do n[i] = redis.call('SCARD', prefix .. w) end
  return n
end

local function least(n)
  local best = 1
  for i = 2, #n do if n[i] < n[best] then best = i end end
  return best
end
"""

# KEYS: placed, draining   ARGV: session id, set prefix, candidate workers...
# Returns the session's worker (its current one if that is still a candidate: sticky).
PLACE = LEAST_FN + r"""
local sid, prefix = ARGV[1], ARGV[2]
local candidates = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then candidates[#candidates + 1] = ARGV[i] end
end
local current = redis.call('HGET', KEYS[1], sid)
for _, w in ipairs(candidates) do if w == current then return current end end
if #candidates == 0 then return false end
local chosen = candidates[least(counts(prefix, candidates))]
if current then redis.call('SREM', prefix .. current, sid) end
redis.call('HSET', KEYS[1], sid, chosen)
redis.call('SADD', prefix .. chosen, sid)
return chosen
"""

# KEYS: placed, draining   ARGV: draining worker, set prefix, remaining workers...
# Marks the worker draining and moves each of its sessions to the remaining worker with the
# fewest; returns {session, to, ...}. With no remaining worker nothing moves.
DRAIN = LEAST_FN + r"""
local from, prefix = ARGV[1], ARGV[2]
redis.call('SADD', KEYS[2], from)
local remaining = {}
for i = 3, #ARGV do
  if ARGV[i] ~= from and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    remaining[#remaining + 1] = ARGV[i]
  end
end
if #remaining == 0 then return {} end
local n = counts(prefix, remaining)
local sessions = redis.call('SMEMBERS', prefix .. from)
table.sort(sessions)
local moves = {}
for _, sid in ipairs(sessions) do
  local i = least(n)
  redis.call('SMOVE', prefix .. from, prefix .. remaining[i], sid)
  redis.call('HSET', KEYS[1], sid, remaining[i])
  n[i] = n[i] + 1
  moves[#moves + 1] = sid
  moves[#moves + 1] = remaining[i]
end
return moves
"""

# KEYS: placed, draining
# ARGV: set prefix, n, n candidate workers, then groups: the worker that served them ("" for
# none), k, k session ids. Places each session not placed yet on the worker that served it if
# that is a candidate, else on the candidate with the fewest; returns how many.
RESTORE = LEAST_FN + r"""
local prefix, n = ARGV[1], tonumber(ARGV[2])
local candidates, index = {}, {}
for i = 3, 2 + n do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    candidates[#candidates + 1] = ARGV[i]
    index[ARGV[i]] = #candidates
  end
end
if #candidates == 0 then return 0 end
local counted = counts(prefix, candidates)
local placed = 0
local i = 3 + n
while i <= #ARGV do
  local served, k = index[ARGV[i]], tonumber(ARGV[i + 1])
  for j = i + 2, i + 1 + k do
    local sid = ARGV[j]
    if redis.call('HEXISTS', KEYS[1], sid) == 0 then
      local best = served or least(counted)
      redis.call('HSET', KEYS[1], sid, candidates[best])
      redis.call('SADD', prefix .. candidates[best], sid)
      counted[best] = counted[best] + 1
      placed = placed + 1
    end
  end
  i = i + 2 + k
end
return placed
"""

# KEYS: placed   ARGV: session id, set prefix
UNPLACE = r"""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
redis.call('SREM', ARGV[2] .. current, ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Moved:
    """A session's affinity moved to `to_worker` (its worker drained)."""

    session_id: str
    to_worker: str


class ClusterPlacement:
    """Place sessions on workers, move a draining worker's sessions, forget ended ones."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._placed = client.key("placed")
        self._draining = client.key("draining")
        self._prefix = client.key("placed:")
        self._place = client.script(PLACE)
        self._drain = client.script(DRAIN)
        self._unplace = client.script(UNPLACE)
        self._restore = client.script(RESTORE)

    async def place(self, session_id: str, candidates: Sequence[str]) -> str | None:
        """The session's worker among `candidates` (the alive ones); None if all drain."""
        worker = await self._client.call(
            self._place, [self._placed, self._draining], [session_id, self._prefix, *candidates]
        )
        return worker if isinstance(worker, str) else None

    async def drain(self, worker_id: str, remaining: Sequence[str]) -> tuple[Moved, ...]:
        """Take no new sessions on `worker_id`; move its sessions to `remaining`."""
        reply = await self._client.call(
            self._drain, [self._placed, self._draining], [worker_id, self._prefix, *remaining]
        )
        assert isinstance(reply, list)
        return tuple(Moved(reply[i], reply[i + 1]) for i in range(0, len(reply), 2))

    async def undrain(self, worker_id: str) -> None:
        """A worker (re)joining takes new sessions again."""
        await self._client.run(self._client.redis.srem(self._draining, worker_id))

    async def restore(
        self, sessions: Sequence[tuple[str, str | None]], candidates: Sequence[str]
    ) -> int:
        """Place the sessions not placed yet (the rebuild), given as (session id, the worker
        that served it last or None): each on that worker if it is a candidate not draining,
        else on the candidate with the fewest at that moment; returns how many were placed
        (none if every candidate drains). One script per call: the caller passes a bounded
        share. The sessions go grouped by worker: one argument each, as without a worker."""
        groups: dict[str, list[str]] = {}
        for session_id, served_by in sessions:
            groups.setdefault(served_by or "", []).append(session_id)
        args: list[str | int] = [self._prefix, len(candidates), *candidates]
        for served_by, ids in groups.items():
            args += (served_by, len(ids), *ids)
        placed = await self._client.call(self._restore, [self._placed, self._draining], args)
        return int(placed)

    async def forget(self, session_id: str) -> None:
        await self._client.call(self._unplace, [self._placed], [session_id, self._prefix])

    async def worker_of(self, session_id: str) -> str | None:
        return await self._client.run(self._client.redis.hget(self._placed, session_id))

    async def count(self, worker_id: str) -> int:
        return await self._client.run(self._client.redis.scard(self._prefix + worker_id))
