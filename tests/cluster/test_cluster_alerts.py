"""Alerts of several workers in one cluster: each worker's own rows in the shared PostgreSQL,
acknowledged where they were raised. Real Valkey and PostgreSQL, real engines."""

from __future__ import annotations

import asyncpg
import pytest

from engine import Engine
from engine.errors import AuthenticationError
from tests.cluster.engines import workers
from tests.cluster.test_cluster_views import fast, until


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
