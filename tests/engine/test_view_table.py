"""Session views in copy-on-write chunks: a frozen copy costs O(chunks) and never changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.view_table import ViewTable

ops = st.lists(
    st.tuples(st.sampled_from(["set", "pop", "freeze"]), st.integers(0, 40), st.integers()),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, chunks=st.sampled_from([1, 2, 8]))
def test_frozen_copies_keep_what_they_saw_while_the_table_changes(ops, chunks):
    table: ViewTable[int] = ViewTable(chunks)
    model: dict[str, int] = {}
    frozen = []
    for op, key, value in ops:
        session_id = f"s{key}"
        if op == "set":
            table[session_id] = value
            model[session_id] = value
        elif op == "pop":
            assert table.pop(session_id) == model.pop(session_id, None)
        else:
            frozen.append((table.freeze(), dict(model)))
        assert len(table) == len(model)
        assert all(table.get(k) == v and k in table for k, v in model.items())
    frozen.append((table.freeze(), dict(model)))
    for views, seen in frozen:
        assert dict(views.items()) == seen and len(views) == len(seen)
        sequence = views.sequence()
        listed = list(sequence)
        assert sorted(listed) == sorted(seen.values()) and len(sequence) == len(seen)
        assert [sequence[i] for i in range(len(sequence))] == listed
        assert list(sequence[1:-1]) == listed[1:-1] and sequence == listed
        if listed:
            assert sequence[-1] == listed[-1]
        with pytest.raises(IndexError):
            sequence[len(listed)]


def test_an_unchanged_table_freezes_to_an_equal_sequence_and_a_change_makes_it_differ():
    table: ViewTable[str] = ViewTable(16)
    for n in range(100):
        table[f"s{n}"] = f"view {n}"
    first, second = table.freeze().sequence(), table.freeze().sequence()
    assert first == second and first is not second
    table["s7"] = "view 7, changed"
    third = table.freeze().sequence()
    assert third != second and first != third
    assert table.freeze()["s7"] == "view 7, changed" and "view 7" in first


def test_chunks_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        ViewTable(12)


def test_a_frozen_copy_iterated_in_steps_survives_additions_in_between():
    """A big table's reorder reads a snapshot's sessions over many steps while the engine lists
    more sessions into the same chunks."""
    table: ViewTable[int] = ViewTable(2)
    for n in range(10):
        table[f"s{n}"] = n
    frozen = table.freeze()
    views, keys = iter(frozen.sequence()), iter(frozen)
    first = [next(views), next(views)]
    first_keys = [next(keys)]
    for n in range(10, 100):
        table[f"s{n}"] = n  # appended to the chunks the frozen copy reads
    assert sorted([*first, *views]) == list(range(10))
    assert sorted([*first_keys, *keys]) == sorted(f"s{n}" for n in range(10))
    assert len(frozen) == 10 and len(table.freeze().sequence()) == 100
