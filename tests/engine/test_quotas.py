"""Per-user quotas: limits, sliding windows, reserve/settle/release, tiers, reports, bounds."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.clock import ManualClock
from engine.errors import InvalidInput, QuotaExceeded
from engine.quotas import (
    DEFAULT_TIERS,
    RESERVATION_RETRY_S,
    RESOURCES,
    QuotaLimit,
    QuotaManager,
    QuotaUsage,
)


def tier(api: float, tokens: float, storage: float, compute: float, window: float) -> dict:
    return {
        "api_calls": QuotaLimit(api, window),
        "tokens": QuotaLimit(tokens, window),
        "storage_mb": QuotaLimit(storage, None),
        "compute_seconds": QuotaLimit(compute, window),
    }


def make(**kwargs: object) -> tuple[ManualClock, QuotaManager]:
    clock = ManualClock()
    return clock, QuotaManager(clock, **kwargs)  # type: ignore[arg-type]


def report(quotas: QuotaManager, user: str) -> dict[str, QuotaUsage]:
    return {u.resource: u for u in quotas.usage(user)}


def cells(quotas: QuotaManager, user: str) -> int:
    """Everything the manager holds for a user that could grow with traffic."""
    state = quotas._users[user]
    return (
        sum(len(getattr(u, "pairs", ())) + 1 for u in state.usages() if u is not None)
        + len(state.reservations or ())
        + len(state.reserved or ())
    )


def test_every_resource_is_counted_apart() -> None:
    """A user's usage of each resource is the field of its name (engine.quotas._User)."""
    _, quotas = make()
    for n, resource in enumerate(RESOURCES, start=1):
        quotas.record("u", resource, n)
    assert [report(quotas, "u")[r].used for r in RESOURCES] == [1, 2, 3, 4]


def test_default_tiers_cover_every_resource() -> None:
    assert set(DEFAULT_TIERS) >= {"free", "pro", "enterprise"}
    for limits in DEFAULT_TIERS.values():
        assert set(limits) == set(RESOURCES)
    assert DEFAULT_TIERS["free"]["storage_mb"].window_s is None


def test_limit_is_enforced() -> None:
    _, quotas = make()  # free: 60 api_calls per 60 s
    for _ in range(60):
        quotas.settle(quotas.reserve("u", {"api_calls": 1}), {"api_calls": 1})
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 1})
    assert info.value.resource == "api_calls"
    assert info.value.limit == 60
    quotas.reserve("other", {"api_calls": 1})  # users are independent


def test_window_slides_and_retry_after_is_when_capacity_returns() -> None:
    clock, quotas = make()  # 60 s window in 60 one-second buckets
    quotas.record("u", "api_calls", 40)
    clock.advance(30.0)
    quotas.record("u", "api_calls", 20)
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 1})
    # The oldest 40 expire when their whole bucket has left the window: 61 s after they were
    # recorded at the start of a bucket, so 31 s from now. Never earlier.
    assert info.value.retry_after == 31.0
    clock.advance(30.5)
    with pytest.raises(QuotaExceeded):
        quotas.reserve("u", {"api_calls": 1})
    clock.advance(0.5)
    quotas.reserve("u", {"api_calls": 40})
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 1})
    assert info.value.retry_after == 30.0  # the 20 recorded later must expire
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 21})
    assert info.value.retry_after == RESERVATION_RETRY_S  # only the 40 held can make room


def test_retry_after_counts_only_the_usage_that_must_expire() -> None:
    clock, quotas = make()
    for _ in range(6):
        quotas.record("u", "api_calls", 10)
        clock.advance(5.0)
    # 60 used, recorded at t = 0, 5, ..., 25; now t = 30. Room for 25 needs three buckets gone.
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 25})
    assert info.value.retry_after == 61.0 + 10.0 - 30.0
    clock.advance(info.value.retry_after)
    quotas.reserve("u", {"api_calls": 25})


def test_reserve_then_settle_records_actual_usage() -> None:
    _, quotas = make()
    reservation = quotas.reserve("u", {"tokens": 1_000, "api_calls": 1})
    tokens = report(quotas, "u")["tokens"]
    assert (tokens.used, tokens.reserved) == (0.0, 1_000.0)

    quotas.settle(reservation, {"tokens": 700, "api_calls": 1, "compute_seconds": 2.5})
    now = report(quotas, "u")
    assert (now["tokens"].used, now["tokens"].reserved) == (700.0, 0.0)
    assert now["compute_seconds"].used == 2.5

    quotas.settle(reservation, {"tokens": 700})  # idempotent
    quotas.release(reservation)
    assert report(quotas, "u")["tokens"].used == 700.0


def test_settle_records_more_than_reserved() -> None:
    _, quotas = make()
    reservation = quotas.reserve("u", {"tokens": 100})
    quotas.settle(reservation, {"tokens": 250})
    assert report(quotas, "u")["tokens"].used == 250.0


def test_overshoot_blocks_until_it_expires() -> None:
    clock, quotas = make()
    quotas.settle(quotas.reserve("u", {"tokens": 19_000}), {"tokens": 25_000})
    assert report(quotas, "u")["tokens"].percent == 125.0
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"tokens": 0})
    clock.advance(info.value.retry_after)
    quotas.reserve("u", {"tokens": 20_000})


def test_release_frees_the_hold_and_records_nothing() -> None:
    _, quotas = make()
    reservation = quotas.reserve("u", {"tokens": 20_000})
    with pytest.raises(QuotaExceeded):
        quotas.reserve("u", {"tokens": 1})
    quotas.release(reservation)
    quotas.release(reservation)
    tokens = report(quotas, "u")["tokens"]
    assert (tokens.used, tokens.reserved) == (0.0, 0.0)
    quotas.reserve("u", {"tokens": 20_000})


def test_failed_reserve_reserves_nothing_on_any_resource() -> None:
    _, quotas = make()
    quotas.reserve("u", {"api_calls": 5, "tokens": 100})
    before = quotas.usage("u")
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"api_calls": 1, "compute_seconds": 1, "tokens": 19_901})
    assert info.value.resource == "tokens"
    assert quotas.usage("u") == before
    with pytest.raises(QuotaExceeded):
        quotas.reserve("fresh", {"api_calls": 1, "tokens": 50_000})
    assert len(quotas) == 1  # a refused newcomer leaves no state behind


def test_amount_above_the_limit_itself_never_fits() -> None:
    _, quotas = make()
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"tokens": 20_001})
    assert info.value.retry_after == math.inf


def test_full_storage_frees_only_by_adjust() -> None:
    clock, quotas = make()
    quotas.record("u", "storage_mb", 9)
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("u", {"storage_mb": 2})
    assert info.value.retry_after == math.inf
    clock.advance(10 * 86_400.0)
    assert report(quotas, "u")["storage_mb"].reset_in_s == math.inf
    quotas.adjust("u", "storage_mb", -4)
    quotas.reserve("u", {"storage_mb": 5})
    quotas.adjust("u", "storage_mb", -100)
    assert report(quotas, "u")["storage_mb"].used == 0.0
    with pytest.raises(InvalidInput):
        quotas.adjust("u", "tokens", -5)


def test_tiers_and_overrides() -> None:
    _, quotas = make()
    assert quotas.tier_of("u") == "free"
    quotas.set_tier("u", "pro")
    assert quotas.tier_of("u") == "pro"
    quotas.reserve("u", {"api_calls": 600})
    with pytest.raises(InvalidInput):
        quotas.set_tier("u", "platinum")
    assert quotas.tier_of("u") == "pro"

    quotas.set_override("v", "tokens", 50)
    assert report(quotas, "v")["tokens"].limit == 50
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("v", {"tokens": 51})
    assert info.value.limit == 50
    quotas.clear_override("v", "tokens")
    quotas.clear_override("v", "tokens")
    quotas.reserve("v", {"tokens": 51})

    with pytest.raises(InvalidInput):
        quotas.set_override("v", "gpus", 1)
    with pytest.raises(InvalidInput):
        quotas.set_override("v", "tokens", -1)
    with pytest.raises(InvalidInput):
        quotas.set_override("v", "tokens", 10, window_s=0)


def test_override_that_changes_the_window_keeps_usage_conservatively() -> None:
    clock, quotas = make()
    quotas.record("u", "tokens", 500)
    quotas.set_override("u", "tokens", 1_000, window_s=10.0)
    assert report(quotas, "u")["tokens"].used == 500.0  # carried over, as if used now
    clock.advance(11.0)
    assert report(quotas, "u")["tokens"].used == 0.0
    quotas.set_override("u", "tokens", 1_000, window_s=None)
    quotas.record("u", "tokens", 30)
    clock.advance(100_000.0)
    assert report(quotas, "u")["tokens"].used == 30.0


def test_usage_report_numbers() -> None:
    clock, quotas = make()
    quotas.record("u", "api_calls", 15)
    clock.advance(20.0)
    quotas.reserve("u", {"api_calls": 15, "tokens": 5_000})
    by = report(quotas, "u")
    assert [u.resource for u in quotas.usage("u")] == list(RESOURCES)
    assert by["api_calls"] == QuotaUsage("api_calls", 15.0, 15.0, 60.0, 50.0, 41.0)
    assert by["tokens"] == QuotaUsage("tokens", 0.0, 5_000.0, 20_000.0, 25.0, 0.0)
    assert quotas.highest_percent("u") == 50.0
    assert quotas.highest_percent("nobody") == 0.0
    assert report(quotas, "nobody")["api_calls"].percent == 0.0
    assert len(quotas) == 1  # reports do not create users


def test_zero_limit_reads_as_full() -> None:
    _, quotas = make()
    quotas.set_override("u", "compute_seconds", 0)
    assert report(quotas, "u")["compute_seconds"].percent == 100.0
    with pytest.raises(QuotaExceeded):
        quotas.reserve("u", {"compute_seconds": 0.1})
    quotas.reserve("u", {"api_calls": 1})


@pytest.mark.parametrize(
    "amounts",
    [{"gpus": 1}, {"tokens": -1}, {"tokens": math.nan}, {"tokens": math.inf}, {"tokens": True}],
)
def test_bad_amounts_are_invalid_input(amounts: dict) -> None:
    _, quotas = make()
    with pytest.raises(InvalidInput):
        quotas.reserve("u", amounts)
    reservation = quotas.reserve("u", {"tokens": 5})
    with pytest.raises(InvalidInput):
        quotas.settle(reservation, amounts)
    assert report(quotas, "u")["tokens"].reserved == 5.0  # a rejected settle changes nothing
    with pytest.raises(InvalidInput):
        quotas.record("u", *next(iter(amounts.items())))


def test_bad_configuration_is_refused() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError):
        QuotaManager(clock, tiers={"x": {"tokens": QuotaLimit(1, 1.0)}}, default_tier="x")
    with pytest.raises(ValueError):
        QuotaManager(clock, default_tier="gold")
    with pytest.raises(ValueError):
        QuotaManager(clock, buckets_per_window=0)
    with pytest.raises(ValueError):
        QuotaLimit(math.nan, 60.0)


def test_forget_user_drops_everything() -> None:
    _, quotas = make()
    quotas.set_tier("u", "pro")
    reservation = quotas.reserve("u", {"tokens": 100})
    quotas.record("u", "api_calls", 600)
    quotas.forget_user("u")
    assert len(quotas) == 0
    quotas.settle(reservation, {"tokens": 100})  # a no-op: the user is gone
    assert len(quotas) == 0
    assert quotas.tier_of("u") == "free"
    quotas.reserve("u", {"api_calls": 60})


def test_prune_drops_only_users_equal_to_new_ones() -> None:
    clock, quotas = make()
    quotas.record("expired", "api_calls", 1)
    quotas.record("active", "api_calls", 1)
    quotas.record("stored", "storage_mb", 1)
    quotas.set_tier("tiered", "pro")
    quotas.set_tier("default", "free")
    held = quotas.reserve("holding", {"tokens": 1})
    clock.advance(61.0)
    quotas.record("active", "api_calls", 1)
    assert quotas.prune() == 2
    assert len(quotas) == 4
    quotas.release(held)
    assert quotas.prune() == 1


def test_memory_per_user_is_bounded() -> None:
    clock, quotas = make()
    quotas.set_tier("u", "enterprise")
    for resource in RESOURCES:
        quotas.record("u", resource, 1)
    baseline = cells(quotas, "u")
    for i in range(100_000):
        reservation = quotas.reserve("u", {"api_calls": 1, "tokens": 3})
        quotas.settle(reservation, {"api_calls": 1, "tokens": 2, "compute_seconds": 0.01})
        quotas.record("u", "storage_mb", 0.001)
        clock.advance(0.013 if i % 100 else 7.0)
    # Each windowed resource keeps at most its 61 sub-buckets' (k, amount) pairs (60 a window
    # and the current one); the storage total is one cell; no reservation is left open.
    assert baseline < cells(quotas, "u") <= 3 * (2 * 61 + 1) + 1


LIMITS = tier(api=5, tokens=100, storage=50, compute=20, window=10.0)
LIMITS["compute_seconds"] = QuotaLimit(20, 7.5)
BUCKETS = 4


class QuotaInvariants(RuleBasedStateMachine):
    """No interleaving lets usage in the true window plus holds exceed a limit.

    Checked against a reference that keeps every settled event: what the manager counts must lie
    between the exact sliding window and that window widened by one bucket (never early, at
    most a bucket late). Times are multiples of 0.5 s so bucket edges are exact in floats.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.quotas = QuotaManager(
            self.clock, tiers={"t": LIMITS}, default_tier="t", buckets_per_window=BUCKETS
        )
        self.events: list[tuple[float, str, int]] = []
        self.storage = 0
        self.open: dict = {}

    @rule(
        api=st.integers(0, 6),
        tokens=st.integers(0, 120),
        storage=st.integers(0, 60),
        compute=st.integers(0, 25),
    )
    def reserve(self, api: int, tokens: int, storage: int, compute: int) -> None:
        amounts = {"api_calls": api, "tokens": tokens, "storage_mb": storage}
        amounts["compute_seconds"] = compute
        try:
            reservation = self.quotas.reserve("u", amounts)
        except QuotaExceeded as exc:
            assert exc.retry_after > 0
            return
        self.open[reservation.id] = reservation

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        reservation = self.open.pop(data.draw(st.sampled_from(sorted(self.open))))
        actual = {r: data.draw(st.integers(0, int(a))) for r, a in reservation.amounts.items()}
        self.quotas.settle(reservation, actual)
        self.quotas.settle(reservation, actual)
        now = self.clock.now()
        self.storage += actual.get("storage_mb", 0)
        self.events += [(now, r, a) for r, a in actual.items() if r != "storage_mb"]

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        reservation = self.open.pop(data.draw(st.sampled_from(sorted(self.open))))
        self.quotas.release(reservation)

    @rule(half_seconds=st.integers(1, 30))
    def advance(self, half_seconds: int) -> None:
        self.clock.advance(half_seconds * 0.5)

    @rule(mb=st.integers(0, 30))
    def free_storage(self, mb: int) -> None:
        self.quotas.adjust("u", "storage_mb", -mb)
        self.storage = max(0, self.storage - mb)

    @invariant()
    def within_limits(self) -> None:
        now = self.clock.now()
        by = report(self.quotas, "u")
        for resource, limit in LIMITS.items():
            reserved = sum(r.amounts.get(resource, 0) for r in self.open.values())
            if limit.window_s is None:
                exact = late = self.storage
            else:
                window, bucket = limit.window_s, limit.window_s / BUCKETS
                mine = [(t, a) for t, r, a in self.events if r == resource]
                exact = sum(a for t, a in mine if t > now - window)
                late = sum(a for t, a in mine if t > now - window - bucket)
            assert by[resource].reserved == reserved
            assert exact <= by[resource].used <= late
            assert by[resource].used + reserved <= limit.limit


QuotaInvariants.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_quota_invariants = QuotaInvariants.TestCase


async def test_thousands_of_concurrent_turns_never_overrun() -> None:
    clock = ManualClock()
    limits = tier(api=100, tokens=2_000, storage=10, compute=50, window=10.0)
    quotas = QuotaManager(clock, tiers={"t": limits}, default_tier="t", buckets_per_window=10)
    rng = random.Random(7)
    outcomes: list[str] = []

    def check() -> None:
        for u in quotas.usage("u"):
            assert u.used + u.reserved <= u.limit

    async def turn() -> None:
        for _ in range(rng.randint(0, 80)):
            await asyncio.sleep(0)
        estimate = rng.randint(1, 40)
        try:
            held = quotas.reserve("u", {"api_calls": 1, "tokens": estimate, "compute_seconds": 1})
        except QuotaExceeded:
            outcomes.append("refused")
            return
        for _ in range(rng.randint(0, 5)):
            await asyncio.sleep(0)
            check()
        if rng.random() < 0.2:
            quotas.release(held)
            outcomes.append("released")
        else:
            actual = {"api_calls": 1, "tokens": rng.randint(0, estimate), "compute_seconds": 0.5}
            quotas.settle(held, actual)
            outcomes.append("settled")
        check()

    async def time_passes() -> None:
        for _ in range(90):
            await asyncio.sleep(0)
            clock.advance(0.5)
            check()

    await asyncio.gather(time_passes(), *(turn() for _ in range(3_000)))
    assert len(outcomes) == 3_000
    assert outcomes.count("refused") > 0
    assert outcomes.count("settled") > 100  # the window slid and let more through
    assert report(quotas, "u")["api_calls"].reserved == 0.0


def test_restore_puts_past_usage_back_in_its_window():
    from engine.clock import ManualClock
    from engine.quotas import QuotaManager

    clock = ManualClock()
    quotas = QuotaManager(clock)
    limit = next(u.limit for u in quotas.usage("alice") if u.resource == "api_calls")
    quotas.restore("alice", "api_calls", limit, clock.now() - 30)  # half a window ago
    quotas.restore("bob", "api_calls", limit, clock.now() - 600)  # long expired
    assert quotas.highest_percent("alice") == 100.0
    assert quotas.highest_percent("bob") == 0.0
    clock.advance(32)  # the 60 s window (plus one sub-bucket) has passed for alice's usage
    assert quotas.highest_percent("alice") == 0.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 5)), max_size=80))
def test_windowed_usage_is_what_a_list_of_every_use_says(steps) -> None:
    """The sparse ring against every use kept: a use at t counts while its sub-bucket is one
    of the window's 61 (60 sub-buckets of 1 s for a 60 s window, and the current one)."""
    clock, quotas = make()
    uses: list[tuple[float, int]] = []
    for advance, amount in steps:
        clock.advance(advance)
        now = clock.now()
        if amount:
            quotas.record("u", "api_calls", amount)
            uses.append((now, amount))
        current = math.floor(now)
        expected = sum(a for t, a in uses if math.floor(t) > current - 61)
        assert report(quotas, "u")["api_calls"].used == expected


def test_pruning_a_few_users_at_a_time_reaches_every_idle_user_in_a_round() -> None:
    clock, quotas = make()
    for n in range(10):
        quotas.record(f"u{n}", "api_calls", 1)
    quotas.set_tier("kept", "pro")  # a tier is remembered: never dropped
    clock.advance(61.0)  # every use has left its window
    dropped = [quotas.prune(most=4) for _ in range(3)]  # one round: 11 users, 4 at a time
    assert sum(dropped) == 10 and max(dropped) <= 4
    assert len(quotas) == 1
    quotas.record("late", "api_calls", 1)
    assert quotas.prune(most=4) == 0  # a new round: "late" is in use, "kept" has a tier
    assert len(quotas) == 2
