"""Session leases in a real Valkey: one holder, growing fencing tokens, expiry of a dead holder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cluster import ClusterClient, SessionLeases
from engine.cluster.leases import TAKEOVER_S
from engine.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("cluster_worker.py")


@pytest.fixture
async def leases(redis_url):
    client = ClusterClient(redis_url, "t:", timeout_s=5.0)
    yield SessionLeases(client, ttl_s=5.0)
    await client.aclose()


async def test_one_holder_at_a_time_and_tokens_only_grow(leases):
    first = await leases.acquire("s1", "w1")
    assert first is not None and first.ttl_s == 5.0
    assert await leases.acquire("s1", "w2") is None
    assert await leases.acquire("s1", "w1") is None  # the holder's own second turn waits too
    holder = await leases.holder("s1")
    assert holder is not None
    assert (holder.worker_id, holder.token) == ("w1", first.token)
    # Held a takeover allowance less than the TTL: a survivor serves within the TTL.
    assert 4.5 < holder.expires_in_s <= 5.0 - TAKEOVER_S
    assert await leases.release(first)
    second = await leases.acquire("s1", "w2")
    other = await leases.acquire("s2", "w1")
    assert second is not None and other is not None
    assert first.token < second.token < other.token
    assert await leases.holder("s3") is None


async def test_concurrent_acquirers_get_one_lease(redis_url):
    clients = [ClusterClient(redis_url, "t:", timeout_s=5.0) for _ in range(4)]
    workers = [SessionLeases(c) for c in clients]
    results = await asyncio.gather(
        *(workers[i % 4].acquire("hot", f"w{i}") for i in range(200))
    )
    assert sum(r is not None for r in results) == 1
    for client in clients:
        await client.aclose()


async def test_only_the_holder_renews_or_releases(leases):
    lease = await leases.acquire("s1", "w1", ttl_s=30)
    assert lease is not None
    impostor = type(lease)("s1", "w2", lease.token, 30)
    stale = type(lease)("s1", "w1", lease.token - 1, 30)  # this worker's earlier lease
    assert not await leases.release(impostor)
    assert not await leases.release(stale)
    assert not await leases.renew(impostor)
    holder = await leases.holder("s1")
    assert holder is not None and holder.worker_id == "w1"
    assert await leases.renew(lease, ttl_s=60)
    holder = await leases.holder("s1")
    assert holder is not None and holder.expires_in_s > 30
    assert await leases.release(lease)
    assert not await leases.release(lease)  # released once
    assert not await leases.renew(lease)
    with pytest.raises(InvalidInput):
        await leases.acquire("s1", "w1", ttl_s=0)


async def test_a_lapsed_lease_cannot_be_renewed_after_another_takes_it(leases):
    lease = await leases.acquire("s1", "w1", ttl_s=0.05)
    assert lease is not None
    while (taken := await leases.acquire("s1", "w2")) is None:
        await asyncio.sleep(0.02)
    assert taken.token > lease.token
    assert not await leases.renew(lease)
    assert not await leases.release(lease)
    holder = await leases.holder("s1")
    assert holder is not None and holder.worker_id == "w2"


async def test_tokens_keep_growing_after_the_server_loses_its_data(leases, valkey):
    """A Valkey restart without persistence empties it: the fencing counter restarts from the
    server clock, above every token handed out before."""
    before = await leases.acquire("s1", "w1")
    assert before is not None
    with valkey.client() as admin:
        admin.flushall()
    after = await leases.acquire("s1", "w2")
    assert after is not None and after.token > before.token


async def test_a_killed_holders_lease_expires_and_another_worker_takes_it(redis_url, leases):
    """A real process holds the session's lease and renews it; SIGKILL it, and the lease
    lapses by itself: another worker then gets it with a larger token."""
    holder_process = subprocess.Popen(
        [sys.executable, str(WORKER), "hold", redis_url, "t:", "s1", "3.0"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder_process.stdout is not None
        held = json.loads(holder_process.stdout.readline())
        holder = await leases.holder("s1")
        assert holder is not None
        assert (holder.worker_id, holder.token) == ("doomed-worker", held["token"])
        assert await leases.acquire("s1", "survivor") is None
        holder_process.send_signal(signal.SIGKILL)
        holder_process.wait()
    finally:
        holder_process.kill()
        holder_process.wait()
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing assertion
    while (lease := await leases.acquire("s1", "survivor")) is None:
        assert time.monotonic() < deadline, "the dead holder's lease never expired"
        await asyncio.sleep(0.1)
    assert lease.token > held["token"]
