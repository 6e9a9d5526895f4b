"""The per-user session cap holds across workers: a user cannot hold the cap on each of them.
Two engines as workers of one cluster on real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from engine import ClusterSettings, Engine, SimSettings
from engine.cluster import ClusterState
from engine.errors import AuthenticationError, SessionLimitReached
from tests.cluster.engines import workers

CAP = {"max_per_user": 2}
SLOW = {"sim": SimSettings(median_latency_s=1.5, p99_latency_s=1.5, seed=3),
        "turn_timeout_s": 30.0}


async def refusal(engine: Engine, session_id: str, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        await engine.history(session_id, token)
    return str(refused.value)


async def test_the_cap_counts_every_workers_sessions_and_evicts_the_oldest_everywhere(
    worker_config, clock
):
    async with workers(
        worker_config("w1", sessions=CAP), worker_config("w2", sessions=CAP)
    ) as (one, two):
        first = await one.create_session("ivy")
        clock.advance(1)
        second = await one.create_session("ivy")
        await two.history(second.session_id, second.token)  # w2 holds a copy of the second
        clock.advance(1)
        third = await two.create_session("ivy")  # w2 never saw the first: it is evicted
        unknown = await refusal(one, "0" * 32, "no such token")
        for engine in (one, two):  # ended everywhere, refused exactly like an unknown one
            assert await refusal(engine, first.session_id, first.token) == unknown
        await one.send(third.session_id, third.token, "the third works on w1")
        clock.advance(1)
        fourth = await one.create_session("ivy")  # the second is now the oldest
        for engine in (one, two):
            assert await refusal(engine, second.session_id, second.token) == unknown
        for created in (third, fourth):  # the cap's two, served by both workers
            await one.send(created.session_id, created.token, "still here")
            await two.send(created.session_id, created.token, "and here")
        assert sum(s.user_id == "ivy" for s in one.snapshot().sessions) == 2
        assert sum(s.user_id == "ivy" for s in two.snapshot().sessions) == 2


async def wait_for_lease(observer: ClusterState, session_id: str) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
        while await observer.leases.holder(session_id) is None:
            await asyncio.sleep(0.02)


async def test_a_session_with_a_turn_running_on_any_worker_is_never_evicted(
    worker_config, redis_url, clock
):
    observer = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    async with workers(
        worker_config("w1", sessions=CAP, llm=SLOW), worker_config("w2", sessions=CAP, llm=SLOW)
    ) as (one, two):
        oldest = await one.create_session("jay")
        clock.advance(1)
        newer = await two.create_session("jay")
        clock.advance(1)
        running = asyncio.create_task(one.send(oldest.session_id, oldest.token, "long turn"))
        await wait_for_lease(observer, oldest.session_id)
        third = await two.create_session("jay")  # the oldest is busy on w1: the newer goes
        assert await refusal(two, newer.session_id, newer.token)
        assert (await two.history(oldest.session_id, oldest.token)) == []  # still there
        clock.advance(1)
        also = asyncio.create_task(two.send(third.session_id, third.token, "long turn too"))
        await wait_for_lease(observer, third.session_id)
        with pytest.raises(SessionLimitReached):  # both busy, on two workers
            await one.create_session("jay")
        await asyncio.gather(running, also)
        await one.create_session("jay")  # idle again: the oldest makes room
        for engine in (one, two):
            await refusal(engine, oldest.session_id, oldest.token)
        await two.send(third.session_id, third.token, "the third stays")
    await observer.aclose()
