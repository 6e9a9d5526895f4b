"""The console on a big store of restored sessions: how long its loop stalls while it lists them.

Run: .venv/bin/python benchmarks/console_snapshot.py [--sessions 100000]
Opens a copy of the stored-sessions file that benchmarks/engine_ops.py builds (20 messages per
session, under the temp folder, keyed by N; built here too if missing), waits until every session
is paged in, then opens the console on that engine (headless, at its default 2 Hz) and reports,
as JSON:

- the first snapshot's time, and the longest snapshot until the sessions table lists every
  session (each snapshot builds a bounded number of views; the rest follow);
- the longest single slice of the event loop meanwhile (thread CPU of one callback: snapshot,
  view steps, reorder steps, repaints), which every turn in flight waits for, and the loop lag
  a 10 ms timer saw;
- the time from the console's start until the table holds every session;
- RSS per session the console's views add (read once the table holds them all, over the
  sessions listed after the first refresh, so the app's own fixed cost is left out);
- then, with every session listed: a snapshot's time, and a change of sort (by tokens): the
  time until the table shows the new order and the longest slice meanwhile.

Run one N per process, so RSS is this N's. The 1,000,000 file is 4.4 GB and takes a minute to
copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common import LoopLag, load_average, machine, print_json
from console_refresh import SliceTimer
from engine_ops import build_store, rss_bytes, stored_config

from console.app import SessionConsole
from engine import Engine

TERMINAL = (160, 50)
GIVE_UP_S = 600.0  # a table that never fills is a result too


def timed_snapshots(engine: Engine) -> list[float]:
    """Wrap this engine's `snapshot` to record each call's duration (seconds)."""
    durations: list[float] = []
    take = engine.snapshot

    def snapshot():  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return take()
        finally:
            durations.append(time.perf_counter() - started)

    engine.snapshot = snapshot  # type: ignore[method-assign]
    return durations


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


async def wait_until(condition: Callable[[], bool], limit_s: float = GIVE_UP_S) -> None:
    """Until `condition()` holds, polled every 20 ms (the polls are among the slices timed)."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > limit_s:
            raise TimeoutError(f"not done after {limit_s:.0f} s")
        await asyncio.sleep(0.02)


async def measure(folder: Path, n: int) -> dict[str, object]:
    data_dir = folder / f"stored-{n}"
    if not (data_dir / "built").exists():
        await build_store(data_dir, n)
        (data_dir / "built").write_text("ok")
    scratch = folder / f"console-snapshot-{n}"  # opening writes: keep the built file as built
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(data_dir, scratch)
    os.sync()
    try:
        return await measure_console(scratch, n)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def measure_console(scratch: Path, n: int) -> dict[str, object]:
    # The collector tuned as a serving process has it (engine.runtime), as the console runs.
    engine = await Engine(replace(stored_config(scratch), tune_gc=True)).open()
    try:
        await engine.restored()
        snapshots = timed_snapshots(engine)
        before_console = rss_bytes()
        app = SessionConsole(engine=engine)  # 2 Hz, as shipped
        lag = LoopLag()
        slices = SliceTimer()
        async with app.run_test(size=TERMINAL) as pilot:
            started = time.perf_counter()
            await pilot.pause()  # mounted: the first refresh is shown
            first_listed = len(app.screen.model.rows)
            first_rss = rss_bytes()  # a full collection: not among the slices timed
            model = app.screen.model
            slices.on = True
            lag.start()

            def full() -> bool:
                return len(model.rows) == n and not model.reordering

            await wait_until(full)
            fill_s = time.perf_counter() - started
            slices.on = False
            lag.stop()
            fill_slices, fill_lag = list(slices.slices_ms), lag.report()
            fill_snapshots = list(snapshots)
            full_rss = rss_bytes()
            snapshot_ms = []
            for _ in range(10):
                t0 = time.perf_counter()
                engine.snapshot()
                snapshot_ms.append((time.perf_counter() - t0) * 1e3)
            # A change of sort with every session listed: the operator's own act.
            slices.slices_ms.clear()
            slices.on = True
            t0 = time.perf_counter()
            await pilot.press("K")
            await wait_until(lambda: not model.reordering and model.order.column == "tokens")
            sort_s = time.perf_counter() - t0
            slices.on = False
            sort_slices = list(slices.slices_ms)
            reorders = model.reorders
        slices.close()
    finally:
        await engine.aclose()
    per_view = (full_rss - first_rss) / max(1, n - first_listed)
    return {
        "stored_sessions": n,
        "snapshot_views_bound": engine.config.monitor.snapshot_views,
        "first_snapshot_ms": ms(fill_snapshots[0]),
        "longest_snapshot_until_listed_ms": ms(max(fill_snapshots)),
        "snapshots_until_listed": len(fill_snapshots),
        "longest_loop_slice_until_listed_ms": round(max(fill_slices), 2),
        "loop_slices_over_50ms_until_listed": sum(s > 50 for s in fill_slices),
        "loop_lag_until_listed": fill_lag,
        "listed_at_first_refresh": first_listed,
        "console_start_to_all_listed_s": round(fill_s, 2),
        "rss_console_fixed_mb": round((first_rss - before_console) / 2**20, 1),
        "rss_per_session_console_b": round(per_view),
        "rss_console_total_mb": round((full_rss - before_console) / 2**20, 1),
        "snapshot_ms_when_listed": {
            "median": round(statistics.median(snapshot_ms), 2),
            "max": round(max(snapshot_ms), 2),
        },
        "sort_change_to_shown_s": round(sort_s, 2),
        "sort_change_longest_loop_slice_ms": round(max(sort_slices, default=0.0), 2),
        "reorders": reorders,
        "load_average": load_average(),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    folder = Path(tempfile.gettempdir()) / "session-console-bench"
    figures = await measure(folder, args.sessions)
    print_json({
        "benchmark": "console_snapshot",
        "what": "console on N restored sessions: snapshot and loop-slice times until every "
        "session is listed, time to list them, RSS per session of the console's views",
        "terminal": list(TERMINAL),
        "machine": machine(),
        **figures,
    })


if __name__ == "__main__":
    asyncio.run(main())
