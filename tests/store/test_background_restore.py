"""A large store is paged in after open() returns: every session is served meanwhile, none
that ends comes back, and a user past the cap once theirs are in is trimmed to it."""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, errors
from engine.background_restore import BackgroundRestore
from engine.sessions import SessionRegistry
from engine.store import SessionRecord, Store


async def stored_sessions(config, users: int, per_user: int = 1) -> list:
    """Sessions written by one engine, which then closes: a store to restart on; in id order,
    the first three with a turn each."""
    async with Engine(config) as engine:
        created = sorted(
            [
                await engine.create_session(f"user{u}")
                for u in range(users) for _ in range(per_user)
            ],
            key=lambda s: s.session_id,
        )
        for s in created[:3]:  # in the first page: the last ones have no turn yet
            await engine.send(s.session_id, s.token, "hello")
    return created


async def test_open_returns_after_one_page_and_the_rest_follow(make_config):
    config = make_config(sessions={"restore_page_sessions": 10})
    created = await stored_sessions(config, 45)
    async with Engine(config) as engine:
        report = engine.restore_report
        assert report is not None and (report.sessions, report.pending) == (45, 35)
        assert len(engine.snapshot().sessions) == 10  # the first page, in id order
        assert engine.snapshot().cache.restoring == 35
        final = await engine.restored()
        assert (final.sessions, final.pending, final.messages) == (45, 0, 6)
        snap = engine.snapshot()
        assert {v.session_id for v in snap.sessions} == {s.session_id for s in created}
        assert snap.cache.restoring == 0 and snap.cache.cold == 45


async def test_sessions_not_paged_in_yet_are_served_and_unknown_ids_refused_alike(make_config):
    config = make_config(sessions={"restore_page_sessions": 10})
    created = await stored_sessions(config, 60)
    last = created[-1]  # paged in last
    async with Engine(config) as engine:
        assert engine.restore_report.pending == 50
        reply = await engine.send(last.session_id, last.token, "straight away")
        assert reply.text
        with pytest.raises(errors.AuthenticationError) as unknown:
            await engine.send("f" * 32, last.token, "nobody's")
        with pytest.raises(errors.AuthenticationError) as wrong:
            await engine.send(created[-2].session_id, "not-the-token", "wrong")
        assert type(unknown.value) is type(wrong.value)
        assert str(unknown.value) == str(wrong.value)
        await engine.restored()
        assert engine.snapshot().sessions_by_id[last.session_id].turns == 1


async def test_a_session_ended_while_paging_is_not_brought_back(make_config):
    config = make_config(sessions={"restore_page_sessions": 10})
    created = await stored_sessions(config, 40)
    ended = created[-1]
    async with Engine(config) as engine:
        await engine.end_session(ended.session_id, ended.token)
        await engine.restored()
        assert ended.session_id not in engine.snapshot().sessions_by_id
        assert len(engine.snapshot().sessions) == 39
    async with Engine(config) as engine:  # and it was ended in the store too
        await engine.restored()
        assert ended.session_id not in engine.snapshot().sessions_by_id
        with pytest.raises(errors.AuthenticationError):
            await engine.history(ended.session_id, ended.token)


def held_cold(registry: SessionRegistry):
    """What the engine's adopt does, without quotas and placement: the session as a row."""

    def adopt(record: SessionRecord) -> None:
        assert registry.adopt_row(record.row, record.figures)

    return adopt


async def test_a_user_past_the_cap_once_paged_in_keeps_the_most_recently_active(
    make_config, clock
):
    """Paging by hand: what a page brings back is trimmed to the cap, never a busy session."""
    config = make_config(sessions={"restore_page_sessions": 10, "max_per_user": 2})
    async with Engine(config) as engine:
        stored = [await engine.create_session("carol") for _ in range(2)]
        clock.advance(5)
        await engine.send(stored[0].session_id, stored[0].token, "I am the recent one")
        store = engine.store
        records = [await store.load_record(s.session_id) for s in stored]
    registry = SessionRegistry(
        max_per_user=2, idle_timeout_s=3600, lifetime_s=86400,
        context_max_messages=50, context_max_bytes=65536,
    )
    paging = BackgroundRestore(
        registry=registry, store=lambda: pytest.fail("adopting a page reads nothing"),
        adopt=held_cold(registry), persist_later=lambda *ops: None, clock=clock,
        enforce_cap=True, page_sessions=10,
    )
    clock.advance(1)
    newer = registry.create("carol", {}, clock.now())  # created while paging
    registry.begin_turn(newer)
    paging.adopt_page([r for r in records if r is not None])
    held = {s.session_id for s in registry.of_user("carol")}
    assert held == {newer.session_id, stored[0].session_id}
    assert registry.event_counts["evicted"] == 1
    assert not paging.running  # a short page is the last


async def test_an_id_asked_for_before_its_page_is_read_on_its_own(make_config, clock):
    """Paging by hand on the real store: `ensure` brings in one id past the pages read, and
    the page that holds it later skips it; an unknown id brings in nothing."""
    config = make_config()
    created = await stored_sessions(config, 12)
    registry = SessionRegistry(
        max_per_user=5, idle_timeout_s=3600, lifetime_s=86400,
        context_max_messages=50, context_max_bytes=65536,
    )
    async with await Store.open(config.store.db_path, config.store) as store:
        paging = BackgroundRestore(
            registry=registry, store=lambda: store, adopt=held_cold(registry),
            persist_later=lambda *ops: None, clock=clock, enforce_cap=True, page_sessions=5,
        )
        paging.adopt_page(await paging.read_page())
        assert len(registry) == 5
        late = created[-1].session_id
        await paging.ensure(late)
        await paging.ensure("0" * 32)  # stored nowhere
        await paging.ensure(created[0].session_id)  # paged in already: not adopted twice
        assert len(registry) == 6 and registry.get(late) is not None
        held = registry.get(late)
        while paging.running:
            paging.adopt_page(await paging.read_page())
        assert len(registry) == 12 and registry.get(late) is held
        assert paging.restored == 12


async def test_open_does_not_wait_for_a_slow_count_of_the_stored_sessions(
    make_config, monkeypatch
):
    """Counting a million stored sessions reads a whole index (seconds when the file is not
    in the OS's cache): open() waits for the count a quarter second at most. Until it lands
    the report says how many were paged in, and nothing about how many remain."""
    config = make_config(sessions={"restore_page_sessions": 10})
    created = await stored_sessions(config, 25)
    counted = asyncio.Event()
    count_sessions = Store.count_sessions

    async def slow_disk(store: Store) -> int:
        await counted.wait()
        return await count_sessions(store)

    monkeypatch.setattr(Store, "count_sessions", slow_disk)
    async with Engine(config) as engine:
        report = engine.restore_report
        assert report is not None and (report.sessions, report.pending) == (10, 0)
        reply = await engine.send(created[-1].session_id, created[-1].token, "already?")
        assert reply.text  # served before its page and before the count
        counted.set()
        final = await engine.restored()
        assert (final.sessions, final.pending) == (25, 0)
        assert len(engine.snapshot().sessions) == 25
