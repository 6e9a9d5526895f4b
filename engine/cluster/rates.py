"""Request rates shared by a cluster: engine/ratelimit.py's GCRA, one Lua script per decision.

Each key's state is its theoretical arrival time (TAT) as a string; the script checks every
(scope, key) of a request and counts it in all or none, so a refusal by the user's limit does
not spend the session's. `now` is the engine's clock, so limits and retry_after are the local
limiter's exactly. A key's TAT only matters until it passes: the key then expires (late, with a
grace, never early) and behaves as a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.errors import InvalidInput, RateLimited
from engine.ratelimit import RateLimit

# Check one request against every key's TAT; count it in all (unless peeking) or none.
# `params` holds interval, tolerance per key from index `first`. Returns 0, or the index of the
# first refusing key and its wait.
GCRA_FN = r"""
local function gcra(keys, now, params, first, peek)
  local tats = {}
  for i, key in ipairs(keys) do
    local interval = tonumber(params[first + 2 * i - 2])
    local tolerance = tonumber(params[first + 2 * i - 1])
    local tat = math.max(tonumber(redis.call('GET', key) or now), now) + interval
    local wait = (tat - tolerance) - now
    if wait > 0 then return i, wait end
    tats[i] = tat
  end
  if not peek then
    for i, key in ipairs(keys) do
      local ahead = math.ceil((tats[i] - now) * 1000)
      redis.call('SET', key, string.format('%.17g', tats[i]), 'PX', ahead + 60000)
    end
  end
  return 0
end
"""

# KEYS: one TAT per check   ARGV: now, peek (1: count nothing), then interval, tolerance per key
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
        # interval and tolerance as engine/ratelimit.py computes them.
        self._params = {
            scope: (1.0 / limit.rate_per_s, limit.burst * (1.0 / limit.rate_per_s))
            for scope, limit in limits.items()
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
        """Interval and tolerance per check, as engine/ratelimit.py computes them."""
        params = []
        for scope, _ in checks:
            if scope not in self._params:
                known = ", ".join(sorted(self._params))
                raise InvalidInput(f"unknown rate scope {scope!r}; use one of {known}")
            interval, tolerance = self._params[scope]
            params += [repr(interval), repr(tolerance)]
        return params
