"""A console attached to one worker lists the sessions other workers serve: each worker
publishes the sessions it changed last (a bounded share) and reads the others'. Real Valkey
and PostgreSQL, real engines."""

from __future__ import annotations

import pytest

from console.cluster_sessions import listed_sessions
from console.screens.dashboard import DashboardScreen
from console.screens.detail import SessionDetailScreen
from engine.cluster.session_board import PUBLISHED
from engine.errors import AuthenticationError
from engine.views import SessionViews
from tests.cluster.engines import workers
from tests.cluster.test_cluster_views import NotingConsole, fast, until
from tests.console.rendered import screen_text


def published_by(engine, worker_id: str):
    return next((w.sessions for w in engine.snapshot().cluster.sessions
                 if w.worker_id == worker_id), ())


async def test_a_session_served_on_another_worker_is_listed_with_it_and_opens(worker_config):
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        mine = await one.create_session("amy")
        theirs = await two.create_session("bea")  # w1 never saw it
        await two.send(theirs.session_id, theirs.token, "said on w2")
        assert not one.operator.session_exists(theirs.session_id)
        await until(lambda: any(v.turns == 1 for v in published_by(one, "w2")), "w2's session")

        app = NotingConsole(engine=one, refresh_hz=0.25)  # refreshed by the test
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            assert isinstance(app.screen, DashboardScreen)
            rows = {v.session_id: v for v in app.screen.table.rows}
            assert set(rows) == {mine.session_id, theirs.session_id}
            assert rows[theirs.session_id].worker == "@w2"
            assert (rows[theirs.session_id].user_id, rows[theirs.session_id].messages) == (
                "bea", 2
            )
            assert not rows[mine.session_id].worker.startswith("@")  # held here
            assert "@w2" in screen_text(app)

            while app.screen.table.cursor_key != theirs.session_id:
                await pilot.press("down")
            await pilot.press("enter")  # opened through Operator.locate: read from the store
            await until(lambda: isinstance(app.screen, SessionDetailScreen), "the detail")
            assert app.screen.session_id == theirs.session_id
            await until(lambda: "said on w2" in screen_text(app), "w2's conversation")

        # Held here now: listed once, as this worker's own.
        sessions, index = listed_sessions(one.snapshot())
        assert [v.session_id for v in sessions].count(theirs.session_id) == 1
        assert not index[theirs.session_id].worker.startswith("@")


async def test_a_worker_publishes_a_bounded_share_the_most_recently_active_first(
    worker_config, clock
):
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = [await two.create_session(f"u{n:03d}") for n in range(PUBLISHED + 20)]
        assert len(created) < SessionViews.RECENT_MAX  # all still remembered as recent
        first = created[0]
        clock.advance(5)
        await two.send(first.session_id, first.token, "the oldest, active again")

        def newest_first():
            views = published_by(one, "w2")
            return views if views and views[0].session_id == first.session_id else None

        views = await until(newest_first, "w2's sessions, the one active last first")
        assert len(views) == PUBLISHED
        times = [v.last_active_at for v in views]
        assert times == sorted(times, reverse=True) and times[0] > times[1]
        # The oldest ones not active since are left out: only so many are published.
        assert {v.session_id for v in views}.isdisjoint(c.session_id for c in created[1:21])
        assert len(listed_sessions(one.snapshot())[0]) == PUBLISHED


async def test_a_session_listed_from_another_worker_can_be_ended_here(worker_config):
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        theirs = await two.create_session("cal")
        await until(lambda: published_by(one, "w2"), "w2's session")
        app = NotingConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            assert app.screen.table.cursor_key == theirs.session_id  # the only row
            await pilot.press("ctrl+d", "y")
            await until(lambda: f"Session {theirs.session_id[:8]}… ended." in app.notices,
                        "the end")
        assert await one.store.load_record(theirs.session_id) is None
        with pytest.raises(AuthenticationError):  # w2 finds it ended at its next use
            await two.history(theirs.session_id, theirs.token)


async def test_any_session_opens_by_its_id_wherever_it_is_served(worker_config):
    """A session beyond what its worker publishes is in no table of w1's console: `o` and its
    whole id open it from the shared store; the start of a listed one opens that one."""
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        hidden = await two.create_session("cal")
        await two.send(hidden.session_id, hidden.token, "said on w2, long ago")
        for n in range(PUBLISHED):  # newer sessions fill w2's published share
            await two.create_session(f"later{n}")
        await until(
            lambda: len(published_by(one, "w2")) == PUBLISHED
            and all(v.session_id != hidden.session_id for v in published_by(one, "w2")),
            "w2's newest sessions on w1, without cal's",
        )
        shown = published_by(one, "w2")[0].session_id

        app = NotingConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            assert hidden.session_id not in {v.session_id for v in app.screen.table.rows}
            await pilot.press("o", *hidden.session_id, "enter")
            await until(lambda: isinstance(app.screen, SessionDetailScreen), "the detail")
            assert app.screen.session_id == hidden.session_id
            await until(lambda: "said on w2, long ago" in screen_text(app), "w2's conversation")

            await pilot.press("escape")
            await pilot.press("o", *f"{shown[:8]}…", "enter")  # as the table shows it
            await until(lambda: isinstance(app.screen, SessionDetailScreen), "the listed one")
            assert app.screen.session_id == shown
