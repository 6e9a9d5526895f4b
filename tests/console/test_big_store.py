"""The console on more sessions than one refresh may view or sort: it lists them over several
refreshes, says how many are still to come, and reorders a big table a step a frame."""

from __future__ import annotations

from rendered import screen_text
from test_cold_sessions import stored_engine
from test_console import console_for, refreshed
from textual.widgets import Label

import console.app
from engine import Engine

BOUND = 20


def title(app) -> str:
    return str(app.screen.query_one("#table-title", Label).render())


async def test_the_table_lists_a_big_store_over_refreshes_and_says_how_many_are_to_come(
    make_config, monkeypatch
):
    monkeypatch.setattr(console.app, "LIST_PER_STEP", 0)  # only the snapshots list here
    config = make_config(monitor={"snapshot_views": BOUND})
    created = await stored_engine(config, users=3 * BOUND, turns=0)
    async with Engine(config) as engine:
        await engine.restored()
        app = console_for(engine)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.pause()  # mounted: the first refresh listed one batch
            table = app.screen.table
            assert len(table.rows) == BOUND
            assert f"Sessions {BOUND} · listing {2 * BOUND} more" in screen_text(app)
            assert f"{3 * BOUND}" in screen_text(app)  # the figure counts every live session
            await refreshed(pilot)
            assert f"listing {BOUND} more" in screen_text(app)
            await refreshed(pilot)
            assert "listing" not in screen_text(app)
            assert sorted(v.session_id for v in table.rows) == sorted(
                s.session_id for s, _ in created
            )
            assert {v.state for v in table.rows} == {"cold"}


async def test_a_big_table_is_reordered_in_steps_and_says_so_meanwhile(make_config):
    config = make_config()
    created = await stored_engine(config, users=30, turns=0)
    async with Engine(config) as engine:
        await engine.restored()
        app = console_for(engine)
        async with app.run_test(size=(140, 40)) as pilot:
            await refreshed(pilot)
            model = app.screen.model
            model.step_rows = 4  # 30 rows: sorted runs of 4, then merged 4 at a time
            before = list(app.screen.table.rows)
            app.paused = True  # no tick meanwhile: the steps run by themselves, a frame each
            model.sort_by("id")
            app.screen.show(app.snapshot)
            assert model.reordering and list(app.screen.table.rows) == before
            assert "sorting…" in title(app)
            for _ in range(100):
                if not model.reordering:
                    break
                await pilot.pause()
            ids = [v.session_id for v in app.screen.table.rows]
            assert ids == sorted(s.session_id for s, _ in created)
            assert "sorting…" not in title(app) and "sort id ▲" in title(app)
