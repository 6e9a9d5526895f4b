"""Two engines as workers of one cluster: one PostgreSQL store, one Valkey, any worker serves
any session. Real servers, real praisonaiagents agents with the simulated model."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from cryptography.fernet import Fernet

from console.app import SessionConsole
from engine import Engine, SimSettings
from engine.errors import (
    AuthenticationError,
    ClusterUnavailable,
    ConfigurationError,
    QuotaExceeded,
)
from engine.quotas import QuotaLimit
from tests.cluster.engines import workers
from tests.console.rendered import screen_text


async def user_texts(engine: Engine, session_id: str, token: str) -> list[str]:
    return [m.content for m in await engine.history(session_id, token) if m.role == "user"]


async def test_a_session_is_served_alternately_by_two_workers_and_stays_consistent(
    worker_config,
):
    async with workers(worker_config("w1"), worker_config("w2")) as (one, two):
        created = await one.create_session("alice")
        sid, token = created.session_id, created.token
        await one.send(sid, token, "first, on w1")
        await two.send(sid, token, "second, on w2")  # w2 had never seen it
        await one.send(sid, token, "third, on w1")  # w1's copy is reloaded: w2 changed it
        expected = ["first, on w1", "second, on w2", "third, on w1"]
        assert await user_texts(two, sid, token) == expected
        assert await user_texts(one, sid, token) == expected
        assert one.snapshot().sessions_by_id[sid].turns == 3  # counters follow too

        new_token = await two.rotate_token(sid, token)
        with pytest.raises(AuthenticationError):
            await one.history(sid, token)  # the rotated token no longer works anywhere
        await one.send(sid, new_token, "fourth, on w1 with the new token")

        await one.end_session(sid, new_token)
        with pytest.raises(AuthenticationError):
            await two.history(sid, new_token)  # ended on w1: gone on w2 as well


async def test_quotas_are_exact_across_workers(worker_config):
    calls = 12
    tiers = {"tiny": {
        "api_calls": QuotaLimit(calls, 3600.0), "tokens": QuotaLimit(1e9, 3600.0),
        "storage_mb": QuotaLimit(1e6, None), "compute_seconds": QuotaLimit(1e6, 3600.0),
    }}
    limits = {"tiers": tiers, "default_tier": "tiny"}
    async with workers(
        worker_config("w1", limits=limits), worker_config("w2", limits=limits)
    ) as (one, two):
        sessions = [await one.create_session("bob") for _ in range(4)]
        outcomes: list[str] = []

        async def client(engine: Engine, session, turns: int) -> None:
            for n in range(turns):
                try:
                    await engine.send(session.session_id, session.token, f"call {n}")
                    outcomes.append("ok")
                except QuotaExceeded:
                    outcomes.append("refused")

        await asyncio.gather(*(
            client(one if i % 2 else two, s, 6) for i, s in enumerate(sessions)
        ))
        assert outcomes.count("ok") == calls  # 24 asked, over two workers: exactly the limit
        assert outcomes.count("refused") == 24 - calls


async def test_a_tier_given_at_creation_holds_on_every_worker(worker_config):
    tiers = {
        "tiny": {
            "api_calls": QuotaLimit(3, 3600.0), "tokens": QuotaLimit(1e9, 3600.0),
            "storage_mb": QuotaLimit(1e6, None), "compute_seconds": QuotaLimit(1e6, 3600.0),
        },
        "roomy": {
            "api_calls": QuotaLimit(1000, 3600.0), "tokens": QuotaLimit(1e9, 3600.0),
            "storage_mb": QuotaLimit(1e6, None), "compute_seconds": QuotaLimit(1e6, 3600.0),
        },
    }
    limits = {"tiers": tiers, "default_tier": "roomy"}
    async with workers(
        worker_config("w1", limits=limits), worker_config("w2", limits=limits)
    ) as (one, two):
        created = await one.create_session("hank", metadata={"tier": "tiny"})
        for n in range(3):
            await two.send(created.session_id, created.token, f"call {n}")  # served by w2
        with pytest.raises(QuotaExceeded):
            await two.send(created.session_id, created.token, "one too many")


async def test_a_worker_with_another_master_key_is_refused_at_start(worker_config):
    async with workers(worker_config("w1")) as (one,):
        await one.create_session("carol")
    stranger = worker_config("w2", master_key=Fernet.generate_key().decode())
    with pytest.raises(ConfigurationError, match="cannot unwrap the cluster's session keys"):
        await Engine(stranger).open()


async def test_a_cluster_needs_the_shared_store(make_config, redis_url):
    config = make_config(cluster={"redis_url": redis_url})
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        await Engine(config).open()


async def test_valkey_down_fails_turns_fast_and_readiness_follows(worker_config, private_valkey):
    config = worker_config("w1", redis=private_valkey.url)
    async with workers(config) as (one,):
        created = await one.create_session("dave")
        await one.send(created.session_id, created.token, "before")
        assert one.ready
        private_valkey.stop()
        with pytest.raises(ClusterUnavailable, match="Valkey/Redis"):
            await one.send(created.session_id, created.token, "while down")
        assert not one.ready  # /readyz follows; nothing is enforced locally instead
        private_valkey.start()
        await one.send(created.session_id, created.token, "after")
        assert one.ready
        texts = await user_texts(one, created.session_id, created.token)
        assert texts == ["before", "after"]


async def test_the_console_shows_every_worker_of_the_cluster(worker_config):
    async with workers(worker_config("w1"), worker_config("w2")) as (one, two):
        created = await two.create_session("frank")
        await two.send(created.session_id, created.token, "hello from w2")
        while {m.worker_id for m in one.snapshot().cluster.members} != {"w1", "w2"}:
            await asyncio.sleep(0.05)  # both have sent a heartbeat since they started
        app = SessionConsole(engine=one, refresh_hz=0.25)  # refreshed by the test
        async with app.run_test(size=(160, 50)) as pilot:
            app.refresh_data(force=True)
            await pilot.pause()
            text = screen_text(app)
            assert "Cluster  2 workers · this one w1" in text
            assert "*w1" in text and " w2" in text
            assert "drain" not in text
            await two.drain(grace_s=0)  # w2 says so at its next heartbeat, w1 reads it at its own
            while not any(m.load.draining for m in one.snapshot().cluster.members):
                await asyncio.sleep(0.05)
            app.refresh_data(force=True)
            await pilot.pause()
            lines = screen_text(app).splitlines()
            assert any(" w2 " in line and line.rstrip(" │").endswith("s drain") for line in lines)
            assert not any("*w1 " in line and "drain" in line for line in lines)


async def test_a_turn_longer_than_the_lease_keeps_it_and_the_next_waits(
    worker_config, caplog
):
    slow = {"sim": SimSettings(median_latency_s=4.0, p99_latency_s=4.0, seed=1),
            "turn_timeout_s": 30.0}
    cluster = {"lease_ttl_s": 1.5}  # renewed every 0.5 s: room for a busy machine's loop lag
    one_config, two_config = (worker_config(name, llm=slow) for name in ("w1", "w2"))
    one_config = replace(one_config, cluster=replace(one_config.cluster, **cluster))
    two_config = replace(two_config, cluster=replace(two_config.cluster, **cluster))
    async with workers(one_config, two_config) as (one, two):
        created = await one.create_session("gina")
        sid, token = created.session_id, created.token
        first = asyncio.create_task(one.send(sid, token, "long turn on w1"))
        await asyncio.sleep(3.2)  # two lease TTLs into w1's turn
        await two.send(sid, token, "then w2")
        await first
        texts = await user_texts(two, sid, token)
        assert texts == ["long turn on w1", "then w2"]  # w2 waited for w1's turn
    assert "lease passed to another worker" not in caplog.text


async def test_a_worker_restarting_on_a_large_store_serves_sessions_before_paging_them_in(
    worker_config,
):
    """Paging in after open, in a cluster: a session not paged in yet is read when presented
    (the worker's sync), and the pages skip it afterwards."""
    config = worker_config("w1", sessions={"restore_page_sessions": 2})
    async with workers(config) as (one,):
        created = [await one.create_session(f"user{n}") for n in range(7)]
    last = max(created, key=lambda s: s.session_id)
    async with workers(config) as (again,):
        assert again.restore_report.pending == 5
        reply = await again.send(last.session_id, last.token, "straight away")
        assert reply.text
        report = await again.restored()
        assert (report.sessions, report.pending) == (7, 0)
        snapshot = again.snapshot()
        assert {v.session_id for v in snapshot.sessions} == {s.session_id for s in created}
        assert snapshot.sessions_by_id[last.session_id].turns == 1


async def test_a_turn_waiting_for_a_dead_workers_lease_asks_again_sparingly(
    worker_config, valkey
):
    """A lease left by a worker that died lapses only after its TTL: the waiting turn takes it
    then, asking again at first soon and then at most every LEASE_POLL_MAX_S (and at the lapse
    its PTTL gave), not 50 times a second for the whole TTL."""
    config = worker_config("w1")
    config = replace(config, cluster=replace(config.cluster, heartbeat_s=60.0))  # quiet
    async with workers(config) as (one,):
        created = await one.create_session("ulla")
        sid, token = created.session_id, created.token
        await one.send(sid, token, "before")
        with valkey.client() as admin:
            admin.set(f"sc:lease:{sid}", "ghost|1", px=1500)  # its holder died mid-turn
            calls_before = _script_calls(admin)
            await one.send(sid, token, "after the lapse")
            calls = _script_calls(admin) - calls_before
            assert admin.get(f"sc:lease:{sid}") is None  # taken, then released
        assert await user_texts(one, sid, token) == ["before", "after the lapse"]
        # 1.5 s at 20 ms would be 75 asks; the sync, admit and finish are one call each.
        assert calls <= 3 + 25


def _script_calls(admin) -> int:
    stats = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
