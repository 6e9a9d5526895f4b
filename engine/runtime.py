"""Process settings for serving one busy event loop: the loop itself, the collector, the GIL.

- The loop is uvloop's (`serving_runner`), for `session-console serve` and the console alike:
  its event loop and socket transports are C, which takes a part of the gateway's CPU per
  request off the one core that engine, gateway (and console) share.

A running engine holds hundreds of thousands of objects that live as long as it does (pooled
Agents, imported modules, sessions). The collector's passes walk every object of the
generations they collect and stall the event loop meanwhile: the tail of every turn.

- Start-up objects are frozen out of every pass.
- Passes are kept small: a young pass walks up to GEN0_THRESHOLD objects (counts are net,
  allocations minus frees, so in steady state, where most objects die young, passes stay
  rare), a middle pass up to GEN0_THRESHOLD x (GEN1_THRESHOLD + 1). During a spawn burst
  nearly every new object survives, and each of them is walked by a young and a middle pass.
- What survives a middle pass is frozen at once (`SurvivorFreezer`): a spawn burst's sessions
  would otherwise pile up in the oldest generation, where a full pass walks all of them (the
  pauses of hundreds of milliseconds issue 15 measured); frozen, no pass walks them again, so
  the oldest generation stays nearly empty and its passes short. Frozen objects are still freed
  when their last reference goes; only cyclic garbage among them is never collected, and the
  engine's own operations make none (turns, failed authentications, ended sessions and spawn
  bursts leave no cycles: `gc.callbacks` report nothing collected after thousands of each).
- The GIL is handed over sooner (SWITCH_INTERVAL_S instead of 5 ms). The loop thread drops
  the GIL in system calls (`os.urandom` for every message's nonce, socket I/O) and the store's
  connection thread, busy committing a batch, then holds it until the loop thread has waited a
  whole switch interval: at hundreds of turns a second those waits add up to seconds of loop
  lag per second. A shorter interval bounds each wait; the price is more frequent switching
  while both threads compute, a small share of the time.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import uvloop

# A middle pass at 10,000 users walked 2,000 x 3 objects in 20-86 ms on a 2-core VM (their
# referents are scattered: a cache miss each); 1,000 halves each pass for the same total work.
GEN0_THRESHOLD = 1_000
GEN1_THRESHOLD = 2
GEN2_THRESHOLD = 100
SWITCH_INTERVAL_S = 0.0005


class SurvivorFreezer:
    """A `gc.callbacks` hook: freezes everything tracked after every pass over an older
    generation, so its survivors are walked by no later pass. `gc.freeze()` is O(1)."""

    def __init__(self) -> None:
        self.freezes = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] > 0:
            gc.freeze()
            self.freezes += 1


FREEZER = SurvivorFreezer()


def prepare_for_serving() -> None:
    """Collect once, freeze the survivors, keep passes short, freeze later survivors, and
    hand the GIL over sooner.

    Process-wide, so the engine calls it only when `EngineConfig.tune_gc` is set (the default
    for a serving process; tests that open many engines turn it off). Idempotent.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    if FREEZER not in gc.callbacks:
        gc.callbacks.append(FREEZER)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def serving_runner() -> asyncio.Runner:
    """The runner of a serving process's one loop: uvloop's."""
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
