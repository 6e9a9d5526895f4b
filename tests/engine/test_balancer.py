"""Balancer: weighted least-loaded placement, stickiness, draining, minimal-move rebalance."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.balancer import Balancer, Move, WorkerView
from engine.errors import InvalidInput


def counts(balancer: Balancer) -> dict[str, int]:
    return {view.worker_id: view.sessions for view in balancer.snapshot()}


def shares(balancer: Balancer) -> dict[str, Fraction]:
    """Each active worker's exact share of all sessions, computed independently of the code."""
    active = [v for v in balancer.snapshot() if not v.draining]
    total = sum(v.sessions for v in balancer.snapshot())
    cap_sum = sum(Fraction(v.capacity) for v in active)
    return {v.worker_id: total * Fraction(v.capacity) / cap_sum for v in active}


def minimal_moves(balancer: Balancer) -> int:
    """Brute force: fewest moves over every on-target vector (each count floor or ceil of share)."""
    have = counts(balancer)
    share = shares(balancer)
    total = sum(have.values())
    ids = list(share)
    options = [sorted({math.floor(share[i]), math.ceil(share[i])}) for i in ids]
    best = None
    for targets in itertools.product(*options):
        if sum(targets) != total:
            continue
        cost = sum(max(0, have[i] - t) for i, t in zip(ids, targets, strict=True))
        cost += sum(have[i] for i in have if i not in share)  # draining workers empty out
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def assign_many(balancer: Balancer, n: int, prefix: str = "s") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for sid in ids:
        balancer.assign(sid)
    return ids


def test_placement_is_proportional_to_capacity():
    balancer = Balancer([("w0", 1), ("w1", 1), ("w2", 2)])
    assign_many(balancer, 1000)
    assert counts(balancer) == {"w0": 250, "w1": 250, "w2": 500}


def test_ties_go_to_the_lowest_worker_id():
    balancer = Balancer([("b", 1), ("a", 1)])
    assert balancer.assign("s1") == "a"
    assert balancer.assign("s2") == "b"


def test_default_is_two_equal_workers():
    views = Balancer().snapshot()
    assert [(v.worker_id, v.capacity) for v in views] == [("w0", 1.0), ("w1", 1.0)]


def test_assignment_is_sticky():
    balancer = Balancer(3)
    first = balancer.assign("s")
    assign_many(balancer, 30, "other")
    assert balancer.assign("s") == first == balancer.worker_of("s")


def test_release_frees_the_slot_and_is_idempotent():
    balancer = Balancer(2)
    balancer.assign("a")
    balancer.assign("b")
    balancer.mark_busy("a", True)
    balancer.release("a")
    balancer.release("a")
    balancer.release("never-assigned")
    assert balancer.worker_of("a") is None
    assert counts(balancer) == {"w0": 0, "w1": 1}
    assert all(not v.busy for v in balancer.snapshot())
    assert balancer.assign("c") == "w0"


def test_mark_busy_needs_an_assigned_session():
    with pytest.raises(InvalidInput, match="not assigned"):
        Balancer(2).mark_busy("ghost", True)


def test_rebalance_after_adding_a_worker_moves_the_minimum_and_no_busy_session():
    moved: list[Move] = []
    balancer = Balancer(2, on_move=moved.append)
    ids = assign_many(balancer, 90)
    busy = set(ids[::7])
    for sid in busy:
        balancer.mark_busy(sid, True)
    balancer.add_worker("w2", 1)
    before = counts(balancer)
    targets = {"w0": 30, "w1": 30, "w2": 30}
    expected = sum(max(0, before[w] - targets[w]) for w in before)
    assert expected == minimal_moves(balancer) == 30

    moves = balancer.rebalance()

    assert len(moves) == expected
    assert moved == list(moves)
    assert not busy & {m.session_id for m in moves}
    assert counts(balancer) == targets
    assert all(m.to_worker == "w2" for m in moves)
    assert balancer.moves_total == 30 and balancer.rebalance_runs == 1
    views = {v.worker_id: v for v in balancer.snapshot()}
    assert views["w2"].moves_in == 30
    assert views["w0"].moves_out + views["w1"].moves_out == 30
    for sid in busy:
        assert balancer.worker_of(sid) in ("w0", "w1")


def test_rebalance_of_a_balanced_cluster_moves_nothing():
    balancer = Balancer([("w0", 1), ("w1", 2), ("w2", 3)])
    assign_many(balancer, 101)
    assert balancer.rebalance() == ()
    assert balancer.moves_total == 0 and balancer.rebalance_runs == 1


def test_rebalance_leaves_busy_surplus_in_place_and_finishes_later():
    balancer = Balancer(1)
    ids = assign_many(balancer, 10)
    for sid in ids:
        balancer.mark_busy(sid, True)
    balancer.add_worker("w1")
    assert balancer.rebalance() == ()
    for sid in ids[:3]:
        balancer.mark_busy(sid, False)
    assert len(balancer.rebalance()) == 3
    assert counts(balancer) == {"w0": 7, "w1": 3}


def test_rebalance_is_deterministic():
    def run() -> tuple[Move, ...]:
        balancer = Balancer([("w0", 1), ("w1", 2)])
        assign_many(balancer, 50)
        balancer.add_worker("w2", 3)
        balancer.set_capacity("w0", 2)
        return balancer.rebalance()

    assert run() == run()


def test_set_capacity_changes_shares_for_the_next_rebalance():
    balancer = Balancer(2)
    assign_many(balancer, 40)
    balancer.set_capacity("w1", 3)
    assert counts(balancer) == {"w0": 20, "w1": 20}
    assert len(balancer.rebalance()) == 10
    assert counts(balancer) == {"w0": 10, "w1": 30}


def test_remove_worker_moves_idle_sessions_and_drains_busy_ones():
    moved: list[Move] = []
    balancer = Balancer(3, on_move=moved.append)
    assign_many(balancer, 9)
    busy = min(balancer.sessions_on("w1"))
    balancer.mark_busy(busy, True)

    moves = balancer.remove_worker("w1")

    assert len(moves) == 2 and moved == list(moves)
    assert {m.from_worker for m in moves} == {"w1"}
    assert {m.to_worker for m in moves} <= {"w0", "w2"}
    view = {v.worker_id: v for v in balancer.snapshot()}["w1"]
    assert view.draining and balancer.sessions_on("w1") == (busy,) and view.sessions == 1
    assert balancer.assign("new") != "w1"
    with pytest.raises(InvalidInput, match="being removed"):
        balancer.set_capacity("w1", 2)

    move = balancer.mark_busy(busy, False)  # the turn ended: now it can go

    assert move is not None and move.from_worker == "w1"
    assert moved[-1] == move
    assert "w1" not in counts(balancer)
    assert balancer.moves_total == 3


def test_removing_a_worker_whose_sessions_all_end_drops_it():
    balancer = Balancer(2)
    balancer.assign("a")
    balancer.mark_busy("a", True)
    assert balancer.remove_worker("w0") == ()
    balancer.release("a")
    assert [v.worker_id for v in balancer.snapshot()] == ["w1"]


def test_the_last_active_worker_cannot_be_removed():
    balancer = Balancer(2)
    balancer.remove_worker("w0")
    with pytest.raises(InvalidInput, match="last active worker"):
        balancer.remove_worker("w1")


@pytest.mark.parametrize(
    ("workers", "match"),
    [
        (0, "at least one"),
        ([], "at least one"),
        ([("w0", 0)], "capacity"),
        ([("w0", float("nan"))], "capacity"),
        ([("w0", 1), ("w0", 1)], "already exists"),
        ([("", 1)], "worker_id"),
    ],
)
def test_invalid_workers_are_refused(workers, match):
    with pytest.raises(InvalidInput, match=match):
        Balancer(workers)


def test_unknown_worker_and_bad_session_ids_are_refused():
    balancer = Balancer(2)
    with pytest.raises(InvalidInput, match="unknown worker 'w9'"):
        balancer.remove_worker("w9")
    with pytest.raises(InvalidInput, match="session_id"):
        balancer.assign("")


def test_snapshot_is_frozen_and_reports_load():
    balancer = Balancer([("w0", 2)])
    assign_many(balancer, 3)
    (view,) = balancer.snapshot()
    assert isinstance(view, WorkerView)
    assert view.load == 1.5 and view.sessions == 3
    with pytest.raises(AttributeError):
        view.load = 0  # type: ignore[misc]


capacities = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])


@settings(max_examples=150, deadline=None)
@given(
    initial=st.lists(capacities, min_size=1, max_size=4),
    added=st.lists(capacities, max_size=3),
    n=st.integers(0, 120),
    released=st.sets(st.integers(0, 119)),
    new_caps=st.lists(capacities, max_size=7),
    remove_first=st.booleans(),
)
def test_rebalance_reaches_targets_with_the_minimal_number_of_moves(
    initial, added, n, released, new_caps, remove_first
):
    balancer = Balancer([(f"a{i}", c) for i, c in enumerate(initial)])
    ids = assign_many(balancer, n)
    for i in released & set(range(n)):
        balancer.release(ids[i])
    for i, cap in enumerate(added):
        balancer.add_worker(f"b{i}", cap)
    for view, cap in zip(balancer.snapshot(), new_caps, strict=False):
        balancer.set_capacity(view.worker_id, cap)
    if remove_first and len(balancer.snapshot()) > 1:
        balancer.remove_worker("a0")
    before_total = sum(counts(balancer).values())
    expected = minimal_moves(balancer)

    moves = balancer.rebalance()

    assert len(moves) == expected
    assert len({m.session_id for m in moves}) == len(moves)  # no session moved twice
    share = shares(balancer)
    after = counts(balancer)
    assert sum(after.values()) == before_total
    for worker_id, count in after.items():
        assert math.floor(share[worker_id]) <= count <= math.ceil(share[worker_id])
    assert balancer.rebalance() == ()


@settings(max_examples=100, deadline=None)
@given(
    caps=st.lists(capacities, min_size=1, max_size=4),
    n=st.integers(1, 80),
    busy_every=st.integers(1, 5),
    extra=capacities,
)
def test_rebalance_never_moves_a_busy_session(caps, n, busy_every, extra):
    balancer = Balancer([(f"w{i}", c) for i, c in enumerate(caps)])
    ids = assign_many(balancer, n)
    busy = {sid: balancer.worker_of(sid) for sid in ids[::busy_every]}
    for sid in busy:
        balancer.mark_busy(sid, True)
    balancer.add_worker("new", extra)
    moves = balancer.rebalance()
    assert not set(busy) & {m.session_id for m in moves}
    assert all(balancer.worker_of(sid) == worker for sid, worker in busy.items())
