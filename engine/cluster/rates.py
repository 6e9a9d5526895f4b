"""Request rates shared by a cluster: engine/ratelimit.py's GCRA, one Lua script per decision.

Each key's state is engine/ratelimit.py's pair, when it last counted a request and how many
intervals it then owed, as one string; the script checks every (scope, key) of a request and
counts it in all or none, so a refusal by the user's limit does not spend the session's. `now` is
the engine's clock and the script does the local limiter's arithmetic operation for operation, so
limits and retry_after are the local limiter's exactly. A key's state only matters until its TAT
passes: the key then expires (late, with a grace, never early) and behaves as a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.errors import InvalidInput, RateLimited
from engine.ratelimit import RateLimit

# Check one request against every key's state; count it in all (unless peeking) or none.
# `params` holds interval and burst per key from index `first`. Returns 0, or the index of the
# first refusing key and its wait. The arithmetic is engine/ratelimit.py's _after_one_more.
GCRA_FN = r"""
local function gcra(keys, now, params, first, peek)
  local counted = {}
  for i, key in ipairs(keys) do
    local interval = tonumber(params[first + 2 * i - 2])
    local burst = tonumber(params[first + 2 * i - 1])
    local owed = 1
    local state = redis.call('GET', key)
    if state then
      local at, was = string.match(state, '^(%S+) (%S+)$')
      at, was = tonumber(at), tonumber(was)
      local owed_now = was - (now - at) / interval
      if not (owed_now > burst and now < at) then
        local wait = (at + (was + 1 - burst) * interval) - now
        if wait > 0 then return i, wait end
        owed = math.max(owed_now, 0) + 1
      end
    end
    counted[i] = owed
  end
  if not peek then
    for i, key in ipairs(keys) do
      local ahead = math.ceil(counted[i] * tonumber(params[first + 2 * i - 2]) * 1000)
      redis.call('SET', key, string.format('%.17g %.17g', now, counted[i]), 'PX', ahead + 60000)
    end
  end
  return 0
end
"""

# KEYS: one state per check   ARGV: now, peek (1: count nothing), then interval, burst per key
# Returns {0} when allowed, else {index of the first refusing check, wait}.
GCRA = GCRA_FN + r"""
local refused, wait = gcra(KEYS, tonumber(ARGV[1]), ARGV, 3, ARGV[2] == '1')
if refused == 0 then return {0} end
return {refused, string.format('%.17g', wait)}
"""


class ClusterRates:
    """The `RateBackend` (engine/limits.py) whose state every worker shares."""

    def __init__(
        self, client: ClusterClient, clock: Clock, limits: Mapping[str, RateLimit]
    ) -> None:
        self._client = client
        self._clock = clock
        # interval and burst as engine/ratelimit.py holds them.
        self._params = {
            scope: (1.0 / limit.rate_per_s, limit.burst) for scope, limit in limits.items()
        }
        self._gcra = client.script(GCRA)

    async def acquire(self, checks: Sequence[tuple[str, str]]) -> None:
        await self._run(checks, peek=False)

    async def retry_after(self, scope: str, key: str) -> float:
        try:
            await self._run([(scope, key)], peek=True)
        except RateLimited as refused:
            return refused.retry_after
        return 0.0

    async def _run(self, checks: Sequence[tuple[str, str]], peek: bool) -> None:
        reply = await self._client.call(
            self._gcra,
            self.keys(checks),
            [repr(self._clock.now()), "1" if peek else "0", *self.params(checks)],
        )
        assert isinstance(reply, list)
        if reply[0]:
            raise RateLimited(checks[reply[0] - 1][0], float(reply[1]))

    # Keys and arguments of the script, shared with engine/cluster/turns.py.

    def keys(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        return [self._client.key("rate", scope, key) for scope, key in checks]

    def params(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        """Interval and tolerance (in intervals: the burst) per check, as engine/ratelimit.py
        holds them."""
        params = []
        for scope, _ in checks:
            if scope not in self._params:
                known = ", ".join(sorted(self._params))
                raise InvalidInput(f"unknown rate scope {scope!r}; use one of {known}")
            interval, burst = self._params[scope]
            params += [repr(interval), str(burst)]
        return params
