"""Cold rows: stored sessions packed in columns until first use (engine.cold_records), and the
registry that holds sessions as rows or objects alike (engine.sessions)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cold_records import ColdRecords
from engine.errors import DecryptionFailed
from engine.restore import warm
from engine.security import KeyRing, TokenRecord, hash_token
from engine.sessions import Session, SessionRegistry, new_session_id
from engine.store import ContextFigures, MessageRow, SessionRow, StoredSession

T0 = 1_700_000_000.0


def stored(
    session_id: str | None = None, user_id: str = "alice", *, last_active_at: float = T0,
    idle_timeout_s: float = 100.0, lifetime_s: float = 1000.0, metadata: str = "{}",
    tier: str = "free", turns: int = 3,
) -> SessionRow:
    return SessionRow(
        session_id or new_session_id(), user_id, tier, metadata, T0, last_active_at,
        idle_timeout_s, lifetime_s, hash_token(f"token-{session_id}"), T0, T0 + 5000.0,
        b"wrapped", worker="w0", agent_type="assistant", turns=turns, prompt_tokens=10**12,
        completion_tokens=7, errors=1, origin="http",
    )


def registry() -> SessionRegistry:
    return SessionRegistry(
        max_per_user=3, idle_timeout_s=100.0, lifetime_s=1000.0,
        context_max_messages=4, context_max_bytes=1000,
    )


def test_a_row_comes_back_as_the_session_it_was_stored_as():
    records = ColdRecords(Session)
    row = stored(metadata=json.dumps({"team": "blue"}))
    assert records.add(row, ContextFigures(messages=20, bytes=1234, next_seq=21))
    index = records.find(row.session_id)
    session = records.take(index)
    assert (session.session_id, session.user_id, session.tier, session.agent_type) == (
        row.session_id, "alice", "free", "assistant",
    )
    assert (session.worker, session.origin, dict(session.metadata)) == (
        "w0", "http", {"team": "blue"},
    )
    assert (session.created_at, session.last_active_at) == (T0, T0)
    assert (session.idle_timeout_s, session.lifetime_s) == (100.0, 1000.0)
    assert (session.turns, session.errors) == (3, 1)
    assert (session.prompt_tokens, session.completion_tokens) == (10**12, 7)
    assert (session.next_seq, session.cold_messages, session.cold_bytes) == (21, 20, 1234)
    assert session.context is None and session.token is not None
    assert session.token.token_hash == row.token_hash
    assert (session.token.issued_at, session.token.expires_at) == (T0, T0 + 5000.0)
    assert records.find(row.session_id) == -1 and len(records) == 0


def test_only_the_exact_id_finds_its_row():
    records = ColdRecords(Session)
    session_id = "0123456789abcdef0123456789abcdef"
    records.add(stored(session_id), None)
    assert records.find(session_id) >= 0
    for variant in (
        session_id.upper(), "0123456789ABCDEF0123456789abcdef", session_id[:-1],
        session_id + "0", " ".join([session_id[:16], session_id[16:]])[:32], "", "x" * 32,
        "01 23456789abcdef0123456789abcdef",
    ):
        assert records.find(variant) == -1, variant


def test_a_session_that_does_not_pack_is_refused_for_the_caller_to_hold():
    records = ColdRecords(Session)
    assert not records.add(stored("not-hex-at-all"), None)
    assert not records.add(stored(turns=2**32), None)
    row = stored()
    assert records.add(row, None)
    assert not records.add(row, None)  # held already
    assert len(records) == 1


def test_thousands_of_rows_past_the_reserved_size_are_all_found():
    records = ColdRecords(Session)
    records.reserve(10)
    rows = [stored(user_id=f"user{i % 7}") for i in range(5000)]
    for row in rows:
        assert records.add(row, None)
    assert all(records.find(row.session_id) >= 0 for row in rows)
    for row in rows[::2]:
        records.take(records.find(row.session_id))
    assert all(records.find(row.session_id) == -1 for row in rows[::2])
    assert all(records.find(row.session_id) >= 0 for row in rows[1::2])
    assert len(records) == 2500 and records.users == 7
    assert sum(records.count_of(f"user{i}") for i in range(7)) == 2500


def test_rows_come_due_at_their_exact_deadline_and_a_taken_row_never_does():
    records = ColdRecords(Session)
    idle = stored(last_active_at=T0 + 10.25)  # due at T0 + 110.25 (idle)
    old = stored(last_active_at=T0 + 990, idle_timeout_s=500.0)  # due at T0 + 1000 (lifetime)
    taken = stored(last_active_at=T0 + 10.5)
    for row in (idle, old, taken):
        records.add(row, None)
    records.take(records.find(taken.session_id))
    assert records.due(T0 + 110.0) == []
    assert records.due(T0 + 110.2) == []
    (due,) = records.due(T0 + 110.25)
    assert records.session(due).session_id == idle.session_id
    records.take(due)
    assert records.due(T0 + 999.9) == []
    (due,) = records.due(T0 + 1000.0)
    assert records.session(due).session_id == old.session_id


def test_the_registry_counts_users_once_whether_they_hold_rows_objects_or_both():
    reg = registry()
    a1, a2 = stored(user_id="alice"), stored(user_id="alice")
    b1 = stored(user_id="bob")
    for row in (a1, a2, b1):
        assert reg.adopt_row(row, None)
    assert (len(reg), reg.users(), reg.count_of("alice")) == (3, 2, 2)
    carol = reg.create("carol", {}, T0)
    alices = reg.create("alice", {}, T0)
    assert (len(reg), reg.users(), reg.count_of("alice")) == (5, 3, 3)
    assert reg.get(a1.session_id) is not None  # promoted: now an object
    assert (len(reg), reg.users(), reg.count_of("alice")) == (5, 3, 3)
    reg.remove(alices.session_id, "ended", T0)
    reg.remove(a1.session_id, "ended", T0)
    assert (len(reg), reg.users(), reg.count_of("alice")) == (3, 3, 1)
    reg.remove(carol.session_id, "ended", T0)
    assert reg.users() == 2
    assert [s.session_id for s in reg.of_user("alice")] == [a2.session_id]
    assert (len(reg), reg.users(), reg.cold.rows) == (2, 2, 1)


def test_the_cap_evicts_a_users_restored_row_before_their_newer_sessions():
    reg = registry()
    events = []
    reg.subscribe(lambda event, session: events.append((event.kind, session.session_id)))
    row = stored(user_id="alice")
    reg.adopt_row(row, None)
    newer = [reg.create("alice", {}, T0 + 1) for _ in range(2)]
    reg.create("alice", {}, T0 + 2)
    assert ("evicted", row.session_id) in events
    assert all(reg.holds(s.session_id) for s in newer) and not reg.holds(row.session_id)


def test_a_row_past_its_deadline_expires_through_the_registry_with_its_event():
    reg = registry()
    promoted = []
    reg.on_promote = promoted.append
    events = []
    reg.subscribe(lambda event, session: events.append((event.kind, session.session_id)))
    row = stored(last_active_at=T0)
    reg.adopt_row(row, None)
    assert reg.expire_due(T0 + 99.0) == [] and reg.holds(row.session_id)
    (expired,) = reg.expire_due(T0 + 100.0)
    assert expired.session_id == row.session_id
    assert events == [("expired", row.session_id)]
    assert len(reg) == 0 and reg.users() == 0
    assert [s.session_id for s in promoted] == [row.session_id]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("rcpek"), st.integers(0, 3)), max_size=60))
def test_counts_match_a_plain_model_under_any_mix_of_rows_and_objects(ops):
    """r: a stored row for user k; c: a new session; p: use (promote) one of k's rows;
    e: end one of k's sessions; k: pack one of k's objects back into a row. len, users()
    and count_of agree with a model of sets."""
    reg = SessionRegistry(
        max_per_user=100, idle_timeout_s=100.0, lifetime_s=1000.0,
        context_max_messages=4, context_max_bytes=1000,
    )
    model: dict[str, set[str]] = {}
    for op, k in ops:
        user = f"user{k}"
        owned = model.setdefault(user, set())
        if op == "r":
            row = stored(user_id=user)
            assert reg.adopt_row(row, None)
            owned.add(row.session_id)
        elif op == "c":
            created = reg.create(user, {}, T0)
            created.token = TokenRecord(hash_token(created.session_id), T0, T0 + 5000.0)
            owned.add(created.session_id)
        elif op == "p" and owned:
            assert reg.get(sorted(owned)[0]) is not None
        elif op == "e" and owned:
            session_id = sorted(owned)[-1]
            assert reg.get(session_id) is not None
            reg.remove(session_id, "ended", T0)
            owned.discard(session_id)
        elif op == "k":
            for session_id in sorted(owned):
                session = reg.held(session_id)
                if session is not None:
                    if session.hot:
                        session.demote()
                    assert reg.repack(session)
                    break
        assert len(reg) == sum(len(ids) for ids in model.values())
        assert reg.users() == sum(1 for ids in model.values() if ids)
        for name, ids in model.items():
            assert reg.count_of(name) == len(ids)
    assert {s.session_id for s in reg} == set().union(*model.values()) if model else True


def test_a_stored_role_other_than_user_or_assistant_leaves_the_session_unreadable(tmp_path):
    ring = KeyRing.load(tmp_path / "master.key")
    cipher, wrapped = ring.new_data_key()
    row = stored()
    records = ColdRecords(Session)
    records.add(row, ContextFigures(messages=1, bytes=2, next_seq=1))
    session = records.take(records.find(row.session_id))
    ciphertext = cipher.encrypt("hi", session_id=row.session_id, seq=0, role="system")
    messages = [MessageRow(row.session_id, 0, "system", ciphertext, T0, 2)]
    with pytest.raises(DecryptionFailed, match="role"):
        warm(
            session, StoredSession(wrapped, messages), ring,
            context_max_messages=10, context_max_bytes=1000,
        )
    assert session.context is None and session.cipher is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=200))
def test_rows_taken_and_added_in_any_order_are_found_and_their_places_reused(ops):
    """True: add a new row; False: take a held one (picked by the number). Every held id is
    found and no other; the table is never longer than the most rows held at once."""
    records = ColdRecords(Session)
    held: list[str] = []
    most = 0
    for add, pick in ops:
        if add or not held:
            row = stored(user_id=f"user{pick % 3}")
            assert records.add(row, None)
            held.append(row.session_id)
        else:
            session_id = held.pop(pick % len(held))
            assert records.take(records.find(session_id)).session_id == session_id
        most = max(most, len(held))
        assert all(records.session(records.find(i)).session_id == i for i in held)
        assert len(records) == len(held) and len(records._live) <= max(most, 1)
        assert sum(records.count_of(f"user{k}") for k in range(3)) == len(held)
    assert records.find(new_session_id()) == -1


def test_a_refilled_place_comes_due_at_its_new_rows_deadline_only():
    records = ColdRecords(Session)
    early = stored(last_active_at=T0)  # due at T0 + 100
    keep = stored(last_active_at=T0)  # stays, so the table is not emptied
    records.add(early, None)
    records.add(keep, None)
    records.take(records.find(early.session_id))
    late = stored(last_active_at=T0 + 500)  # due at T0 + 600, in the place `early` left
    records.add(late, None)
    assert [records.session(i).session_id for i in records.due(T0 + 100)] == [keep.session_id]
    (due,) = records.due(T0 + 600)
    assert records.session(due).session_id == late.session_id


def test_a_cold_idle_session_packs_back_into_a_row_and_comes_back_the_same():
    reg = registry()
    row = stored(user_id="alice")
    reg.adopt_row(row, ContextFigures(messages=4, bytes=40, next_seq=4))
    session = reg.get(row.session_id)
    assert session is not None and reg.cold.rows == 0
    session.turns, session.next_seq, session.last_active_at = 9, 6, T0 + 50
    assert reg.repack(session) and reg.cold.rows == 1
    assert reg.held(row.session_id) is None and reg.users() == 1 and len(reg) == 1
    looked = reg.peek(row.session_id)
    assert looked is not None and reg.cold.rows == 1  # a look leaves it a row
    again = reg.get(row.session_id)
    assert again is not None and again is not session and reg.cold.rows == 0
    assert (again.turns, again.next_seq, again.last_active_at) == (9, 6, T0 + 50)
    assert again.token is not None and again.token.token_hash == row.token_hash


def test_a_busy_hot_or_ended_session_is_not_packed():
    reg = registry()
    alice, bob = reg.create("alice", {}, T0), reg.create("bob", {}, T0)
    for session in (alice, bob):
        session.token = TokenRecord(hash_token(session.session_id), T0, T0 + 5000.0)
    assert not reg.repack(alice)  # hot: it holds its context
    alice.demote()
    alice.in_flight = 1
    assert not reg.repack(alice)  # mid-turn
    alice.in_flight = 0
    bob.demote()
    reg.remove(bob.session_id, "ended", T0)
    assert not reg.repack(bob) and reg.cold.rows == 0  # ended
    assert reg.repack(alice) and reg.cold.rows == 1  # cold and idle: packed
