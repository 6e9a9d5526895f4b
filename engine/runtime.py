"""Process settings for serving: the garbage collector, tuned for many long-lived objects.

A running engine holds hundreds of thousands of objects that live as long as it does (pooled
Agents, imported modules, sessions). The collector's full passes walk all of them and stall
the event loop for tens of milliseconds, the tail of every turn. Freezing what exists after
start-up takes it out of those passes; a larger first threshold makes passes rarer.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def prepare_for_serving() -> None:
    """Collect once, then freeze the survivors and raise the collection thresholds.

    Process-wide, so the engine calls it only when `EngineConfig.tune_gc` is set (the default
    for a serving process; tests that open many engines turn it off).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)
