"""The operator's tier change holds on every worker and outlasts Valkey; quota windows, the
session cap and the sessions' affinity to workers are rebuilt from PostgreSQL, once, when Valkey
comes back empty. Two engines as workers of one cluster on real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from engine import ClusterSettings, Engine
from engine.cluster import ClusterState
from engine.errors import AuthenticationError, QuotaExceeded
from engine.quotas import QuotaLimit
from tests.cluster.engines import workers
from tests.cluster.test_cluster_views import fast, until

REBUILT = "rebuilt the cluster's shared state from the store"


def tier(api_calls: int) -> dict[str, QuotaLimit]:
    return {
        "api_calls": QuotaLimit(api_calls, 3600.0), "tokens": QuotaLimit(1e9, 3600.0),
        "storage_mb": QuotaLimit(1e6, None), "compute_seconds": QuotaLimit(1e6, 3600.0),
    }


LIMITS = {"tiers": {"tiny": tier(4), "roomy": tier(1000)}, "default_tier": "roomy"}


async def calls_granted(engine: Engine, session_id: str, token: str, asked: int) -> int:
    granted = 0
    for n in range(asked):
        try:
            await engine.send(session_id, token, f"call {n}")
            granted += 1
        except QuotaExceeded:
            pass
    return granted


async def test_an_operator_tier_change_holds_on_every_worker_and_outlasts_valkey(
    worker_config, valkey
):
    configs = [worker_config(name, limits=LIMITS) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await one.create_session("kim")  # the default tier: roomy
        sid, token = created.session_id, created.token
        assert await calls_granted(two, sid, token, 6) == 6
        await one.operator.set_tier("kim", "tiny")  # on w1; the usage so far counts
        with pytest.raises(QuotaExceeded):
            await two.send(sid, token, "over tiny's 4 calls, on w2 at once")
        assert two.snapshot().sessions_by_id[sid].tier == "tiny"  # w2's copy follows
        await one.operator.set_tier("kim", "roomy")
        assert await calls_granted(two, sid, token, 2) == 2
        await one.operator.set_tier("kim", "tiny")
    with valkey.client() as admin:
        admin.flushall()  # a restart without persistence: Valkey forgot the tier
    async with workers(*configs) as (one, two):
        with pytest.raises(QuotaExceeded):  # rebuilt from the store: tiny, 8 calls used
            await two.send(sid, token, "still tiny after the restart")
        assert one.snapshot().sessions_by_id[sid].tier == "tiny"


async def test_quota_windows_are_rebuilt_once_when_valkey_comes_back_empty(
    worker_config, valkey, caplog
):
    limits = {**LIMITS, "default_tier": "tiny"}
    async with workers(
        worker_config("w1", limits=limits), worker_config("w2", limits=limits)
    ) as (one, two):
        sessions = [await one.create_session("lee") for _ in range(2)]
        assert await calls_granted(one, sessions[0].session_id, sessions[0].token, 2) == 2
        assert await calls_granted(two, sessions[1].session_id, sessions[1].token, 1) == 1
        await one.store.flush()
        await two.store.flush()
        with valkey.client() as admin:
            admin.flushall()  # Valkey restarted without persistence, both workers running
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.cluster.worker"):
            granted = await asyncio.gather(*(
                calls_granted(engine, s.session_id, s.token, 3)
                for engine in (one, two) for s in sessions
            ))
        assert sum(granted) == 1  # 3 of tiny's 4 calls were used before Valkey lost them
        assert caplog.text.count(REBUILT) == 1  # by one worker, once


async def test_the_session_cap_is_rebuilt_when_valkey_comes_back_empty(
    worker_config, valkey, clock
):
    cap = {"max_per_user": 2}
    async with workers(
        worker_config("w1", sessions=cap), worker_config("w2", sessions=cap)
    ) as (one, two):
        oldest = await one.create_session("max")
        clock.advance(1)
        await two.create_session("max")
        with valkey.client() as admin:
            admin.flushall()
        clock.advance(1)
        await two.create_session("max")  # the cluster still counts two: the oldest goes
        for engine in (one, two):
            with pytest.raises(AuthenticationError):
                await engine.history(oldest.session_id, oldest.token)


async def both_listed(*engines: Engine) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
        while any(len(e.snapshot().cluster.members) < len(engines) for e in engines):
            await asyncio.sleep(0.02)


async def test_placement_is_rebuilt_on_the_alive_workers_and_drains_as_before(
    worker_config, valkey, redis_url, clock, caplog
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        await both_listed(one, two)
        await asyncio.sleep(2 * one.config.cluster.heartbeat_s)  # at their last two heartbeats
        created = [await (one, two)[i % 2].create_session(f"user{i % 3}") for i in range(7)]
        ended = created.pop()
        await two.end_session(ended.session_id, ended.token)
        live = {s.session_id for s in created}
        await one.store.flush()
        await two.store.flush()
        with valkey.client() as admin:
            admin.flushall()  # Valkey restarted without persistence, both workers running
        assert await observer.placement.worker_of(created[0].session_id) is None
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.cluster.worker"):
            await two.send(created[0].session_id, created[0].token, "the first decision")
        assert "6 sessions (6 placed)" in caplog.text

        placed = {sid: await observer.placement.worker_of(sid) for sid in live}
        assert Counter(placed.values()) == {"w1": 3, "w2": 3}  # the fewest first
        assert await observer.placement.worker_of(ended.session_id) is None
        for name in ("w1", "w2"):
            members = await observer.client.redis.smembers(observer.client.key("placed:") + name)
            assert members == {sid for sid, worker in placed.items() if worker == name}

        await both_listed(one, two)  # the registry, emptied too, is back by their heartbeats
        await one.drain(1.0)  # the rebuilt affinity moves as any other: w1's go to w2
        after = {sid: await observer.placement.worker_of(sid) for sid in live}
        assert set(after.values()) == {"w2"}
        assert await observer.placement.count("w1") == 0
    await observer.aclose()


async def test_the_rebuild_puts_each_session_back_on_the_worker_that_served_it_last(
    worker_config, valkey, redis_url, clock, caplog
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    configs = [fast(worker_config(name)) for name in ("w1", "w2", "w3")]
    async with workers(*configs[:2]) as (one, two):
        async with Engine(configs[2]) as three:
            by_name = {"w1": one, "w2": two, "w3": three}
            served = {  # the workers that serve each session's turns, in order
                "a": ["w1"], "b": ["w1"], "c": ["w2", "w1"], "d": ["w1", "w2", "w1"],
                "e": ["w1", "w2"], "gone": ["w3"], "idle": [],
            }
            sessions = {name: await one.create_session(f"user-{name}") for name in served}
            for name, turns in served.items():
                s = sessions[name]
                for n, worker in enumerate(turns):
                    await by_name[worker].send(s.session_id, s.token, f"turn {n}")
            await three.store.flush()
        await until(lambda: all(  # w3 left: neither worker lists it at its last heartbeats
            "w3" not in {m.worker_id for m in e.snapshot().cluster.members} for e in (one, two)
        ), "w3 gone")
        await asyncio.sleep(4 * one.config.cluster.heartbeat_s)
        await one.store.flush()
        await two.store.flush()
        with valkey.client() as admin:
            admin.flushall()  # Valkey restarted without persistence, w1 and w2 running
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.cluster.worker"):
            await two.create_session("after")  # the first decision rebuilds
        assert "7 sessions (7 placed)" in caplog.text

        placed = {
            name: await observer.placement.worker_of(s.session_id)
            for name, s in sessions.items()
        }
        assert {name: placed[name] for name in "abcde"} == {
            "a": "w1", "b": "w1", "c": "w1", "d": "w1", "e": "w2"
        }
        assert placed["gone"] in ("w1", "w2") and placed["idle"] in ("w1", "w2")
    await observer.aclose()
