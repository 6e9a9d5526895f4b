"""A snapshot builds a bounded number of session views: a store of a million restored sessions
must not hold the loop for the seconds their views take. The rest come with the next snapshots
(or `refresh_views`), and the snapshot says how many are still to come."""

from __future__ import annotations

import asyncio

from engine import Engine

STORED = 300
BOUND = 40


async def stored_sessions(config, count: int) -> dict[str, object]:
    """`count` sessions written and closed: the next open holds them as packed cold rows."""
    created = {}
    async with Engine(config) as engine:
        for n in range(count):
            s = await engine.create_session(f"user{n:03d}")
            created[s.session_id] = s
        one = next(iter(created.values()))
        await engine.send(one.session_id, one.token, "hello")
    return created


async def test_a_snapshot_builds_at_most_its_bound_and_the_next_ones_list_every_session(
    make_config,
):
    config = make_config(monitor={"snapshot_views": BOUND})
    created = await stored_sessions(config, STORED)
    async with Engine(config) as engine:
        await engine.restored()
        first = engine.snapshot()
        assert len(first.sessions) == BOUND  # not one more, with 300 to list
        assert first.unlisted == STORED - BOUND and first.live_sessions == STORED
        assert {v.state for v in first.sessions} == {"cold"}

        # A session used meanwhile is listed at the next snapshot, ahead of the pass.
        used = created[sorted(set(created) - set(first.sessions_by_id))[-1]]
        await engine.send(used.session_id, used.token, "back again")

        seen = dict(first.sessions_by_id)
        snapshots = 1
        while True:
            snapshot = engine.snapshot()
            snapshots += 1
            new = set(snapshot.sessions_by_id) - set(seen)
            assert len(new) <= BOUND
            if snapshots == 2:
                assert used.session_id in new
                assert snapshot.sessions_by_id[used.session_id].state == "idle"
            seen.update(snapshot.sessions_by_id)
            assert snapshot.live_sessions == STORED
            if not snapshot.unlisted:
                break
            assert snapshots < 3 * STORED // BOUND, "snapshots stopped listing sessions"
        assert set(snapshot.sessions_by_id) == set(created)
        assert snapshots >= STORED // BOUND  # the bound held all the way
        assert snapshot.sessions_by_id[used.session_id].turns == 1
        assert sum(v.state == "cold" for v in snapshot.sessions) == STORED - 1


async def test_sessions_paged_in_while_views_are_listed_are_listed_too(make_config):
    """A big store is paged in after open() returns: rows added during a pass over the
    registry are found by the next pass."""
    config = make_config(
        monitor={"snapshot_views": BOUND}, sessions={"restore_page_sessions": 50},
    )
    created = await stored_sessions(config, STORED)
    async with Engine(config) as engine:
        for _ in range(10 * STORED):
            snapshot = engine.snapshot()
            assert snapshot.cache is not None
            if not snapshot.unlisted and not snapshot.cache.restoring:
                break
            await asyncio.sleep(0.001)  # paging runs between snapshots
        assert set(snapshot.sessions_by_id) == set(created)


async def test_refresh_views_lists_sessions_between_snapshots_within_its_limit(make_config):
    config = make_config(monitor={"snapshot_views": BOUND})
    created = await stored_sessions(config, STORED)
    async with Engine(config) as engine:
        await engine.restored()
        assert engine.refresh_views(100) == STORED - 100  # due: none stale, 200 unlisted
        snapshot = engine.snapshot()
        assert len(snapshot.sessions) == 100 + BOUND
        assert engine.refresh_views(1000) == 0
        assert set(engine.snapshot().sessions_by_id) == set(created)


async def test_the_detail_of_an_unlisted_session_builds_its_view_alone(make_config):
    config = make_config(monitor={"snapshot_views": BOUND})
    created = await stored_sessions(config, STORED)
    async with Engine(config) as engine:
        await engine.restored()
        listed = engine.snapshot().sessions_by_id
        unlisted = sorted(set(created) - set(listed))[0]
        detail = engine.operator.inspect(unlisted)
        assert detail is not None and detail.view.session_id == unlisted
        assert len(engine.snapshot().sessions) == 2 * BOUND + 1  # that one, and a batch
