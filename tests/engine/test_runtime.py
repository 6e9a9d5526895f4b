"""The serving runtime (engine/runtime.py): what `prepare_for_serving` sets, process-wide.

Each test puts the collector and the switch interval back as it found them."""

from __future__ import annotations

import gc
import sys

import pytest

from engine import runtime


@pytest.fixture
def restored():
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)
    gc.unfreeze()


def test_serving_sets_small_passes_the_freezer_once_and_a_short_switch_interval(restored):
    runtime.prepare_for_serving()
    runtime.prepare_for_serving()  # idempotent
    assert gc.get_threshold() == (
        runtime.GEN0_THRESHOLD, runtime.GEN1_THRESHOLD, runtime.GEN2_THRESHOLD
    )
    assert gc.callbacks.count(runtime.FREEZER) == 1
    assert sys.getswitchinterval() == pytest.approx(runtime.SWITCH_INTERVAL_S)
    assert gc.get_freeze_count() > 0  # start-up objects are out of every pass


def test_what_survives_a_middle_pass_is_walked_by_no_later_pass(restored):
    runtime.prepare_for_serving()
    freezes = runtime.FREEZER.freezes
    # A spawn burst's survivors, fewer than would set off a middle pass on their own.
    burst = [{"session": n} for n in range(runtime.GEN0_THRESHOLD // 2)]
    gc.collect(0)
    assert runtime.FREEZER.freezes == freezes  # a young pass walks little: nothing frozen
    assert any(obj is burst for obj in gc.get_objects(1))  # survivors wait in generation 1
    gc.collect(1)
    assert runtime.FREEZER.freezes == freezes + 1
    assert gc.get_objects(1) == [] and gc.get_objects(2) == []  # all of it frozen
