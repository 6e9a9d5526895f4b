"""At most a share of turns starts per loop iteration; the rest wait their turn, in order.

On a real event loop: what ran between two iterations is recorded by a ticking task, never
timed. The engine's own use: a burst of concurrent turns all complete, each in its own
session, and the overload probe counts a turn's wait at the gate as loop lag.
"""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine
from engine.clock import ManualClock
from engine.overload import LoadShedder, OverloadPolicy
from engine.turn_gate import PER_ITERATION, TurnStartGate


async def test_turns_past_the_share_wait_and_start_a_share_per_iteration_in_order():
    gate = TurnStartGate(per_iteration=3)
    events: list[str] = []
    done = asyncio.Event()

    async def turn(n: int) -> None:
        waiting = gate.enter()
        if waiting is not None:
            await waiting
        events.append(str(n))

    async def tick() -> None:
        while not done.is_set():
            events.append("|")
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    await asyncio.gather(*(turn(n) for n in range(10)))
    done.set()
    await ticker
    started = [e for e in events if e != "|"]
    assert started == [str(n) for n in range(10)]  # first come, first served
    runs = "".join("t" if e != "|" else "|" for e in events).split("|")
    assert max(len(run) for run in runs) <= 3
    assert gate.waits == 7 and gate.waited_s() == 0.0


async def test_a_cancelled_waiter_gives_its_place_to_the_next():
    gate = TurnStartGate(per_iteration=1)
    assert gate.enter() is None
    first, second = gate.enter(), gate.enter()
    assert first is not None and second is not None
    assert gate.waited_s() >= 0.0
    first.cancel()
    await second  # released although the one ahead of it left
    assert gate.waited_s() == 0.0


def test_a_gate_lets_at_least_one_turn_through():
    with pytest.raises(ValueError):
        TurnStartGate(per_iteration=0)


async def test_the_overload_probe_counts_a_turn_held_at_the_gate_as_lag():
    # A bound far above this machine's own loop lag: only the gate's reported wait crosses it.
    policy = OverloadPolicy(lag_bound_s=0.5, late_readings=2, probe_interval_s=0.001)
    shedder = LoadShedder(ManualClock(), policy)
    probe = asyncio.ensure_future(shedder.watch(lambda: 0, lambda: 1.0))
    try:
        for _ in range(200):
            await asyncio.sleep(0.002)
            if shedder.overloaded:
                break
        assert shedder.overloaded
        assert shedder.stats().last_lag_s >= 1.0
    finally:
        probe.cancel()


async def test_a_burst_of_concurrent_turns_all_complete_each_in_its_own_session(make_config):
    async with Engine(make_config()) as engine:
        sessions = [await engine.create_session(f"user{n}") for n in range(3 * PER_ITERATION)]
        replies = await asyncio.gather(*(
            engine.send(s.session_id, s.token, f"question {n}") for n, s in enumerate(sessions)
        ))
        assert all(reply.text for reply in replies)
        for n, s in enumerate(sessions):
            history = await engine.history(s.session_id, s.token)
            assert [m.content for m in history if m.role == "user"] == [f"question {n}"]
