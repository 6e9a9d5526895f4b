"""The sessions table's data half: filter syntax, sort keys, throttled reorders, live values."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import console.ordering as ordering_module
from console.format import count, duration, latency, redact
from console.ordering import SortState
from console.sessions_model import SessionFilter, SessionsModel
from console.users_model import UserFilter, UsersModel


@dataclass(frozen=True, slots=True)
class View:
    session_id: str
    user_id: str
    agent_type: str = "assistant"
    worker: str = "w0"
    state: str = "idle"
    created_at: float = 0.0
    last_active_at: float = 0.0
    messages: int = 0
    tokens: int = 0
    errors: int = 0
    health: int = 100


def views(n: int) -> tuple[View, ...]:
    return tuple(
        View(f"{i:04x}", f"user{i % 7}", created_at=float(i), last_active_at=float(n - i),
             tokens=(i * 37) % 101, health=100 - (i % 5) * 10, state="busy" if i % 3 else "idle")
        for i in range(n)
    )


def test_filter_terms_combine():
    f = SessionFilter.parse("user:User3 state:busy health<80")
    assert (f.user, f.state, f.health_below) == ("user3", "busy", 80)
    rows = [v for v in views(60) if f.predicate()(v)]
    assert rows and all(
        v.user_id == "user3" and v.state == "busy" and v.health < 80 for v in rows
    )


def test_bare_word_matches_user_or_id_prefix():
    match = SessionFilter.parse("002").predicate()
    assert [v.session_id for v in views(64) if match(v)] == [f"{i:04x}" for i in range(32, 48)]
    assert SessionFilter.parse("user6").predicate()(View("ffff", "user6"))


@pytest.mark.parametrize("bad", ["colour:red", "health<lots", "user:"])
def test_bad_filters_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="filter"):
        SessionFilter.parse(bad)


def test_empty_filter_is_false():
    assert not SessionFilter.parse("   ")
    assert SessionFilter.parse("h<50")


@pytest.mark.parametrize(
    ("column", "key"),
    [("user", lambda v: v.user_id), ("tokens", lambda v: v.tokens),
     ("health", lambda v: v.health), ("age", lambda v: -v.created_at),
     ("idle", lambda v: -v.last_active_at), ("state", lambda v: v.state)],
)
def test_sort_by_each_column_and_reverse(column, key):
    model = SessionsModel()
    data = views(200)
    model.sort_by("id")  # health is the default; start from another column
    model.sort_by(column)
    model.update(data)
    assert model.rows == sorted(data, key=key)
    model.sort_by(column)
    model.update(data)
    assert model.rows == sorted(data, key=lambda v: (key(v), v.session_id), reverse=True)


def test_unknown_sort_column_is_refused():
    with pytest.raises(ValueError):
        SessionsModel().sort_by("colour")


def test_unchanged_snapshot_is_not_reordered():
    model = SessionsModel()
    data = views(50)
    assert model.update(data)
    assert not model.update(data)
    assert not model.update(tuple(data))  # equal content, new tuple
    assert model.update(data[:-1])


def test_large_tables_reorder_at_most_at_their_budget(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(ordering_module.time, "perf_counter", lambda: now[0])
    model = SessionsModel(throttle_above=10, share=0.5)
    data = views(20)
    assert model.update(data)  # costs 0 s on this clock: next reorder allowed at once
    now[0] += 0.0
    changed = (replace(data[0], tokens=999), *data[1:])
    assert model.update(changed)
    model.budget.next_at = now[0] + 1.0  # as if the last reorder cost 0.5 s
    assert not model.update(data)  # data changed, but within the budget: order kept
    model.toggle_unhealthy()
    assert model.update(data)  # the operator's own change applies at once
    model.budget.next_at = now[0] + 1.0
    assert not model.update(changed)
    now[0] += 1.0
    assert model.update(changed)


def test_small_tables_always_reorder(monkeypatch):
    monkeypatch.setattr(ordering_module.time, "perf_counter", lambda: 0.0)
    model = SessionsModel(throttle_above=100)
    data = views(20)
    model.update(data)
    model.budget.next_at = 1e9
    assert model.update((replace(data[0], tokens=1), *data[1:]))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.sampled_from(["idle", "busy"])),
        max_size=60,
    ),
    step_rows=st.integers(1, 12),
    column=st.sampled_from(["tokens", "health", "state", "user", "age"]),
    reverse=st.booleans(),
    query=st.sampled_from(["", "state:busy", "user:user1", "health<80"]),
    unhealthy=st.booleans(),
)
def test_a_reorder_in_steps_gives_the_order_of_one_sort(
    data, step_rows, column, reverse, query, unhealthy
):
    """Ties included: runs sorted apart and merged keep the snapshot's order, as one sort does."""
    rows = tuple(
        View(f"{i:04x}", f"user{i % 3}", created_at=float(t), tokens=t, health=100 - 10 * h,
             state=state)
        for i, (t, h, state) in enumerate(data)
    )
    whole, stepped = SessionsModel(), SessionsModel(step_rows=step_rows)
    for model in (whole, stepped):
        model.sort_by(column)
        if reverse:
            model.sort_by(column)
        model.set_filter(query)
        if unhealthy:
            model.toggle_unhealthy()
    assert whole.update(rows)
    moved = stepped.update(rows)
    steps = 0
    while not moved:
        assert stepped.reordering and stepped.rows == []  # the old order until the end
        moved = stepped.step()
        steps += 1
    assert stepped.rows == whole.rows and not stepped.reordering
    assert steps <= 2 * (len(rows) // step_rows + 1)


def test_a_reorder_in_steps_goes_on_with_its_sessions_and_the_operator_restarts_it():
    model = SessionsModel(step_rows=5)
    model.sort_by("tokens")
    data = views(30)
    assert not model.update(data) and model.reordering
    newer = (replace(data[0], tokens=500), *data[1:])
    assert not model.update(newer)  # a new snapshot: the reorder under way goes on
    while not model.step():
        pass
    assert model.rows == sorted(data, key=lambda v: v.tokens)
    model.sort_by("tokens")  # the operator: descending, at once (restarted with these)
    assert not model.update(newer)
    while not model.step():
        pass
    assert model.rows == sorted(newer, key=lambda v: v.tokens, reverse=True)
    assert model.rows[0].tokens == 500


def test_the_listing_completed_reorders_at_once_whatever_the_budget(monkeypatch):
    monkeypatch.setattr(ordering_module.time, "perf_counter", lambda: 0.0)
    model = SessionsModel(throttle_above=10)
    data = views(40)
    assert model.update(data[:20], complete=False)
    model.budget.next_at = 1e9  # as if the last reorder had been costly
    assert not model.update(data[:30], complete=False)  # more listed: within the budget
    assert model.update(data, complete=True)  # every session listed: shown now
    assert len(model.rows) == 40


def test_current_gives_live_values_and_none_once_gone():
    model = SessionsModel()
    data = views(3)
    model.update(data)
    assert model.current(data[0]) is data[0]  # no index: the listed view
    newer = replace(data[1], tokens=5000)
    model.update(data, {data[1].session_id: newer})
    assert model.current(data[1]) is newer
    assert model.current(data[0]) is None


def test_describe_names_sort_filter_and_toggle():
    model = SessionsModel()
    model.set_filter("user:ann health<50 word")
    model.toggle_unhealthy()
    text = model.describe()
    assert "sort health ▲" in text and "user:ann" in text and "health<50" in text
    assert "word" in text and "unhealthy only" in text


def test_formats():
    assert [duration(s) for s in (5, 75, 700, 7300, 200000, float("inf"))] == [
        "5s", "1m15", "11m", "2h01", "2d07", "∞",
    ]
    assert [count(v) for v in (999, 12_345, 4_560_000)] == ["999", "12.3k", "4.56M"]
    assert [latency(s) for s in (0, 0.0004, 0.085, 1.25)] == ["-", "0.4ms", "85ms", "1.25s"]
    assert redact({"tier": "pro", "API_KEY": "sk-1", "authToken": "t"}) == {
        "tier": "pro", "API_KEY": "•••••• (hidden)", "authToken": "•••••• (hidden)",
    }


# -- shared sort state, users model ------------------------------------------------------------


def test_sort_state_same_column_reverses_new_column_ascends():
    order = SortState(("a", "b"), "a")
    order.choose("a")
    assert (order.column, order.reverse) == ("a", True)
    order.choose("b")
    assert (order.column, order.reverse) == ("b", False)
    assert order.describe() == "sort b ▲"
    with pytest.raises(ValueError):
        order.choose("c")


@dataclass(frozen=True, slots=True)
class UserView:
    user_id: str
    tier: str = "free"


def user_views() -> tuple[UserView, ...]:
    # carol 3 sessions (pro), alice 1, bob 2, dave 1 (pro)
    names = ("carol", "alice", "carol", "bob", "dave", "carol", "bob")
    return tuple(UserView(n, "pro" if n in ("carol", "dave") else "free") for n in names)


def usage_table(percents: dict[str, tuple[float, float]]):
    """user -> (api_calls %, tokens %), and a log of who was asked."""
    asked: list[str] = []

    def usage(user: str) -> tuple[tuple[str, float], ...]:
        asked.append(user)
        calls, tokens = percents.get(user, (0.0, 0.0))
        return (("api_calls", calls), ("tokens", tokens))

    return usage, asked


@pytest.mark.parametrize(
    ("column", "ascending", "descending"),
    [("user", "alice bob carol dave", "dave carol bob alice"),
     ("tier", "alice bob carol dave", "carol dave alice bob"),  # ties stay in id order
     ("sessions", "alice dave bob carol", "carol bob alice dave"),
     ("api_calls", "dave bob carol alice", "alice carol bob dave"),
     ("tokens", "bob dave alice carol", "carol alice dave bob"),
     ("worst", "dave bob carol alice", "alice carol bob dave")],
)
def test_users_sort_by_each_column_and_reverse(column, ascending, descending):
    usage, _ = usage_table(
        {"alice": (90.0, 10.0), "bob": (20.0, 0.0), "carol": (40.0, 50.0), "dave": (5.0, 5.0)}
    )
    model = UsersModel(usage)
    model.sort_by(column)  # a new column ascends; `worst`, the default, was descending
    model.update(user_views())
    assert model.rows == ascending.split()
    model.sort_by(column)
    model.update(user_views())
    assert model.rows == descending.split()


def test_users_default_order_is_fullest_quota_first():
    usage, _ = usage_table({"alice": (90.0, 10.0), "carol": (40.0, 50.0)})
    model = UsersModel(usage)
    model.update(user_views())
    assert model.rows == ["alice", "carol", "bob", "dave"]
    assert model.describe() == "sort worst ▼"
    assert (model.counts["carol"], model.tiers["dave"], model.total) == (3, "pro", 4)


def test_users_filter_by_tier_and_words():
    usage, _ = usage_table({})
    model = UsersModel(usage)
    model.set_filter("tier:PRO")
    model.update(user_views())
    assert sorted(model.rows) == ["carol", "dave"]
    model.set_filter("user:ar o")
    model.update(user_views())
    assert model.rows == ["carol"]
    assert model.describe() == "sort worst ▼ · filter o ar"
    with pytest.raises(ValueError, match="unknown filter"):
        model.set_filter("state:busy")
    assert model.rows == ["carol"] and model.describe_filter() == "o ar"
    assert not UserFilter.parse("  ") and UserFilter.parse("tier:free")


def test_users_quota_sort_follows_usage_without_session_changes():
    percents = {"alice": (10.0, 0.0), "bob": (20.0, 0.0)}
    usage, asked = usage_table(percents)
    model = UsersModel(usage)
    data = user_views()
    assert model.update(data)
    assert model.rows[:2] == ["bob", "alice"]
    percents["alice"] = (99.0, 0.0)  # usage moves; the sessions do not
    assert model.update(data)
    assert model.rows[:2] == ["alice", "bob"]
    model.sort_by("user")
    assert model.update(data)
    asked.clear()
    assert not model.update(data)  # a session-only order with unchanged sessions: kept
    assert asked == []  # and no quota report asked for


def test_users_session_counts_are_the_clusters_once_read_and_sort_as_they_move():
    usage, _ = usage_table({})
    cluster = {"alice": 5, "dave": 0}  # bob and carol not read yet: their listed sessions
    model = UsersModel(usage, live=cluster.get)
    model.sort_by("sessions")
    model.sort_by("sessions")  # most first
    data = user_views()
    assert model.update(data)
    assert model.rows == ["alice", "carol", "bob", "dave"]
    assert [model.sessions_of(u) for u in model.rows] == [5, 3, 2, 0]
    cluster["bob"] = 9  # read since: the order moves, the listed sessions do not
    assert model.update(data)
    assert model.rows[0] == "bob"
    alone = UsersModel(usage)  # a process alone: the listed count, reordered on changes only
    alone.sort_by("sessions")
    assert alone.update(data) and not alone.update(data)
    assert alone.sessions_of("carol") == 3


def test_users_quota_sorts_of_many_users_wait_for_the_budget(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(ordering_module.time, "perf_counter", lambda: now[0])
    usage, _ = usage_table({})
    model = UsersModel(usage, throttle_above=2, share=0.5)
    data = user_views()
    assert model.update(data)
    model.budget.next_at = now[0] + 1.0
    assert not model.update(data)  # four users > 2: within the budget, the order is kept
    model.sort_by("tokens")
    assert model.update(data)  # the operator's own change applies at once
    model.budget.next_at = now[0] + 1.0
    now[0] += 1.0
    assert model.update(data)
