"""Cluster quotas in a real Valkey: the local manager's answers, exact under concurrency."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ClusterSettings, LimitSettings
from engine.clock import ManualClock
from engine.cluster import ClusterClient, ClusterQuotas, ClusterState
from engine.errors import InvalidInput, QuotaExceeded
from engine.limits import LocalQuotas, QuotaBackend
from engine.quotas import RESERVATION_RETRY_S, RESOURCES, QuotaLimit, QuotaManager, Reservation

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("cluster_worker.py")


def tier(api: float, tokens: float, storage: float, compute: float, window: float) -> dict:
    return {
        "api_calls": QuotaLimit(api, window),
        "tokens": QuotaLimit(tokens, window),
        "storage_mb": QuotaLimit(storage, None),
        "compute_seconds": QuotaLimit(compute, window * 2),
    }


TIERS = {"free": tier(5, 100, 10, 20, 60), "pro": tier(50, 1000, 100, 200, 30)}
BUCKETS = 6  # coarse sub-buckets, so expiry granularity shows in the answers


def cluster_quotas(url: str, clock: ManualClock, prefix: str = "t:", **kwargs) -> ClusterQuotas:
    client = ClusterClient(url, prefix, timeout_s=5.0)
    return ClusterQuotas(client, clock, TIERS, "free", buckets_per_window=BUCKETS, **kwargs)


def local_quotas(clock: ManualClock) -> LocalQuotas:
    return LocalQuotas(QuotaManager(clock, TIERS, "free", buckets_per_window=BUCKETS))


# -- the cluster gives the local manager's answers ---------------------------------------------

amount = st.sampled_from([0, 0.5, 1, 2, 3, 5, 20, 40, 60, 150])
amounts = st.dictionaries(st.sampled_from(RESOURCES), amount, min_size=1, max_size=3)
operation = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(["u", "v"]), amounts),
    st.tuples(st.just("settle"), st.integers(0, 20), amounts),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 3, 9.5, 31, 61, 130, 400])),
    st.tuples(st.just("record"), st.sampled_from(RESOURCES), amount),
    st.tuples(st.just("adjust"), st.sampled_from(["storage_mb", "tokens"]), st.sampled_from(
        [-3, -0.5, 2, 7])),
    st.tuples(st.just("override"), st.sampled_from(RESOURCES), st.sampled_from([0, 4, 30]),
              st.sampled_from([..., None, 10.0, 90.0])),
    st.tuples(st.just("clear"), st.sampled_from(RESOURCES)),
    st.tuples(st.just("restore"), st.sampled_from(RESOURCES), amount,
              st.sampled_from([0, 0.5, 7, 59, 61, 200, 5000])),
    st.tuples(st.just("tier"), st.sampled_from(["free", "pro"])),
)


async def apply(
    backend: QuotaBackend, op: tuple, held: list[Reservation], clock: ManualClock
) -> object:
    """One operation's observable outcome: its result or the error's fields."""
    kind, *args = op
    try:
        if kind == "reserve":
            held.append(await backend.reserve(args[0], args[1]))
            return ("reserved", dict(held[-1].amounts))
        if kind in ("settle", "release") and held:
            reservation = held[args[0] % len(held)]
            if kind == "settle":
                await backend.settle(reservation, args[1])
            else:
                await backend.release(reservation)
        elif kind == "record":
            await backend.record("u", args[0], args[1])
        elif kind == "adjust":
            await backend.adjust("u", args[0], args[1])
        elif kind == "override":
            await backend.set_override("u", args[0], args[1], args[2])
        elif kind == "clear":
            await backend.clear_override("u", args[0])
        elif kind == "restore":
            await backend.restore("u", args[0], args[1], clock.now() - args[2])
        elif kind == "tier":
            await backend.set_tier("u", args[0])
    except QuotaExceeded as exc:
        return ("refused", exc.resource, exc.limit, exc.retry_after, str(exc))
    except InvalidInput as exc:
        return ("invalid", str(exc))
    return ("ok",)


async def standing(backend: QuotaBackend) -> object:
    return (
        await backend.usage("u"), await backend.usage("v"), await backend.tier_of("u"),
        [await backend.window_of("u", resource) for resource in RESOURCES],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=30))
def test_every_answer_is_the_local_managers(valkey, ops):
    """Windows, tiers, overrides, reservations, refusals and their retry_after, reports: the
    same operations on the same clock give the same answers locally and in Valkey."""

    async def run() -> None:
        with valkey.client() as admin:
            admin.flushall()
        local_clock, cluster_clock = ManualClock(), ManualClock()
        local = local_quotas(local_clock)
        shared = cluster_quotas(valkey.url, cluster_clock, reservation_ttl_s=1e9)
        local_held: list[Reservation] = []
        shared_held: list[Reservation] = []
        try:
            for op in ops:
                if op[0] == "advance":
                    local_clock.advance(op[1])
                    cluster_clock.advance(op[1])
                    continue
                assert await apply(shared, op, shared_held, cluster_clock) == await apply(
                    local, op, local_held, local_clock
                )
                assert await standing(shared) == await standing(local)
        finally:
            await shared._client.aclose()

    asyncio.run(run())


async def test_a_refusal_says_what_waiting_would_do(redis_url, clock):
    quotas = cluster_quotas(redis_url, clock)
    await quotas.reserve("u", {"tokens": 60})
    with pytest.raises(QuotaExceeded) as held:
        await quotas.reserve("u", {"tokens": 50})
    assert held.value.retry_after == RESERVATION_RETRY_S  # a reservation, not usage, blocks it
    with pytest.raises(QuotaExceeded) as too_big:
        await quotas.reserve("u", {"tokens": 101})
    assert math.isinf(too_big.value.retry_after) and too_big.value.limit == 100
    await quotas.record("u", "api_calls", 5)
    clock.advance(25)
    with pytest.raises(QuotaExceeded) as windowed:
        await quotas.reserve("u", {"api_calls": 1})
    assert windowed.value.resource == "api_calls"
    assert windowed.value.retry_after == pytest.approx(70 - 25)  # bucket end + window
    clock.advance(windowed.value.retry_after)
    await quotas.reserve("u", {"api_calls": 1})
    await quotas._client.aclose()


async def test_settle_replaces_the_hold_by_the_use_once(redis_url, clock):
    quotas = cluster_quotas(redis_url, clock)
    reservation = await quotas.reserve("u", {"api_calls": 1, "tokens": 90})
    await quotas.settle(reservation, {"api_calls": 1, "tokens": 30})
    await quotas.settle(reservation, {"api_calls": 1, "tokens": 30})  # a repeat is a no-op
    await quotas.release(reservation)
    usage = {u.resource: u for u in await quotas.usage("u")}
    assert (usage["tokens"].used, usage["tokens"].reserved) == (30, 0)
    assert (usage["api_calls"].used, usage["api_calls"].reserved) == (1, 0)
    await quotas._client.aclose()


async def test_a_dead_workers_reservation_lapses(redis_url, clock):
    """A reservation never settled (its worker died) stops holding quota after its TTL."""
    quotas = cluster_quotas(redis_url, clock, reservation_ttl_s=120)
    await quotas.reserve("u", {"tokens": 100})
    clock.advance(119)
    with pytest.raises(QuotaExceeded):
        await quotas.reserve("u", {"tokens": 1})
    clock.advance(1)
    await quotas.reserve("u", {"tokens": 100})
    usage = {u.resource: u for u in await quotas.usage("u")}
    assert usage["tokens"].reserved == 100
    await quotas._client.aclose()


async def test_users_and_key_prefixes_are_separate(redis_url, clock):
    one, other = cluster_quotas(redis_url, clock, "a:"), cluster_quotas(redis_url, clock, "b:")
    await one.reserve("u", {"tokens": 100})
    await one.reserve("v", {"tokens": 100})
    await other.reserve("u", {"tokens": 100})  # another cluster on the same server
    await one._client.aclose()
    await other._client.aclose()


# -- exact across workers ------------------------------------------------------------------------


async def test_concurrent_reservations_from_several_clients_grant_exactly_the_limit(
    redis_url, clock
):
    """1,000 reservations of one user at once over 4 clients (4 workers' connection pools):
    exactly the limit is granted, never more, for a whole and a fractional resource."""
    tiers = {"free": tier(300, 1000, 10, 1000, 60)}
    clients = [ClusterClient(redis_url, "t:", timeout_s=10.0) for _ in range(4)]
    workers = [ClusterQuotas(c, clock, tiers, "free") for c in clients]

    async def one(i: int) -> Reservation | None:
        try:
            return await workers[i % 4].reserve("alice", {"api_calls": 1, "tokens": 3.7})
        except QuotaExceeded as exc:
            assert exc.resource == "tokens"
            return None

    results = await asyncio.gather(*(one(i) for i in range(1000)))
    granted = [r for r in results if r is not None]
    fits = max(n for n in range(301) if sum([3.7] * n) <= 1000)  # 270 by tokens
    assert len(granted) == fits
    assert len({r.id for r in granted}) == fits
    usage = {u.resource: u for u in await workers[0].usage("alice")}
    assert usage["api_calls"].reserved == fits
    assert usage["tokens"].reserved <= 1000
    await asyncio.gather(*(workers[r.id % 4].settle(r, {"api_calls": 1}) for r in granted))
    usage = {u.resource: u for u in await workers[1].usage("alice")}
    assert (usage["api_calls"].used, usage["api_calls"].reserved) == (fits, 0)
    assert usage["tokens"].reserved == 0
    for client in clients:
        await client.aclose()


def test_concurrent_reservations_from_several_processes_grant_exactly_the_limit(
    redis_url, valkey
):
    """3 OS processes reserve 1,000 of one user's api_calls at once (limit 300): 300 granted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts = [334, 333, 333]
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "reserve", redis_url, "mp:", "alice", str(count)],
            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        for count in counts
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        with valkey.client() as admin:
            admin.rpush("mp:go", *["go"] * len(processes))  # all start together
        reports = [json.loads(process.communicate(timeout=120)[0]) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert sum(report["granted"] for report in reports) == 300
    assert sum(report["refused"] for report in reports) == 1000 - 300
    assert all(process.returncode == 0 for process in processes)


async def test_cluster_state_uses_the_configured_tiers(redis_url, clock):
    limits = LimitSettings(tiers=TIERS, default_tier="free")
    state = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock, limits)
    await state.quotas.set_tier("u", "pro")
    await state.quotas.reserve("u", {"api_calls": 50})
    with pytest.raises(QuotaExceeded) as refused:
        await state.quotas.reserve("u", {"api_calls": 1})
    assert refused.value.limit == 50
    await state.aclose()
