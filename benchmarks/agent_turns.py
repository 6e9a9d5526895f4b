"""Turns through praisonaiagents Agents: throughput and engine overhead, printed as JSON.

Engine overhead = client-observed turn time minus the model's time (Reply.model_latency_s):
authentication, limits, quota, pool acquire, binding history, the Agent's own bookkeeping,
settle, metrics and, with durable acknowledgement (the default), waiting for the commit.
Pools are sized to the concurrency so the figure is overhead, not queueing.
Run: .venv/bin/python benchmarks/agent_turns.py
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from common import agent_types_file, print_json, unlimited_limits

from engine import (
    Engine,
    EngineConfig,
    LLMSettings,
    PoolSettings,
    SimSettings,
    StoreSettings,
)
from engine.agents import build_agent, load_agent_specs
from engine.sim import SimSource, SimulatedModel
from engine.simserver import SimServer

SIM = SimSettings(median_latency_s=0.05, p99_latency_s=0.2, seed=1)


def config(folder: Path, users: int) -> EngineConfig:
    return EngineConfig(
        store=StoreSettings(data_dir=folder),
        limits=unlimited_limits(overload=None),  # overhead, not shedding on a busy machine
        pools=PoolSettings(agent_types_file=agent_types_file(folder, users), workers=1,
                           per_user_agent_cap=4),
        llm=LLMSettings(sim=SIM),
    )


async def drive(
    engine: Engine, users: int, seconds: float, think_s: float = 0.0
) -> dict[str, float]:
    """Each user sends, thinks, repeats: think times are exponential with mean `think_s` and
    users start at random offsets, as real users do (a constant think time would make every
    user send in the same instant, a thundering herd). think_s=0: back to back, full CPU."""
    sessions = [await engine.create_session(f"user{i}") for i in range(users)]
    overheads: list[float] = []
    turn_times: list[float] = []
    deadline = time.perf_counter() + seconds

    async def user(s) -> None:
        rng = random.Random(s.session_id)
        if think_s:
            await asyncio.sleep(rng.uniform(0, think_s))
        k = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            reply = await engine.send(s.session_id, s.token, f"message {k} from a user")
            elapsed = time.perf_counter() - started
            turn_times.append(elapsed)
            overheads.append(max(0.0, elapsed - reply.model_latency_s))
            k += 1
            if think_s:
                await asyncio.sleep(rng.expovariate(1 / think_s))
            if k % 8 == 0:  # keep contexts realistic without unbounded growth in the bench
                await engine.end_session(s.session_id, s.token)
                s = await engine.create_session(s.user_id)

    started = time.perf_counter()
    await asyncio.gather(*(user(s) for s in sessions))
    wall = time.perf_counter() - started
    overheads.sort()
    q = statistics.quantiles(overheads, n=100)
    return {
        "turns_per_s": round(len(overheads) / wall, 1),
        "overhead_ms_p50": round(q[49] * 1e3, 3),
        "overhead_ms_p99": round(q[98] * 1e3, 3),
        "overhead_share_of_turn_pct": round(100 * sum(overheads) / sum(turn_times), 2),
    }


def memory_per_agent(n: int = 500) -> int:
    spec = load_agent_specs()["assistant"]
    source = SimSource(SIM)
    build_agent(spec, SimulatedModel(source=source))  # warm imports and caches
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    agents = [build_agent(spec, SimulatedModel(source=source)) for _ in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del agents
    return (after - before) // n


async def main() -> None:
    figures: dict[str, object] = {
        "sim": {"median_s": SIM.median_latency_s, "p99_s": SIM.p99_latency_s},
        "overhead_definition": "client turn time minus Reply.model_latency_s",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for users in (100, 1000):
            async with Engine(config(folder, users)) as engine:
                figures[f"sim_{users}_users_back_to_back"] = await drive(engine, users, 10.0)
            async with Engine(config(folder, users)) as engine:
                figures[f"sim_{users}_users_think_1s"] = await drive(engine, users, 10.0, 1.0)
            # The same without waiting for the commit: the agents' share, without the disk's.
            base = config(folder, users)
            early = replace(base, store=replace(base.store, durable_ack=False))
            async with Engine(early) as engine:
                figures[f"sim_{users}_users_think_1s_ack_before_commit"] = await drive(
                    engine, users, 10.0, 1.0
                )
        async with SimServer(SIM) as server:
            base = config(folder, 100)
            http = replace(base, llm=LLMSettings(
                backend="openai", base_url=server.base_url, api_key="sk-local", sim=SIM,
            ))
            async with Engine(http) as engine:
                figures["http_sim_100_users"] = await drive(engine, 100, 10.0)
    figures["bytes_per_pooled_agent"] = memory_per_agent()
    print_json(figures)


if __name__ == "__main__":
    asyncio.run(main())
