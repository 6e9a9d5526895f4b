"""Process settings for serving: the garbage collector, tuned for many long-lived objects.

A running engine holds hundreds of thousands of objects that live as long as it does (pooled
Agents, imported modules, sessions). The collector's passes walk every object of the
generations they collect and stall the event loop meanwhile: the tail of every turn.

- Start-up objects are frozen out of every pass.
- Passes are kept small: a pass walks the objects of the generations it collects, and during a
  burst (10,000 users spawning) nearly every new object survives, so a middle pass walks up to
  GEN0_THRESHOLD x (GEN1_THRESHOLD + 1) objects. A first threshold of 50,000 made young passes
  of 50,000 objects and middle passes of up to a million after a spawn burst. Counts are net
  (allocations minus frees), so in steady state, where most objects die young, passes stay
  rare whatever the threshold.
- Survivors are frozen once walking them has cost FREEZE_AFTER_S: a spawn burst's sessions
  survive into the older generations, where every later pass would walk them again; frozen,
  they are walked by none. Frozen objects are still freed when their last reference goes;
  only cyclic garbage among them is never collected, and the engine's own operations make
  none (turns, failed authentications and ended sessions leave no cycles, measured with
  `gc.collect()` after thousands of each).
"""

from __future__ import annotations

import gc
import time

GEN0_THRESHOLD = 5_000
GEN1_THRESHOLD = 2
GEN2_THRESHOLD = 100
FREEZE_AFTER_S = 0.02


class SurvivorFreezer:
    """A `gc.callbacks` hook: freezes the older generations once their passes cost a budget.

    Passes over generations 1 and 2 walk survivors; their durations add up until `budget_s`,
    then everything tracked is frozen and the sum starts again. `gc.freeze()` is O(1).
    """

    def __init__(self, budget_s: float = FREEZE_AFTER_S) -> None:
        self.budget_s = budget_s
        self.freezes = 0
        self._started = 0.0
        self._spent = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 0:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self._spent += time.perf_counter() - self._started
        if self._spent >= self.budget_s:
            gc.freeze()
            self.freezes += 1
            self._spent = 0.0


FREEZER = SurvivorFreezer()


def prepare_for_serving() -> None:
    """Collect once, freeze the survivors, keep passes short and freeze later survivors.

    Process-wide, so the engine calls it only when `EngineConfig.tune_gc` is set (the default
    for a serving process; tests that open many engines turn it off). Idempotent.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    if FREEZER not in gc.callbacks:
        gc.callbacks.append(FREEZER)
