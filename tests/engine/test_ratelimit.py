"""GCRA rate limiter: bursts, exact retry_after, fairness across keys, bounded state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.errors import RateLimited
from engine.ratelimit import RateLimit, RateLimiter


def make(rate: float = 2.0, burst: int = 3) -> tuple[ManualClock, RateLimiter]:
    clock = ManualClock()
    return clock, RateLimiter(clock, rate_per_s=rate, burst=burst, scope="session")


def allowed(limiter: RateLimiter, key: str) -> bool:
    try:
        limiter.acquire(key)
    except RateLimited:
        return False
    return True


def test_burst_passes_then_limited() -> None:
    _, limiter = make(rate=2.0, burst=3)
    for _ in range(3):
        limiter.acquire("s")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("s")
    assert info.value.scope == "session"
    assert info.value.retry_after == pytest.approx(0.5)


def test_retry_after_is_exact() -> None:
    clock, limiter = make(rate=3.0, burst=2)
    limiter.acquire("s")
    limiter.acquire("s")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("s")
    wait = info.value.retry_after
    assert wait > 0
    assert limiter.retry_after("s") == wait  # peeking agrees and counts nothing

    clock.advance(wait - 1e-3)
    assert not allowed(limiter, "s")
    clock.advance(limiter.retry_after("s"))
    assert limiter.retry_after("s") == 0.0
    assert allowed(limiter, "s")
    assert not allowed(limiter, "s")


def test_sustained_rate_converges() -> None:
    clock, limiter = make(rate=10.0, burst=5)
    passed = 0
    for _ in range(10_000):  # 100 s offered at 100 requests/s
        passed += allowed(limiter, "s")
        clock.advance(0.01)
    assert 5 + 999 <= passed <= 5 + 1000  # burst, then the rate over 100 s


def test_keys_are_independent() -> None:
    _, limiter = make(rate=1.0, burst=1)
    limiter.acquire("a")
    assert not allowed(limiter, "a")
    assert allowed(limiter, "b")
    assert len(limiter) == 2


def test_forget_resets_a_key() -> None:
    _, limiter = make(rate=1.0, burst=2)
    limiter.acquire("a")
    limiter.acquire("a")
    assert limiter.retry_after("a") > 0
    limiter.forget("a")
    limiter.forget("never-seen")
    assert len(limiter) == 0
    assert limiter.retry_after("a") == 0.0
    assert allowed(limiter, "a") and allowed(limiter, "a")


def test_prune_drops_only_idle_keys() -> None:
    clock, limiter = make(rate=1.0, burst=5)
    limiter.acquire("idle")  # TAT now + 1
    for _ in range(4):
        limiter.acquire("busy")  # TAT now + 4
    clock.advance(3.5)
    assert limiter.prune() == 1
    assert len(limiter) == 1
    assert limiter.retry_after("busy") == 0.0
    for _ in range(4):  # half a second short of its full burst: pruning kept its state
        limiter.acquire("busy")
    assert not allowed(limiter, "busy")


def test_pruned_key_behaves_as_new() -> None:
    clock, limiter = make(rate=1.0, burst=2)
    limiter.acquire("a")
    clock.advance(5.0)
    limiter.prune()
    assert len(limiter) == 0
    assert allowed(limiter, "a") and allowed(limiter, "a")
    assert not allowed(limiter, "a")


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
def test_invalid_configuration_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(ManualClock(), rate, burst, "user")
    with pytest.raises(ValueError):
        RateLimit(rate, burst)


@given(
    rate=st.floats(min_value=0.1, max_value=50.0),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_no_interval_admits_more_than_burst_plus_rate_times_length(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock, limiter = make(rate=rate, burst=burst)
    times = []
    for gap in gaps:
        clock.advance(gap)
        if allowed(limiter, "k"):
            times.append(clock.now())
    # Any interval's count is largest when it starts and ends on allowed requests.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            count = j - i + 1
            assert count <= burst + rate * (times[j] - start) + 1e-6


# Clock values where a float TAT rounds: 0, and epoch seconds (a 2.4e-7 s grid at 1.8e9).
STARTS = [0.0, 1e9, 1.7e9, 1.8e9]
# Intervals that are not binary fractions (1/3, 0.2, 1/7, 3.33 s) besides ones that are.
RATES = [3.0, 5.0, 7.0, 0.3, 2.0]


def burst_then_refusal(limiter: RateLimiter, key: str, burst: int) -> float:
    """Assert exactly `burst` requests pass at once; return the next one's retry_after."""
    for n in range(burst):
        assert allowed(limiter, key), f"request {n + 1} of a burst of {burst} was refused"
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(key)
    return refused.value.retry_after


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("burst", [1, 4, 10])
def test_exactly_burst_pass_at_any_clock_value(start: float, rate: float, burst: int) -> None:
    clock = ManualClock(start)
    limiter = RateLimiter(clock, rate_per_s=rate, burst=burst, scope="user")
    wait = burst_then_refusal(limiter, "k", burst)
    assert wait == pytest.approx(1 / rate, abs=1e-6)
    assert limiter.retry_after("k") == wait
    # The state never drifts: one request per interval, each refusal the interval again.
    for _ in range(20):
        clock.advance(wait)
        assert allowed(limiter, "k")
        with pytest.raises(RateLimited) as refused:
            limiter.acquire("k")
        wait = refused.value.retry_after
        assert wait == pytest.approx(1 / rate, abs=1e-6)
    clock.advance(burst / rate + 1e-6)  # idle a full burst's worth: the whole burst again
    assert burst_then_refusal(limiter, "k", burst) == pytest.approx(1 / rate, abs=2e-6)


@given(
    start=st.floats(min_value=0.0, max_value=4e9),
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
)
def test_burst_and_retry_after_are_exact_for_any_rate(
    start: float, rate: float, burst: int
) -> None:
    clock = ManualClock(start)
    limiter = RateLimiter(clock, rate_per_s=rate, burst=burst, scope="user")
    wait = burst_then_refusal(limiter, "k", burst)
    assert wait == pytest.approx(1 / rate, abs=1e-6)
    clock.advance(wait)  # exactly the wait: the request passes, not one clock tick later
    assert limiter.retry_after("k") == 0.0
    assert allowed(limiter, "k")
    assert not allowed(limiter, "k")


def test_a_small_step_back_counts_the_request_as_earlier() -> None:
    """As a TAT does: the step adds to what the key owes, unless it is more than the burst."""
    clock, limiter = make(rate=1.0, burst=3)
    limiter.acquire("k")
    clock.step(-0.5)
    limiter.acquire("k")  # owes 2.5 intervals of 3
    assert limiter.retry_after("k") == pytest.approx(0.5)
    clock.step(-1.0)  # now owes 3.5 of 3: the key starts over as a new one
    assert limiter.retry_after("k") == 0.0
    for _ in range(3):
        limiter.acquire("k")
    assert limiter.retry_after("k") == pytest.approx(1.0)
