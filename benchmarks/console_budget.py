"""The console's budget: how much work per 2 Hz tick the engine's process can take before the
engine overhead p99 leaves 1.2x of headless, and whether that work hurts less off the loop.

The console at 2 Hz is stood in for by pure-Python work (like Textual's compositor, which is
most of a tick): every 0.5 s, BLOCKS blocks of MS ms of thread CPU, a loop iteration between
two blocks, placed
- in the loop: tasks on the engine's loop, as the console's tick runs today;
- in a thread: its own loop in a thread of the engine's process (the GIL is shared);
- in a process: its own process (only the machine's cores are shared).
Each placement serves the same fixed rate from 100 keep-alive clients (http_gateway.py's load,
zero-latency simulator, durable acks) on a fresh server, in ROUNDS rounds that alternate the
placements, so a round shares the machine's weather; the figure is the median p99 of the
rounds, and its ratio to the median p99 with no stand-in.

Run: .venv/bin/python benchmarks/console_budget.py [--rate 600] [--duration 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import load_average, machine, print_json
from http_gateway import HttpLoad, ServerProcess, bench_config, progress

TICK_S = 0.5  # the console's default 2 Hz
# (placement, blocks, ms per block): the console today costs 30-80 ms of loop CPU per tick at
# 100 busy sessions, most of it in frames of 1.5-4 ms.
STAND_INS = (
    ("none", 0, 0.0),
    ("loop", 2, 1.5),
    ("loop", 4, 1.5),
    ("loop", 3, 4.0),
    ("loop", 6, 4.0),
    ("thread", 6, 4.0),
    ("process", 6, 4.0),
)


# -- the server process ------------------------------------------------------------------------
def work(ms: float) -> None:
    """`ms` of this thread's CPU in pure Python."""
    end = time.thread_time() + ms / 1000
    total = 0
    while time.thread_time() < end:
        for i in range(200):
            total += i * i


async def stand_in(blocks: int, ms: float) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        for _ in range(blocks):
            work(ms)
            await asyncio.sleep(0)


def stand_in_on_own_loop(blocks: int, ms: float) -> None:
    asyncio.run(stand_in(blocks, ms))


def serve_main(placement: str, blocks: int, ms: float, data_dir: Path) -> int:
    from engine.gateway.serve import serve
    from engine.runtime import serving_runner

    if placement == "thread":
        threading.Thread(target=stand_in_on_own_loop, args=(blocks, ms), daemon=True).start()
    elif placement == "process":
        multiprocessing.Process(target=stand_in_on_own_loop, args=(blocks, ms),
                                daemon=True).start()

    async def serving() -> int:
        task = asyncio.create_task(stand_in(blocks, ms)) if placement == "loop" else None
        try:
            return await serve(bench_config(data_dir, durable_ack=True), "127.0.0.1:0")
        finally:
            if task is not None:
                task.cancel()

    with serving_runner() as runner:
        return runner.run(serving())


# -- the orchestration -------------------------------------------------------------------------
async def one_run(placement: str, blocks: int, ms: float, rate: float,
                  duration: float) -> dict[str, Any]:
    server = ServerProcess([__file__, "--serve", placement, "--blocks", str(blocks),
                            "--ms", str(ms)])
    try:
        async with HttpLoad(server, 100) as load:
            run = await load.run(duration, rate)
    finally:
        server.stop()
    return {
        "overhead_p50_ms": run["engine_overhead_ms"].get("p50"),
        "overhead_p99_ms": run["engine_overhead_ms"].get("p99"),
        "turns_per_s": run["turns_per_s"],
        "below_capacity": run["below_capacity"],
        "server_cpu_ms_per_turn": run["server_cpu_ms_per_turn"],
        "errors_by_status": run["errors_by_status"],
    }


async def orchestrate(rate: float, duration: float, rounds: int) -> dict[str, Any]:
    began, load_before = time.perf_counter(), load_average()
    runs: dict[str, list[dict[str, Any]]] = {}
    for n in range(rounds):
        for placement, blocks, ms in STAND_INS:
            key = placement if placement == "none" else f"{placement}, {blocks} x {ms:g} ms"
            progress(f"round {n + 1} of {rounds}: {key}")
            runs.setdefault(key, []).append(await one_run(placement, blocks, ms, rate, duration))
    medians = {key: statistics.median(r["overhead_p99_ms"] for r in rs) for key, rs in runs.items()}
    return {
        "benchmark": "console_budget",
        "settings": {"clients": 100, "offered_turns_per_s": rate, "duration_s": duration,
                     "rounds": rounds, "tick_s": TICK_S,
                     "stand_in": "pure-Python work of blocks x ms per tick"},
        "overhead_p99_ms_median": {key: round(m, 3) for key, m in medians.items()},
        "ratio_to_none": {key: round(m / medians["none"], 3) for key, m in medians.items()},
        "runs": runs,
        "machine": machine(load_average_1m_before=load_before,
                           load_average_1m_after=load_average()),
        "runtime_s": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=600.0,
                        help="turns/s the 100 clients offer together (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds measured per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="5 s runs, one round")
    # Internal: the server processes this script starts.
    parser.add_argument("--serve", choices=sorted({p for p, _, _ in STAND_INS}),
                        help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve_main(args.serve, args.blocks, args.ms, args.data_dir))
    duration, rounds = (5.0, 1) if args.quick else (args.duration, args.rounds)
    print_json(asyncio.run(orchestrate(args.rate, duration, rounds)))


if __name__ == "__main__":
    main()
