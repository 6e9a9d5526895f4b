"""Alerts of several workers in one cluster: each worker's own rows in the shared PostgreSQL,
acknowledged where they were raised. Real Valkey and PostgreSQL, real engines."""

from __future__ import annotations

import asyncpg
import pytest

from console.alert_lines import alert_lines
from engine import Engine
from engine.alerts import Alert
from engine.errors import AuthenticationError
from tests.cluster.engines import workers
from tests.cluster.test_cluster_views import LIMITS, NotingConsole, fast, until
from tests.console.rendered import screen_text

KIM_NEAR = "quota_near:kim:api_calls"


async def stored_alerts(url: str) -> list[tuple]:
    """(worker, alert_id, subject, acknowledged) of every stored alert, in key order."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT worker, alert_id, subject, acknowledged FROM alerts ORDER BY worker, alert_id"
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def burst(engine: Engine, session_id: str) -> int:
    """Five wrong tokens for `session_id` on `engine`: its monitor raises an auth_burst alert
    about it. Returns the alert's id."""
    for k in range(5):
        with pytest.raises(AuthenticationError):
            await engine.history(session_id, f"wrong-{k}")
    (alert,) = [a for a in engine.snapshot().monitor.alerts if a.subject == session_id]
    return alert.alert_id


async def test_two_workers_alerts_of_the_same_id_are_two_rows_acknowledged_apart(
    worker_config, postgres_url
):
    configs = [fast(worker_config(name)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        a = await one.create_session("ann")
        b = await two.create_session("bob")
        c = await two.create_session("cid")
        assert await burst(one, a.session_id) == 1
        assert await burst(two, b.session_id) == 1  # the same id: numbered per worker
        assert await burst(two, c.session_id) == 2
        await one.store.flush()
        await two.store.flush()
        assert await stored_alerts(postgres_url) == [
            ("w1", 1, a.session_id, False),
            ("w2", 1, b.session_id, False),
            ("w2", 2, c.session_id, False),
        ]

        await one.operator.acknowledge_on("w2", [1])  # w2's alert 1, asked from w1's console
        await until(
            lambda: [x for x in two.snapshot().monitor.alerts
                     if x.alert_id == 1 and x.acknowledged],
            "w2 acknowledging its alert 1",
        )
        await two.store.flush()
        assert await stored_alerts(postgres_url) == [
            ("w1", 1, a.session_id, False),  # w1's alert 1 untouched
            ("w2", 1, b.session_id, True),
            ("w2", 2, c.session_id, False),
        ]
    # w1 again, after a restart: it numbers on from its own highest id, not w2's.
    async with workers(configs[0]) as (one,):
        d = await one.create_session("dee")
        assert await burst(one, d.session_id) == 2
        await one.store.flush()
    assert await stored_alerts(postgres_url) == [
        ("w1", 1, a.session_id, False),
        ("w1", 2, d.session_id, False),
        ("w2", 1, b.session_id, True),
        ("w2", 2, c.session_id, False),
    ]


async def test_a_users_quota_alert_raised_on_two_workers_is_listed_once_and_acknowledged_on_both(
    worker_config,
):
    """Both workers serve kim's turns, so each raises kim's quota_near from the cluster's count:
    w1's console lists it once (the newest) and acknowledging it acknowledges both."""
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await one.create_session("kim")
        for n in range(9):  # 90% of kim's calls, on both workers
            await (one, two)[n % 2].send(created.session_id, created.token, f"call {n}")

        def near(engine: Engine) -> list[Alert]:
            return [a for a in engine.snapshot().monitor.alerts if a.key == KIM_NEAR]

        def listed_on_w2() -> bool:
            return any(a.key == KIM_NEAR for w in one.snapshot().cluster.alerts for a in w.alerts)

        await until(lambda: near(one) and near(two) and listed_on_w2(), "both workers' alerts")
        (line,) = [line for line in alert_lines(one.snapshot()) if line.alert.key == KIM_NEAR]
        newest = max((*near(one), *near(two)), key=lambda a: (a.last_at, a.first_at))
        assert line.alert == newest
        assert {(held.worker, held.alert.alert_id) for held in (line, *line.merged)} == {
            ("w1", near(one)[0].alert_id), ("w2", near(two)[0].alert_id)
        }

        app = NotingConsole(engine=one, refresh_hz=0.25)  # refreshed by the test
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("a")
            app.refresh_data(force=True)
            await pilot.pause()
            (shown,) = app.screen.table.rows  # one alert, not one per worker
            assert shown.key == line.key
            assert f"{shown.worker} +1" in screen_text(app)  # and one other worker's
            # Counted once in the cluster's unacknowledged alerts, whatever else each holds.
            here = one.snapshot().monitor.alerts_unacknowledged
            cluster = here + one.snapshot().cluster.alerts[0].unacknowledged - 1
            assert f"shown · {cluster} unacknowledged · cluster ({here} here)" in screen_text(app)
            await pilot.press("A")
            await until(lambda: near(one)[0].acknowledged, "w1 acknowledging its own")
            await until(lambda: near(two)[0].acknowledged, "w2 acknowledging its own")
            await until(lambda: not any(line.open for line in alert_lines(one.snapshot())),
                        "w2's acknowledgement back on w1")
            app.refresh_data(force=True)
            await pilot.pause()
            (shown,) = app.screen.table.rows
            assert shown.alert.acknowledged and not shown.merged
            assert "acked" in screen_text(app)
            assert "Alerts 1 shown · 0 unacknowledged · cluster (0 here)" in screen_text(app)
