"""The cluster's workers: each heartbeats its load; the alive ones are those heard from lately.

A worker's figures are one hash; a sorted set scores every worker by its last heartbeat on the
engine's clock. Listing drops the workers not heard from for `dead_after_s` (their hashes also
expire on the server), so a killed worker leaves the list by itself. A draining worker says so
in its figures at every heartbeat: the others then know it takes no sessions even when
Valkey/Redis lost the placement's own mark (engine/cluster/placement.py) and nobody put it back
yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.errors import ClusterUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """What a worker reports of itself with each heartbeat."""

    sessions: int = 0
    turns_per_s: float = 0.0
    p99_s: float = 0.0
    pool_occupancy: float = 0.0  # agents in use / agents there may be, 0..1
    address: str = ""  # where its gateway listens, if it has one
    draining: bool = False  # takes no new sessions (engine/cluster/worker.py `drain`)


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    load: WorkerLoad
    heartbeat_age_s: float


class WorkerRegistry:
    """Register and heartbeat this worker; list the alive ones with their load."""

    def __init__(
        self,
        client: ClusterClient,
        clock: Clock,
        dead_after_s: float = 5.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self.dead_after_s = dead_after_s
        self.heartbeat_s = heartbeat_s
        self._index = client.key("workers")

    async def heartbeat(self, worker_id: str, load: WorkerLoad) -> None:
        """Register (first time) or refresh the worker with its current load."""
        key = self._key(worker_id)
        fields = {
            "sessions": load.sessions,
            "turns_per_s": repr(load.turns_per_s),
            "p99_s": repr(load.p99_s),
            "pool_occupancy": repr(load.pool_occupancy),
            "address": load.address,
            "draining": int(load.draining),
        }
        gc_ms = max(60_000, round(self.dead_after_s * 3000))
        async with self._client.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields).pexpire(key, gc_ms)
            pipe.zadd(self._index, {worker_id: self._clock.now()})
            await self._client.run(pipe.execute())

    async def deregister(self, worker_id: str) -> None:
        """A worker leaving cleanly (drained) leaves the list at once."""
        async with self._client.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._index, worker_id).delete(self._key(worker_id))
            await self._client.run(pipe.execute())

    async def alive(self) -> tuple[WorkerView, ...]:
        """Workers heard from within `dead_after_s`, oldest heartbeat first; drops the others."""
        now = self._clock.now()
        deadline = now - self.dead_after_s
        redis = self._client.redis
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._index, "-inf", f"({deadline!r}")
            pipe.zrange(self._index, 0, -1, withscores=True)
            _, beats = await self._client.run(pipe.execute())
        if not beats:
            return ()
        async with redis.pipeline(transaction=False) as pipe:
            for worker_id, _ in beats:
                pipe.hgetall(self._key(worker_id))
            figures = await self._client.run(pipe.execute())
        return tuple(
            WorkerView(worker_id, _load(fields), max(0.0, now - beat))
            for (worker_id, beat), fields in zip(beats, figures, strict=True)
            if fields
        )

    async def beat_forever(self, worker_id: str, load: Callable[[], WorkerLoad]) -> None:
        """Heartbeat every `heartbeat_s` until cancelled; an outage is logged, never fatal."""
        while True:
            try:
                await self.heartbeat(worker_id, load())
            except ClusterUnavailable as exc:
                log.warning("heartbeat of worker %s failed: %s", worker_id, exc)
            await self._clock.sleep(self.heartbeat_s)

    def _key(self, worker_id: str) -> str:
        return self._client.key("worker", worker_id)


def _load(fields: dict[str, str]) -> WorkerLoad:
    return WorkerLoad(
        sessions=int(fields.get("sessions", 0)),
        turns_per_s=float(fields.get("turns_per_s", 0.0)),
        p99_s=float(fields.get("p99_s", 0.0)),
        pool_occupancy=float(fields.get("pool_occupancy", 0.0)),
        address=fields.get("address", ""),
        draining=fields.get("draining") == "1",
    )
