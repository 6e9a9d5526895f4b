"""A version per session, so a worker knows when another one changed a session it holds.

Every change a worker commits to a session (a turn, a token rotation, its end) increments the
session's version in Valkey/Redis after the store has it. A worker remembers the version it
last read or wrote; a different one means its copy in memory is stale and is read again from
the store before it is used. A session never changed has no key: version 0.
"""

from __future__ import annotations

from engine.cluster.connection import ClusterClient


class SessionVersions:
    def __init__(self, client: ClusterClient) -> None:
        self._client = client

    def key(self, session_id: str) -> str:
        return self._client.key("version", session_id)

    async def get(self, session_id: str) -> int:
        value = await self._client.run(self._client.redis.get(self.key(session_id)))
        return int(value) if value is not None else 0

    async def bump(self, session_id: str) -> int:
        """After a change is committed to the store; returns the new version."""
        return int(await self._client.run(self._client.redis.incr(self.key(session_id))))
