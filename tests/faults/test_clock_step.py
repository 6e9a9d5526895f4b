"""Fault: the wall clock steps by an hour, forwards or backwards (NTP, an operator, a VM resume).

What the user sees: deadlines are wall-clock times (they survive a restart), so after a step
forwards a session whose idle or absolute deadline passed is `SessionExpired` and one whose
deadline did not stays; a step backwards expires nothing. Rate limits, quota windows, the
authentication backoff, load shedding and alert cooldowns never make anyone wait longer for a
step back than they would have without it (every `retry_after` stays positive and within its
usual bound) and lift on their usual schedule afterwards. Nothing crashes: snapshots and
housekeeping go on. `ManualClock.step` jumps the clock without time passing, as a real step
does (sleepers keep their durations).
"""

from __future__ import annotations

import pytest

from engine import Engine
from engine.admission import AuthBackoffPolicy
from engine.alerts import AlertManager
from engine.errors import AuthBackoff, AuthenticationError, QuotaExceeded, RateLimited
from engine.overload import LoadShedder, OverloadPolicy
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit

HOUR = 3600.0


async def test_a_step_forward_expires_exactly_the_sessions_whose_deadline_passed(
    make_config, clock
):
    config = make_config(sessions={"idle_timeout_s": 1.5 * HOUR})
    async with Engine(config) as engine:
        old = await engine.create_session("alice")
        clock.advance(0.75 * HOUR)
        recent = await engine.create_session("bob")
        clock.step(HOUR)  # old: idle 1.75 h > 1.5 h; recent: idle 1 h
        reply = await engine.send(recent.session_id, recent.token, "still here")
        assert reply.text
        assert engine.housekeep() == 1  # the deadline heap finds old without a scan
        assert {v.user_id for v in engine.snapshot().sessions} == {"bob"}
        with pytest.raises(AuthenticationError):
            await engine.send(old.session_id, old.token, "gone")
        assert engine.ready


async def test_a_step_back_expires_nothing_and_waits_stay_bounded(make_config, clock):
    tiers = {**DEFAULT_TIERS, "free": {**DEFAULT_TIERS["free"], "api_calls": QuotaLimit(3, 60.0)}}
    config = make_config(limits={
        "session_rate": RateLimit(rate_per_s=2.0, burst=2),
        "user_rate": RateLimit(rate_per_s=100.0, burst=100),
        "tiers": tiers,
        "auth_backoff": AuthBackoffPolicy(free_failures=2, base_s=1.0, max_s=30.0),
    })
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        other = await engine.create_session("bob")

        # Rate limit: burst spent; after a step back the key starts over rather than wait
        # out the hour, and the rate holds again from there.
        for _ in range(2):
            await engine.send(s.session_id, s.token, "hi")
        with pytest.raises(RateLimited) as limited:
            await engine.send(s.session_id, s.token, "too fast")
        assert 0 < limited.value.retry_after <= 0.5
        clock.step(-HOUR)
        await engine.send(s.session_id, s.token, "third call")

        # Quota window (3 calls a minute): the calls before the step still count, and expire
        # a window after they were made, not a window plus the hour.
        with pytest.raises(QuotaExceeded) as over:
            await engine.send(s.session_id, s.token, "fourth call")
        assert 0 < over.value.retry_after <= 61
        clock.advance(over.value.retry_after)
        await engine.send(s.session_id, s.token, "a minute later")

        # Auth backoff: a presenter in backoff when the clock steps back waits max_s at most,
        # and the right token is never refused meanwhile.
        for _ in range(4):
            with pytest.raises(AuthenticationError):
                await engine.history(other.session_id, "wrong")
        clock.step(-HOUR)
        with pytest.raises(AuthBackoff) as backoff:
            await engine.history(other.session_id, "wrong")
        assert 0 < backoff.value.retry_after <= 30
        assert await engine.history(other.session_id, other.token) == []
        clock.advance(30)
        with pytest.raises(AuthenticationError) as checked:  # checked again, not refused unseen
            await engine.history(other.session_id, "wrong-again")
        assert not isinstance(checked.value, AuthBackoff) or checked.value.retry_after <= 30

        # Two hours back in all: nothing expired, and the sessions keep their history.
        assert engine.housekeep() == 0
        assert {v.user_id for v in engine.snapshot().sessions} == {"alice", "bob"}
        users = [m.content for m in await engine.history(s.session_id, s.token) if m.role == "user"]
        assert users == ["hi", "hi", "third call", "a minute later"]
        clock.step(2 * HOUR)  # and back to where it was: still within the idle limit
        await engine.send(s.session_id, s.token, "back again")
        assert engine.ready


def test_load_shedding_lifts_on_time_after_a_step_back(clock):
    policy = OverloadPolicy(hold_s=1.0, late_readings=1, min_rate_per_s=0.1)
    shedder = LoadShedder(clock, policy)
    for _ in range(50):
        shedder.admit("heavy")
    shedder.admit("quiet")
    shedder.observe(lag_s=1.0, store_queue=0)  # overloaded: the ceiling halves
    shedder.observe(lag_s=1.0, store_queue=0)
    clock.step(-HOUR)
    with pytest.raises(RateLimited) as shed:
        shedder.admit("heavy")
    assert 0 < shed.value.retry_after <= policy.hold_s
    shedder.admit("quiet")  # a step back inflates nobody's score: the quiet user passes
    clock.advance(policy.hold_s)
    assert not shedder.overloaded
    shedder.admit("heavy")


def test_an_alert_cooldown_does_not_silence_a_key_for_the_length_of_a_step(clock):
    alerts = AlertManager(clock, cooldown_s=60.0)
    first = alerts.fire("store", "store", "critical", "store failing")
    assert first is not None and alerts.resolve("store")
    assert alerts.fire("store", "store", "critical", "again, within the cooldown") is None
    clock.step(-HOUR)
    assert alerts.fire("store", "store", "critical", "after the step") is not None
