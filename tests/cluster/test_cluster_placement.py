"""Sessions' affinity to the cluster's workers: least-loaded placement, and a drain that moves
only the draining worker's sessions. Three engines as workers on real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

from engine import ClusterSettings, Engine
from engine.cluster import ClusterState
from tests.cluster.engines import workers

NAMES = ("w1", "w2", "w3")


async def all_members(engines: list[Engine]) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
        while any(
            {m.worker_id for m in engine.snapshot().cluster.members} != set(NAMES)
            for engine in engines
        ):
            await asyncio.sleep(0.05)


async def test_placement_then_a_drain_moves_only_the_draining_workers_sessions(
    worker_config, redis_url, clock
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    async with workers(*(worker_config(name) for name in NAMES)) as engines:
        one, two, _ = engines
        await all_members(engines)
        created = [await engines[i % 3].create_session(f"user{i}") for i in range(9)]
        placed = {s.session_id: await observer.placement.worker_of(s.session_id) for s in created}
        assert Counter(placed.values()) == {"w1": 3, "w2": 3, "w3": 3}  # least-loaded

        await one.drain(1.0)  # SIGTERM's path: the affinity leaves w1 first
        after = {sid: await observer.placement.worker_of(sid) for sid in placed}
        moved = {sid for sid in placed if after[sid] != placed[sid]}
        assert moved == {sid for sid, worker in placed.items() if worker == "w1"}  # the minimum
        assert Counter(after.values()) in ({"w2": 5, "w3": 4}, {"w2": 4, "w3": 5})
        assert await observer.placement.count("w1") == 0

        newer = [await two.create_session(f"late{i}") for i in range(3)]
        workers_of_newer = {await observer.placement.worker_of(s.session_id) for s in newer}
        assert "w1" not in workers_of_newer  # a draining worker takes no new session

        ended = created[1]
        await two.end_session(ended.session_id, ended.token)
        async with asyncio.timeout(30):
            while await observer.placement.worker_of(ended.session_id) is not None:
                await asyncio.sleep(0.02)  # forgotten in the background
    await observer.aclose()
