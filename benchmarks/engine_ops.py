"""Engine core throughput and cost figures, printed as JSON.

Run: .venv/bin/python benchmarks/engine_ops.py [--sessions 100000] [--cold-only]
Uses the `sim` backend with zero latency through real praisonaiagents Agents, pools sized to
the concurrency, and the SQLite store with durable acknowledgements (the shipped defaults).

`--sessions N` also sets the stored-sessions figures: a file of N sessions of 20 messages
(real per-session keys, real ciphertext), built once through the store and kept under the
temp folder keyed by N, then opened: time to the first completed turn, time until every session
is paged in (after that, not before, RSS per cold session is read),
RSS per hot one (what one more costs: read over the sessions warmed after the first 1,000),
the first turn on a cold session against a hot one, turns/s on hot sessions.
`--cold-only` prints those alone (run one N per process, so RSS is this N's).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import random
import shutil
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
from engine.security import KeyRing, hash_token
from engine.store import MessageRow, SessionRow, Store

FOREVER_S = 10 * 365 * 86400.0  # stored sessions stay live however long the file is kept
TURNS = 10  # 20 messages per stored session
HOT_WARMUP = 1000  # sessions warmed before RSS per hot session is read (bench_stored_sessions)


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


def bench_token(i: int) -> str:
    return f"bench-token-{i:08d}"


def stored_config(data_dir: Path) -> EngineConfig:
    base = config(data_dir)
    return replace(
        base, tune_gc=False,
        sessions=replace(base.sessions, idle_timeout_s=FOREVER_S, lifetime_s=FOREVER_S),
        limits=replace(base.limits, overload=None),  # figures of the cache, not of shedding
    )


async def build_store(data_dir: Path, n: int) -> float:
    """N sessions of 20 encrypted messages written through the store; seconds taken."""
    started = time.perf_counter()
    cfg = stored_config(data_dir)
    keyring = KeyRing.load(cfg.store.master_key_file)
    now = time.time()
    async with await Store.open(
        cfg.store.db_path, replace(cfg.store, durable_ack=False, durability="process")
    ) as store:
        for start in range(0, n, 2000):
            ops: list = []
            for i in range(start, min(n, start + 2000)):
                sid = f"{i:032x}"
                cipher, wrapped = keyring.new_data_key()
                ops.append(SessionRow(
                    sid, f"user{i // 5}", "unlimited", "{}", now, now, FOREVER_S, FOREVER_S,
                    hash_token(bench_token(i)), now, now + FOREVER_S, wrapped,
                    turns=TURNS,
                ))
                for seq in range(2 * TURNS):
                    role = "user" if seq % 2 == 0 else "assistant"
                    text = f"a typical {role} message number {seq} of session {i}"
                    ciphertext = cipher.encrypt(text, session_id=sid, seq=seq, role=role)
                    ops.append(MessageRow(sid, seq, role, ciphertext, now, len(text)))
            await store.write(*ops)
        await store.flush()
    return round(time.perf_counter() - started, 1)


def rss_bytes() -> int:
    """Resident memory after collecting and returning freed heap to the OS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def bench_stored_sessions(folder: Path, n: int, samples: int = 5000) -> dict[str, object]:
    """Open a file of N stored sessions and time what the first users see."""
    data_dir = folder / f"stored-{n}"
    built_s = None
    if not (data_dir / "built").exists():
        built_s = await build_store(data_dir, n)
        (data_dir / "built").write_text("ok")
    scratch = folder / f"run-{n}"  # the turns below write: keep the built file as built
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(data_dir, scratch)
    os.sync()  # the copy's writeback is set-up: it must not hold up the first commit's fsync
    cfg = stored_config(scratch)
    rng = random.Random(1)
    picks = rng.sample(range(n), min(samples, n))
    baseline = rss_bytes()
    started = time.perf_counter()
    engine = await Engine(cfg).open()
    opened = time.perf_counter() - started
    try:
        first = picks[0]
        await engine.send(f"{first:032x}", bench_token(first), "hello")
        open_to_first_turn = time.perf_counter() - started
        restore = await engine.restored()  # open() returns before a large store is paged in
        open_to_restored = time.perf_counter() - started
        cold_rss = rss_bytes()
        cold, hot = [], []
        # RSS per hot session is over the sessions after the first HOT_WARMUP: those also
        # fill what is sized by the pools, not by the sessions (an agent's state after its
        # first turns), and a few thousand sessions keep the allocator's steps small beside it.
        half = min(HOT_WARMUP, len(picks) // 2)
        for k, i in enumerate(picks[1:], start=1):
            if k == half:
                half_rss = rss_bytes()
            sid, token = f"{i:032x}", bench_token(i)
            t0 = time.perf_counter()
            await engine.send(sid, token, "first turn")
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await engine.send(sid, token, "second turn")
            hot.append(time.perf_counter() - t0)
        hot_rss = rss_bytes()
        warmed = len(picks) - half
        stored = await engine.store.load_session(f"{first:032x}")
        assert stored is not None
        ciphertext = sum(len(m.ciphertext) for m in stored.messages) + len(stored.wrapped_key)
        created = picks[:100]  # hot by now

        async def user(i: int) -> None:
            for k in range(20):
                await engine.send(f"{i:032x}", bench_token(i), f"message {k}")

        t0 = time.perf_counter()
        await asyncio.gather(*(user(i) for i in created))
        hot_turns_per_s = per_second(len(created) * 20, time.perf_counter() - t0)
        cache = engine.snapshot().cache
    finally:
        await engine.aclose()
        shutil.rmtree(scratch, ignore_errors=True)
    ms = 1e3
    return {
        "stored_sessions": n,
        "build_s": built_s,
        "open_s": round(opened, 3),
        "open_to_first_turn_s": round(open_to_first_turn, 3),
        "open_to_all_restored_s": round(open_to_restored, 3),
        "restored_sessions": restore.sessions,
        "rss_per_cold_session_b": round((cold_rss - baseline) / n),
        "rss_per_hot_session_b": round((hot_rss - half_rss) / warmed),
        "rss_per_hot_session_warmup_b": round((half_rss - cold_rss) / (half - 1)),
        "ciphertext_per_session_b": ciphertext,
        "first_turn_cold_ms_p50": round(percentile(cold, 0.5) * ms, 3),
        "first_turn_cold_ms_p99": round(percentile(cold, 0.99) * ms, 3),
        "turn_hot_ms_p50": round(percentile(hot, 0.5) * ms, 3),
        "turn_hot_ms_p99": round(percentile(hot, 0.99) * ms, 3),
        "hot_turns_per_s_100_concurrent": hot_turns_per_s,
        "cache_hot": cache.hot if cache else None,
        "cache_loads": cache.loads if cache else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--cold-only", action="store_true",
                        help="only the stored-sessions figures (one N per process for RSS)")
    args = parser.parse_args()
    stored_folder = Path(tempfile.gettempdir()) / "session-console-bench"
    if args.cold_only:
        print_json(await bench_stored_sessions(stored_folder, args.sessions))
        return
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
            **await bench_stored_sessions(stored_folder, args.sessions),
        }
    print_json(figures)


if __name__ == "__main__":
    asyncio.run(main())
