"""Worker registry, per-user in-flight caps and the restore claim in a real Valkey, on the
injected clock."""

from __future__ import annotations

import asyncio

import pytest

from engine import ClusterSettings
from engine.cluster import ClusterClient, ClusterState, InFlightCaps, WorkerLoad, WorkerRegistry
from engine.errors import InvalidInput


@pytest.fixture
async def client(redis_url):
    client = ClusterClient(redis_url, "t:", timeout_s=5.0)
    yield client
    await client.aclose()


async def test_heartbeats_list_the_alive_workers_with_their_load(client, clock):
    registry = WorkerRegistry(client, clock, dead_after_s=5.0)
    await registry.heartbeat("w1", WorkerLoad(12, 340.5, 0.004, 0.25, "127.0.0.1:8001"))
    clock.advance(2)
    await registry.heartbeat("w2", WorkerLoad(sessions=3))
    views = await registry.alive()
    assert [(v.worker_id, v.heartbeat_age_s) for v in views] == [("w1", 2.0), ("w2", 0.0)]
    assert views[0].load == WorkerLoad(12, 340.5, 0.004, 0.25, "127.0.0.1:8001")
    clock.advance(4)  # w1 silent for 6 s: dead; w2 for 4 s: alive
    assert [v.worker_id for v in await registry.alive()] == ["w2"]
    await registry.heartbeat("w1", WorkerLoad(sessions=1))  # back from a pause: alive again
    assert {v.worker_id for v in await registry.alive()} == {"w1", "w2"}
    await registry.deregister("w2")
    assert [v.worker_id for v in await registry.alive()] == ["w1"]


async def test_the_heartbeat_loop_beats_on_the_clock(client, clock):
    registry = WorkerRegistry(client, clock, dead_after_s=5.0, heartbeat_s=1.0)
    loads = iter(range(1, 100))
    beating = asyncio.create_task(
        registry.beat_forever("w1", lambda: WorkerLoad(sessions=next(loads)))
    )
    try:
        async with asyncio.timeout(30):  # a bound on a broken loop, not a timing assertion
            while not await registry.alive():
                await asyncio.sleep(0.01)
            for expected in (2, 3):
                clock.advance(1.0)
                while (await registry.alive())[0].load.sessions != expected:
                    await asyncio.sleep(0.01)
    finally:
        beating.cancel()
    clock.advance(5.5)
    assert await registry.alive() == ()


async def test_in_flight_turns_are_capped_per_user_across_workers(redis_url, clock):
    clients = [ClusterClient(redis_url, "t:", timeout_s=5.0) for _ in range(3)]
    caps = [InFlightCaps(c, clock, slot_ttl_s=60) for c in clients]
    slots = await asyncio.gather(*(caps[i % 3].enter("alice", 4) for i in range(50)))
    entered = [s for s in slots if s is not None]
    assert len(entered) == 4
    assert await caps[0].count("alice") == 4
    assert await caps[1].enter("bob", 4) is not None  # another user's own cap
    await caps[2].leave("alice", entered[0])
    assert await caps[0].count("alice") == 3
    assert await caps[1].enter("alice", 4) is not None
    assert await caps[1].enter("alice", 4) is None
    with pytest.raises(InvalidInput):
        await caps[0].enter("alice", 0)
    for c in clients:
        await c.aclose()


async def test_a_dead_workers_in_flight_turns_lapse(client, clock):
    caps = InFlightCaps(client, clock, slot_ttl_s=60)
    long_turn = await caps.enter("alice", 2)
    clock.advance(30)
    orphan = await caps.enter("alice", 2)  # its worker dies now
    assert long_turn is not None and orphan is not None
    clock.advance(29)
    assert await caps.renew("alice", long_turn)  # a turn still running keeps its slot
    assert await caps.enter("alice", 2) is None
    clock.advance(31)  # the orphan is 60 s old now
    assert await caps.count("alice") == 1
    assert not await caps.renew("alice", orphan)
    assert await caps.enter("alice", 2) is not None


async def test_one_worker_claims_the_rebuild_of_an_empty_server(redis_url, valkey, clock):
    """Exactly one worker replays into a server that started empty, the others see it done
    only once it is, and a server that lost its data is claimed again; a claimer that fails
    frees its claim."""
    states = [
        await ClusterState.open(ClusterSettings(redis_url=redis_url), clock) for _ in range(3)
    ]
    claims = await asyncio.gather(*(s.rebuild.claim(f"w{i}") for i, s in enumerate(states)))
    assert sorted(claims) == [False, False, True]
    claimer = claims.index(True)
    assert not await states[0].rebuild.is_rebuilt()  # claimed, not replayed yet
    await states[claimer].rebuild.done(f"w{claimer}")
    assert await states[0].rebuild.is_rebuilt()
    assert not await states[0].rebuild.claim("w0")
    with valkey.client() as admin:
        admin.flushall()  # what a restart without persistence leaves
    assert not await states[2].rebuild.is_rebuilt()
    assert await states[1].rebuild.claim("w1")
    await states[2].rebuild.abandon("w2")  # not its claim: nothing happens
    assert not await states[2].rebuild.claim("w2")
    await states[1].rebuild.abandon("w1")  # its replay failed
    assert await states[2].rebuild.claim("w2")
    for state in states:
        await state.aclose()
