"""Abuse: a stale-token storm and an overload run against an in-process engine, as JSON.

Storm (issue 15): 30 users each open 20 sessions; the per-user cap of 5 evicts 15 of each
user's, as designed. Every session's client then sends as fast as it is allowed and retries
10 ms after any error, ignoring `retry_after` (the worst case: a browser tab left open, or an
attacker). The 450 clients holding evicted sessions fail authentication over and over. Quiet
users (one session each, a turn then 1 s of thought) are measured alone and with the storm
running: their p50/p95 and errors, the noisy users' goodput (turns/s that succeeded), failed
authentications per second and what each costs the engine in CPU.

Cost: CPU per call of `history()` in a tight loop: with a right token, with a wrong token on
ids never seen before (a fresh failure each time), and with a dead token presented again and
again (the storm's pattern).

HTTP cost: the same three cases against a `session-console serve` process over HTTP (GET the
session's messages; keep-alive, HTTP_COST_CLIENTS requests in flight), as the server's CPU per
request, so the gateway's share of a refusal (a 401 or 429 body) is counted with the engine's.

Backpressure: 100 callers, each on its own session, send turns back to back with
`durable_ack=False` (a reply does not wait for its commit) against the zero-latency model, so
the turns outrun the store's writer for the whole run (sustained overload). Reports the turn
time p50/p99/max (the whole `engine.send` call), the ratio p99/p50 (issue 15: at most 5), and
the store's queue depth sampled every 10 ms, how full the writer's batches were (sustained
overload: the mean batch at least SUSTAINED_FILL of batch_max, so the writer was behind all
along), and how many writes were paced or found the queue full. Five runs: the shipped store
settings and a writer capped at small batches, each with and without pacing, and the shipped
settings with paced writes let go by whole batches of batch_max (BACKPRESSURE_RUNS says why).

Overload: 10,000 users with `durable_ack=False` (benchmarks/load_capacity.py's scenario,
spawned in one burst), reporting the event loop's lag p50/p99/max, turn overhead and the
collector's pauses (from `gc.callbacks`) after the spawn burst.

The sim backend keeps its default latency (median 0.2 s, p99 1.5 s): the quiet user's p95
alone is about 0.86 s. Each phase has its own engine and temporary directory.
Run: .venv/bin/python benchmarks/abuse.py [--storm-s 30] [--alone-s 20] [--overload-s 20]
     [--backpressure-s 20] [--parts cost,http_cost,storm,backpressure,overload]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    GcPauses,
    LoopLag,
    ServedProcess,
    load_average,
    machine,
    ms,
    print_json,
    threads_cpu_s,
    unlimited_limits,
)

from engine import Engine, EngineConfig, LLMSettings, SimSettings, StoreSettings
from engine.errors import AuthenticationError, EngineError, RateLimited
from loadgen import Distribution, EngineTransport, LoadGenerator, LoadOptions

NOISY_USERS = 30
SESSIONS_PER_NOISY_USER = 20
QUIET_USERS = 4
QUIET_THINK_S = 1.0
RETRY_S = 0.01
COST_CALLS = 20_000
COST_BLOCKS = 10
HTTP_COST_CALLS = 12_000  # per case
HTTP_COST_BLOCKS = 30  # of 400 requests: enough pairs for the ratio's median to hold still
HTTP_COST_CLIENTS = 8
HTTP_COST_SESSIONS = 64  # successes rotate over this many sessions, each its own URL
HTTP_APP_KEY = "abuse-benchmark-app-key"
OVERLOAD_USERS = 10_000
BACKPRESSURE_CALLERS = 100
BACKPRESSURE_WARMUP_S = 3.0
BACKPRESSURE_RATIO = 5.0  # p99 within this many p50s
SUSTAINED_FILL = 0.9  # of batch_max, the mean batch of a writer behind for the whole run
# Store settings per backpressure run. "unpaced" sets pacing_ops = backlog_ops: no pacing,
# each write waits for nothing until the queue is full, then for its own commit (the policy
# before pacing). "small_batches" caps batches at 256 ops so the writer cannot catch up by
# growing its batches, and the queue reaches its bound on any machine (the shipped 4,096 keeps
# up with 100 in-process callers on a fast one); its bounds keep the shipped proportions.
SMALL_BATCHES = {"batch_max": 256, "pacing_ops": 2048, "backlog_ops": 4096}
BACKPRESSURE_RUNS: dict[str, dict[str, int]] = {
    "shipped": {},
    # Paced writes let go by whole batches of up to batch_max ops, as before paced_batch_max.
    "shipped_whole_batches": {"paced_batch_max": StoreSettings().batch_max},
    "shipped_unpaced": {"pacing_ops": StoreSettings().backlog_ops},
    "small_batches": SMALL_BATCHES,
    "small_batches_unpaced": {**SMALL_BATCHES, "pacing_ops": SMALL_BATCHES["backlog_ops"]},
}
P95_FACTOR = 3.0
P95_SLACK_S = 0.05


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    auth_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def error_name(exc: EngineError) -> str:
    """The error's type, and a rate limit's scope (a turn shed for overload is one)."""
    name = type(exc).__name__
    return f"{name}:{exc.scope}" if isinstance(exc, RateLimited) else name


def config_for(
    folder: str, *, durable_ack: bool = True, store: dict | None = None, **parts: object
) -> EngineConfig:
    store = StoreSettings(data_dir=Path(folder), durable_ack=durable_ack, **(store or {}))
    return EngineConfig(store=store, **parts)  # type: ignore[arg-type]


async def quiet_user(engine: Engine, index: int, tally: Tally, stop: asyncio.Event) -> None:
    session = await engine.create_session(f"quiet-{index}")
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await engine.send(session.session_id, session.token, "how are things today?")
        except EngineError as exc:
            tally.errors[error_name(exc)] += 1
        else:
            tally.ok += 1
            tally.latencies.append(time.perf_counter() - started)
        await asyncio.sleep(QUIET_THINK_S)


async def storm_client(
    engine: Engine, session_id: str, token: str, tally: Tally, stop: asyncio.Event
) -> None:
    """Send as fast as allowed; 10 ms after any error, send again (retry_after ignored)."""
    while not stop.is_set():
        try:
            await engine.send(session_id, token, "more, faster")
        except EngineError as exc:
            tally.errors[error_name(exc)] += 1
            tally.auth_failures += isinstance(exc, AuthenticationError)
            await asyncio.sleep(RETRY_S)
        else:
            tally.ok += 1


async def run_quiet(engine: Engine, seconds: float) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(quiet_user(engine, i, tally, stop)) for i in range(QUIET_USERS)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return tally


def quiet_report(tally: Tally) -> dict:
    return {
        "turns": tally.ok,
        "p50_s": round(tally.percentile(0.5), 3),
        "p95_s": round(tally.percentile(0.95), 3),
        "errors": dict(tally.errors),
    }


async def storm(alone_s: float, storm_s: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        async with Engine(config_for(folder)) as engine:
            alone = await run_quiet(engine, alone_s)
        # A fresh engine for the storm, so the quiet user's session starts equal.
    with tempfile.TemporaryDirectory() as folder:
        async with Engine(config_for(folder)) as engine:
            created = [
                await engine.create_session(f"noisy-{u}")
                for u in range(NOISY_USERS) for _ in range(SESSIONS_PER_NOISY_USER)
            ]
            live = {view.session_id for view in engine.snapshot().sessions}
            noisy, stale = Tally(), Tally()
            stop = asyncio.Event()
            lag = LoopLag()
            lag.start()
            clients = [
                asyncio.create_task(storm_client(
                    engine, s.session_id, s.token, noisy if s.session_id in live else stale, stop
                ))
                for s in created
            ]
            await asyncio.sleep(2.0)  # the storm reaches its steady state
            noisy.ok = 0
            noisy.errors.clear()
            stale.errors.clear()
            stale.auth_failures = 0
            lag.reset()
            cpu_before = time.process_time()
            wall_before = time.perf_counter()
            under = await run_quiet(engine, storm_s)
            wall = time.perf_counter() - wall_before
            cpu = time.process_time() - cpu_before
            stop.set()
            await asyncio.gather(*clients)
            lag.stop()
            overload_stats = engine.overload_stats()
            auth_stats = engine.auth_failure_stats()
    bound = P95_FACTOR * alone.percentile(0.95) + P95_SLACK_S
    return {
        "noisy_users": NOISY_USERS,
        "sessions_per_noisy_user": SESSIONS_PER_NOISY_USER,
        "live_noisy_sessions": len(live),
        "stale_clients": len(created) - len(live),
        "quiet_users": QUIET_USERS,
        "quiet_alone": quiet_report(alone),
        "quiet_under_storm": quiet_report(under),
        "quiet_p95_bound_s": round(bound, 3),
        "quiet_p95_within_bound": under.percentile(0.95) <= bound and not under.errors,
        "noisy_goodput_turns_per_s": round(noisy.ok / wall, 1),
        "noisy_refusals_per_s": {k: round(v / wall, 1) for k, v in noisy.errors.items()},
        "failed_auth_per_s": round(stale.auth_failures / wall, 1),
        "stale_errors_by_type": dict(stale.errors),
        "process_cpu_share": round(cpu / wall, 2),
        "auth_failures": dataclasses.asdict(auth_stats),
        "overload": dataclasses.asdict(overload_stats) if overload_stats else None,
        "loop_lag": lag.report(),
    }


async def cost(calls: int) -> dict:
    """CPU µs per history() call: right token, fresh wrong ids, and one dead token again.

    Each figure is the median of COST_BLOCKS blocks, the cases interleaved block by block, so
    a busy neighbour on the machine skews every case alike rather than one.
    """
    with tempfile.TemporaryDirectory() as folder:
        async with Engine(config_for(folder)) as engine:
            s = await engine.create_session("owner")
            dead = await engine.create_session("gone")
            await engine.end_session(dead.session_id, dead.token)

            async def per_call(session_ids: list[str], token: str) -> float:
                started = time.process_time()
                for session_id in session_ids:
                    with contextlib.suppress(AuthenticationError):
                        await engine.history(session_id, token)
                return (time.process_time() - started) / len(session_ids) * 1e6

            block = max(1, calls // COST_BLOCKS)
            cases: dict[str, list[float]] = {
                "history_ok_us": [],
                "failed_auth_fresh_ids_us": [],
                "failed_auth_same_dead_token_us": [],
                "failed_auth_wrong_token_on_live_id_us": [],
                "history_ok_during_attack_on_its_id_us": [],
            }
            for _ in range(COST_BLOCKS):
                fresh = [os.urandom(16).hex() for _ in range(block)]
                cases["history_ok_us"].append(await per_call([s.session_id] * block, s.token))
                cases["failed_auth_fresh_ids_us"].append(await per_call(fresh, s.token))
                cases["failed_auth_same_dead_token_us"].append(
                    await per_call([dead.session_id] * block, dead.token)
                )
                cases["failed_auth_wrong_token_on_live_id_us"].append(
                    await per_call([s.session_id] * block, dead.token)
                )
                cases["history_ok_during_attack_on_its_id_us"].append(
                    await per_call([s.session_id] * block, s.token)
                )
            refused = engine.auth_failure_stats()
    out: dict = {"calls_each": block * COST_BLOCKS, "blocks": COST_BLOCKS}
    out.update({name: round(statistics.median(v), 2) for name, v in cases.items()})
    out["refused_before_hashing"] = refused.refused_unchecked
    return out


async def http_cost(calls: int) -> dict:
    """Server CPU µs per GET of a session's messages over HTTP, the cost part's cases.

    Blocks of each case interleaved, HTTP_COST_BLOCKS of them, the median per case reported: the
    server's CPU time over a block (its threads' schedstat, in ns: clock ticks of 10 ms made
    every block of 400 requests read as a multiple of 25 us) divided by its requests. The
    refusal's cost against a success is also given paired: the median over rounds of a fresh-id
    block's cost over the success block run just before it, so that both saw the same machine
    (a ratio of two medians taken over a noisy minute swings by about 0.07 from run to run)."""
    import aiohttp

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "SESSION_CONSOLE_APP_KEYS": HTTP_APP_KEY,
               "PRAISONAI_TELEMETRY_DISABLED": "true"}
        served = ServedProcess(
            [sys.executable, "-m", "console", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", folder], env, "session-console serve", wait_s=120,
        )
        try:
            connector = aiohttp.TCPConnector(limit=HTTP_COST_CLIENTS)
            async with aiohttp.ClientSession(served.url, connector=connector) as http:
                app = {"Authorization": f"Bearer {HTTP_APP_KEY}"}

                async def create(user: str) -> tuple[str, str]:
                    async with http.post("/v1/sessions", json={"user_id": user},
                                         headers=app) as r:
                        body = await r.json()
                    return body["session_id"], body["token"]

                # Successes read many sessions, as fresh ids are many URLs: a repeated URL is
                # parsed faster (about 2 us here), which is not a cost of authenticating.
                owned = [await create(f"owner{n}") for n in range(HTTP_COST_SESSIONS)]
                dead_sid, dead_token = await create("gone")
                async with http.delete(f"/v1/sessions/{dead_sid}",
                                       headers={"Authorization": f"Bearer {dead_token}"}):
                    pass

                async def per_call(presented: list[tuple[str, str]]) -> tuple[float, Counter]:
                    statuses: Counter = Counter()
                    queue = iter(presented)

                    async def client() -> None:
                        for session_id, token in queue:
                            async with http.get(f"/v1/sessions/{session_id}/messages",
                                                headers={"Authorization": f"Bearer {token}"}) as r:
                                await r.read()
                                statuses[r.status] += 1

                    before = threads_cpu_s(served.process.pid)
                    await asyncio.gather(*(client() for _ in range(HTTP_COST_CLIENTS)))
                    used = threads_cpu_s(served.process.pid) - before
                    return used / len(presented) * 1e6, statuses

                block = max(1, calls // HTTP_COST_BLOCKS)
                cases: dict[str, list[float]] = {
                    "history_ok_us": [], "failed_auth_fresh_ids_us": [],
                    "failed_auth_same_dead_token_us": [],
                }
                statuses: dict[str, Counter] = {name: Counter() for name in cases}
                for _ in range(HTTP_COST_BLOCKS):
                    token = owned[0][1]
                    fresh = [(os.urandom(16).hex(), token) for _ in range(block)]
                    for name, presented in (
                        ("history_ok_us", [owned[i % len(owned)] for i in range(block)]),
                        ("failed_auth_fresh_ids_us", fresh),
                        ("failed_auth_same_dead_token_us", [(dead_sid, dead_token)] * block),
                    ):
                        cost_us, seen = await per_call(presented)
                        cases[name].append(cost_us)
                        statuses[name] += seen
        finally:
            served.stop()
    out: dict = {"calls_each": block * HTTP_COST_BLOCKS, "blocks": HTTP_COST_BLOCKS,
                 "clients": HTTP_COST_CLIENTS}
    out.update({name: round(statistics.median(v), 1) for name, v in cases.items()})
    paired = [fresh / ok for fresh, ok in zip(cases["failed_auth_fresh_ids_us"],
                                              cases["history_ok_us"], strict=True)]
    out["failed_fresh_over_ok_paired_median"] = round(statistics.median(paired), 3)
    out["failed_fresh_at_most_ok"] = statistics.median(paired) <= 1.0
    out["statuses"] = {name: dict(sorted(c.items())) for name, c in statuses.items()}
    return out


def zero_latency_llm() -> LLMSettings:
    return LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1))


async def backpressure(seconds: float, store: dict[str, int]) -> dict:
    """100 callers back to back, replies not waiting for commits: the writer falls behind."""
    with tempfile.TemporaryDirectory() as folder:
        config = config_for(
            folder,
            llm=zero_latency_llm(),
            limits=unlimited_limits(api_calls_window_s=60.0, overload=None),
            durable_ack=False,
            store=store,
        )
        async with Engine(config) as engine:
            sessions = [
                await engine.create_session(f"caller-{n:03d}")
                for n in range(BACKPRESSURE_CALLERS)
            ]
            turns: list[float] = []
            depths: list[int] = []
            measuring = False
            stop = asyncio.Event()

            async def caller(session_id: str, token: str) -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    await engine.send(session_id, token, "what changed since yesterday?")
                    if measuring:
                        turns.append(time.perf_counter() - started)
                    await asyncio.sleep(0)  # a caller doing I/O yields between turns

            async def sample_depth() -> None:
                while True:
                    await asyncio.sleep(0.01)
                    if measuring:
                        depths.append(engine.store.stats().queue_depth)

            tasks = [asyncio.create_task(caller(s.session_id, s.token)) for s in sessions]
            sampler = asyncio.create_task(sample_depth())
            await asyncio.sleep(BACKPRESSURE_WARMUP_S)
            before = engine.store.stats()
            measuring = True
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            measuring = False
            elapsed = time.perf_counter() - started
            after = engine.store.stats()
            stop.set()
            sampler.cancel()
            await asyncio.gather(*tasks)
    ordered = sorted(turns)
    p50, p99 = Tally(ordered).percentile(0.5), Tally(ordered).percentile(0.99)
    settings = StoreSettings(**store)
    paced = after.paced_writes > before.paced_writes
    # The writer's cap in force: while it paces writes, its batches are the smaller ones.
    batch_max = min(settings.batch_max, settings.paced_batch_max) if paced else settings.batch_max
    batch_ops = (after.ops - before.ops) / max(1, after.batches - before.batches)
    return {
        "callers": BACKPRESSURE_CALLERS,
        "durable_ack": False,
        "store_settings": store,
        "turns_per_s": round(len(turns) / elapsed, 1),
        "turn_p50_ms": ms(p50),
        "turn_p99_ms": ms(p99),
        "turn_max_ms": ms(ordered[-1]) if ordered else 0.0,
        "p99_over_p50": round(p99 / p50, 2) if p50 else None,
        "p99_within_5x_p50": bool(p50) and p99 <= BACKPRESSURE_RATIO * p50,
        "store_ops_per_s": round((after.ops - before.ops) / elapsed, 1),
        "store_avg_batch_ops": round(batch_ops, 1),
        "queue_depth_p50": sorted(depths)[len(depths) // 2] if depths else 0,
        "queue_depth_max": max(depths, default=0),
        # Sustained overload (the condition for the ratio): the writer behind for the
        # whole run, so each batch it takes is full (at the cap in force: paced_batch_max while
        # it paces writes); a writer that keeps up takes everything queued in smaller batches.
        "batch_fill": round(batch_ops / batch_max, 3),
        "sustained_overload": batch_ops >= SUSTAINED_FILL * batch_max,
        "paced_writes": after.paced_writes - before.paced_writes,
        "backlog_writes": after.backlog_writes - before.backlog_writes,
    }


async def overload(seconds: float) -> dict:
    """10,000 users, replies not waiting for commits; loop lag and GC after the spawn burst."""
    options = LoadOptions(
        users=0, spawn_rate=2500.0, seed=1, think=Distribution("exp", 5.0),
        session_turns=Distribution("const", 1e9), sessions_per_user=1, reuse_probability=1.0,
        abandon_probability=0.0, history_probability=0.0, rotate_probability=0.0,
        tier_mix=(("unlimited", 1.0),),
    )
    with tempfile.TemporaryDirectory() as folder:
        config = config_for(
            folder,
            llm=zero_latency_llm(),
            limits=unlimited_limits(api_calls_window_s=60.0),
            durable_ack=False,
        )
        async with Engine(config) as engine:
            generator = LoadGenerator(EngineTransport(engine), options)
            lag = LoopLag()
            with GcPauses() as pauses:
                lag.start()
                generator.start()
                generator.set_users(OVERLOAD_USERS)
                while generator.stats().live_users < OVERLOAD_USERS:
                    await asyncio.sleep(0.1)
                generator.reset_stats()
                lag.reset()  # collector pauses keep the spawn burst's; loop lag starts here
                started = time.perf_counter()
                await asyncio.sleep(seconds)
                elapsed = time.perf_counter() - started
                stats = generator.stats()
                lag.stop()
                await generator.stop()
            send = stats.operation("send")
    return {
        "users": OVERLOAD_USERS,
        "durable_ack": False,
        "measured_from": "loop lag and turns: the moment the last user was spawned; "
                         "collector pauses: the start of the spawn burst",
        "turns_per_s": round(((send.successes + send.failures) if send else 0) / elapsed, 1),
        "turn_failures": send.failures if send else 0,
        "overhead_p50_ms": stats.overhead_p50_ms,
        "overhead_p99_ms": stats.overhead_p99_ms,
        "loop_lag": lag.report(),
        "gc_pauses": pauses.report(),
        "gc_threshold": gc.get_threshold(),
        "gc_frozen_objects": gc.get_freeze_count(),
    }


async def run(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    load_at_start = load_average()
    out: dict = {"benchmark": "abuse"}
    if "cost" in args.parts:
        out["cost"] = await cost(args.cost_calls)
    if "http_cost" in args.parts:
        out["http_cost"] = await http_cost(args.http_cost_calls)
    if "storm" in args.parts:
        out["storm"] = await storm(args.alone_s, args.storm_s)
    if "backpressure" in args.parts:
        out["backpressure"] = {
            name: await backpressure(args.backpressure_s, BACKPRESSURE_RUNS[name])
            for name in args.backpressure_runs.split(",")
        }
    if "overload" in args.parts:
        out["overload"] = await overload(args.overload_s)
    out["machine"] = machine(load_average_1m_at_start=load_at_start)
    out["runtime_s"] = round(time.perf_counter() - began, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="cost,http_cost,storm,backpressure,overload",
                        help="which parts to run, comma-separated (default: %(default)s)")
    parser.add_argument("--alone-s", type=float, default=20.0,
                        help="seconds the quiet users run alone (default: %(default)s)")
    parser.add_argument("--storm-s", type=float, default=30.0,
                        help="seconds measured under the storm (default: %(default)s)")
    parser.add_argument("--overload-s", type=float, default=20.0,
                        help="seconds measured at 10,000 users (default: %(default)s)")
    parser.add_argument("--backpressure-s", type=float, default=20.0,
                        help="seconds measured with 100 callers (default: %(default)s)")
    parser.add_argument("--backpressure-runs", default=",".join(BACKPRESSURE_RUNS),
                        help="store settings to run the backpressure part with "
                             "(default: %(default)s)")
    parser.add_argument("--cost-calls", type=int, default=COST_CALLS,
                        help="calls per cost figure (default: %(default)s)")
    parser.add_argument("--http-cost-calls", type=int, default=HTTP_COST_CALLS,
                        help="requests per HTTP cost figure (default: %(default)s)")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    print_json(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
