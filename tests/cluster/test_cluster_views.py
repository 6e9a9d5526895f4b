"""What a console attached to one worker sees of the whole cluster: the users' quota use as the
cluster counts it, and every worker's alerts. Real Valkey and PostgreSQL, real engines."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from console.app import SessionConsole
from console.screens.alerts import AlertsScreen
from console.screens.detail import SessionDetailScreen
from engine import Engine
from engine.alerts import Alert
from engine.cluster import ClusterClient
from engine.cluster.alert_board import PUBLISHED, AlertBoard, published
from engine.cluster.quotas import ClusterQuotas
from engine.cluster.session_counts import READ_MAX as COUNTS_READ_MAX
from engine.cluster.session_counts import SessionCounts
from engine.cluster.standings import READ_MAX, QuotaStandings
from engine.cluster.user_sessions import UserSessions
from engine.cluster.versions import SessionVersions
from engine.errors import AuthenticationError
from engine.monitor import Monitor
from engine.quota_watch import TOP_QUOTA_USERS
from engine.quotas import QuotaLimit
from tests.cluster.engines import workers
from tests.console.rendered import screen_text

CALLS = 10
TIERS = {"tiny": {
    "api_calls": QuotaLimit(CALLS, 3600.0), "tokens": QuotaLimit(1e9, 3600.0),
    "storage_mb": QuotaLimit(1e6, None), "compute_seconds": QuotaLimit(1e6, 3600.0),
}}
LIMITS = {"tiers": TIERS, "default_tier": "tiny"}
FAST = 0.05  # heartbeat and reads, seconds: the tests wait for a few of them


class NotingConsole(SessionConsole):
    """The console, keeping the text of every notification it shows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[str] = []

    def notify(self, message: str, **kwargs) -> None:
        self.notices.append(message)
        super().notify(message, **kwargs)


def fast(config):
    return replace(config, cluster=replace(config.cluster, heartbeat_s=FAST))


async def until(check: Callable[[], object], what: str) -> object:
    """Wait for the background reads to show `check()`; the bound catches a broken loop."""
    try:
        async with asyncio.timeout(30):
            while not (got := check()):
                await asyncio.sleep(FAST)
    except TimeoutError:
        raise AssertionError(f"never saw {what}") from None
    return got


def api_calls(usage) -> float:
    return next(u.used for u in usage if u.resource == "api_calls")


async def test_a_user_served_only_elsewhere_shows_with_the_cluster_count(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await two.create_session("ivy")
        for n in range(8):  # every turn on w2: w1 counted nothing itself
            await two.send(created.session_id, created.token, f"call {n}")

        nearest = await until(
            lambda: [q for q in one.snapshot().quotas if q.user_id == "ivy"], "ivy on w1"
        )
        (view,) = nearest
        assert view.tier == "tiny"
        assert view.highest_percent == 80.0
        assert api_calls(view.usage) == 8
        assert one.snapshot().cluster.quotas_read_at is not None

        # The users table's reads: answered from the last poll, the same cluster figures.
        assert dict(one.operator.quota_percents("ivy"))["api_calls"] == 80.0
        await two.send(created.session_id, created.token, "call 9")
        await until(lambda: api_calls(one.operator.quota_usage("ivy")) == 9, "the 9th call")


async def test_the_users_asked_for_are_read_even_far_from_their_limits(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await two.create_session("jon")
        await two.send(created.session_id, created.token, "one call")
        assert one.operator.quota_usage("jon") == ()  # not read yet: asking puts jon on the list
        await until(lambda: one.operator.quota_usage("jon"), "jon's usage")
        assert api_calls(one.operator.quota_usage("jon")) == 1
        assert "jon" not in {q.user_id for q in one.snapshot().quotas}  # 10%: not near


async def test_every_workers_alerts_show_and_another_workers_can_be_acknowledged(
    worker_config,
):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await two.create_session("kim")
        for n in range(9):  # 90% of the calls: w2's monitor raises quota_near
            await two.send(created.session_id, created.token, f"call {n}")

        def w2_alerts() -> tuple[Alert, ...]:
            cluster = one.snapshot().cluster
            return next((w.alerts for w in cluster.alerts if w.worker_id == "w2"), ())

        alerts = await until(
            lambda: [a for a in w2_alerts() if a.rule == "quota_near" and a.subject == "kim"],
            "w2's quota alert on w1",
        )
        (alert,) = alerts
        assert not alert.acknowledged
        assert any(a.alert_id == alert.alert_id for a in two.snapshot().monitor.alerts)
        assert all(w.worker_id != "w1" for w in one.snapshot().cluster.alerts)  # its own: local

        await one.operator.acknowledge_on("w2", [alert.alert_id])
        await until(
            lambda: [a for a in two.snapshot().monitor.alerts
                     if a.alert_id == alert.alert_id and a.acknowledged],
            "the alert acknowledged on w2",
        )
        await until(
            lambda: [a for a in w2_alerts() if a.alert_id == alert.alert_id and a.acknowledged],
            "the acknowledgement back on w1",
        )


async def test_a_worker_that_stops_takes_its_alerts_with_it(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(configs[0]) as (one,):
        two = Engine(configs[1])
        await two.open()
        created = await two.create_session("lee")
        for n in range(9):
            await two.send(created.session_id, created.token, f"call {n}")
        await until(lambda: one.snapshot().cluster.alerts, "w2's alerts")
        await two.aclose()  # leaves the registry: w1 stops reading its alerts at once
        await until(lambda: not one.snapshot().cluster.alerts, "w2's alerts gone")


async def test_valkey_down_keeps_the_last_figures_and_says_so(
    worker_config, private_valkey, clock
):
    config = fast(worker_config("w1", limits=LIMITS, redis=private_valkey.url))
    async with workers(config) as (one,):
        created = await one.create_session("max")
        for n in range(6):
            await one.send(created.session_id, created.token, f"call {n}")
        await until(lambda: one.snapshot().quotas, "max near the limit")
        private_valkey.stop()
        await until(lambda: not one.snapshot().cluster.available, "the outage")
        down = one.snapshot()
        await asyncio.sleep(5 * FAST)  # reads keep failing: nothing raised, figures kept
        assert [q.user_id for q in one.snapshot().quotas] == ["max"]
        assert one.snapshot().cluster.quotas_read_at == down.cluster.quotas_read_at
        clock.advance(12)
        app = SessionConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            text = screen_text(app)
            assert "Quotas nearest their limits · cluster · as of 12s ago" in text
            assert "Alerts  0 unacknowledged · cluster (0 here) · as of 12s ago" in text
            assert "max api_calls" in text
        private_valkey.start()
        await until(lambda: one.snapshot().cluster.available, "Valkey back")


async def test_published_alerts_are_bounded_open_ones_first(redis_url, clock):
    alerts = tuple(
        Alert(n, f"k{n}", "rule", "warning", f"alert {n}", None, n, n,
              acknowledged=n % 3 != 0)
        for n in range(200, 0, -1)  # newest first, as the monitor lists them
    )
    chosen = published(alerts)
    assert len(chosen) == PUBLISHED
    open_ones = [a for a in alerts if not a.acknowledged]
    assert chosen[: len(open_ones[:PUBLISHED])] == open_ones[:PUBLISHED]

    client = ClusterClient(redis_url, "t:", timeout_s=5.0)
    board, reader = AlertBoard(client, ttl_s=5.0), AlertBoard(client, ttl_s=5.0)
    await board.exchange("w2", alerts, 66, [])
    (got,) = await reader.exchange("w1", (), 0, ["w1", "w2"])
    assert got.worker_id == "w2" and got.unacknowledged == 66
    assert len(got.alerts) == PUBLISHED
    assert [a.alert_id for a in got.alerts] == sorted(
        (a.alert_id for a in chosen), reverse=True
    )
    await reader.request("w2", [200, 199])
    assert sorted(await board.take_requests("w2")) == [199, 200]
    assert await board.take_requests("w2") == ()
    await client.aclose()


def quota_lines(screen: AlertsScreen) -> list:
    """The alert lines about quotas, whatever else a worker on a loaded machine lists."""
    return [line for line in screen.table.rows if line.alert.rule.startswith("quota")]


async def test_the_console_shows_the_clusters_quotas_and_alerts_and_acknowledges_elsewhere(
    worker_config,
):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await two.create_session("nia")
        for n in range(9):  # 90% of nia's calls, all on w2: w2 raises quota_near
            await two.send(created.session_id, created.token, f"call {n}")
        await until(  # w2 publishes its alerts from its start: wait for its quota alert
            lambda: one.snapshot().quotas and any(
                a.rule == "quota_near" for w in one.snapshot().cluster.alerts for a in w.alerts
            ),
            "w2's figures on w1",
        )
        app = NotingConsole(engine=one, refresh_hz=0.25)  # refreshed by the test
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            text = screen_text(app)
            assert "Quotas nearest their limits · cluster" in text
            assert "nia api_calls" in text  # the gauge of a user w1 never served
            # The cluster's count: w2's alert and whatever w1 holds (a loaded machine's
            # latency alerts, say); the screen is printed if not.
            counts = re.search(r"Alerts  (\d+) unacknowledged · cluster \((\d+) here\)", text)
            assert counts and int(counts[1]) == int(counts[2]) + 1, text
            assert "w2: user 'nia' at 90% of the api_calls quota" in text

            await pilot.press("u")  # nia's session is w2's: listed from what w2 published
            app.refresh_data(force=True)
            await pilot.pause()
            assert "quotas: the cluster's" in screen_text(app)

            await pilot.press("a")
            app.refresh_data(force=True)
            await pilot.pause()
            assert isinstance(app.screen, AlertsScreen)
            (line,) = quota_lines(app.screen)
            assert (line.worker, line.here, line.alert.rule) == ("w2", False, "quota_near")
            assert "WORKER" in screen_text(app)
            await pilot.press("A")  # w2's alert: w1 asks w2, w2 acknowledges it
            await until(
                lambda: two.snapshot().monitor.alerts_unacknowledged == 0, "w2 acknowledging"
            )
            await until(lambda: not one.snapshot().cluster.alerts[0].unacknowledged, "w1 told")
            assert "Asked w2 to acknowledge alert 1: it does within a heartbeat." in app.notices
            app.refresh_data(force=True)
            await pilot.pause()
            (line,) = quota_lines(app.screen)
            assert line.alert.acknowledged
            assert "acked" in screen_text(app)


async def test_an_alert_about_a_session_served_elsewhere_opens_it(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await two.create_session("oz")  # after w1 started: w1 never saw it
        await two.send(created.session_id, created.token, "said on w2")
        for k in range(5):  # w2 raises an auth burst about the session
            with pytest.raises(AuthenticationError):
                await two.history(created.session_id, f"wrong-{k}")
        assert not one.operator.session_exists(created.session_id)
        await until(lambda: one.snapshot().cluster.alerts, "w2's alert on w1")

        app = NotingConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("a")
            app.refresh_data(force=True)
            await pilot.pause()
            (line,) = app.screen.table.rows
            assert (line.worker, line.alert.subject) == ("w2", created.session_id)
            await pilot.press("enter")
            await until(lambda: isinstance(app.screen, SessionDetailScreen), "the detail")
            assert app.screen.session_id == created.session_id
            await until(lambda: "said on w2" in screen_text(app), "w2's conversation")


async def test_standings_read_a_bounded_share_and_starve_no_one(redis_url, clock):
    """More users near their limits than a poll reads: each poll reads at most READ_MAX, a
    user just served is read at the next poll all the same, and the watched ones take turns."""
    client = ClusterClient(redis_url, "t:", timeout_s=5.0)
    quotas = ClusterQuotas(client, clock, TIERS, "tiny")
    standings = QuotaStandings(client, quotas, clock, Monitor(clock), watch_percent=50.0)
    crowd = [f"u{n:03d}" for n in range(READ_MAX + 100)]
    for user_id in crowd:
        await quotas.record(user_id, "api_calls", 7)  # 70% each
        standings.served(user_id)
    await standings.poll()
    assert len(standings.nearest()) == TOP_QUOTA_USERS
    read_once = {u for u in crowd if standings.usage(u)}
    assert len(read_once) == READ_MAX
    for _ in range(3):  # full polls: the watched users fill what the others leave
        await standings.poll()
    await quotas.record("late", "api_calls", 9)
    standings.served("late")
    await standings.poll()
    assert standings.nearest()[0].user_id == "late"
    assert standings.nearest()[0].highest_percent == 90.0
    async with client.redis.pipeline() as pipe:
        (shared,) = await pipe.zcard("t:quota-nearest").execute()
    assert shared == READ_MAX + 1  # every user read at or above the watch level, once
    await client.aclose()


async def test_the_users_view_shows_the_cluster_count_of_a_user_served_elsewhere(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        created = await one.create_session("pia")  # held by w1 ...
        for n in range(7):  # ... served by w2 only: w1 counted none of these calls
            await two.send(created.session_id, created.token, f"call {n}")
        app = NotingConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("u")

            def pia_row() -> str:
                app.refresh_data(force=True)
                return next((line for line in screen_text(app).splitlines()
                             if line.startswith("pia ")), "")

            row = await until(lambda: "70%" in pia_row() and pia_row(), "pia's cluster count")
            assert row.split()[:3] == ["pia", "tiny", "1"]  # user, tier, sessions
            await pilot.pause()  # the usage box's new height is laid out
            assert "Usage of pia (tiny)" in screen_text(app)
            assert "7/10" in screen_text(app)  # its api_calls gauge: used/limit


async def test_the_users_view_counts_each_users_sessions_on_every_worker(worker_config):
    configs = [fast(worker_config(name, limits=LIMITS)) for name in ("w1", "w2")]
    async with workers(*configs) as (one, two):
        await one.create_session("quin")
        elsewhere = [await two.create_session("quin") for _ in range(2)]  # w1 never saw these
        await two.create_session("rue")  # rue's only session: published by w2
        await until(lambda: any(v.user_id == "rue" for w in one.snapshot().cluster.sessions
                                for v in w.sessions), "w2's sessions on w1")
        app = NotingConsole(engine=one, refresh_hz=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("u")

            def row(user: str) -> list[str]:
                app.refresh_data(force=True)
                return next((line.split()[:3] for line in screen_text(app).splitlines()
                             if line.startswith(f"{user} ")), [])

            await until(lambda: row("quin") == ["quin", "tiny", "3"], "quin's 3 sessions")
            await until(lambda: row("rue") == ["rue", "tiny", "1"], "rue, served on w2 only")
            assert "sessions and quotas: the cluster's" in screen_text(app)
            assert one.operator.live_sessions("quin") == 3

            await two.end_session(elsewhere[0].session_id, elsewhere[0].token)
            await until(lambda: row("quin") == ["quin", "tiny", "2"], "the count after an end")
            await pilot.press("S")  # by sessions: quin's two first once reversed
            await pilot.press("S")
            app.refresh_data(force=True)
            await pilot.pause()
            assert app.screen.table.rows[:2] == ["quin", "rue"]


async def test_session_counts_read_a_bounded_share_each_user_in_turn(redis_url, clock):
    client = ClusterClient(redis_url, "t:", timeout_s=5.0)
    sessions = UserSessions(client, "t:lease:", "t:rebuilt", SessionVersions(client))
    lifetime = 100.0
    crowd = [f"u{n:03d}" for n in range(COUNTS_READ_MAX + 100)]
    for n, user_id in enumerate(crowd):
        await sessions.add(user_id, [(f"s{n}-{k}", clock.now()) for k in range(n % 3 + 1)],
                           lifetime)
    counts = SessionCounts(sessions, clock, lifetime)
    assert all(counts.count(u) is None for u in crowd)  # asked: read at the next polls
    await counts.poll()
    read = [u for u in crowd if counts.count(u) is not None]
    assert read == crowd[:COUNTS_READ_MAX]  # a bounded share, the first asked first
    await counts.poll()
    assert [counts.count(u) for u in crowd] == [n % 3 + 1 for n in range(len(crowd))]
    await sessions.add("u000", [("newer", clock.now() + 60)], lifetime)
    clock.advance(lifetime)  # u000's first session is past its lifetime: not counted
    counts.count("u000")
    await sessions.add("ana maría,1", [("a", clock.now()), ("b", clock.now())], lifetime)
    counts.count("ana maría,1")  # any printable id: spaces, commas, beyond ASCII
    for _ in range(2):  # after the whole crowd, asked again above
        await counts.poll()
    assert (counts.count("u000"), counts.count("ana maría,1")) == (1, 2)
    await client.aclose()
