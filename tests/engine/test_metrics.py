"""Latency histograms (Locust-style rounded buckets) and per-second rate rings."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.metrics import LatencyHistogram, RateRing, WindowedHistogram


def exact(values: list[float], q: float) -> float:
    """Nearest-rank percentile of the raw values, the definition the histogram approximates."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_uniform_milliseconds_give_percentiles_within_rounding():
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms / 1000)
    assert hist.count == 1000
    assert hist.percentile(0.5) == pytest.approx(0.5, rel=0.02)
    assert hist.percentile(0.95) == pytest.approx(0.95, rel=0.02)
    assert hist.percentile(0.99) == pytest.approx(0.99, rel=0.02)
    p = hist.percentiles()
    assert (p.count, p.p50, p.p95, p.p99) == (
        1000,
        hist.percentile(0.5),
        hist.percentile(0.95),
        hist.percentile(0.99),
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-4, max_value=600.0), min_size=1, max_size=300))
def test_percentiles_stay_within_two_significant_figures_of_exact(values):
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        # Two significant figures: at worst half a unit in the second figure, i.e. 5%.
        assert hist.percentile(q) == pytest.approx(exact(values, q), rel=0.05, abs=1e-6)


def test_sub_millisecond_latencies_stay_visible():
    hist = LatencyHistogram()
    hist.record(0.0004)
    assert hist.percentile(0.5) == pytest.approx(0.0004)


def test_empty_zero_negative_nan_and_huge_values_are_safe():
    hist = LatencyHistogram()
    assert hist.percentile(0.95) == 0.0 and hist.percentiles().count == 0
    for v in (0.0, -1.0, math.nan, math.inf, 1e300):
        hist.record(v)
    assert hist.count == 5 and hist.key_count == 2  # 0 and the cap
    assert hist.percentile(0.0) == 0.0


def test_key_count_is_bounded_after_a_million_records():
    rng = random.Random(7)
    hist = LatencyHistogram()
    for _ in range(1_000_000):
        hist.record(10 ** rng.uniform(-6, 5))  # 1 µs .. 28 hours
    assert hist.count == 1_000_000
    assert hist.key_count <= LatencyHistogram.MAX_KEYS
    assert LatencyHistogram.MAX_KEYS < 1000


def test_merge_and_subtract_are_inverse():
    a, b = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        a.record(ms / 1000)
        b.record(ms / 100)
    before = a.percentiles()
    a.merge(b)
    assert a.count == 200 and a.percentile(0.99) == pytest.approx(0.98, rel=0.05)
    a.subtract(b)
    assert a.percentiles() == before


def test_windowed_histogram_forgets_old_slots():
    clock = ManualClock()
    window = WindowedHistogram(clock, window_s=60, slots=6)
    for _ in range(100):
        window.record(5.0)
    clock.advance(30)
    for _ in range(100):
        window.record(0.1)
    assert window.count == 200 and window.percentile(0.99) == pytest.approx(5.0)
    clock.advance(35)  # the 5 s slot is now more than 60 s old
    assert window.count == 100 and window.percentile(0.99) == pytest.approx(0.1)
    clock.advance(3600)
    assert window.count == 0 and window.percentiles().p95 == 0.0


def test_rate_ring_series_is_oldest_first_with_the_current_second_last():
    clock = ManualClock(1000.0)
    ring = RateRing(clock, seconds=5)
    ring.add(3)
    clock.advance(1)
    ring.add()
    ring.add()
    assert ring.series() == (0, 0, 0, 3, 2)
    clock.advance(2)
    ring.add(7)
    assert ring.series() == (0, 3, 2, 0, 7)
    assert ring.total(3) == 9 and ring.total(100) == 12


def test_rate_ring_gap_longer_than_the_ring_clears_everything():
    clock = ManualClock(1000.0)
    ring = RateRing(clock, seconds=5)
    for _ in range(5):
        ring.add(4)
        clock.advance(1)
    assert ring.series() == (4, 4, 4, 4, 0)
    clock.advance(1000)
    assert ring.series() == (0, 0, 0, 0, 0)
    ring.add()
    assert ring.series() == (0, 0, 0, 0, 1)
    clock.advance(3)  # shorter gap: only the skipped seconds are zeroed
    assert ring.series() == (0, 1, 0, 0, 0)


def test_rate_is_an_average_over_completed_seconds():
    clock = ManualClock(1000.0)
    ring = RateRing(clock, seconds=300)
    for _ in range(10):
        ring.add(20)
        clock.advance(1)
    ring.add(500)  # the second in progress does not count yet
    assert ring.rate(10) == 20.0
    assert ring.rate(20) == 10.0
