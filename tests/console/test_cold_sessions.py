"""Sessions live in the store; memory caches the hot ones. Start-up reads no message, a session
warms on first use, idle ones go cold, and cold ones still expire, evict, count and rotate."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from rendered import screen_text
from test_console import console_for, open_detail, refreshed

from console.screens.dashboard import cache_summary
from engine import Engine, errors
from engine.config import SimSettings
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit
from engine.views import CacheView
from widgets import VirtualTable


def cache(engine: Engine):
    snapshot = engine.snapshot()
    assert snapshot.cache is not None
    return snapshot.cache


async def stored_engine(config, users: int = 2, turns: int = 2):
    """Sessions with a conversation each, written and closed: the next open finds them cold."""
    created = []
    async with Engine(config) as engine:
        for n in range(users):
            s = await engine.create_session(f"user-{n}")
            for t in range(turns):
                await engine.send(s.session_id, s.token, f"{n} says {t}")
            created.append((s, await engine.history(s.session_id, s.token)))
    return created


async def test_open_restores_every_session_cold_and_the_first_use_warms_it(make_config):
    config = make_config()
    (a, a_history), (b, _) = await stored_engine(config)
    async with Engine(config) as engine:
        stats = cache(engine)
        assert (stats.hot, stats.cold, stats.loads) == (0, 2, 0)
        views = engine.snapshot().sessions_by_id
        assert views[a.session_id].state == "cold" and views[a.session_id].messages == 4
        assert engine.restore_report.messages == 8  # counted, not read

        assert await engine.history(a.session_id, a.token) == a_history
        stats = cache(engine)
        assert (stats.hot, stats.cold, stats.loads) == (1, 1, 1)
        assert engine.snapshot().sessions_by_id[a.session_id].state == "idle"
        await engine.send(a.session_id, a.token, "and more")
        assert cache(engine).hits == 1 and cache(engine).loads == 1
        assert len(await engine.history(a.session_id, a.token)) == 6

        # A cold session, a wrong token and an unknown id refuse alike.
        for sid, token in ((b.session_id, "wrong"), ("0" * 32, b.token), (a.session_id, "x")):
            with pytest.raises(errors.AuthenticationError):
                await engine.send(sid, token, "hello")
        assert cache(engine).loads == 1  # refusing loaded nothing


async def test_a_restored_session_is_placed_on_a_worker_only_by_a_right_token(make_config):
    """Restored sessions are packed rows (engine.cold_records) until first used: a wrong token
    checks the row's token hash and leaves it a row; the right one makes it a session object,
    placed on a worker lane."""
    config = make_config()
    (a, _), (b, _) = await stored_engine(config)

    def placed(engine: Engine) -> int:
        return sum(worker.sessions for worker in engine.snapshot().workers)

    async with Engine(config) as engine:
        assert placed(engine) == 0 and engine.snapshot().users == 2
        for token in ("wrong", a.token, b.token + "x"):
            with pytest.raises(errors.AuthenticationError):
                await engine.check(b.session_id, token)
        assert placed(engine) == 0
        await engine.check(a.session_id, a.token)
        assert placed(engine) == 1
        assert engine.snapshot().users == 2 and len(engine.snapshot().sessions) == 2
        await engine.end_session(b.session_id, b.token)
        assert engine.snapshot().users == 1 and len(engine.snapshot().sessions) == 1


async def test_a_session_idle_past_hot_idle_s_is_a_packed_row_again_until_used(
    make_config, clock
):
    """Memory follows the sessions in use: a session used since open, idle past hot_idle_s,
    leaves its worker lane and monitor stats with its context, and is a packed row again
    (engine.cold_records); the next right token brings back its history and counters."""
    config = make_config(sessions={"hot_idle_s": 10})

    def placed(engine: Engine) -> int:
        return sum(worker.sessions for worker in engine.snapshot().workers)

    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, "remember this")
        before = await engine.history(s.session_id, s.token)
        assert placed(engine) == 1
        clock.advance(11)
        engine.housekeep()
        assert placed(engine) == 0 and cache(engine).hot == 0
        view = engine.snapshot().sessions_by_id[s.session_id]
        assert (view.state, view.turns, view.messages) == ("cold", 1, 2)
        with pytest.raises(errors.AuthenticationError):
            await engine.check(s.session_id, "wrong")
        assert placed(engine) == 0  # a wrong token leaves it a row
        await engine.send(s.session_id, s.token, "still there?")
        assert placed(engine) == 1
        history = await engine.history(s.session_id, s.token)
        assert history[:2] == before and len(history) == 4
        assert engine.snapshot().sessions_by_id[s.session_id].turns == 2


async def test_an_idle_session_goes_cold_and_warms_again_with_its_context(make_config, clock):
    config = make_config(sessions={"hot_idle_s": 10})
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, "remember this")
        before = await engine.history(s.session_id, s.token)
        clock.advance(5)
        engine.housekeep()
        assert cache(engine).hot == 1
        clock.advance(6)
        engine.housekeep()
        stats = cache(engine)
        assert (stats.hot, stats.cold, stats.hot_bytes) == (0, 1, 0)
        assert engine.snapshot().sessions_by_id[s.session_id].messages == 2
        reply = await engine.send(s.session_id, s.token, "still there?")
        assert reply.text
        history = await engine.history(s.session_id, s.token)
        assert history[:2] == before and len(history) == 4
        assert cache(engine).loads == 1


async def test_a_cold_session_expires_without_being_loaded(make_config, clock):
    config = make_config(sessions={"idle_timeout_s": 60})
    (s, _), (other, _) = await stored_engine(config)
    async with Engine(config) as engine:
        clock.advance(30)
        await engine.check(other.session_id, other.token)  # keeps the other one alive
        clock.advance(31)
        assert engine.housekeep() == 1
        assert s.session_id not in engine.snapshot().sessions_by_id
        assert cache(engine).loads == 0
        with pytest.raises(errors.AuthenticationError):
            await engine.send(s.session_id, s.token, "too late")
    with sqlite3.connect(config.store.db_path) as db:
        rows = db.execute("select count(*) from messages where session_id = ?", (s.session_id,))
        assert rows.fetchone() == (0,)  # expired while cold: shredded like a hot one


async def test_the_per_user_cap_evicts_a_cold_session_without_loading_it(make_config):
    config = make_config(sessions={"max_per_user": 2})
    async with Engine(config) as engine:
        first = await engine.create_session("alice")
        await engine.send(first.session_id, first.token, "oldest")
        second = await engine.create_session("alice")
    async with Engine(config) as engine:
        third = await engine.create_session("alice")
        ids = set(engine.snapshot().sessions_by_id)
        assert len(ids) == 2 and third.session_id in ids
        assert ids < {first.session_id, second.session_id, third.session_id}
        assert cache(engine).loads == 0
        assert engine.snapshot().session_events["evicted"] == 1


async def test_quota_windows_counters_and_token_rotation_work_while_cold(make_config, clock):
    tiers = {"small": {**DEFAULT_TIERS["free"], "api_calls": QuotaLimit(3, 60.0)}}
    config = make_config(limits={"tiers": tiers, "default_tier": "small"})
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        for text in ("one", "two"):
            await engine.send(s.session_id, s.token, text)
    clock.advance(1)
    async with Engine(config) as engine:
        usage = {u.resource: u for u in engine.operator.quota_usage("alice")}
        assert usage["api_calls"].used == 2  # the window came back with the session cold
        view = engine.snapshot().sessions_by_id[s.session_id]
        assert (view.turns, view.state) == (2, "cold")
        new_token = await engine.rotate_token(s.session_id, s.token)
        assert cache(engine).loads == 0  # rotation reads the compact record only
        with pytest.raises(errors.AuthenticationError):
            await engine.check(s.session_id, s.token)
        await engine.send(s.session_id, new_token, "three")
        with pytest.raises(errors.QuotaExceeded):
            await engine.send(s.session_id, new_token, "four")
        clock.advance(61)
        await engine.send(s.session_id, new_token, "the window moved on")


async def test_a_busy_session_is_never_demoted(make_config, clock):
    config = make_config(
        sessions={"hot_idle_s": 1, "hot_budget_bytes": 1},
        llm={"sim": SimSettings(median_latency_s=0.05, p99_latency_s=0.06, seed=1)},
    )
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        turn = asyncio.create_task(engine.send(s.session_id, s.token, "take your time"))
        while engine.snapshot().sessions_by_id[s.session_id].state != "busy":
            await asyncio.sleep(0)
        clock.advance(5)  # idle-old and over budget, but busy
        engine.housekeep()
        assert cache(engine).hot == 1
        assert (await turn).text
        clock.advance(5)
        engine.housekeep()
        assert cache(engine).hot == 0
        assert len(await engine.history(s.session_id, s.token)) == 2


async def test_the_cache_bound_holds_under_thousands_of_concurrent_first_turns(make_config):
    config = make_config(
        store={"durability": "process"}, sessions={"max_per_user": 5},
        limits={"user_rate": RateLimit(rate_per_s=100.0, burst=100)},
    )
    created = []
    async with Engine(config) as engine:
        for n in range(2000):
            s = await engine.create_session(f"user-{n // 5}")
            created.append(s)
        await engine.send(created[0].session_id, created[0].token, "size me")
        per_session = cache(engine).hot_bytes // len(created) + 1
    budget = 50 * per_session
    async with Engine(make_config(
        store={"durability": "process"}, sessions={"max_per_user": 5, "hot_budget_bytes": budget},
        limits={"user_rate": RateLimit(rate_per_s=100.0, burst=100)},
    )) as engine:
        peak_over = 0

        async def watch() -> None:
            nonlocal peak_over
            while True:
                snapshot = engine.snapshot()
                assert snapshot.cache is not None
                busy = sum(v.state == "busy" for v in snapshot.sessions)
                # Over budget only by sessions a turn holds: never by idle ones.
                peak_over = max(peak_over, snapshot.cache.hot - busy - 60)
                # A snapshot of 2,000 sessions at every turn of the loop made each store read
                # wait for one: a sample a millisecond still sees every load's effect.
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        replies = await asyncio.gather(
            *(engine.send(s.session_id, s.token, "first turn") for s in created)
        )
        watcher.cancel()
        assert all(r.text for r in replies)
        stats = cache(engine)
        assert stats.loads == 2000 and stats.hot_bytes <= budget
        assert peak_over <= 0
        assert len(await engine.history(created[0].session_id, created[0].token)) == 4


async def test_concurrent_first_uses_load_a_cold_session_once(make_config):
    config = make_config()
    (s, history), _ = await stored_engine(config)
    async with Engine(config) as engine:
        results = await asyncio.gather(
            *(engine.history(s.session_id, s.token) for _ in range(20))
        )
        assert all(r == history for r in results)
        assert cache(engine).loads == 1


async def test_corrupt_rows_make_only_their_session_unreadable_on_load(make_config):
    config = make_config()
    (bad, _), (good, good_history) = await stored_engine(config)
    with sqlite3.connect(config.store.db_path) as db:
        db.execute(
            "update sessions set wrapped_key = ? where session_id = ?",
            (b"gAAAAA-not-a-key", bad.session_id),
        )
    async with Engine(config) as engine:
        turns = await asyncio.gather(
            engine.send(bad.session_id, bad.token, "hello"),
            engine.send(good.session_id, good.token, "hello"),
            return_exceptions=True,
        )
        assert isinstance(turns[0], errors.AuthenticationError)
        assert not isinstance(turns[1], BaseException) and turns[1].text
        snapshot = engine.snapshot()
        assert [a.subject for a in snapshot.monitor.alerts if a.rule == "decryption"] == [
            bad.session_id
        ]
        assert bad.session_id not in snapshot.sessions_by_id
        assert snapshot.cache is not None and snapshot.cache.unreadable == 1
        assert (await engine.history(good.session_id, good.token))[:4] == good_history
    with sqlite3.connect(config.store.db_path) as db:  # left on disk, untouched
        (key,) = db.execute(
            "select wrapped_key from sessions where session_id = ?", (bad.session_id,)
        ).fetchone()
        assert key == b"gAAAAA-not-a-key"


async def test_the_console_lists_cold_sessions_and_opens_one(make_config, clock):
    config = make_config(sessions={"hot_idle_s": 10})
    async with Engine(config) as engine:
        created = []
        for n in range(3):
            s = await engine.create_session(f"user{n}")
            await engine.send(s.session_id, s.token, f"hello from user{n}")
            created.append(s)
        clock.advance(11)
        engine.housekeep()
        assert cache(engine).cold == 3
        app = console_for(engine)
        async with app.run_test(size=(140, 50)) as pilot:
            await refreshed(pilot)
            rows = app.screen.query_one("#sessions", VirtualTable).rows
            assert sorted(v.session_id for v in rows) == sorted(s.session_id for s in created)
            assert {v.state for v in rows} == {"cold"}
            assert "Cache  0 hot · 3 cold" in screen_text(app)  # the dashboard's cache figures
            detail = await open_detail(pilot, created[1].session_id)
            for _ in range(50):
                await pilot.pause()
                if "hello from user1" in str(detail.query_one("#conversation-text").render()):
                    break
            assert "hello from user1" in str(detail.query_one("#conversation-text").render())
            assert cache(engine).hot == 1 and cache(engine).cold == 2
            # Back on the dashboard, a second later: one load in that second.
            await pilot.press("escape")
            clock.advance(1)
            await refreshed(pilot)
            assert "Cache  1 hot · 2 cold · hit 75% · loads 1.0/s" in screen_text(app)


def test_the_cache_line_says_how_many_stored_sessions_are_still_being_paged_in():
    paging = CacheView(hot=0, cold=1000, hot_bytes=0, budget_bytes=2**28, hits=0, loads=0,
                       unreadable=0, restoring=999_000)
    assert cache_summary(paging, 0.0).endswith("· restoring 999,000 more")
    done = CacheView(hot=0, cold=1000, hot_bytes=0, budget_bytes=2**28, hits=0, loads=0,
                     unreadable=0)
    assert "restoring" not in cache_summary(done, 0.0)
    first_page_only = CacheView(hot=0, cold=0, hot_bytes=0, budget_bytes=2**28, hits=0,
                                loads=0, unreadable=0, restoring=5)
    assert cache_summary(first_page_only, 0.0).startswith("Cache  0 hot · 0 cold")
