"""A turn's cluster checks in one round trip each: the answers of the separate primitives."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ClusterSettings, LimitSettings
from engine.clock import ManualClock
from engine.cluster import ClusterState, RunningTurn, TurnWaits
from engine.errors import QuotaExceeded, RateLimited
from engine.limits import LocalQuotas, LocalRates
from engine.quotas import QuotaLimit, QuotaManager
from engine.ratelimit import RateLimit

TIERS = {"free": {
    "api_calls": QuotaLimit(5, 60.0), "tokens": QuotaLimit(100, 60.0),
    "storage_mb": QuotaLimit(10, None), "compute_seconds": QuotaLimit(100, 60.0),
}}
LIMITS = LimitSettings(
    tiers=TIERS, session_rate=RateLimit(2.0, 3), user_rate=RateLimit(4.0, 4)
)


async def open_state(
    url: str, clock: ManualClock, limits: LimitSettings = LIMITS, **settings: object
) -> ClusterState:
    """The state of a cluster whose shared state is whole (as a worker's rebuild leaves it)."""
    state = await ClusterState.open(ClusterSettings(redis_url=url, **settings), clock, limits)
    await state.rebuild.done("test")
    return state


async def test_admit_counts_rates_then_reserves(redis_url, clock):
    state = await open_state(redis_url, clock)
    first = await state.turns.admit("s1", "u", {"api_calls": 1, "tokens": 30})
    assert dict(first.amounts) == {"api_calls": 1, "tokens": 30}
    with pytest.raises(QuotaExceeded) as over:
        await state.turns.admit("s1", "u", {"api_calls": 1, "tokens": 80})
    assert over.value.resource == "tokens"
    await state.turns.admit("s1", "u", {"api_calls": 1})  # the session's 3rd request
    with pytest.raises(RateLimited) as fast:
        await state.turns.admit("s1", "u", {"api_calls": 1})
    # The quota refusal still counted against the rates, as the local turn path does.
    assert fast.value.scope == "session" and fast.value.retry_after == pytest.approx(0.5)
    await state.turns.admit("s2", "u", {"api_calls": 1})  # the user's 4th
    with pytest.raises(RateLimited) as user:
        await state.turns.admit("s3", "u", {"api_calls": 1})
    assert user.value.scope == "user" and user.value.retry_after == pytest.approx(0.25)
    usage = {u.resource: u for u in await state.quotas.usage("u")}
    assert usage["api_calls"].reserved == 3 and usage["tokens"].reserved == 30
    await state.aclose()


async def test_start_takes_the_lease_and_a_slot_or_neither(redis_url, clock):
    state = await open_state(redis_url, clock)
    turn = await state.turns.start("s1", "u", "w1", cap=2)
    assert isinstance(turn, RunningTurn) and turn.lease.worker_id == "w1"
    busy = await state.turns.start("s1", "u", "w2", cap=2)
    assert isinstance(busy, TurnWaits) and busy.reason == "lease"
    assert 0 < (busy.lease_left_s or 0) <= 5.0
    assert await state.inflight.count("u") == 1  # the waiting turn took no slot
    other = await state.turns.start("s2", "u", "w2", cap=2)
    assert isinstance(other, RunningTurn) and other.lease.token > turn.lease.token
    capped = await state.turns.start("s3", "u", "w1", cap=2)
    assert capped == TurnWaits("cap")
    assert await state.leases.holder("s3") is None  # ...and no lease
    await state.aclose()


async def test_finish_settles_leaves_and_releases(redis_url, clock):
    state = await open_state(redis_url, clock)
    reservation = await state.turns.admit("s1", "u", {"api_calls": 1, "tokens": 60})
    turn = await state.turns.start("s1", "u", "w1", cap=1)
    assert isinstance(turn, RunningTurn)
    start = turn.version  # seeded from the server's clock
    assert start > 0 and await state.versions.get("s1") == start
    finished = await state.turns.finish(turn, reservation, {"api_calls": 1, "tokens": 25})
    assert finished == (True, start + 1)
    usage = {u.resource: u for u in await state.quotas.usage("u")}
    assert (usage["tokens"].used, usage["tokens"].reserved) == (25, 0)
    assert await state.inflight.count("u") == 0
    assert await state.leases.holder("s1") is None
    held, _ = await state.turns.finish(turn, reservation, {"tokens": 25})
    assert not held  # nothing twice
    usage = {u.resource: u for u in await state.quotas.usage("u")}
    assert usage["tokens"].used == 25

    failed = await state.turns.admit("s1", "u", {"api_calls": 1, "tokens": 60})
    turn = await state.turns.start("s1", "u", "w1", cap=1)
    assert isinstance(turn, RunningTurn) and turn.version == start + 2
    # The turn failed: release, and the session's version stays (nothing was committed).
    assert await state.turns.finish(turn, failed, None) == (True, start + 2)
    usage = {u.resource: u for u in await state.quotas.usage("u")}
    assert (usage["tokens"].used, usage["tokens"].reserved) == (25, 0)
    await state.aclose()


async def test_finish_says_when_the_lease_had_passed_to_another(redis_url, clock):
    state = await open_state(redis_url, clock, lease_ttl_s=0.05)
    reservation = await state.turns.admit("s1", "u", {"api_calls": 1})
    turn = await state.turns.start("s1", "u", "w1", cap=2)
    assert isinstance(turn, RunningTurn)
    while not isinstance(taken := await state.turns.start("s1", "u", "w2", cap=2), RunningTurn):
        await asyncio.sleep(0.02)
    held, _ = await state.turns.finish(turn, reservation, {"api_calls": 1})
    assert not held
    holder = await state.leases.holder("s1")
    assert holder is not None and holder.token == taken.lease.token  # not freed by w1
    await state.aclose()


@pytest.mark.parametrize("start", [0.0, 1e9, 1.8e9])
async def test_admit_lets_exactly_the_burst_through_at_any_clock_value(redis_url, start):
    clock = ManualClock(start)
    limits = LimitSettings(
        tiers={"free": {**TIERS["free"], "api_calls": QuotaLimit(100, 60.0)}},
        session_rate=RateLimit(5.0, 4), user_rate=RateLimit(7.0, 6),
    )
    state = await open_state(redis_url, clock, limits)
    for _ in range(4):
        await state.turns.admit("s1", "u", {"api_calls": 1})
    with pytest.raises(RateLimited) as session:
        await state.turns.admit("s1", "u", {"api_calls": 1})
    assert session.value.scope == "session"
    assert session.value.retry_after == pytest.approx(0.2, abs=1e-6)
    for _ in range(2):  # the user's 5th and 6th of a burst of 6
        await state.turns.admit("s2", "u", {"api_calls": 1})
    with pytest.raises(RateLimited) as user:
        await state.turns.admit("s3", "u", {"api_calls": 1})
    assert user.value.scope == "user" and user.value.retry_after == pytest.approx(1 / 7, abs=1e-6)
    clock.advance(user.value.retry_after)
    await state.turns.admit("s3", "u", {"api_calls": 1})
    await state.aclose()


admission = st.tuples(
    st.sampled_from(["s1", "s2", "s3"]),
    st.dictionaries(st.sampled_from(["api_calls", "tokens"]), st.sampled_from([0, 1, 20, 70]),
                    min_size=1),
)
step = st.one_of(admission, st.sampled_from([0.1, 0.25, 0.5, 2.0, 30.0]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=25), start=st.sampled_from([0.0, 1e9, 1.8e9]))
def test_admit_answers_as_the_local_rate_then_reserve(valkey, steps, start):
    async def run() -> None:
        with valkey.client() as admin:
            admin.flushall()
        local_clock, cluster_clock = ManualClock(start), ManualClock(start)
        rates = LocalRates(local_clock, {"session": LIMITS.session_rate, "user": LIMITS.user_rate})
        quotas = LocalQuotas(QuotaManager(local_clock, TIERS))
        state = await open_state(valkey.url, cluster_clock)
        try:
            for item in steps:
                if isinstance(item, float):
                    local_clock.advance(item)
                    cluster_clock.advance(item)
                    continue
                session_id, amounts = item
                try:
                    await rates.acquire([("session", session_id), ("user", "u")])
                    expected = dict((await quotas.reserve("u", amounts)).amounts)
                except (RateLimited, QuotaExceeded) as exc:
                    expected = str(exc)
                try:
                    got = dict((await state.turns.admit(session_id, "u", amounts)).amounts)
                except (RateLimited, QuotaExceeded) as exc:
                    got = str(exc)
                assert got == expected
        finally:
            await state.aclose()

    asyncio.run(run())


async def test_versions_lost_with_the_server_start_again_above_every_earlier_one(
    redis_url, valkey, clock
):
    """A worker's copy at an old version must never match a version restarted from zero."""
    state = await open_state(redis_url, clock)
    held = [await state.versions.get("s1")]
    for _ in range(3):
        held.append(await state.versions.bump("s1"))
    assert held == list(range(held[0], held[0] + 4))
    with valkey.client() as admin:
        admin.flushall()  # a restart without persistence
    assert await state.versions.get("s1") > max(held)
    await state.aclose()
