"""Set-up every benchmark script shares: the import path, limits out of reach, pools sized to the
run, loop lag, machine facts and the JSON print, so the scripts differ only in what they measure.

Import it before `engine`: a script run as `python benchmarks/x.py` has benchmarks/ on its path,
not the project root, and importing this module puts the root there.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import LimitSettings
from engine.metrics import LatencyHistogram
from engine.quotas import QuotaLimit
from engine.ratelimit import RateLimit
from loadgen import Distribution, LoadGenerator, LoadOptions

ROOT = Path(__file__).resolve().parent.parent
UNLIMITED_TIER = "unlimited"


def unlimited_tiers(api_calls_window_s: float = 3600.0) -> dict[str, dict[str, QuotaLimit]]:
    """One tier whose quotas no benchmark reaches, so a figure is capacity, not refusals."""
    return {
        UNLIMITED_TIER: {
            "api_calls": QuotaLimit(1e12, api_calls_window_s),
            "tokens": QuotaLimit(1e15, 3600.0),
            "storage_mb": QuotaLimit(1e12, None),
            "compute_seconds": QuotaLimit(1e12, 3600.0),
        }
    }


def unlimited_limits(api_calls_window_s: float = 3600.0, **settings: Any) -> LimitSettings:
    """Limits with the unlimited tier as default and rate limits out of reach."""
    return LimitSettings(
        tiers=unlimited_tiers(api_calls_window_s),
        default_tier=UNLIMITED_TIER,
        session_rate=RateLimit(1e9, 10**9),
        user_rate=RateLimit(1e9, 10**9),
        **settings,
    )


def agent_types_file(folder: Path, max_instances: int) -> Path:
    """An agents.toml whose pool holds `max_instances`, so turns measure overhead, not queueing."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agents.toml"
    path.write_text(
        f'[assistant]\nrole = "r"\ngoal = "g"\nbackstory = "b"\ninstructions = "i"\n'
        f'model = "sim-assistant"\nmin_instances = 0\nmax_instances = {max_instances}\n'
    )
    return path


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class LoopLag:
    """How late a 10 ms timer fires: the queueing every task on the loop sees."""

    def __init__(self) -> None:
        self.histogram = LatencyHistogram()
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.histogram = LatencyHistogram()
        self.worst = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            late = time.perf_counter() - before - 0.01
            self.histogram.record(late)
            self.worst = max(self.worst, late)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def report(self) -> dict[str, float]:
        h = self.histogram
        return {
            "p50_ms": ms(h.percentile(0.5)), "p99_ms": ms(h.percentile(0.99)),
            "max_ms": ms(self.worst),
        }


class GcPauses:
    """Every collector pass's duration, by generation, from `gc.callbacks`: wall time (what
    the loop waits) and the collecting thread's CPU time (the pass's own work, which a busy
    neighbour on the machine does not inflate as much)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self._started = (0.0, 0.0)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._started
            self.pauses.append(
                (info["generation"], time.perf_counter() - wall, time.thread_time() - cpu)
            )

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict:
        out = {}
        for generation in (0, 1, 2):
            passes = [(wall, cpu) for g, wall, cpu in self.pauses if g == generation]
            out[f"gen{generation}"] = {
                "passes": len(passes),
                "over_50ms": sum(wall > 0.05 for wall, _ in passes),
                "max_wall_ms": ms(max((w for w, _ in passes), default=0.0)),
                "max_cpu_ms": ms(max((c for _, c in passes), default=0.0)),
                "total_cpu_ms": ms(sum(c for _, c in passes)),
            }
        return out


def load_average() -> float:
    """The 1-minute load average: other work on the machine skews wall-clock figures."""
    return round(os.getloadavg()[0], 2)


def machine(**facts: Any) -> dict[str, Any]:
    """Cores and Python version, with whatever load averages the script took."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), **facts}


def print_json(figures: Any) -> None:
    print(json.dumps(figures, indent=2))


@dataclass(frozen=True, slots=True)
class UserLadder:
    """Simulated users stepped up until a step is not sustained: load_capacity.py in-process and
    cluster.py part 4 over HTTP. Each user holds one long session and thinks `think_s` on
    average (exponential) between turns; a step is sustained when the engine's overhead p99 is
    at most `p99_limit_ms`, no turn failed and the turn rate reached `rate_floor` of users /
    mean think time. A step that misses is measured once more (a busy neighbour on the machine
    is not capacity); the first that misses twice ends the climb."""

    spawn_rate: float
    tier: str
    think_s: float = 5.0
    p99_limit_ms: float = 5.0
    rate_floor: float = 0.9
    settle_s: float = 6.0  # past the spawn burst (each user's first turn comes at once)

    def options(self) -> LoadOptions:
        return LoadOptions(
            users=0, spawn_rate=self.spawn_rate, seed=1,
            think=Distribution("exp", self.think_s), session_turns=Distribution("const", 1e9),
            sessions_per_user=1, reuse_probability=1.0, abandon_probability=0.0,
            history_probability=0.0, rotate_probability=0.0, tier_mix=((self.tier, 1.0),),
        )

    async def climb(
        self, generator: LoadGenerator, steps: tuple[int, ...], measure_s: float, *,
        more: Callable[[int], bool] = lambda users: True,
        measured: Callable[[], dict[str, Any]] = dict,
        on_reset: Callable[[], None] = lambda: None,
    ) -> dict[str, Any]:
        """Every step while `more(users)`; `on_reset` runs as a step's window opens and
        `measured()` adds figures of the caller's to each step's."""
        results: list[dict[str, Any]] = []
        for users in steps:
            if not more(users):
                break
            result = await self._step(generator, users, measure_s, measured, on_reset)
            if not result["sustained"]:
                result = await self._step(generator, users, measure_s, measured, on_reset)
            results.append(result)
            if not result["sustained"]:
                break
        best = max((r for r in results if r["sustained"]), key=lambda r: r["users"],
                   default=None)
        return {
            "think_s_mean": self.think_s,
            "max_users_sustained": best["users"] if best else 0,
            "turns_per_s": best["turns_per_s"] if best else 0.0,
            "steps": results,
        }

    async def _step(
        self, generator: LoadGenerator, users: int, measure_s: float,
        measured: Callable[[], dict[str, Any]], on_reset: Callable[[], None],
    ) -> dict[str, Any]:
        generator.set_users(users)
        while generator.stats().live_users < users:
            await asyncio.sleep(0.1)
        await asyncio.sleep(self.settle_s)
        generator.reset_stats()
        on_reset()
        started = time.perf_counter()
        await asyncio.sleep(measure_s)
        elapsed = time.perf_counter() - started
        stats = generator.stats()
        send = stats.operation("send")
        turns_per_s = ((send.successes + send.failures) if send else 0) / elapsed
        expected = users / self.think_s
        failures = send.failures if send else 0
        return {
            "users": users,
            "turns_per_s": round(turns_per_s, 1),
            "expected_turns_per_s": round(expected, 1),
            "overhead_p50_ms": stats.overhead_p50_ms,
            "overhead_p95_ms": stats.overhead_p95_ms,
            "overhead_p99_ms": stats.overhead_p99_ms,
            "round_trip_p99_ms": send.p99_ms if send else None,
            "turn_failures": failures,
            "failures_by_type": {f"{f.operation}:{f.error}": f.count for f in stats.failures},
            **measured(),
            "sustained": (stats.overhead_p99_ms <= self.p99_limit_ms and failures == 0
                          and turns_per_s >= self.rate_floor * expected),
        }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> float:
    """CPU seconds of one process's live threads, to the nanosecond (/proc/PID/task/*/schedstat),
    for deltas over short blocks: `process_cpu_s` counts in clock ticks (10 ms), coarser than a
    block of a few hundred requests. Falls back to `process_cpu_s` without schedstat."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
    except (FileNotFoundError, ProcessLookupError):
        return process_cpu_s(pid)
    return total / 1e9 if total else process_cpu_s(pid)


class ServedProcess:
    """A process that serves the gateway: started with `args`, ready once it prints
    `serving http://...` on stderr (kept: its last lines explain a failed start), stopped
    with SIGTERM so it drains, killed if it does not exit in 30 s."""

    def __init__(self, args: list[str], env: dict[str, str], what: str, wait_s: float) -> None:
        self.process = subprocess.Popen(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.lines: deque[str] = deque(maxlen=50)
        self.url = ""
        found = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line.rstrip())
                match = re.search(r"serving (http://\S+)", line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(wait_s) or not self.url:
            self.stop()
            raise RuntimeError(f"{what} did not start:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
