"""Load capacity: the most simulated users the engine sustains headless, printed as JSON.

Each user holds one long session and thinks 5 s on average (exponential) between turns, driven
by `loadgen.LoadGenerator` exactly as in a headless run, against the `sim` backend with zero
model latency. Engine overhead per turn = client-observed turn time minus Reply.model_latency_s
(zero here, so it is the whole turn, including the event loop's queueing the generator shares
with the engine, as it does in the console). Quotas and rate limits are set out of reach so the
figure is capacity, not refusals.

The user count steps up as `common.UserLadder` climbs (cluster.py part 4 climbs the same way
over HTTP): a step is sustained when overhead p99 is at most 5 ms, no turn failed and the turn
rate reached 90% of users / mean think time; a step that misses is measured once more, and the
first step that misses twice ends the run.
The whole ladder runs three times: as shipped (`durable_ack=True`, durability "power": a reply
waits for its commit's fsync), with durability "process" (a reply waits for its commit, which
survives kill -9 but skips the fsync), and without waiting for the commit at all, so the disk's
share and the engine's own cost can be told apart.
Run: .venv/bin/python benchmarks/load_capacity.py [--steps 1000,5000] [--measure-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from common import LoopLag, UserLadder, load_average, machine, print_json, unlimited_limits

from engine import (
    Engine,
    EngineConfig,
    LLMSettings,
    SimSettings,
    StoreSettings,
)
from loadgen import EngineTransport, LoadGenerator

STEPS = (100, 250, 500, 1000, 2500, 5000, 7500, 10_000, 15_000, 20_000)
LADDER = UserLadder(spawn_rate=2500.0, tier="unlimited")
TARGET_USERS = 10_000


async def run_mode(
    steps: tuple[int, ...], measure_s: float, durable_ack: bool, deadline: float,
    durability: str = "power",
) -> dict:
    """Step users up on one engine until a step is not sustained or time runs out."""
    with tempfile.TemporaryDirectory() as folder:
        config = EngineConfig(
            store=StoreSettings(
                data_dir=Path(folder), durable_ack=durable_ack, durability=durability
            ),
            llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
            limits=unlimited_limits(api_calls_window_s=60.0),
        )
        async with Engine(config) as engine:
            generator = LoadGenerator(EngineTransport(engine), LADDER.options())
            lag = LoopLag()
            lag.start()
            generator.start()
            try:
                climbed = await LADDER.climb(
                    generator, steps, measure_s,
                    more=lambda users: time.perf_counter() <= deadline,
                    measured=lambda: {
                        "loop_lag_p99_ms": round(lag.histogram.percentile(0.99) * 1000, 2)
                    },
                    on_reset=lag.reset,
                )
            finally:
                lag.stop()
                await generator.stop()
    return {"durable_ack": durable_ack, "durability": durability, **climbed}


async def run(steps: tuple[int, ...], measure_s: float, budget_s: float) -> dict:
    began = time.perf_counter()
    load_at_start = load_average()
    # Each mode gets a third of the budget, so the last ladder is not starved by the first two.
    share = budget_s / 3

    def deadline() -> float:
        return time.perf_counter() + share

    # As shipped (each reply waits for its commit's fsync), then durable against a crash or
    # kill -9 but not a power cut (no fsync per commit), then without waiting for the commit,
    # which separates the disk and the commit pipeline from the engine's own cost.
    shipped = await run_mode(steps, measure_s, True, deadline())
    process_safe = await run_mode(steps, measure_s, True, deadline(), durability="process")
    fast = await run_mode(steps, measure_s, False, deadline())
    modes = [shipped, process_safe, fast]
    for mode in modes:
        mode["target_met"] = mode["max_users_sustained"] >= TARGET_USERS
    return {
        "benchmark": "load_capacity",
        "max_users_sustained": shipped["max_users_sustained"],
        "turns_per_s": shipped["turns_per_s"],
        "max_users_sustained_durability_process": process_safe["max_users_sustained"],
        "turns_per_s_durability_process": process_safe["turns_per_s"],
        "max_users_sustained_without_durable_ack": fast["max_users_sustained"],
        "turns_per_s_without_durable_ack": fast["turns_per_s"],
        "target_users": TARGET_USERS,
        "target_met_with_durable_ack": shipped["target_met"],
        "target_met_without_durable_ack": fast["target_met"],
        "think_time": f"exp mean {LADDER.think_s:g}s",
        "overhead_definition": (
            "client-observed send time minus Reply.model_latency_s; the sim backend has zero "
            "latency here, so it is the whole turn as a user sees it once its call starts, "
            "(with durable_ack) the commit wait and the event-loop queueing around it included; "
            "loop_lag_p99_ms is how late a 10 ms timer fires, the queueing a call waits before "
            "it starts"
        ),
        "criteria": {
            "overhead_p99_ms_at_most": LADDER.p99_limit_ms,
            "turn_failures": 0,
            "turn_rate_at_least": f"{LADDER.rate_floor:.0%} of users / mean think time",
        },
        "measure_s_per_step": measure_s,
        "modes": modes,
        "machine": machine(load_average_1m_at_start=load_at_start),
        "runtime_s": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(map(str, STEPS)),
                        help="user counts to try, ascending (default: %(default)s)")
    parser.add_argument("--measure-s", type=float, default=10.0,
                        help="seconds measured per step (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="seconds for all three ladders; no new step starts after a mode's "
                             "third is spent (default: %(default)s)")
    args = parser.parse_args()
    steps = tuple(int(s) for s in args.steps.split(","))
    print_json(asyncio.run(run(steps, args.measure_s, args.budget_s)))


if __name__ == "__main__":
    main()
