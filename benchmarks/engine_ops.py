"""Engine core throughput and cost figures, printed as JSON.

Run: .venv/bin/python benchmarks/engine_ops.py [--sessions 100000] [--restore-sessions 10000]
Uses the `sim` backend with zero latency through real praisonaiagents Agents, pools sized to
the concurrency, and the SQLite store with durable acknowledgements (the shipped defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from common import agent_types_file, print_json, unlimited_limits, unlimited_tiers

from engine import (
    Engine,
    EngineConfig,
    LLMSettings,
    PoolSettings,
    SimSettings,
    StoreSettings,
)
from engine.clock import ManualClock
from engine.quotas import QuotaManager


def config(data_dir: Path) -> EngineConfig:
    return EngineConfig(
        store=StoreSettings(data_dir=data_dir),
        pools=PoolSettings(agent_types_file=agent_types_file(data_dir, 1000), workers=1),
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
        limits=unlimited_limits(overload=None),  # throughput, not shedding on a busy machine
    )


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


async def bench_create(data_dir: Path, n: int) -> float:
    base = config(data_dir)
    many = replace(base, sessions=replace(base.sessions, max_per_user=10**9))
    async with Engine(many) as engine:
        start = time.perf_counter()
        for i in range(n):
            await engine.create_session(f"user{i % 1000}")
        return per_second(n, time.perf_counter() - start)


async def bench_send(data_dir: Path, sessions: int, turns: int) -> float:
    async with Engine(config(data_dir)) as engine:
        created = [await engine.create_session(f"user{i}") for i in range(sessions)]

        async def user(s) -> None:
            for k in range(turns):
                await engine.send(s.session_id, s.token, f"message {k}")

        start = time.perf_counter()
        await asyncio.gather(*(user(s) for s in created))
        return per_second(sessions * turns, time.perf_counter() - start)


def bench_quota_check(events_in_window: int, checks: int = 50_000) -> float:
    clock = ManualClock()
    quotas = QuotaManager(clock, tiers=unlimited_tiers(), default_tier="unlimited")
    for _ in range(events_in_window):
        quotas.record("alice", "api_calls", 1)
        clock.advance(3000.0 / events_in_window)  # spread across most of the window
    start = time.perf_counter()
    for _ in range(checks):
        quotas.settle(quotas.reserve("alice", {"api_calls": 1, "tokens": 10}), {"api_calls": 1})
    return per_second(checks, time.perf_counter() - start)


async def bench_expiry_and_snapshot(data_dir: Path, n: int) -> dict[str, float]:
    clock = ManualClock()
    async with Engine(replace(config(data_dir), clock=clock)) as engine:
        for i in range(n):
            await engine.create_session(f"user{i}")
        rounds = 10_000
        start = time.perf_counter()
        for _ in range(rounds):
            engine.housekeep()
        expiry_us = (time.perf_counter() - start) / rounds * 1e6
        times = []
        for _ in range(20):
            start = time.perf_counter()
            engine.snapshot()
            times.append(time.perf_counter() - start)
        times.sort()
        return {
            "expiry_us_per_pass_none_due": round(expiry_us, 2),
            "snapshot_ms_median": round(times[len(times) // 2] * 1e3, 3),
            "snapshot_ms_max": round(times[-1] * 1e3, 3),
        }


async def bench_bytes_per_session(data_dir: Path, n: int = 2000, turns: int = 10) -> int:
    """Traced heap growth per live session holding 20 messages (10 turns)."""
    async with Engine(config(data_dir)) as engine:
        await engine.create_session("warmup")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        created = [await engine.create_session(f"user{i}") for i in range(n)]
        for s in created:
            for k in range(turns):
                await engine.send(s.session_id, s.token, f"a typical user message number {k}")
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) // n


async def bench_engine_restore(data_dir: Path, sessions: int = 10_000, turns: int = 10) -> float:
    """Seconds for Engine.open() to restore `sessions` live sessions of 2*turns messages each:
    store checks, reading rows, unwrapping keys and decrypting every message."""
    base = config(data_dir / "restore")
    config_ = replace(
        base,
        store=replace(base.store, durable_ack=False),
        sessions=replace(base.sessions, context_max_messages=1000),
    )
    async with Engine(config_) as engine:
        created = [await engine.create_session(f"user{i}") for i in range(sessions)]

        async def user(s) -> None:
            for k in range(turns):
                await engine.send(s.session_id, s.token, f"a typical user message number {k}")

        for start in range(0, sessions, 500):
            await asyncio.gather(*(user(s) for s in created[start:start + 500]))
    started = time.perf_counter()
    async with Engine(config_) as engine:
        elapsed = time.perf_counter() - started
        assert engine.restore_report is not None
        assert engine.restore_report.messages == sessions * turns * 2
    return round(elapsed, 2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--restore-sessions", type=int, default=10_000,
                        help="sessions of 20 messages for the engine restore figure; 100000 "
                             "takes several minutes to set up (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        q100 = bench_quota_check(100)
        q10k = bench_quota_check(10_000)
        figures = {
            "create_session_per_s": await bench_create(data_dir, 20_000),
            "send_per_s_full_path_100_concurrent": await bench_send(data_dir, 100, 50),
            "send_per_s_full_path_1000_concurrent": await bench_send(data_dir, 1000, 10),
            "quota_check_per_s_100_events_in_window": q100,
            "quota_check_per_s_10000_events_in_window": q10k,
            "quota_check_ratio_100_vs_10000": round(q100 / q10k, 3),
            "live_sessions": args.sessions,
            **await bench_expiry_and_snapshot(data_dir, args.sessions),
            "bytes_per_session_with_20_messages": await bench_bytes_per_session(data_dir),
            "engine_restore_sessions": args.restore_sessions,
            "engine_restore_s_20_messages_each": await bench_engine_restore(
                data_dir, args.restore_sessions
            ),
        }
    print_json(figures)


if __name__ == "__main__":
    asyncio.run(main())
