"""The stale-token storm of issue 15 at small scale, on the injected clock, through the public API.

Users open more sessions than their cap, so the oldest are evicted; clients keep presenting the
evicted sessions' tokens. They must be refused before any hashing once they keep failing, told
when to retry, and never able to lock a right token out, not even on the id they attack.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import Engine, errors, security
from engine.admission import AuthBackoffPolicy
from engine.alerts import AlertRules, AuthBurstRule
from engine.monitor import Monitor
from engine.overload import SCOPE, OverloadPolicy
from engine.quotas import QuotaLimit
from engine.ratelimit import RateLimit

BACKOFF = AuthBackoffPolicy(free_failures=3, base_s=1.0, max_s=8.0, forget_after_s=60.0)


@pytest.fixture
def hashes(monkeypatch):
    """Counts token hashes: a spy around the real function, which still runs."""
    calls = []
    real = security.hash_token

    def counting(token: str) -> bytes:
        calls.append(1)
        return real(token)

    monkeypatch.setattr(security, "hash_token", counting)
    return calls


async def refused(call) -> errors.AuthenticationError:
    with pytest.raises(errors.AuthenticationError) as info:
        await call
    return info.value


async def evicted_sessions(engine: Engine, user: str, opened: int):
    """Open `opened` sessions for `user`; returns (evicted, live) as the cap leaves them."""
    created = [await engine.create_session(user) for _ in range(opened)]
    live = {view.session_id for view in engine.snapshot().sessions}
    return (
        [s for s in created if s.session_id not in live],
        [s for s in created if s.session_id in live],
    )


async def test_a_dead_token_sent_again_is_refused_before_hashing_with_retry_after(
    make_config, clock, hashes
):
    async with Engine(make_config(limits={"auth_backoff": BACKOFF})) as engine:
        evicted, _ = await evicted_sessions(engine, "alice", 8)
        dead = evicted[0]
        for _ in range(BACKOFF.free_failures):
            error = await refused(engine.send(dead.session_id, dead.token, "hi"))
            assert type(error) is errors.AuthenticationError
        first = await refused(engine.send(dead.session_id, dead.token, "hi"))
        assert isinstance(first, errors.AuthBackoff) and first.retry_after == 1.0
        hashed = len(hashes)
        for _ in range(50):  # the storm: refused at once, no hash, same retry_after shrinking
            error = await refused(engine.send(dead.session_id, dead.token, "hi"))
            assert isinstance(error, errors.AuthBackoff) and 0 < error.retry_after <= 1.0
        assert len(hashes) == hashed
        assert engine.auth_failure_stats().refused_unchecked == 50
        assert engine.snapshot().monitor.auth_failures == BACKOFF.free_failures + 51
        clock.advance(1.0)  # backoff over: checked once more, fails, backs off twice as long
        again = await refused(engine.history(dead.session_id, dead.token))
        assert isinstance(again, errors.AuthBackoff) and again.retry_after == 2.0
        assert len(hashes) == hashed + 1


async def test_a_right_token_works_during_a_storm_against_its_own_id(make_config, hashes):
    async with Engine(make_config(limits={"auth_backoff": BACKOFF})) as engine:
        victim = await engine.create_session("victim")
        for i in range(40):  # wrong tokens on the victim's id, from the victim's own caller
            await refused(engine.history(victim.session_id, f"guess-{i % 3}"))
        for i in range(40):  # and from the attacker's address
            await refused(engine.history(victim.session_id, f"guess-{i}", client="10.9.9.9"))
        reply = await engine.send(victim.session_id, victim.token, "still mine")
        assert reply.text
        assert len(await engine.history(victim.session_id, victim.token, client="10.9.9.9")) == 2
        new_token = await engine.rotate_token(victim.session_id, victim.token)
        assert (await engine.history(victim.session_id, new_token)) != []
        await engine.end_session(victim.session_id, new_token, client="10.9.9.9")


async def test_unknown_id_and_wrong_token_stay_indistinguishable_in_backoff(make_config, hashes):
    async with Engine(make_config(limits={"auth_backoff": BACKOFF})) as engine:
        live = await engine.create_session("alice")
        presentations = {
            "unknown id": ("f" * 32, "some-token"),
            "wrong token": (live.session_id, "some-token"),
        }
        seen = {}
        for name, (session_id, token) in presentations.items():
            before = len(hashes)
            errors_seen = [
                await refused(engine.history(session_id, token, client=name))
                for _ in range(BACKOFF.free_failures + 3)
            ]
            seen[name] = (
                [(type(e), str(e)) for e in errors_seen],
                [getattr(e, "retry_after", None) for e in errors_seen],
                len(hashes) - before,  # the work: hashes done
            )
        assert seen["unknown id"] == seen["wrong token"]
        assert seen["unknown id"][2] == BACKOFF.free_failures + 1  # then refused unchecked


async def test_a_client_that_keeps_failing_backs_off_but_its_right_tokens_pass(make_config):
    async with Engine(make_config(limits={"auth_backoff": BACKOFF})) as engine:
        mine = await engine.create_session("bob")
        errors_seen = [
            await refused(engine.history(f"{i:032x}", "t", client="10.0.0.5")) for i in range(6)
        ]
        assert [type(e) for e in errors_seen[:3]] == [errors.AuthenticationError] * 3
        assert all(isinstance(e, errors.AuthBackoff) for e in errors_seen[3:])
        fresh = await refused(engine.history("a" * 32, "t", client="10.0.0.6"))
        assert type(fresh) is errors.AuthenticationError  # another client: not backed off
        assert await engine.history(mine.session_id, mine.token, client="10.0.0.5") == []


async def test_evicted_sessions_storm_leaves_live_sessions_untouched(make_config, clock):
    async with Engine(make_config(limits={"auth_backoff": BACKOFF})) as engine:
        stale, live = [], []
        for user in ("u1", "u2", "u3"):
            evicted, kept = await evicted_sessions(engine, user, 9)
            stale += evicted
            live += kept
        assert (len(stale), len(live)) == (12, 15)

        async def stale_client(s, rounds):
            kinds = set()
            for _ in range(rounds):
                kinds.add(type(await refused(engine.send(s.session_id, s.token, "x"))))
                await asyncio.sleep(0)
            return kinds

        storm = asyncio.gather(*(stale_client(s, 30) for s in stale))
        replies = [await engine.send(s.session_id, s.token, "hello") for s in live]
        kinds = set().union(*await storm)
        assert kinds == {errors.AuthenticationError, errors.AuthBackoff}
        assert all(r.text for r in replies)
        assert engine.auth_failure_stats().refused_unchecked > 0


def test_a_storm_of_failures_updates_the_auth_alert_rarely_not_per_failure(clock):
    stored = []
    monitor = Monitor(
        clock, AlertRules(auth_burst=AuthBurstRule(per_id=5, global_count=8, window_s=60)),
        on_alert=stored.append,
    )
    for _ in range(1000):
        monitor.record_auth_failure("sid")
    assert {a.key for a in monitor.alerts()} == {"auth_burst:global", "auth_burst:sid"}
    assert len(stored) == 2  # one write per alert, not 2,000
    assert monitor.snapshot().auth_failures == 1000
    clock.advance(10.0)
    monitor.record_auth_failure("sid")
    assert len(stored) == 4  # refreshed once the interval has passed


UNLIMITED_TIER = {
    "unlimited": {
        "api_calls": QuotaLimit(1e9, 60.0),
        "tokens": QuotaLimit(1e12, 3600.0),
        "storage_mb": QuotaLimit(1e9, None),
        "compute_seconds": QuotaLimit(1e9, 3600.0),
    }
}


async def test_a_lagging_loop_sheds_the_heaviest_user_and_keeps_the_quiet_one(make_config, clock):
    config = make_config(limits={
        # A bound well above this machine's own noise: only the stall below crosses it.
        "overload": OverloadPolicy(
            lag_bound_s=0.3, late_readings=1, probe_interval_s=0.01, hold_s=5.0
        ),
        "tiers": UNLIMITED_TIER, "default_tier": "unlimited",
        "session_rate": RateLimit(1e6, 10**6), "user_rate": RateLimit(1e6, 10**6),
    })
    async with Engine(config) as engine:
        heavy = await engine.create_session("heavy")
        quiet = await engine.create_session("quiet")
        await engine.send(quiet.session_id, quiet.token, "hello")
        for _ in range(40):
            await engine.send(heavy.session_id, heavy.token, "more")
        time.sleep(0.8)  # a real stall of the loop: the probe's timer fires late
        for _ in range(20):
            await asyncio.sleep(0.01)
            if engine.overload_stats().overloaded:
                break
        assert engine.overload_stats().overloaded
        with pytest.raises(errors.RateLimited) as info:
            await engine.send(heavy.session_id, heavy.token, "more")
        assert info.value.scope == SCOPE and info.value.retry_after > 0
        assert (await engine.send(quiet.session_id, quiet.token, "still served")).text
        clock.advance(5.0)  # the hold passes with no new sign of overload
        await asyncio.sleep(0.05)
        assert not engine.overload_stats().overloaded
        assert (await engine.send(heavy.session_id, heavy.token, "back")).text
