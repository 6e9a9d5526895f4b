"""CPU cost of one console refresh tick (snapshot + widget updates + render), headless.

For 1,000, 10,000 and 100,000 live sessions: open the console on an engine holding that many
sessions, then repeat: let a few hundred sessions take a turn (engine work, not measured), and
measure the event-loop thread's CPU time for one refresh and the repaint it causes. Prints JSON.
Target: at most 30 ms per tick at 100,000 sessions, so 2 Hz costs under 6% of a core.

Then the same number of ticks as the timer shows them, a step per frame: the longest slice of
the event loop (thread CPU of one callback) while a tick is shown. The engine and the gateway
share that loop, so every turn in flight waits for the longest slice.

    python benchmarks/console_refresh.py [--sizes 1000,10000] [--ticks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

from common import print_json

from console.app import SessionConsole
from engine import (
    Engine,
    EngineConfig,
    LimitSettings,
    LLMSettings,
    SessionSettings,
    SimSettings,
    StoreSettings,
)
from engine.clock import ManualClock

SIZES = (1_000, 10_000, 100_000)
TERMINAL = (160, 50)
SESSIONS_PER_USER = 5
CHURN = 200  # sessions taking a turn between two ticks
TICK_S = 0.5  # ticks are paced at the console's default 2 Hz, so its reorder throttle sees 2 Hz
TARGET_MS = 30.0


class GcTimer:
    """Thread CPU spent in the garbage collector, so its rare full passes can be told apart."""

    def __init__(self) -> None:
        self.total_ms = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.total_ms += (time.thread_time() - self._started) * 1000

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


class SliceTimer:
    """Thread CPU of each event-loop callback while `on` (asyncio runs every callback, task
    steps included, through `Handle._run`)."""

    def __init__(self) -> None:
        self.on = False
        self.slices_ms: list[float] = []
        self._run = run = asyncio.events.Handle._run

        def timed(handle: asyncio.events.Handle) -> None:
            if not self.on:
                return run(handle)
            started = time.thread_time()
            try:
                return run(handle)
            finally:
                self.slices_ms.append((time.thread_time() - started) * 1000)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def close(self) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 2),
        "p50": round(ordered[len(ordered) // 2], 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


async def measure(sessions: int, ticks: int, data_dir: Path) -> dict[str, object]:
    clock = ManualClock()
    config = EngineConfig(
        store=StoreSettings(data_dir=data_dir),
        clock=clock,
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
        sessions=SessionSettings(max_per_user=SESSIONS_PER_USER),
        limits=LimitSettings(overload=None),  # the console is measured, not the engine's shedding
    )
    async with Engine(config) as engine:
        started = time.perf_counter()
        created = [
            await engine.create_session(f"user{n // SESSIONS_PER_USER:06d}")
            for n in range(sessions)
        ]
        setup_s = time.perf_counter() - started
        app = SessionConsole(engine=engine, refresh_hz=0.25)  # the benchmark drives ticks
        tick_ms: list[float] = []
        gc_ms: list[float] = []
        snapshot_ms: list[float] = []
        gc_timer = GcTimer()
        async with app.run_test(size=TERMINAL) as pilot:
            await pilot.pause()
            table = app.screen.table
            next_tick = time.monotonic()
            for tick in range(ticks + 2):
                for k in range(CHURN):
                    session = created[(tick * CHURN + k * 7919) % sessions]
                    await engine.send(session.session_id, session.token, "tick")
                clock.advance(TICK_S)
                next_tick += TICK_S
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
                await pilot.pause()  # let the engine's own follow-up work settle first
                t0 = time.thread_time()
                engine.snapshot()
                t1 = time.thread_time()
                gc_before = gc_timer.total_ms
                app.refresh_data(force=True)
                await pilot.pause()  # the repaint the refresh caused
                t2 = time.thread_time()
                if tick >= 2:  # the first ticks warm caches and imports
                    snapshot_ms.append((t1 - t0) * 1000)
                    tick_ms.append((t2 - t1) * 1000)
                    gc_ms.append(gc_timer.total_ms - gc_before)
            longest_ms: list[float] = []
            slices: list[int] = []
            slice_timer = SliceTimer()
            for tick in range(ticks):
                for k in range(CHURN):
                    session = created[(tick * CHURN + k * 7919 + 1) % sessions]
                    await engine.send(session.session_id, session.token, "tick")
                clock.advance(TICK_S)
                next_tick += TICK_S
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
                await pilot.pause()
                slice_timer.slices_ms.clear()
                t0 = time.thread_time()
                app.refresh_data()  # as the timer does: shown in steps, one per frame
                first_ms = (time.thread_time() - t0) * 1000
                slice_timer.on = True
                while app.showing:
                    await pilot.pause()
                slice_timer.on = False
                longest_ms.append(max([first_ms, *slice_timer.slices_ms]))
                slices.append(1 + len(slice_timer.slices_ms))
            slice_timer.close()
            reorders = app.screen.model.reorders
            rows_rendered = len(table.visible_rows())
        gc_timer.close()
    return {
        "sessions": sessions,
        "ticks": len(tick_ms),
        "cpu_ms_per_tick": summary(tick_ms),
        "cpu_ms_per_tick_without_gc": summary([t - g for t, g in zip(tick_ms, gc_ms, strict=True)]),
        "gc_ms_in_ticks": round(sum(gc_ms), 1),
        "of_which_snapshot_ms": summary(snapshot_ms),
        "shown_in_steps_longest_slice_ms": summary(longest_ms),
        "shown_in_steps_loop_slices_per_tick": summary([float(n) for n in slices]),
        "reorders": reorders,
        "rows_on_screen": rows_rendered,
        "core_share_at_2hz_percent": round(2 * statistics.fmean(tick_ms) / 10, 2),
        "setup_s": round(setup_s, 1),
    }


async def main(sizes: tuple[int, ...], ticks: int) -> None:
    results = []
    for sessions in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(await measure(sessions, ticks, Path(tmp)))
    print_json({
        "benchmark": "console_refresh",
        "what": "event-loop thread CPU per refresh tick: snapshot + widgets update + render",
        "terminal": list(TERMINAL),
        "churn_turns_per_tick": CHURN,
        "target_ms_at_100k": TARGET_MS,
        "results": results,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(tuple(int(s) for s in args.sizes.split(",")), args.ticks))
