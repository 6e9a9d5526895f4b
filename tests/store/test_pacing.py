"""Pacing writes that do not wait for their commit: admission slows with the queue, no cliff.

On a real SQLite store. The writer is held busy while writes queue up, so the depth each write
finds is exact; what a paced write waited for is read from the store's own committed-op count
at the moment it returned, never from a clock.
"""

from __future__ import annotations

import asyncio

from engine.config import StoreSettings
from engine.store import Store
from engine.store.pacing import Pacer
from tests.store.test_store import message, session_row, writer_held

PACING_OPS = 4
BACKLOG_OPS = 12


def test_the_drain_a_write_waits_for_grows_with_the_queue_up_to_all_of_it_at_the_bound():
    pacer = Pacer(PACING_OPS, BACKLOG_OPS)
    needed = [pacer.drain_needed(depth) for depth in range(BACKLOG_OPS + 1)]
    assert needed[: PACING_OPS + 1] == [0] * (PACING_OPS + 1)  # up to pacing_ops: no wait
    assert needed[PACING_OPS + 1:] == [2, 3, 5, 6, 8, 9, 11, 12]  # ceil(excess x 12 / 8)
    assert needed[BACKLOG_OPS] == BACKLOG_OPS  # at the bound: the whole queue ahead
    assert Pacer(BACKLOG_OPS, BACKLOG_OPS).drain_needed(BACKLOG_OPS) == 0  # pacing off


async def test_past_the_pacing_mark_a_write_returns_once_its_share_of_the_queue_committed(
    tmp_path,
):
    settings = StoreSettings(
        durable_ack=False, batch_max=1, pacing_ops=PACING_OPS, backlog_ops=BACKLOG_OPS
    )
    async with await Store.open(tmp_path / "sessions.db", settings) as store:
        await store.save_session(session_row())
        await store.flush()
        base = store.stats().ops
        committed_when_returned: dict[str, int] = {}

        async def write(name: str, seq: int) -> None:
            await store.write(message("s1", seq))
            committed_when_returned[name] = store.stats().ops - base

        async with writer_held(store):
            for seq in range(1, PACING_OPS + 1):
                store.write_nowait(message("s1", seq))
            unpaced = asyncio.ensure_future(write("at the mark", 100))  # finds 4 queued
            await asyncio.sleep(0)
            near = asyncio.ensure_future(write("just past it", 101))  # finds 5: needs 2
            await asyncio.sleep(0)
            for seq in range(6, 9):
                store.write_nowait(message("s1", seq))
            far = asyncio.ensure_future(write("further past", 102))  # finds 9: needs 8
            for _ in range(5):
                await asyncio.sleep(0)
            assert unpaced.done() and not near.done() and not far.done()
            assert store.stats().paced_writes == 2
        await asyncio.gather(near, far)
        await store.flush()
        stats = store.stats()
    # One op a batch: each returned as soon as its share was through, not later.
    assert committed_when_returned == {"at the mark": 0, "just past it": 2, "further past": 8}
    assert (stats.paced_writes, stats.backlog_writes, stats.ops - base) == (2, 0, 10)


async def test_a_write_that_finds_the_queue_full_waits_for_its_own_commit(tmp_path):
    settings = StoreSettings(
        durable_ack=False, batch_max=4, pacing_ops=PACING_OPS, backlog_ops=BACKLOG_OPS
    )
    async with await Store.open(tmp_path / "sessions.db", settings) as store:
        await store.save_session(session_row())
        await store.flush()
        base = store.stats().ops
        async with writer_held(store):
            for seq in range(1, BACKLOG_OPS + 1):
                store.write_nowait(message("s1", seq))
            full = asyncio.ensure_future(store.write(message("s1", 99)))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not full.done()
        await full
        stats = store.stats()
        assert (stats.backlog_writes, stats.paced_writes) == (1, 0)
        assert stats.ops - base == BACKLOG_OPS + 1  # its own op was committed when it returned


async def test_durable_writes_are_never_paced(tmp_path):
    settings = StoreSettings(batch_max=4, pacing_ops=0, backlog_ops=BACKLOG_OPS)
    async with await Store.open(tmp_path / "sessions.db", settings) as store:
        await store.save_session(session_row())
        await asyncio.gather(*(store.write(message("s1", seq)) for seq in range(1, 30)))
        stats = store.stats()
    assert (stats.paced_writes, stats.backlog_writes) == (0, 0)


async def test_while_writes_are_paced_the_writer_takes_small_batches(tmp_path):
    """Paced writes are let go as batches finish: above pacing_ops the batches are at most
    paced_batch_max ops, so each step of the pacing is short; at or below it, batch_max."""
    settings = StoreSettings(
        durable_ack=False, batch_max=8, paced_batch_max=2,
        pacing_ops=PACING_OPS, backlog_ops=BACKLOG_OPS,
    )
    async with await Store.open(tmp_path / "sessions.db", settings) as store:
        await store.save_session(session_row())
        await store.flush()
        before = store.stats()
        async with writer_held(store):
            for seq in range(1, 11):  # 10 queued: 6 past the pacing mark
                store.write_nowait(message("s1", seq))
        await store.flush()
        after = store.stats()
    # 10 -> 8 -> 6 -> 4 in batches of 2 while past the mark, then the 4 left in one batch.
    assert (after.ops - before.ops, after.batches - before.batches) == (10, 4)


async def test_durable_writes_take_whole_batches_however_deep_the_queue(tmp_path):
    settings = StoreSettings(
        batch_max=8, paced_batch_max=2, pacing_ops=PACING_OPS, backlog_ops=BACKLOG_OPS
    )
    async with await Store.open(tmp_path / "sessions.db", settings) as store:
        await store.save_session(session_row())
        await store.flush()
        before = store.stats()
        async with writer_held(store):
            writes = [asyncio.ensure_future(store.write(message("s1", n))) for n in range(1, 11)]
        await asyncio.gather(*writes)
        after = store.stats()
    assert (after.ops - before.ops, after.batches - before.batches) == (10, 2)  # 8, then 2
