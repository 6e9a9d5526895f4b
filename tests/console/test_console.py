"""Pilot tests of the console against a real engine (sim backend, manual clock, fixed ids)."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import threading
import types

import pytest
import uvloop
from rendered import screen_text
from textual.command import CommandPalette

import console.load
import engine.sessions
from console.app import SessionConsole
from console.load import STOP_GRACE_S
from console.screens.alerts import AlertsScreen
from console.screens.dashboard import DashboardScreen
from console.screens.detail import SessionDetailScreen
from console.screens.load import LoadScreen
from console.screens.modals import ConfirmScreen, ExportScreen, GotoScreen, HelpScreen
from console.screens.users import UsersScreen
from engine import errors
from loadgen import LoadOptions
from widgets import VirtualTable

SECRET = "sk-live-do-not-show-0123456789"


@pytest.fixture(autouse=True)
def fixed_session_ids(monkeypatch):
    """Session ids 0000...0001, 0000...0002, ... so rows and screenshots are reproducible."""
    counter = itertools.count(1)
    monkeypatch.setattr(engine.sessions, "new_session_id", lambda: f"{next(counter):032x}")


async def populate(engine, clock, users: int = 6, per_user: int = 2, turns: int = 2):
    """`users` users (tiers alternate free/pro), each with sessions that have a few turns."""
    created = []
    for u in range(users):
        for s in range(per_user):
            session = await engine.create_session(
                f"user{u:02d}", metadata={"tier": "pro" if u % 2 else "free", "api_key": SECRET}
            )
            created.append(session)
            for k in range((u + s) % (turns + 1)):
                clock.advance(0.5)
                await engine.send(session.session_id, session.token, f"question {k} from user{u}")
    clock.advance(3)
    return created


async def spend_calls(engine, clock, created, user: str, calls: int) -> None:
    """`calls` real turns of `user`, over their sessions in turn, paced within the rate limits."""
    sessions = [c for c in created if c.user_id == user]
    for k in range(calls):
        session = sessions[k % len(sessions)]
        clock.advance(1.0 / len(sessions))
        await engine.send(session.session_id, session.token, f"call {k}")


async def make_unhealthy(engine, session):
    """Three rate-limited sends in a row: the session's health drops and says why."""
    refused = 0
    for k in range(20):
        try:
            await engine.send(session.session_id, session.token, f"burst {k}")
        except errors.RateLimited:
            refused += 1
            if refused == 3:
                return


class NotingConsole(SessionConsole):
    """The console, keeping the text of every notification it shows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[str] = []

    def notify(self, message: str, **kwargs) -> None:
        self.notices.append(message)
        super().notify(message, **kwargs)


def console_for(engine, **kwargs) -> NotingConsole:
    kwargs.setdefault("refresh_hz", 0.25)  # tests drive refreshes themselves
    return NotingConsole(engine=engine, **kwargs)


def table_ids(app) -> list[str]:
    return [v.session_id for v in app.screen.query_one("#sessions", VirtualTable).rows]


async def refreshed(pilot):
    pilot.app.refresh_data(force=True)
    await pilot.pause()


async def listed(pilot):
    """Refreshed until the snapshot lists every live session: one builds a bounded number of
    views (monitor.snapshot_views), the next ones the rest."""
    await refreshed(pilot)
    while pilot.app.snapshot.unlisted:
        await refreshed(pilot)


# -- dashboard ---------------------------------------------------------------------------------


async def test_dashboard_shows_figures_sessions_pools_and_alerts(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        assert isinstance(app.screen, DashboardScreen)
        text = screen_text(app)
        assert "Sessions 12" in text
        assert "Turns/s" in text and "Tokens/s" in text and "Errors/s" in text and "p50" in text
        assert "Pools" in text and "assistant" in text
        assert "Alerts" in text
        assert len(table_ids(app)) == 12
        assert app.refreshes >= 1


async def test_sessions_table_sorts_by_key_and_reverses(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        await pilot.press("U")
        users = [v.user_id for v in app.screen.table.rows]
        assert users == sorted(users)
        await pilot.press("U")
        users = [v.user_id for v in app.screen.table.rows]
        assert users == sorted(users, reverse=True)
        await pilot.press("K")
        tokens = [v.tokens for v in app.screen.table.rows]
        assert tokens == sorted(tokens)
        assert "sort tokens" in screen_text(app)


async def test_header_click_sorts_by_that_column(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        table = app.screen.table
        await pilot.click(table, offset=(10, 0))  # the USER header
        await pilot.pause()
        assert app.screen.model.order.column == "user"
        users = [v.user_id for v in table.rows]
        assert users == sorted(users)


async def test_filter_by_user_state_and_health(engine, clock):
    created = await populate(engine, clock)
    await make_unhealthy(engine, created[0])
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        await pilot.press("slash", *"user:user03", "enter")
        await pilot.pause()
        assert {v.user_id for v in app.screen.table.rows} == {"user03"}
        await pilot.press("escape")
        assert len(table_ids(app)) == 12
        app.screen.model.set_filter("health<100")
        await refreshed(pilot)
        assert table_ids(app) == [created[0].session_id]
        app.screen.model.set_filter(created[1].session_id)
        await refreshed(pilot)
        assert table_ids(app) == [created[1].session_id]


async def test_bad_filter_is_reported_and_changes_nothing(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await refreshed(pilot)
        await pilot.press("slash", *"colour:red", "enter")
        await pilot.pause()
        assert len(table_ids(app)) == 12
        assert any("unknown filter" in n for n in app.notices)


async def test_unhealthy_toggle_shows_only_sessions_with_health_reasons(engine, clock):
    created = await populate(engine, clock)
    await make_unhealthy(engine, created[3])
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        await pilot.press("ctrl+z")
        assert table_ids(app) == [created[3].session_id]
        assert "unhealthy only" in screen_text(app)
        await pilot.press("z")
        assert len(table_ids(app)) == 12


async def test_table_follows_new_and_ended_sessions(engine, clock):
    created = await populate(engine, clock, users=2, per_user=1)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        assert len(table_ids(app)) == 2
        extra = await engine.create_session("newcomer")
        await engine.end_session(created[0].session_id, created[0].token)
        await refreshed(pilot)
        assert set(table_ids(app)) == {created[1].session_id, extra.session_id}


async def goto(pilot, text: str) -> None:
    """`o`, the id typed, Enter."""
    await pilot.press("o")
    await pilot.pause()
    assert isinstance(pilot.app.screen, GotoScreen)
    await pilot.press(*text, "enter")
    await pilot.pause()


async def test_o_opens_a_session_by_its_id_or_the_start_of_a_listed_one(engine, clock):
    created = await populate(engine, clock, users=2)
    ended = created.pop()
    await engine.end_session(ended.session_id, ended.token)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        await goto(pilot, created[2].session_id)
        assert isinstance(app.screen, SessionDetailScreen)
        assert app.screen.session_id == created[2].session_id
        await pilot.press("escape")
        await goto(pilot, "00000000")  # as the table shows them: every id starts so
        assert isinstance(app.screen, DashboardScreen)
        assert app.notices[-1].startswith("Several sessions start with '00000000': ")
        await goto(pilot, ended.session_id)
        assert app.notices[-1] == f"No live session {ended.session_id!r}: it ended, or never was."
        await goto(pilot, "abc")
        assert app.notices[-1].startswith("No listed session starts with 'abc'")
        assert isinstance(app.screen, DashboardScreen)


async def test_cursor_keys_move_and_enter_opens_detail(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        table = app.screen.table
        await pilot.press("down", "down", "j")
        assert table.cursor == 3
        await pilot.press("k")
        chosen = table.cursor_key
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionDetailScreen)
        assert app.screen.session_id == chosen
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("G")
        assert table.cursor == 11
        await pilot.press("g")
        assert table.cursor == 0


async def test_end_session_from_the_table_asks_first(engine, clock):
    created = await populate(engine, clock, users=2, per_user=1)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        target = app.screen.table.cursor_key
        await pilot.press("ctrl+d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert engine.operator.inspect(target) is not None
        await pilot.press("ctrl+d", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert engine.operator.inspect(target) is None
        assert target not in table_ids(app)
        assert len(created) == 2


# -- refresh loop ------------------------------------------------------------------------------


async def test_pause_freezes_refreshes_and_says_so(engine, clock):
    await populate(engine, clock, users=1, per_user=1)
    app = console_for(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await refreshed(pilot)
        await pilot.press("p")
        assert app.paused
        assert "PAUSED" in screen_text(app)
        before = app.refreshes
        assert app.refresh_data() is False
        await engine.create_session("late")
        assert app.refreshes == before
        await pilot.press("r")  # one step while paused
        assert app.refreshes == before + 1
        await pilot.press("p")
        assert not app.paused
        assert app.refresh_data() is True
        assert "PAUSED" not in screen_text(app)


async def test_a_tick_shows_its_snapshot_a_step_per_frame(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        await engine.create_session("late")
        assert app.refresh_data() is True
        # The snapshot was this slice's work: the view changes in the frames after it.
        assert app.showing and len(table_ids(app)) == 12
        assert app.refresh_data() is False  # a tick due meanwhile waits: no pile-up
        while app.showing:
            await pilot.pause()
        assert len(table_ids(app)) == 13
        assert "Sessions 13" in screen_text(app)
        assert app.refresh_data() is True


async def test_a_forced_refresh_replaces_a_tick_being_shown(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await refreshed(pilot)
        assert app.refresh_data() is True and app.showing
        await engine.create_session("late")
        await pilot.press("r")  # the operator's refresh shows everything at once
        assert not app.showing and len(table_ids(app)) == 13
        await pilot.pause()
        assert "Sessions 13" in screen_text(app)


async def test_views_rebuilt_between_ticks_are_what_the_snapshot_shows(engine, clock):
    created = await populate(engine, clock, users=2, per_user=2)
    before = engine.snapshot().sessions_by_id
    for session in created:
        clock.advance(1.0)
        await engine.send(session.session_id, session.token, "again")
    assert engine.refresh_views(1) == len(created) - 1  # one rebuilt, the others still due
    assert engine.refresh_views(100) == 0
    after = engine.snapshot().sessions_by_id
    assert all(after[s.session_id].turns == before[s.session_id].turns + 1 for s in created)


async def test_plus_and_minus_change_the_refresh_rate(engine):
    app = console_for(engine, refresh_hz=2.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("plus")
        assert app.refresh_hz == 4.0
        await pilot.press("minus", "minus")
        assert app.refresh_hz == 1.0
        for _ in range(10):
            await pilot.press("minus")
        assert app.refresh_hz == 0.25
        await pilot.pause()
        assert "0.25 Hz" in screen_text(app)


async def test_timer_refreshes_and_modals_stop_it(engine, clock):
    await populate(engine, clock, users=1, per_user=1)
    app = console_for(engine, refresh_hz=8.0)
    async with app.run_test(size=(100, 30)) as pilot:
        start = app.refreshes
        while app.refreshes < start + 2:  # the one-shot timer re-arms itself
            await pilot.pause(0.05)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert app.refresh_data() is False
        await pilot.press("escape")
        while app.showing:  # a tick that came as the help closed is still being shown
            await pilot.pause(0.05)
        assert app.refresh_data() is True


async def test_refresh_never_nests(engine):
    app = console_for(engine)
    async with app.run_test(size=(100, 30)):
        screen, nested = app.screen, []
        show = screen.show

        def show_and_refresh_again(snapshot):
            nested.append(app.refresh_data(force=True))  # e.g. a view reacting to its own update
            show(snapshot)

        screen.show = show_and_refresh_again
        assert app.refresh_data(force=True) is True
        assert nested == [False]


# -- help, command palette, export -------------------------------------------------------------


async def test_help_lists_the_keys_of_the_view_and_the_app(engine):
    app = console_for(engine)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for expected in ("Filter", "Unhealthy", "Sort by column", "Pause", "Export", "Alerts",
                         "health<60"):
            assert expected in text
        await pilot.press("question_mark")
        assert isinstance(app.screen, DashboardScreen)


async def test_command_palette_offers_the_same_actions(engine, clock):
    await populate(engine, clock, users=2, per_user=1)
    app = console_for(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Filter", "Unhealthy", "Sort by health", "Pause", "Export", "Alerts", "Users",
                "Load"} <= titles
        await pilot.press("colon")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"Pause")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.paused


@pytest.mark.parametrize("fmt", ["json", "csv"])
async def test_export_writes_the_current_view_and_names_the_file(engine, clock, tmp_path, fmt):
    await populate(engine, clock)
    app = console_for(engine, export_dir=tmp_path / "exports")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await refreshed(pilot)
        await pilot.press("U", "e")
        assert isinstance(app.screen, ExportScreen)
        await pilot.press("j" if fmt == "json" else "c")
        await app.workers.wait_for_complete()
        await pilot.pause()
        path = app.last_export
        assert path is not None and path.parent == tmp_path / "exports"
        assert path.suffix == f".{fmt}"
        assert any(str(path) in n for n in app.notices)
        content = path.read_text()
        assert SECRET not in content
        parse = json.loads if fmt == "json" else lambda t: list(csv.DictReader(t.splitlines()))
        rows = parse(content)
        assert len(rows) == 12
        assert "token" not in rows[0] and "api_key" not in rows[0]
        users = [r["user_id"] for r in rows]
        assert users == sorted(users)  # the view's order


async def test_export_can_be_cancelled(engine, tmp_path):
    app = console_for(engine, export_dir=tmp_path / "exports")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e", "escape")
        await pilot.pause()
        assert app.last_export is None
        assert not (tmp_path / "exports").exists()


# -- session detail ----------------------------------------------------------------------------


async def open_detail(pilot, session_id: str) -> SessionDetailScreen:
    app = pilot.app
    app.screen.model.set_filter(f"id:{session_id}")
    await refreshed(pilot)
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, SessionDetailScreen)
    await refreshed(pilot)
    return app.screen


async def test_detail_shows_metadata_health_counters_quota_and_conversation(engine, clock):
    created = await populate(engine, clock)
    target = created[3]
    await make_unhealthy(engine, target)
    app = console_for(engine)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        await open_detail(pilot, target.session_id)
        text = screen_text(app)
        assert target.session_id in text
        assert "user01" in text and "pro" in text
        assert "Health 90/100" in text and "rate limited 3 times" in text
        assert "Latency" in text and "p95" in text
        assert "api_calls" in text and "tokens" in text
        assert "burst 9" in text  # the decrypted conversation, scrolled to its end
        conversation = str(app.screen.query_one("#conversation-text").render())
        assert "question 0 from user1" in conversation
        assert SECRET not in text and "(hidden)" in text
        assert target.token not in text


async def test_user_content_appears_only_in_the_detail(engine, clock):
    await populate(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(160, 50)) as pilot:
        await refreshed(pilot)
        for key in ("", "a", "u"):
            if key:
                await pilot.press(key)
                await refreshed(pilot)
            assert "question" not in screen_text(app)


async def test_detail_end_session_with_confirmation(engine, clock):
    created = await populate(engine, clock)
    target = created[5]
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        detail = await open_detail(pilot, target.session_id)
        await pilot.press("ctrl+d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert engine.operator.inspect(target.session_id) is not None
        await pilot.press("ctrl+d", "y")
        await app.workers.wait_for_complete()
        await refreshed(pilot)
        assert engine.operator.inspect(target.session_id) is None
        assert detail.ended
        assert "Session ended" in screen_text(app)
        with pytest.raises(errors.AuthenticationError):
            await engine.history(target.session_id, target.token)


async def test_detail_rotate_token_invalidates_the_old_one_and_shows_no_token(engine, clock):
    created = await populate(engine, clock)
    target = created[2]
    app = console_for(engine)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await pilot.pause()
        await open_detail(pilot, target.session_id)
        await pilot.press("t")
        await pilot.pause()
        with pytest.raises(errors.AuthenticationError):
            await engine.history(target.session_id, target.token)
        messages = app.notices
        assert any("old one no longer works" in m for m in messages)
        assert engine.operator.inspect(target.session_id) is not None


async def test_detail_acknowledges_its_alerts(engine, clock):
    created = await populate(engine, clock)
    target = created[4]
    for k in range(6):  # an authentication burst against this session raises an alert about it
        with pytest.raises(errors.AuthenticationError):
            await engine.history(target.session_id, f"wrong-{k}")
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        detail = await open_detail(pilot, target.session_id)
        assert any(not a.acknowledged for a in detail.detail.alerts)
        await pilot.press("A")
        await refreshed(pilot)
        assert detail.detail.alerts and all(a.acknowledged for a in detail.detail.alerts)


# -- alerts, users, load -----------------------------------------------------------------------


async def raise_alerts(engine, clock, created):
    """A critical auth burst about one session, and warnings from a user near a quota."""
    for k in range(6):
        with pytest.raises(errors.AuthenticationError):
            await engine.history(created[0].session_id, f"wrong-{k}")
    await spend_calls(engine, clock, created, "user04", 48)  # 85% of a free tier's calls


@contextlib.asynccontextmanager
async def alerts_view(engine, clock):
    """The console on its alerts view, with alerts raised; yields the app, Pilot, sessions."""
    created = await populate(engine, clock)
    await raise_alerts(engine, clock, created)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a")
        await refreshed(pilot)
        assert isinstance(app.screen, AlertsScreen)
        yield app, pilot, created


async def test_alerts_view_filters_by_severity_and_acknowledges(engine, clock):
    async with alerts_view(engine, clock) as (app, pilot, _):
        table = app.screen.table
        severities = {line.alert.severity for line in table.rows}
        assert {"critical", "warning"} <= severities
        await pilot.press("s")  # critical only
        assert {line.alert.severity for line in table.rows} == {"critical"}
        await pilot.press("A")
        await pilot.pause()
        assert table.rows[0].alert.acknowledged
        await pilot.press("s")  # warnings
        assert {line.alert.severity for line in table.rows} == {"warning"}
        await pilot.press("ctrl+a")
        await pilot.pause()
        assert all(line.alert.acknowledged for line in table.rows)
        assert engine.snapshot().monitor.alerts_unacknowledged == 0


async def test_alerts_view_jumps_to_the_session(engine, clock):
    async with alerts_view(engine, clock) as (app, pilot, created):
        await pilot.press("s")  # critical: the auth burst about created[0]
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionDetailScreen)
        assert app.screen.session_id == created[0].session_id
        await pilot.press("escape")
        assert isinstance(app.screen, AlertsScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_users_view_shows_sessions_and_usage_gauges(engine, clock):
    created = await populate(engine, clock)
    await spend_calls(engine, clock, created, "user04", 51)  # 90% of a free tier's calls
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("u")
        await refreshed(pilot)
        assert isinstance(app.screen, UsersScreen)
        table = app.screen.table
        assert len(table.rows) == 6
        text = screen_text(app)
        assert "Usage of" in text and "api_calls" in text and "reset" in text
        while table.cursor_key != "user04":
            await pilot.press("down")
        await pilot.pause()
        text = screen_text(app)
        assert "Usage of user04 (free) · 2 session(s)" in text
        calls = next(u for u in engine.operator.quota_usage("user04") if u.resource == "api_calls")
        assert calls.percent >= 90 and f"{calls.used:.0f}/60" in text


async def populate_users(engine, clock):
    """Six users whose session counts, tiers and call quotas order them differently."""
    created = await populate(engine, clock)  # two sessions each; odd users are pro
    await spend_calls(engine, clock, created, "user00", 29)  # 50% of a free tier's calls
    await spend_calls(engine, clock, created, "user05", 12)
    for user, extra in (("user01", 2), ("user02", 1), ("user04", 3)):
        for _ in range(extra):
            await engine.create_session(user)


def users_in_table(app) -> list[str]:
    return list(app.screen.query_one("#users-table", VirtualTable).rows)


def percent_of(engine, user: str, resource: str) -> float:
    return next(u.percent for u in engine.operator.quota_usage(user) if u.resource == resource)


async def test_users_view_sorts_by_shift_keys_and_the_same_key_reverses(engine, clock):
    await populate_users(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("u")
        await refreshed(pilot)
        assert isinstance(app.screen, UsersScreen)
        usage = engine.operator.quota_usage
        worst = [max(u.percent for u in usage(x)) for x in users_in_table(app)]
        assert worst == sorted(worst, reverse=True) and len(set(worst)) > 1  # the default
        assert "sort worst ▼" in screen_text(app)

        await pilot.press("S")
        sessions = {user: 0 for user in users_in_table(app)}
        for view in engine.snapshot().sessions:
            sessions[view.user_id] += 1
        expected = sorted(sorted(sessions), key=sessions.__getitem__)  # ties by user id
        assert users_in_table(app) == expected
        assert expected != sorted(sessions)  # not the id order: the sort did something
        await pilot.press("S")
        assert users_in_table(app) == sorted(
            sorted(sessions), key=sessions.__getitem__, reverse=True
        )
        assert "SESS▼" in screen_text(app) and "sort sessions ▼" in screen_text(app)

        await pilot.press("A")  # API calls, ascending: a quota column, from the engine's report
        calls = [percent_of(engine, user, "api_calls") for user in users_in_table(app)]
        assert calls == sorted(calls) and len(set(calls)) > 1
        await pilot.press("A")
        calls = [percent_of(engine, user, "api_calls") for user in users_in_table(app)]
        assert calls == sorted(calls, reverse=True)
        assert users_in_table(app)[0] == "user00"
        assert "CALLS▼" in screen_text(app)  # the mark replaces the label's last letter

        await pilot.press("T")
        tiers = [app.screen.model.tiers[user] for user in users_in_table(app)]
        assert tiers == ["free"] * 3 + ["pro"] * 3
        await pilot.press("U", "U")
        assert users_in_table(app) == [f"user{u:02d}" for u in range(5, -1, -1)]


async def test_users_view_sorts_by_header_click(engine, clock):
    await populate_users(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("u")
        await refreshed(pilot)
        table = app.screen.table
        header = table.render_line(0).text
        await pilot.click(table, offset=(header.index("TIER"), 0))
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("tier", False)
        assert [app.screen.model.tiers[u] for u in table.rows] == ["free"] * 3 + ["pro"] * 3
        await pilot.click(table, offset=(header.index("TIER"), 0))
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("tier", True)
        assert [app.screen.model.tiers[u] for u in table.rows] == ["pro"] * 3 + ["free"] * 3
        assert "TIER▼" in screen_text(app)


async def test_users_view_filter_narrows_rows_and_escape_clears_then_goes_home(engine, clock):
    await populate_users(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await pilot.press("u")
        await refreshed(pilot)
        await pilot.press("slash", *"tier:pro", "enter")
        await pilot.pause()
        assert set(users_in_table(app)) == {"user01", "user03", "user05"}
        assert "Users 3 of 6" in screen_text(app) and "filter tier:pro" in screen_text(app)
        await pilot.press("slash", "ctrl+u", *"r03", "enter")  # a bare word: part of the id
        await pilot.pause()
        assert users_in_table(app) == ["user03"]
        await pilot.press("slash", "ctrl+u", *"colour:red", "enter")
        await pilot.pause()
        assert any("unknown filter" in n for n in app.notices)
        assert users_in_table(app) == ["user03"]  # a bad filter changes nothing
        await pilot.press("escape")  # clears the filter, stays here
        assert isinstance(app.screen, UsersScreen) and len(users_in_table(app)) == 6
        await pilot.press("escape")  # nothing to clear: back to the dashboard
        assert isinstance(app.screen, DashboardScreen)


async def test_users_view_keys_are_in_help_and_the_command_palette(engine, clock):
    await populate_users(engine, clock)
    app = console_for(engine)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("u")
        await refreshed(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Filter", "Sort by user", "Sort by tier", "Sort by sessions",
                "Sort by api_calls", "Sort by worst"} <= titles
        assert "Unhealthy" not in titles  # the dashboard's own keys stay there
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "U T S A K M C W" in text and "Sort by column" in text and "tier:pro" in text
        assert "health<60" not in text  # that is the sessions filter's syntax


# -- side panels: no scrollbars, "+N more" instead ---------------------------------------------


async def raise_many_alerts(engine, count: int):
    """`count` critical alerts: an authentication burst against each of `count` sessions."""
    for n in range(count):
        session = await engine.create_session(f"target{n:02d}")
        for k in range(5):
            with pytest.raises(errors.AuthenticationError):
                await engine.history(session.session_id, f"wrong-{k}")


@pytest.mark.parametrize("size", [(80, 24), (130, 24), (160, 45)])
async def test_side_panels_never_scroll_and_count_what_they_leave_out(engine, clock, size):
    await populate(engine, clock)
    await raise_many_alerts(engine, 40)
    app = console_for(engine)
    async with app.run_test(size=size) as pilot:
        await refreshed(pilot)
        side = app.screen.query_one("#side")
        for widget in (side, *side.query("*")):
            assert not widget.show_vertical_scrollbar, widget
        alerts = app.screen.query_one("#alerts")
        listed = engine.snapshot().monitor.alerts_unacknowledged
        assert listed > alerts.size.height  # more alerts than lines in the panel
        shown = alerts.shown_rows
        assert len(shown) == alerts.size.height - 1  # every line used; the last one counts
        hidden = listed - len(shown)
        assert f"+{hidden} more · a: all alerts" in screen_text(app)
        if size == (80, 24):
            assert "+2 more" in screen_text(app)  # the workers under the agent-type pools


def fake_load_generator(monkeypatch):
    """A stand-in with LoadGenerator's API, so the panel's wiring is tested in isolation."""
    calls: list[tuple] = []

    def op(name, requests):
        return types.SimpleNamespace(
            name=name, requests=requests, failures=1, rps=2.5, failures_per_s=0.1, avg_ms=12.0,
            p50_ms=10.0, p95_ms=40.0, p99_ms=90.0, max_ms=120.0,
        )

    class LoadGenerator:
        def __init__(self, engine, options):
            calls.append(("init", options))
            self.users = 0
            self.running = False

        def start(self):
            calls.append(("start",))
            self.running = True

        async def stop(self, grace_s=10.0):
            calls.append(("stop", grace_s))
            self.running = False

        def set_users(self, n):
            calls.append(("users", n))
            self.users = n

        def set_spawn_rate(self, r):
            calls.append(("rate", r))

        def stats(self):
            return types.SimpleNamespace(
                phase="holding" if self.running else "stopped", live_users=self.users,
                target_users=self.users, special_users=0, sessions_open=3, elapsed_s=5.0,
                overhead_p50_ms=0.4, overhead_p95_ms=0.9, overhead_p99_ms=1.5,
                operations=(op("send", 40), op("create", 8)), total=op("Aggregated", 48),
                failures=(types.SimpleNamespace(operation="send", error="RateLimited", count=2),),
            )

    monkeypatch.setattr(console.load, "LoadGenerator", LoadGenerator)
    monkeypatch.setattr(
        console.load, "LoadOptions", lambda: types.SimpleNamespace(users=0, spawn_rate=0.0)
    )
    return calls


async def test_load_panel_starts_stops_and_sets_users_and_rate(engine, monkeypatch, tmp_path):
    calls = fake_load_generator(monkeypatch)
    app = console_for(engine, export_dir=tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("l")
        await refreshed(pilot)
        assert isinstance(app.screen, LoadScreen)
        await pilot.press("right_square_bracket", "right_square_bracket", "right_curly_bracket")
        await pilot.press("left_square_bracket")
        await pilot.press("s")
        await refreshed(pilot)
        assert ("start",) in calls and ("users", 10) in calls and ("rate", 1.0) in calls
        assert app.load.running
        text = screen_text(app)
        assert "holding" in text and "Aggregated" in text and "RateLimited" in text
        assert "load running" in text
        await pilot.press("x")
        await pilot.pause()
        # An operator's stop does not wait out a slow model call.
        assert ("stop", STOP_GRACE_S) in calls and not app.load.running
        await pilot.press("e", "j")
        await app.workers.wait_for_complete()
        rows = json.loads(app.last_export.read_text())
        assert [r["name"] for r in rows] == ["send", "create", "Aggregated"]


async def test_load_panel_drives_the_real_generator(engine):
    options = LoadOptions(users=2, spawn_rate=50.0, seed=3)
    app = console_for(engine, load_options=options, start_load=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("l")
        await refreshed(pilot)
        await pilot.press("s")
        assert app.load.running
        await pilot.pause(0.2)
        await refreshed(pilot)
        assert "Aggregated" in screen_text(app)
        await pilot.press("x")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not app.load.running


async def test_load_panel_says_when_the_generator_cannot_run_on_the_engine(engine):
    options = LoadOptions(agent_mix=(("no-such-agent", 1.0),))
    app = console_for(engine, load_options=options, start_load=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("l")
        await pilot.press("s")
        await refreshed(pilot)
        assert "load generator unavailable" in screen_text(app)
        assert "no-such-agent" in screen_text(app)
        assert not app.load.running


async def test_load_options_start_the_generator_with_the_console(engine, monkeypatch):
    calls = fake_load_generator(monkeypatch)
    options = types.SimpleNamespace(users=5, spawn_rate=2.0)
    app = console_for(engine, load_options=options)
    async with app.run_test(size=(100, 30)):
        assert ("init", options) in calls and ("start",) in calls
    assert ("stop", STOP_GRACE_S) in calls  # quitting does not wait out a slow model call


# -- lifecycle, layout, themes -----------------------------------------------------------------


async def test_console_owns_the_engine_it_was_given_a_config_for(make_config):
    app = SessionConsole(make_config(), refresh_hz=0.25)
    async with app.run_test(size=(100, 30)) as pilot:
        session = await app.engine.create_session("alice")
        await refreshed(pilot)
        assert table_ids(app) == [session.session_id]
    with pytest.raises(errors.EngineClosed):
        await app.engine.create_session("bob")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_every_view_renders_at_small_and_large_sizes_in_both_themes(
    engine, clock, size, theme
):
    created = await populate(engine, clock)
    await raise_alerts(engine, clock, created)
    app = console_for(engine)
    async with app.run_test(size=size) as pilot:
        app.theme = theme
        await refreshed(pilot)
        assert "USER" in screen_text(app) and "HEALTH" in screen_text(app)
        for key, title in (("a", "Alerts"), ("u", "Users"), ("l", "Load"), ("d", "Dashboard")):
            await pilot.press(key)
            await refreshed(pilot)
            assert title in screen_text(app)
        await open_detail(pilot, created[1].session_id)
        assert "Conversation" in screen_text(app)


async def test_ten_thousand_sessions_sort_filter_and_show_the_right_rows(engine, clock):
    # 2,000 users x 5 sessions; no turns, so fields differ by user and creation order only.
    for u in range(2000):
        for _ in range(5):
            await engine.create_session(f"u{u:04d}")
    app = console_for(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await listed(pilot)
        table = app.screen.table
        assert len(table.rows) == 10_000
        visible = table.visible_rows()
        assert 20 < len(visible) == table.size.height - 1  # all but the header line
        await pilot.press("U", "U", "g")  # user, descending; the cursor follows its row, so g
        assert [v.user_id for v in table.visible_rows()[:6]] == ["u1999"] * 5 + ["u1998"]
        await pilot.press("G")
        assert table.cursor == 9_999
        assert table.visible_rows()[-1].user_id == "u0000"
        await pilot.press("slash", *"u012", "enter", "g")  # users u0120..u0129
        await pilot.pause()
        assert {v.user_id for v in table.rows} == {f"u012{d}" for d in range(10)}
        assert len(table.rows) == 50
        assert [v.user_id for v in table.visible_rows()[:6]] == ["u0129"] * 5 + ["u0128"]
        assert "50 of 10,000" in screen_text(app)
        await pilot.press("A", "g")  # age, youngest first
        ages = [v.created_at for v in table.rows]
        assert ages == sorted(ages, reverse=True)


def test_command_line_and_run_console_open_the_console(monkeypatch, tmp_path):
    from console.__main__ import main
    from console.app import run_console
    from engine import EngineConfig, StoreSettings

    opened = []

    def fake_run(app, loop):
        assert isinstance(loop, uvloop.Loop)  # the serving loop, as `session-console serve`
        opened.append((app.owns_engine, app.start_load, app.refresh_hz, app.engine.config))

    monkeypatch.setattr(SessionConsole, "run", fake_run)
    main(["--data-dir", str(tmp_path), "--refresh-hz", "4"])
    main(["--load"])
    config = EngineConfig(store=StoreSettings(data_dir=tmp_path))
    run_console(config, load_options=LoadOptions(users=3, spawn_rate=1.0))
    (owns, load, hz, first), (_, load_flag, _, _), (_, with_options, _, given) = opened
    assert owns and not load and hz == 4 and first.store.data_dir == tmp_path
    assert load_flag and with_options and given is config


async def test_logged_warnings_become_notifications_not_text_over_the_screen(engine):
    app = console_for(engine)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        logging.getLogger("engine.cluster.worker").warning("lease of %s lapsed", "s1")
        threading.Thread(
            target=logging.getLogger("engine.store").error, args=("disk trouble",)
        ).start()  # from another thread too
        for _ in range(50):
            await pilot.pause()
            if len(app.notices) >= 2:
                break
        assert "engine.cluster.worker: lease of s1 lapsed" in app.notices
        assert "engine.store: disk trouble" in app.notices
    logging.getLogger("engine").warning("after the console closed")  # its handler is gone
    assert not any("after the console" in notice for notice in app.notices)
