"""One lease per session, so one turn runs at a time on it across the whole cluster.

A lease is a key holding "<worker>|<token>" with a TTL in the server's time (`SET NX PX`): a
holder renews it while its turn runs, and if the holder dies the key expires and another worker
may take the session. Only the holder can renew or release it (compare-and-delete in Lua), so a
worker that lost its lease (paused past the TTL) cannot free a lease someone else now holds.

The token is a fencing token: every acquisition gets a larger one than any before it, cluster
wide, so a store can refuse the writes of a holder whose lease has since passed to another. The
counter starts at the server's clock in microseconds when it is missing, so it keeps growing
across a restart of a server that does not persist.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.cluster.connection import ClusterClient
from engine.errors import InvalidInput

# Take a free lease for `worker` with a new fencing token. Returns {1, token}, or {0, the
# holder's value, ms left} while it is held.
ACQUIRE_FN = r"""
local function acquire_lease(lease, fence, worker, ttl_ms)
  local held = redis.call('GET', lease)
  if held then return {0, held, redis.call('PTTL', lease)} end
  if redis.call('EXISTS', fence) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', fence, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  end
  local token = redis.call('INCR', fence)
  redis.call('SET', lease, string.format('%s|%d', worker, token), 'PX', ttl_ms)
  return {1, token}
end
"""

# KEYS: lease, fence counter   ARGV: worker id, ttl ms
ACQUIRE = ACQUIRE_FN + "return acquire_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# KEYS: lease   ARGV: the holder's value, ttl ms   Returns 1 if still held and extended.
RENEW = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Free the lease if `value` still holds it. Returns 1 if it did.
RELEASE_FN = r"""
local function release_lease(lease, value)
  if redis.call('GET', lease) ~= value then return 0 end
  redis.call('DEL', lease)
  return 1
end
"""

# KEYS: lease   ARGV: the holder's value
RELEASE = RELEASE_FN + "return release_lease(KEYS[1], ARGV[1])"


@dataclass(frozen=True, slots=True)
class Lease:
    """A session held by a worker; `token` orders it after every earlier holder's."""

    session_id: str
    worker_id: str
    token: int
    ttl_s: float

    @property
    def value(self) -> str:
        return f"{self.worker_id}|{self.token}"


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a session now, and how long until the lease lapses unless renewed."""

    worker_id: str
    token: int
    expires_in_s: float


class SessionLeases:
    """Acquire, renew and release session leases; the TTL defaults to the cluster's setting."""

    def __init__(self, client: ClusterClient, ttl_s: float = 5.0) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.fence_key = client.key("lease-fence")
        self._acquire = client.script(ACQUIRE)
        self._renew = client.script(RENEW)
        self._release = client.script(RELEASE)

    async def acquire(
        self, session_id: str, worker_id: str, ttl_s: float | None = None
    ) -> Lease | None:
        """The lease with a new, larger token, or None while another holder has it (the same
        worker included: a second turn of one worker waits like any other)."""
        ttl = self.checked_ttl(ttl_s)
        reply = await self._client.call(
            self._acquire, [self.key(session_id), self.fence_key], [worker_id, held_ms(ttl)]
        )
        assert isinstance(reply, list)
        if reply[0] != 1:
            return None
        return Lease(session_id, worker_id, int(reply[1]), ttl)

    async def renew(self, lease: Lease, ttl_s: float | None = None) -> bool:
        """Extend a lease still held; False if it lapsed (another worker may hold it now)."""
        reply = await self._client.call(
            self._renew, [self.key(lease.session_id)],
            [lease.value, held_ms(self.checked_ttl(ttl_s if ttl_s is not None else lease.ttl_s))],
        )
        return reply == 1

    async def release(self, lease: Lease) -> bool:
        """Free the session if this lease still holds it; False (and nothing freed) if not."""
        reply = await self._client.call(self._release, [self.key(lease.session_id)], [lease.value])
        return reply == 1

    async def holder(self, session_id: str) -> LeaseHolder | None:
        key = self.key(session_id)
        async with self._client.redis.pipeline(transaction=True) as pipe:
            value, left_ms = await self._client.run(pipe.get(key).pttl(key).execute())
        if value is None:
            return None
        worker_id, _, token = value.rpartition("|")
        return LeaseHolder(worker_id, int(token), max(0, left_ms) / 1000)

    def key(self, session_id: str) -> str:
        return self._client.key("lease", session_id)

    def checked_ttl(self, ttl_s: float | None) -> float:
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if not ttl > 0.001:
            raise InvalidInput(f"lease ttl must be > 1 ms, got {ttl!r}")
        return ttl


# What a survivor needs once a dead holder's lease lapses to serve the session: its wait wakes
# at the lapse, then one turn. The server keeps a lease that much less than its TTL, so a dead
# worker's sessions are served elsewhere within `lease_ttl_s`, as the setting promises.
TAKEOVER_S = 0.25


def held_ms(ttl_s: float) -> int:
    """How long the server keeps a lease of `ttl_s` unless renewed: the TTL less the takeover
    allowance (at most a quarter of it, for short test TTLs)."""
    return ms(ttl_s - min(TAKEOVER_S, ttl_s / 4))


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
