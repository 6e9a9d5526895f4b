"""A worker's drain outlasts Valkey losing its data: the worker remembers it drains and says so
at every heartbeat, so neither the rebuild nor a new session puts a session on it. Two engines
as workers of one cluster on real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

from engine import ClusterSettings, Engine
from engine.cluster import ClusterState
from tests.cluster.engines import workers
from tests.cluster.test_cluster_rebuild import REBUILT, both_listed
from tests.cluster.test_cluster_views import fast, until

PLACED_SINCE = "placed on it since moved"  # what w1 logs when it must move sessions away


def sees_draining(engine: Engine, worker_id: str) -> bool:
    return any(
        m.worker_id == worker_id and m.load.draining for m in engine.snapshot().cluster.members
    )


async def marked_draining(observer: ClusterState, worker_id: str) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
        while not await observer.client.redis.sismember(
            observer.client.key("draining"), worker_id
        ):
            await asyncio.sleep(0.02)


async def test_a_drain_outlasts_valkey_losing_its_data_and_the_rebuild(
    worker_config, valkey, redis_url, clock, caplog
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    # w1 beats every second, w2 every 50 ms: w2 rebuilds long before w1 can mark itself again,
    # from what w1's heartbeat said before the loss.
    configs = [worker_config("w1"), fast(worker_config("w2"))]
    async with workers(*configs) as (one, two):
        await both_listed(one, two)
        created = [await (one, two)[i % 2].create_session(f"user{i % 3}") for i in range(6)]
        assert {await observer.placement.worker_of(s.session_id) for s in created} == {"w1", "w2"}
        await one.drain(1.0)
        assert {await observer.placement.worker_of(s.session_id) for s in created} == {"w2"}
        await until(lambda: sees_draining(two, "w1"), "w2 seeing w1 drain")
        await one.store.flush()
        await two.store.flush()
        with valkey.client() as admin:
            admin.flushall()  # Valkey restarted without persistence: the mark is gone too
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.cluster.worker"):
            await two.send(created[0].session_id, created[0].token, "the first decision")
            assert REBUILT in caplog.text and "6 sessions (6 placed)" in caplog.text
            placed = {await observer.placement.worker_of(s.session_id) for s in created}
            assert placed == {"w2"}
            newer = [await two.create_session(f"late{i}") for i in range(4)]
            assert {await observer.placement.worker_of(s.session_id) for s in newer} == {"w2"}
            await marked_draining(observer, "w1")  # w1's heartbeat put its mark back
            assert await observer.placement.count("w1") == 0
        assert PLACED_SINCE not in caplog.text  # not even for a heartbeat's while
    await observer.aclose()


async def test_a_draining_worker_moves_away_a_session_placed_on_it_since(
    worker_config, redis_url, clock
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    redis, key = observer.client.redis, observer.client.key
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        await both_listed(one, two)
        await one.drain(1.0)
        # As a worker that never learnt of the drain would: the mark lost, then a placement.
        await redis.srem(key("draining"), "w1")
        await redis.hset(key("placed"), "unaware", "w1")
        await redis.sadd(key("placed:") + "w1", "unaware")
        async with asyncio.timeout(30):  # w1's next heartbeats drain it again
            while await observer.placement.worker_of("unaware") != "w2":
                await asyncio.sleep(0.02)
        assert await redis.sismember(key("draining"), "w1")
        assert await observer.placement.count("w1") == 0
    await observer.aclose()
