"""Cluster request rates (GCRA in Lua) against a real Valkey, on the injected clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.cluster import ClusterClient, ClusterRates
from engine.errors import InvalidInput, RateLimited
from engine.limits import LocalRates, RateBackend
from engine.ratelimit import RateLimit, RateLimiter

# Clock values where a float TAT rounds (a 2.4e-7 s grid at 1.8e9), and intervals that are not
# binary fractions (1/3, 0.2, 1/7, 3.33 s) besides one that is.
STARTS = [0.0, 1e9, 1.8e9]
RATES = [3.0, 5.0, 7.0, 0.3, 2.0]

LIMITS = {"session": RateLimit(rate_per_s=2.0, burst=3), "user": RateLimit(rate_per_s=4.0, burst=4)}


def cluster_rates(
    url: str, clock: ManualClock, limits: dict[str, RateLimit] = LIMITS
) -> ClusterRates:
    return ClusterRates(ClusterClient(url, "t:", timeout_s=5.0), clock, limits)


async def test_burst_passes_then_one_per_interval_with_the_exact_retry_after(redis_url, clock):
    rates = cluster_rates(redis_url, clock)
    for _ in range(3):
        await rates.acquire([("session", "s1")])
    with pytest.raises(RateLimited) as refused:
        await rates.acquire([("session", "s1")])
    assert refused.value.scope == "session"
    assert refused.value.retry_after == pytest.approx(0.5)
    assert await rates.retry_after("session", "s1") == pytest.approx(0.5)
    clock.advance(0.4)
    assert await rates.retry_after("session", "s1") == pytest.approx(0.1)
    clock.advance(0.1)
    await rates.acquire([("session", "s1")])
    await rates.acquire([("session", "s2")])  # another key has its own burst
    await rates._client.aclose()


async def test_a_refusal_by_one_scope_spends_none_of_the_other(redis_url, clock):
    rates = cluster_rates(redis_url, clock)
    for session in ("a", "b", "c", "d"):
        await rates.acquire([("session", session), ("user", "u")])
    with pytest.raises(RateLimited) as refused:
        await rates.acquire([("session", "e"), ("user", "u")])
    assert refused.value.scope == "user"
    assert refused.value.retry_after == pytest.approx(0.25)
    for _ in range(3):  # session "e" still has its whole burst
        await rates.acquire([("session", "e")])
    with pytest.raises(InvalidInput, match="unknown rate scope 'tenant'"):
        await rates.acquire([("tenant", "x")])
    await rates._client.aclose()


async def test_workers_share_one_rate(redis_url, clock):
    """Two workers' limiters together let through one burst, not one each."""
    one, two = cluster_rates(redis_url, clock), cluster_rates(redis_url, clock)
    results = await asyncio.gather(
        *(worker.acquire([("user", "u")]) for worker in (one, two) * 5), return_exceptions=True
    )
    assert sum(r is None for r in results) == LIMITS["user"].burst
    assert all(isinstance(r, RateLimited) for r in results if r is not None)
    await one._client.aclose()
    await two._client.aclose()


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("rate", RATES)
async def test_exactly_burst_pass_at_any_clock_value_as_locally(redis_url, start, rate):
    burst = 4
    clock = ManualClock(start)
    rates = cluster_rates(redis_url, clock, {"user": RateLimit(rate, burst)})
    local = RateLimiter(clock, rate, burst, "user")
    for _ in range(burst):
        await rates.acquire([("user", "u")])
        local.acquire("u")
    with pytest.raises(RateLimited) as refused:
        await rates.acquire([("user", "u")])
    wait = refused.value.retry_after
    assert wait == pytest.approx(1 / rate, abs=1e-6)
    assert wait == local.retry_after("u")  # to the last bit
    assert await rates.retry_after("user", "u") == wait
    for _ in range(5):  # one per interval from here, each refusal the interval again
        clock.advance(wait)
        await rates.acquire([("user", "u")])
        local.acquire("u")
        wait = await rates.retry_after("user", "u")
        assert wait == local.retry_after("u") == pytest.approx(1 / rate, abs=1e-6)
    await rates._client.aclose()


async def test_a_key_expires_late_never_early(valkey, redis_url, clock):
    rates = cluster_rates(redis_url, clock, {"user": RateLimit(5.0, 4)})
    for _ in range(4):
        await rates.acquire([("user", "u")])
    with valkey.client() as admin:
        left_ms = admin.pttl(rates.keys([("user", "u")])[0])
    assert 60_000 < left_ms <= 60_000 + 800  # the TAT is 0.8 s ahead, plus the grace
    await rates._client.aclose()


step = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.3])),
    st.tuples(st.just("acquire"), st.lists(
        st.tuples(st.sampled_from(["session", "user"]), st.sampled_from(["a", "b"])),
        min_size=1, max_size=2, unique_by=lambda c: c[0],
    )),
    st.tuples(st.just("peek"), st.sampled_from(["session", "user"]), st.sampled_from(["a", "b"])),
)


async def outcome(rates: RateBackend, op: tuple) -> object:
    try:
        if op[0] == "acquire":
            await rates.acquire(op[1])
            return "ok"
        return round(await rates.retry_after(op[1], op[2]), 9)
    except RateLimited as exc:
        return (exc.scope, round(exc.retry_after, 9))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(step, max_size=30),
    user_rate=st.builds(RateLimit, st.sampled_from([5.0, 4.0, 0.3, 7.0, 3.0]), st.integers(1, 5)),
    start=st.sampled_from([*STARTS, 1.7e9]),
)
def test_every_answer_is_the_local_limiters(valkey, ops, user_rate, start):
    async def run() -> None:
        with valkey.client() as admin:
            admin.flushall()
        limits = {**LIMITS, "user": user_rate}
        local_clock, cluster_clock = ManualClock(start), ManualClock(start)
        local = LocalRates(local_clock, limits)
        shared = cluster_rates(valkey.url, cluster_clock, limits)
        try:
            for op in ops:
                if op[0] == "advance":
                    local_clock.advance(op[1])
                    cluster_clock.advance(op[1])
                else:
                    assert await outcome(shared, op) == await outcome(local, op)
        finally:
            await shared._client.aclose()

    asyncio.run(run())
