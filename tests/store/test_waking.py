"""The writer's waiters resume a share per loop iteration, so a big batch never holds the loop.

On a real event loop, and on a real SQLite store for the writer's own use of it: the order in
which resumed writes and a ticking task run is recorded, never a clock.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.store import Store
from engine.store.waking import PER_ITERATION, Waker
from tests.store.test_store import message, session_row, writer_held


async def test_a_share_is_settled_at_once_and_the_rest_one_share_per_iteration():
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(2 * PER_ITERATION + 3)]
    Waker(loop).settle((future, None) for future in futures)
    settled = [sum(future.done() for future in futures)]
    while settled[-1] < len(futures):
        await asyncio.sleep(0)
        settled.append(sum(future.done() for future in futures))
    assert settled == [PER_ITERATION, 2 * PER_ITERATION, len(futures)]
    assert all(future.result() is None for future in futures)


async def test_failures_keep_their_error_and_a_cancelled_waiter_is_skipped():
    loop = asyncio.get_running_loop()
    cancelled, failed, succeeded = (loop.create_future() for _ in range(3))
    cancelled.cancel()
    Waker(loop).settle([(cancelled, None), (failed, ValueError("disk full")), (succeeded, None)])
    assert cancelled.cancelled()
    with pytest.raises(ValueError, match="disk full"):
        failed.result()
    assert succeeded.result() is None


async def test_settling_while_shares_wait_keeps_the_order():
    loop = asyncio.get_running_loop()
    waker = Waker(loop, per_iteration=2)
    order: list[int] = []
    futures = [loop.create_future() for _ in range(6)]
    for n, future in enumerate(futures):
        future.add_done_callback(lambda _, n=n: order.append(n))
    waker.settle((future, None) for future in futures[:4])
    waker.settle((future, None) for future in futures[4:])  # behind the two still waiting
    await asyncio.gather(*futures)
    assert order == list(range(6))


async def test_other_work_on_the_loop_runs_between_the_shares_of_a_big_batch(tmp_path):
    async with await Store.open(tmp_path / "s.db") as store:
        await store.write(session_row("s1"))
        events: list[str] = []
        writes_done = asyncio.Event()
        count = 3 * PER_ITERATION

        async def write(n: int) -> None:
            await store.write(message("s1", n))
            events.append("write")
            if events.count("write") == count:
                writes_done.set()

        async def tick() -> None:
            while not writes_done.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        async with writer_held(store):
            writes = [asyncio.ensure_future(write(n)) for n in range(1, count + 1)]
        ticker = asyncio.ensure_future(tick())
        await asyncio.gather(*writes, ticker)
    first, last = events.index("write"), len(events) - events[::-1].index("write")
    runs = "".join("w" if e == "write" else "." for e in events[first:last]).split(".")
    assert max(len(run) for run in runs) <= PER_ITERATION  # never the whole batch in a row
    assert sum(len(run) for run in runs) == count
