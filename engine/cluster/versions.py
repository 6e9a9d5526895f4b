"""A version per session, so a worker knows when another one changed a session it holds.

Every change a worker commits to a session (a turn, a token rotation, its end) increments the
session's version in Valkey/Redis after the store has it. A worker remembers the version it
last read or wrote; a different one means its copy in memory is stale and is read again from
the store before it is used.

A missing version is seeded from the server's clock in microseconds (as the lease fence is), on
its first read or increment: a session's version starts when it is created, and after the
server lost its data versions start again above any a worker may still hold, so no stale copy
can match a version that restarted from zero.
"""

from __future__ import annotations

from engine.cluster.connection import ClusterClient

# The session's version, seeded when missing; and its increment.
VERSION_FN = r"""
local function current_version(key)
  local v = redis.call('GET', key)
  if v then return tonumber(v) end
  local t = redis.call('TIME')
  local seed = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', key, string.format('%d', seed))
  return seed
end

local function next_version(key)
  current_version(key)
  return redis.call('INCR', key)
end
"""

# KEYS: the session's version
GET = VERSION_FN + "return current_version(KEYS[1])"
BUMP = VERSION_FN + "return next_version(KEYS[1])"


class SessionVersions:
    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._get = client.script(GET)
        self._bump = client.script(BUMP)

    def key(self, session_id: str) -> str:
        return self._client.key("version", session_id)

    async def get(self, session_id: str) -> int:
        version = await self._client.call(self._get, [self.key(session_id)], [])
        assert isinstance(version, int)
        return version

    async def bump(self, session_id: str) -> int:
        """After a change is committed to the store; returns the new version."""
        version = await self._client.call(self._bump, [self.key(session_id)], [])
        assert isinstance(version, int)
        return version
