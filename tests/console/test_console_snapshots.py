"""Screenshot tests (pytest-textual-snapshot) of the dashboard and a session's detail.

Deterministic: manual clock, instant simulated model, fixed session ids, no cursor blink (the
filter input is hidden), no notifications. `pytest --snapshot-update` rewrites the SVGs after an
intended change; review them in the report it writes.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest

import engine.sessions
from console.app import SessionConsole
from engine import errors

SIZE = (110, 34)


@pytest.fixture(autouse=True)
def fixed_session_ids(monkeypatch):
    counter = itertools.count(1)
    monkeypatch.setattr(engine.sessions, "new_session_id", lambda: f"{next(counter):032x}")


async def ready(pilot) -> SessionConsole:
    app = pilot.app
    while app.snapshot is None:  # the engine is open and the first refresh shown
        await pilot.pause(0.01)
    return app


async def populate(app: SessionConsole) -> None:
    """Eight users with a few turns each, one rate-limited (unhealthy) session, one alert."""
    engine, clock = app.engine, app.engine.clock
    created = []
    for u in range(8):
        session = await engine.create_session(
            f"user{u:02d}", metadata={"tier": ("free", "pro", "enterprise")[u % 3]}
        )
        created.append(session)
        for k in range(u % 4):
            clock.advance(1.5)
            await engine.send(session.session_id, session.token, f"question {k} from user {u}")
    for k in range(14):
        with contextlib.suppress(errors.RateLimited):
            await engine.send(created[2].session_id, created[2].token, f"burst {k}")
    for k in range(5):
        with contextlib.suppress(errors.AuthenticationError):
            await engine.history(created[5].session_id, f"wrong-{k}")
    clock.advance(4)


def console(make_config) -> SessionConsole:
    return SessionConsole(make_config(), refresh_hz=0.25)


def test_dashboard_snapshot(snap_compare, make_config):
    async def run_before(pilot) -> None:
        app = await ready(pilot)
        await populate(app)
        app.refresh_data(force=True)
        await pilot.pause()

    assert snap_compare(console(make_config), run_before=run_before, terminal_size=SIZE)


def test_dashboard_snapshot_80x24_unhealthy_only(snap_compare, make_config):
    async def run_before(pilot) -> None:
        app = await ready(pilot)
        await populate(app)
        app.refresh_data(force=True)
        await pilot.press("z")

    assert snap_compare(console(make_config), run_before=run_before, terminal_size=(80, 24))


def test_session_detail_snapshot(snap_compare, make_config):
    async def run_before(pilot) -> None:
        app = await ready(pilot)
        await populate(app)
        app.refresh_data(force=True)
        await pilot.press("slash", *"user03", "enter", "enter")
        await pilot.pause()
        app.refresh_data(force=True)
        await pilot.pause()

    assert snap_compare(console(make_config), run_before=run_before, terminal_size=SIZE)
