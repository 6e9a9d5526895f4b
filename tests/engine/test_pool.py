"""AgentPool: fair per-user round-robin, per-user cap, reset on release, reaping, timeouts."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from functools import partial

import pytest

from engine import pool as pool_module
from engine.agents import bind_history, build_agent, load_agent_specs
from engine.clock import ManualClock
from engine.config import SimSettings
from engine.errors import PoolTimeout
from engine.pool import AgentPool, PooledAgent
from engine.sim import SimulatedModel

SPEC = load_agent_specs()["assistant"]


def factory(spec) -> PooledAgent:
    model = SimulatedModel(SimSettings(median_latency_s=0.0, p99_latency_s=0.0), timeout_s=5.0)
    return PooledAgent(build_agent(spec, model), model)


def make_pool(clock=None, *, min_instances=0, max_instances=1, cap=8, idle=60.0) -> AgentPool:
    spec = replace(
        SPEC, min_instances=min_instances, max_instances=max_instances, idle_timeout_s=idle
    )
    return AgentPool(spec, "w0", factory, clock or ManualClock(), per_user_cap=cap)


async def test_prewarm_and_reuse_without_growing_past_max():
    pool = make_pool(min_instances=2, max_instances=3)
    pool.prewarm()
    assert pool.view().idle == 2 and pool.created == 2
    held = [await pool.acquire(f"u{i}", 1.0) for i in range(3)]
    assert pool.created == 3 and pool.view().in_use == 3
    for i, agent in enumerate(held):
        pool.release(agent, f"u{i}", failed=False)
    again = await pool.acquire("u9", 1.0)
    assert again is held[-1]  # most recently used first
    assert pool.created == 3


async def serve_once(pool, user: str, served: list[str]) -> None:
    """Wait for an agent as `user`, note the user as served, give the agent back."""
    agent = await pool.acquire(user, 5.0)
    served.append(user)
    await asyncio.sleep(0)
    pool.release(agent, user, failed=False)


async def test_round_robin_across_users_not_one_fifo():
    pool = make_pool(max_instances=1)
    holder = await pool.acquire("holder", 1.0)
    served: list[str] = []
    want = partial(serve_once, pool, served=served)

    hog = [asyncio.create_task(want("hog")) for _ in range(5)]
    await asyncio.sleep(0)
    polite = asyncio.create_task(want("polite"))
    await asyncio.sleep(0)
    assert pool.view().waiting == 6
    pool.release(holder, "holder", failed=False)
    await asyncio.gather(*hog, polite)
    assert served.index("polite") <= 1, served


async def test_a_user_holding_no_agent_is_served_before_busy_users_take_their_turns():
    pool = make_pool(max_instances=2, cap=2)
    held = {user: await pool.acquire(user, 1.0) for user in ("busy-a", "busy-b")}
    served: list[str] = []
    want = partial(serve_once, pool, served=served)

    # Three busy users, each holding an agent or waiting for more, then a quiet one.
    busy = [asyncio.create_task(want(u)) for u in ("busy-a", "busy-b", "busy-c") for _ in "12"]
    await asyncio.sleep(0)
    quiet = asyncio.create_task(want("quiet"))
    await asyncio.sleep(0)
    pool.release(held["busy-a"], "busy-a", failed=False)
    await asyncio.sleep(0)
    assert served[0] == "busy-c"  # held none when it began waiting either, and came first
    pool.release(held["busy-b"], "busy-b", failed=False)
    await asyncio.gather(*busy, quiet)
    assert served[1] == "quiet", served  # before busy-a and busy-b, who held agents
    assert sorted(served) == sorted(["quiet", *(u for u in ("busy-a", "busy-b", "busy-c")
                                                 for _ in "12")])


async def test_a_flood_of_users_holding_nothing_is_served_in_arrival_order():
    pool = make_pool(max_instances=1)
    holder = await pool.acquire("holder", 1.0)
    served: list[str] = []
    want = partial(serve_once, pool, served=served)

    users = [f"u{i:02d}" for i in range(20)]
    tasks = []
    for user in users:
        tasks.append(asyncio.create_task(want(user)))
        await asyncio.sleep(0)
    pool.release(holder, "holder", failed=False)
    await asyncio.gather(*tasks)
    assert served == users


async def test_per_user_cap_queues_that_user_only():
    pool = make_pool(max_instances=4, cap=1)
    first = await pool.acquire("alice", 1.0)
    second = asyncio.create_task(pool.acquire("alice", 5.0))
    await asyncio.sleep(0)
    assert not second.done()
    bob = await pool.acquire("bob", 1.0)  # others are not held back by alice's cap
    pool.release(first, "alice", failed=False)
    assert (await second) is not None
    assert pool.view().in_use == 2
    pool.release(bob, "bob", failed=False)


async def test_timeout_raises_pool_timeout_and_leaves_no_waiter():
    pool = make_pool(max_instances=1)
    held = await pool.acquire("alice", 1.0)
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire("bob", 0.01)
    assert info.value.agent_type == "assistant" and info.value.waited >= 0
    assert pool.view().waiting == 0 and pool.timeouts == 1
    pool.release(held, "alice", failed=False)
    assert (await pool.acquire("bob", 0.01)) is held


async def test_cancelled_waiter_is_removed_and_agent_not_lost():
    pool = make_pool(max_instances=1)
    held = await pool.acquire("alice", 1.0)
    waiting = asyncio.create_task(pool.acquire("bob", 5.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.view().waiting == 0
    pool.release(held, "alice", failed=False)
    assert pool.view().idle == 1 and pool.view().in_use == 0


async def test_release_clears_history_before_the_next_user():
    pool = make_pool(max_instances=1)
    pooled = await pool.acquire("alice", 1.0)
    bind_history(pooled.agent, [{"role": "user", "content": "alice's secret"}])
    await pooled.agent.achat("more secrets")
    assert len(pooled.agent.chat_history) >= 2
    pool.release(pooled, "alice", failed=False)
    next_one = await pool.acquire("bob", 1.0)
    assert next_one is pooled and next_one.agent.chat_history == []


async def test_agent_failing_reset_verification_is_replaced(monkeypatch):
    pool = make_pool(max_instances=1)
    pooled = await pool.acquire("alice", 1.0)
    bind_history(pooled.agent, [{"role": "user", "content": "left behind"}])
    monkeypatch.setattr(pool_module, "reset_agent", lambda agent: None)
    pool.release(pooled, "alice", failed=False)
    fresh = await pool.acquire("bob", 1.0)
    assert fresh is not pooled and fresh.agent.chat_history == []
    assert pool.replaced == 1


async def test_agent_that_keeps_failing_is_replaced():
    pool = make_pool(max_instances=1)
    original = None
    for _ in range(pool_module.FAILURES_BEFORE_REPLACEMENT):
        pooled = await pool.acquire("alice", 1.0)
        original = original or pooled
        pool.release(pooled, "alice", failed=True)
    assert (await pool.acquire("alice", 1.0)) is not original
    assert pool.replaced == 1


async def test_reap_drops_idle_agents_above_min_only():
    clock = ManualClock()
    pool = make_pool(clock, min_instances=1, max_instances=4, idle=60.0)
    agents = [await pool.acquire(f"u{i}", 1.0) for i in range(4)]
    for i, agent in enumerate(agents):
        pool.release(agent, f"u{i}", failed=False)
    clock.advance(30)
    assert pool.reap(clock.now()) == 0
    clock.advance(31)
    assert pool.reap(clock.now()) == 3
    assert pool.size == 1 and pool.reaped == 3


async def test_thousands_of_concurrent_turns_respect_max_and_cap():
    pool = make_pool(max_instances=5, cap=2)
    rng = random.Random(1)
    held: dict[str, int] = {}
    peak = {"in_use": 0, "per_user": 0}

    async def turn(user: str) -> None:
        agent = await pool.acquire(user, 30.0)
        held[user] = held.get(user, 0) + 1
        peak["in_use"] = max(peak["in_use"], pool.view().in_use)
        peak["per_user"] = max(peak["per_user"], held[user])
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        held[user] -= 1
        pool.release(agent, user, failed=False)

    await asyncio.gather(*(turn(f"user{rng.randint(0, 30)}") for _ in range(3000)))
    assert peak == {"in_use": 5, "per_user": 2}
    view = pool.view()
    assert (view.in_use, view.waiting, view.idle) == (0, 0, 5)
