"""Backoff for failing presenters (engine/admission.py), load shedding (engine/overload.py) and
the collector's survivor freezing (engine/runtime.py), each on its own with an injected clock."""

from __future__ import annotations

import gc

import pytest

from engine.admission import AuthBackoffPolicy, AuthFailures, presentation_key
from engine.clock import ManualClock
from engine.errors import RateLimited
from engine.overload import SCOPE, LoadShedder, OverloadPolicy
from engine.runtime import SurvivorFreezer

POLICY = AuthBackoffPolicy(free_failures=3, base_s=1.0, max_s=8.0, forget_after_s=60.0)


def tracker() -> tuple[ManualClock, AuthFailures]:
    clock = ManualClock()
    return clock, AuthFailures(clock, POLICY)


def test_a_presentation_is_free_until_its_failures_are_spent_then_backs_off_doubling():
    clock, failures = tracker()
    dead = presentation_key("sid", "dead-token")
    assert [failures.failed(dead, f"client-{i}") for i in range(3)] == [0.0, 0.0, 0.0]
    waits = []
    for i in range(4):
        waits.append(failures.failed(dead, f"other-{i}"))
        assert failures.refuse_unchecked(dead) == waits[-1]
        clock.advance(waits[-1])  # its backoff runs out: the next failure doubles it
    assert waits == [1.0, 2.0, 4.0, 8.0]  # capped at max_s
    assert failures.refuse_unchecked(dead) == 0.0  # its backoff ran out: checked again
    assert failures.failed(dead, "client-x") == 8.0  # still failing: the cap again


def test_a_first_failure_is_only_noted_and_forgotten_after_a_quiet_spell():
    clock, failures = tracker()
    key = presentation_key("sid", "dead-token")
    assert failures.failed(key, "a") == 0.0
    assert failures.stats().presentations == 1  # noted in a slot, no entry yet
    clock.advance(POLICY.forget_after_s)  # the first failure is forgotten: counting starts over
    assert [failures.failed(key, c) for c in "bcd"] == [0.0, 0.0, 0.0]
    assert failures.failed(key, "e") == 1.0  # the fourth within the window: free ones spent


def test_backoff_of_one_presentation_never_touches_another_token_for_the_same_id():
    _, failures = tracker()
    for _ in range(6):
        failures.failed(presentation_key("sid", "dead-token"), "attacker")
    assert failures.refuse_unchecked(presentation_key("sid", "dead-token")) > 0
    assert failures.refuse_unchecked(presentation_key("sid", "right-token")) == 0.0
    assert failures.refuse_unchecked(presentation_key("other", "dead-token")) == 0.0


def test_a_client_that_keeps_failing_backs_off_whatever_it_presents():
    clock, failures = tracker()
    waits = [failures.failed(presentation_key(f"id-{i}", "t"), "10.0.0.9") for i in range(5)]
    assert waits == [0.0, 0.0, 0.0, 1.0, 1.0]  # a failure during its backoff does not lengthen it
    clock.advance(0.25)
    assert failures.failed(presentation_key("id-5", "t"), "10.0.0.9") == 0.75
    clock.advance(0.75)  # its backoff ran out: the next failure doubles it
    assert failures.failed(presentation_key("id-6", "t"), "10.0.0.9") == 2.0
    assert failures.failed(presentation_key("fresh", "t"), "10.0.0.7") == 0.0
    stats = failures.stats()
    assert (stats.clients, stats.backoffs) == (2, 4)


def test_strikes_are_forgotten_after_a_quiet_spell():
    clock, failures = tracker()
    dead = presentation_key("sid", "dead")
    for _ in range(4):
        failures.failed(dead, "c")
    clock.advance(POLICY.forget_after_s)
    assert failures.failed(dead, "c") == 0.0  # starts over: one failure, still free


def test_tables_stay_bounded_under_a_flood_of_new_ids_and_clients():
    clock = ManualClock()
    failures = AuthFailures(clock, AuthBackoffPolicy(max_keys=100))
    for i in range(1000):  # each fails once: only noted, in 64 slots (100 rounded down to 2^n)
        failures.failed(presentation_key(f"id-{i}", "t"), f"client-{i}" + "x" * 500)
    stats = failures.stats()
    assert 0 < stats.presentations <= 64 and 0 < stats.clients <= 64
    for i in range(1000):  # each fails twice: an entry each
        for _ in range(2):
            failures.failed(presentation_key(f"twice-{i}", "t"), f"again-{i}" + "x" * 500)
    stats = failures.stats()
    # Past the bound the least recently struck quarter goes at once: between 75 and 100 kept,
    # and at most 64 keys noted once.
    assert 75 <= stats.presentations <= 164 and 75 <= stats.clients <= 164


def test_a_flood_of_fresh_keys_does_not_push_out_a_dead_token_in_backoff():
    _, failures = tracker()
    dead = presentation_key("sid", "dead-token")
    for i in range(4):
        failures.failed(dead, f"client-{i}")
    for i in range(20_000):  # fresh guesses, each failing once
        failures.failed(presentation_key(f"guess-{i}", "t"), "attacker")
    assert failures.refuse_unchecked(dead) == 1.0  # still refused before hashing


def test_malformed_tokens_share_one_key_and_long_ids_are_cut():
    assert presentation_key("sid", None) == presentation_key("sid", 12345)
    assert presentation_key("sid", "x" * 10_000) == presentation_key("sid", None)
    assert presentation_key("a" * 64 + "tail", "t") == presentation_key("a" * 64, "t")


def test_policy_rejects_impossible_settings():
    with pytest.raises(ValueError):
        AuthBackoffPolicy(base_s=10.0, max_s=1.0)
    with pytest.raises(ValueError):
        OverloadPolicy(late_readings=0)


# -- load shedding ----------------------------------------------------------------------------

SHED = OverloadPolicy(late_readings=2, hold_s=1.0, half_life_s=5.0, min_rate_per_s=1.0)


def shedder() -> tuple[ManualClock, LoadShedder]:
    clock = ManualClock()
    return clock, LoadShedder(clock, SHED)


def attempts(shed: LoadShedder, user: str, n: int) -> int:
    """How many of `n` attempts were refused."""
    refused = 0
    for _ in range(n):
        try:
            shed.admit(user)
        except RateLimited as exc:
            assert exc.scope == SCOPE and exc.retry_after > 0
            refused += 1
    return refused


def test_nothing_is_shed_until_the_loop_is_late_several_readings_in_a_row():
    _, shed = shedder()
    attempts(shed, "quiet", 1)
    assert attempts(shed, "heavy", 100) == 0
    shed.observe(0.2, 0)  # one late reading: a collector pause, not overload
    shed.observe(0.0, 0)
    assert not shed.overloaded
    assert attempts(shed, "heavy", 10) == 0


def test_while_overloaded_the_heaviest_users_are_shed_first_and_quiet_ones_never():
    clock, shed = shedder()
    attempts(shed, "quiet", 1)
    attempts(shed, "medium", 20)
    attempts(shed, "heavier", 98)
    attempts(shed, "heaviest", 199)
    shed.observe(0.2, 0)
    shed.observe(0.2, 0)  # overloaded: the ceiling is half the heaviest score (200 -> 100)
    assert shed.overloaded
    assert attempts(shed, "heaviest", 10) == 10
    assert attempts(shed, "heavier", 1) == 0  # at the ceiling, not above it
    for _ in range(6):  # the overload lasts: the ceiling keeps falling
        shed.observe(0.2, 0)
    assert attempts(shed, "heavier", 1) == 1
    assert attempts(shed, "medium", 1) == 0  # below the fair share (all attempts / 4 users)
    assert attempts(shed, "quiet", 1) == 0
    stats = shed.stats()
    assert (stats.shed, stats.episodes, stats.overloaded) == (11, 1, True)
    clock.advance(SHED.hold_s)
    assert not shed.overloaded
    assert attempts(shed, "heaviest", 5) == 0  # shedding lifted


def test_a_long_store_queue_is_overload_too():
    _, shed = shedder()
    attempts(shed, "quiet", 1)
    attempts(shed, "heavy", 100)
    shed.observe(0.0, SHED.max_store_queue + 1)
    assert attempts(shed, "heavy", 1) == 1


def test_a_lone_user_is_never_shed():
    _, shed = shedder()
    attempts(shed, "alone", 500)
    for _ in range(5):
        shed.observe(0.5, 0)
    assert attempts(shed, "alone", 50) == 0


def test_recent_attempts_decay_so_a_user_who_slowed_down_is_admitted():
    clock, shed = shedder()
    attempts(shed, "quiet", 1)
    attempts(shed, "burst", 200)
    clock.advance(60.0)  # twelve half-lives: the burst is history
    attempts(shed, "quiet", 1)
    attempts(shed, "burst", 1)
    shed.observe(0.2, 0)
    shed.observe(0.2, 0)
    assert attempts(shed, "burst", 1) == 0


def test_idle_users_are_forgotten_and_the_table_is_bounded():
    clock = ManualClock()
    shed = LoadShedder(clock, OverloadPolicy(max_users=50, forget_after_s=10.0))
    for i in range(500):
        shed.admit(f"user-{i}")
    assert shed.stats().users_tracked == 50
    clock.advance(10.0)
    shed.admit("late")
    assert shed.stats().users_tracked == 1


# -- the collector --------------------------------------------------------------------------


def test_survivors_are_frozen_after_every_older_pass():
    freezer = SurvivorFreezer()
    frozen = gc.get_freeze_count()
    survivors = [[i] for i in range(1000)]  # young containers that survive
    gc.callbacks.append(freezer)
    try:
        gc.collect(0)
        assert freezer.freezes == 0  # young passes never freeze
        gc.collect(1)
        assert freezer.freezes == 1
        assert gc.get_freeze_count() >= frozen + len(survivors)
    finally:
        gc.callbacks.remove(freezer)
        gc.unfreeze()
