"""SessionRegistry: per-user cap with idle-first eviction, bounded context, heap expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import SessionLimitReached
from engine.sessions import Context, Message, SessionRegistry

T0 = 1_700_000_000.0


def registry(**overrides) -> SessionRegistry:
    params = dict(
        max_per_user=3, idle_timeout_s=100.0, lifetime_s=1000.0,
        context_max_messages=4, context_max_bytes=1000,
    )
    params.update(overrides)
    return SessionRegistry(**params)


def test_cap_evicts_the_users_oldest_idle_session():
    reg = registry()
    first, second, third = (reg.create("alice", {}, T0 + i) for i in range(3))
    first.in_flight = 1  # mid-turn: must survive
    events = []
    reg.subscribe(lambda event, session: events.append((event.kind, session.session_id)))
    fourth = reg.create("alice", {}, T0 + 3)
    assert reg.get(first.session_id) is first
    assert reg.get(second.session_id) is None
    assert {s.session_id for s in reg.of_user("alice")} == {
        first.session_id, third.session_id, fourth.session_id,
    }
    assert events == [("evicted", second.session_id), ("created", fourth.session_id)]


def test_cap_with_every_session_busy_refuses_and_changes_nothing():
    reg = registry()
    sessions = [reg.create("alice", {}, T0) for _ in range(3)]
    for s in sessions:
        s.in_flight = 1
    with pytest.raises(SessionLimitReached, match="all busy"):
        reg.create("alice", {}, T0)
    assert len(reg) == 3


def test_other_users_are_unaffected_by_one_users_cap():
    reg = registry()
    bob = reg.create("bob", {}, T0)
    for _ in range(10):
        reg.create("alice", {}, T0)
    assert reg.get(bob.session_id) is bob
    assert len(reg.of_user("alice")) == 3


def test_context_drops_oldest_by_count_and_counts_the_drops():
    ctx = Context(max_messages=3, max_bytes=10_000)
    for i in range(5):
        ctx.append(Message("user", f"m{i}", T0))
    assert [m.content for m in ctx] == ["m2", "m3", "m4"]
    assert ctx.dropped == 2


def test_context_drops_oldest_by_bytes_but_keeps_the_newest():
    ctx = Context(max_messages=100, max_bytes=10)
    ctx.append(Message("user", "aaaa", T0))
    freed = ctx.append(Message("user", "bbbbbbbb", T0))
    assert [m.content for m in ctx] == ["bbbbbbbb"]
    assert freed == 4 and ctx.bytes == 8
    ctx.append(Message("user", "x" * 50, T0))  # larger than the bound alone: kept
    assert [m.content for m in ctx] == ["x" * 50]


def test_idle_and_absolute_expiry_with_activity_rearming():
    reg = registry(idle_timeout_s=100.0, lifetime_s=250.0)
    s = reg.create("alice", {}, T0)
    reg.touch(s, T0 + 90)
    assert reg.expire_due(T0 + 150) == []  # activity moved the idle deadline to T0+190
    reg.touch(s, T0 + 180)
    expired = reg.expire_due(T0 + 250)
    assert expired == [s]
    assert reg.recent_events[-1].reason == "absolute lifetime reached"


def test_busy_session_is_not_expired_mid_turn_and_goes_when_the_turn_ends():
    reg = registry()
    s = reg.create("alice", {}, T0)
    reg.begin_turn(s)
    assert reg.expire_due(T0 + 500) == []
    reg.end_turn(s, T0 + 501)
    assert reg.expire_due(T0 + 501) == [s]


def test_nothing_due_costs_one_peek_and_heap_stays_bounded_under_churn():
    reg = registry(max_per_user=1)
    for i in range(20_000):
        s = reg.create(f"u{i}", {}, T0)
        reg.remove(s.session_id, "ended", T0)
    assert len(reg) == 0
    assert reg.heap_size <= 2 * len(reg) + 1025
    assert reg.users() == 0


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["create", "touch", "advance", "busy", "idle"]),
            st.integers(0, 4),
            st.floats(0, 400),
        ),
        max_size=80,
    )
)
def test_expiry_and_cap_invariants(ops):
    """Cap never exceeded; after expire_due every due idle session is gone, no live one touched."""
    reg = registry(max_per_user=3, idle_timeout_s=100.0, lifetime_s=300.0)
    now = T0
    for op, user, dt in ops:
        owned = reg.of_user(f"u{user}")
        if op == "create":
            try:
                reg.create(f"u{user}", {}, now)
            except SessionLimitReached:
                assert all(s.busy for s in owned)
        elif op == "touch" and owned:
            reg.touch(owned[0], now)
        elif op == "busy" and owned and not owned[-1].busy:
            reg.begin_turn(owned[-1])
        elif op == "idle":
            for s in owned:
                if s.busy:
                    reg.end_turn(s, now)
        elif op == "advance":
            now += dt
            before = set(reg)
            reg.expire_due(now)
            for s in before:
                due = s.expiry_reason(now) is not None and not s.busy
                assert (reg.get(s.session_id) is None) == due
        assert all(len(reg.of_user(f"u{u}")) <= 3 for u in range(5))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.text(max_size=40)), max_size=30),
    st.integers(1, 10), st.integers(1, 200),
)
def test_extending_a_context_keeps_what_appending_each_message_keeps(texts, count, size):
    messages = [
        Message("user" if is_user else "assistant", text, float(i))
        for i, (is_user, text) in enumerate(texts)
    ]
    one_by_one, at_once = Context(count, size), Context(count, size)
    freed = sum(one_by_one.append(m) for m in messages)
    assert at_once.extend(messages) == freed
    assert at_once.messages() == one_by_one.messages()
    assert (at_once.bytes, at_once.dropped) == (one_by_one.bytes, one_by_one.dropped)
    assert at_once.chat_history() == one_by_one.chat_history()
