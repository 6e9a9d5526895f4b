"""HTTP gateway: turns/s and added latency over HTTP against in-process, SSE time to first byte,
and the console's cost at 2 Hz, printed as JSON.

Three processes, so the two cores each get one side: this one (the orchestrator and the HTTP
load client, aiohttp with keep-alive), a server (this script re-invoked with `--serve`: the
engine with the zero-latency simulator behind `engine.gateway.serve.serve`, or the console
app driven headless at 2 Hz with the gateway in its loop), and the in-process baseline (this
script with `--in-process`: the same closed loop of callers awaiting `engine.send` directly).

Every client holds one session (its own user, a tier without reachable quotas, rate limits out
of reach, so nothing is refused) and sends turns back to back:
- closed loop: no pause between turns; turns/s = turns completed in the window / its length.
  The server saturates, so latencies there are mostly queueing (Little's law), not cost.
- fixed rate: each client thinks an exponential time between turns so all clients together
  offer a fixed rate below capacity: half the HTTP closed-loop rate of the first client count
  (or --rate), the same for every later run. The latency figures come from here; a run whose
  achieved rate falls short of 90% of the offered one says `below_capacity: false`.

Per turn: round trip (client-observed), engine time (the whole `engine.send` call, timed in
the server process; sent back as Server-Timing `engine;dur`), model time (`model;dur`).
gateway added = round trip - engine time; engine overhead = engine time - model time. The
product's `engine;dur` is Reply.latency_s, which stops before the durable commit wait; the
server here wraps `Engine.send` so `engine;dur` is the whole call, commit wait included, and
the in-process baseline times the same call. SSE time to first byte: request start to the
first `event: delta` bytes (sessions route) or the first chunk (chat completions).

The console's cost: engine overhead p99 with the console open at 2 Hz over headless, at the
fixed rate, in CONSOLE_PAIRS pairs of runs (console, then headless at once), each on a fresh
server; the ratio is the pairs' median. One pair's ratio swings by more than the target's
margin from run to run on a shared 2-core machine.

Durability as measured: durable_ack=True (a reply waits for its commit), durability
"process" (a commit is a write(), no fsync); `--with-fast-ack` adds durable_ack=False runs.

Run: .venv/bin/python benchmarks/http_gateway.py [--duration 15] [--clients 100,1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    ServedProcess,
    load_average,
    machine,
    print_json,
    process_cpu_s,
    unlimited_limits,
)

APP_KEY = "http-gateway-benchmark-app-key"
SIZE = (160, 45)  # the console's terminal in the 2 Hz run
RATE_SHARE = 0.5  # the fixed rate, as a share of the HTTP closed-loop rate, unless --rate
BELOW_CAPACITY = 0.9  # a fixed-rate run is below capacity if it achieves this share of its rate
WARMUP_S = 3.0
CONSOLE_PAIRS = 3  # console and headless runs, alternated: the console ratio is their median
TEXT = "What changed in my account since yesterday, and what should I do next?"
TARGETS = {
    "added_ms_p50_at_100": 1.0,
    "added_ms_p99_at_100": 5.0,
    "http_turns_per_s": 1500.0,
    "console_overhead_p99_ratio": 1.2,
}


# -- shared by every process -------------------------------------------------------------------
def bench_config(data_dir: Path, durable_ack: bool) -> Any:
    """Zero-latency simulator; quotas, rate limits and the connection bound out of reach."""
    from engine import EngineConfig, GatewaySettings, LLMSettings, SimSettings, StoreSettings

    return EngineConfig(
        store=StoreSettings(data_dir=data_dir, durable_ack=durable_ack, durability="process"),
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
        # Measured at capacity on purpose: nothing may be shed.
        limits=unlimited_limits(api_calls_window_s=60.0, overload=None),
        gateway=GatewaySettings(max_connections=8192, app_keys=(APP_KEY,)),
    )


def percentiles_ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms of values in seconds (nearest rank), with the count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1000, 3)

    return {"count": len(ordered), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99),
            "max": round(ordered[-1] * 1000, 3)}


@dataclasses.dataclass(slots=True)
class Window:
    """The measured window: turns that finish inside it count (a closed loop's round trips
    can be as long as the window itself, so "started inside it too" would undercount)."""

    start: float = float("inf")
    end: float = float("inf")
    stopping: bool = False
    thinking: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)

    def holds(self, finished: float) -> bool:
        return self.start <= finished <= self.end

    async def pause(self, rng: random.Random, mean_s: float) -> None:
        """Think; with no think time still yield, as a caller doing I/O would: a turn that
        never suspends (zero-latency model, no commit wait) would otherwise hold the loop.
        A thinking client is cancelled when the window ends (its next turn is not waited for)."""
        task = asyncio.current_task()
        assert task is not None
        self.thinking.add(task)
        try:
            await asyncio.sleep(rng.expovariate(1 / mean_s) if mean_s > 0 else 0)
        finally:
            self.thinking.discard(task)


def think_mean_s(clients: int, rate: float | None) -> float:
    return 0.0 if rate is None else clients / rate


def rates(offered: float | None, achieved: float) -> dict[str, Any]:
    out: dict[str, Any] = {"turns_per_s": round(achieved, 1)}
    if offered is not None:
        out["offered_turns_per_s"] = offered
        out["below_capacity"] = achieved >= BELOW_CAPACITY * offered
    return out


async def run_window(window: Window, workers: list[asyncio.Task[Any]], duration: float,
                     on_start: Any = None) -> float:
    """Warm up, measure `duration`, stop the workers; returns the window's length."""
    await asyncio.sleep(WARMUP_S)
    window.start = time.perf_counter()
    if on_start is not None:
        on_start()
    await asyncio.sleep(duration)
    window.end = time.perf_counter()
    window.stopping = True
    for task in window.thinking:
        task.cancel()
    _, pending = await asyncio.wait(workers, timeout=60)  # turns in flight finish
    for task in pending:
        task.cancel()
    outcomes = await asyncio.gather(*workers, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return window.end - window.start


# -- the server process ------------------------------------------------------------------------
async def serve_console(config: Any) -> None:
    """The console at 2 Hz, headless, with the gateway in its loop, until SIGTERM."""
    from console.app import SessionConsole

    app = SessionConsole(config, refresh_hz=2.0, listen="127.0.0.1:0")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    async with app.run_test(size=SIZE) as pilot:
        while app.gateway is None:
            await pilot.pause(0.05)
        print(f"serving http://{app.gateway.address} (console at {app.refresh_hz:g} Hz)",
              file=sys.stderr, flush=True)
        await stopping.wait()
        refreshes = app.refreshes
    print(f"console refreshes: {refreshes}", file=sys.stderr, flush=True)


def serve_main(mode: str, data_dir: Path, durable_ack: bool) -> int:
    config = bench_config(data_dir, durable_ack)
    if mode == "console":
        from engine.runtime import serving_runner

        with serving_runner() as runner:  # the console's own loop, as `run_console` runs it
            runner.run(serve_console(config))
        return 0
    from engine.gateway.serve import main

    return main(config, "127.0.0.1:0")


class ServerProcess:
    """A benchmark script's `--serve` in a subprocess, on a data dir of its own: its address,
    CPU time, and a draining stop. `script_args`: the script and its serving options."""

    def __init__(self, script_args: list[str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="http-gateway-bench-")
        self.served = ServedProcess(
            [sys.executable, *script_args, "--data-dir", self._dir.name],
            child_env(), "server", wait_s=90,
        )
        self.process = self.served.process
        self.address = self.served.url.removeprefix("http://")

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.served.stop()
        self._dir.cleanup()


def child_env() -> dict[str, str]:
    return {**os.environ, "SESSION_CONSOLE_APP_KEYS": APP_KEY,
            "PRAISONAI_TELEMETRY_DISABLED": "true"}


# -- the HTTP load client (this process) -------------------------------------------------------
def server_timing(header: str) -> tuple[float, float]:
    """(engine s, model s) from `engine;dur=X, model;dur=Y` (ms)."""
    durations = dict(part.strip().split(";dur=") for part in header.split(","))
    return float(durations["engine"]) / 1000, float(durations["model"]) / 1000


class HttpLoad:
    """Keep-alive clients on one aiohttp session, a session (and user) each, on one server."""

    def __init__(self, server: ServerProcess, clients: int) -> None:
        self.server = server
        self.clients = clients
        self.base = f"http://{server.address}"
        self.sessions: list[tuple[str, str]] = []
        self.http: Any = None

    async def __aenter__(self) -> HttpLoad:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.clients, limit_per_host=self.clients,
                                         keepalive_timeout=120)
        self.http = aiohttp.ClientSession(connector=connector,
                                          timeout=aiohttp.ClientTimeout(total=120))
        gate = asyncio.Semaphore(50)

        async def create(n: int) -> tuple[str, str]:
            async with gate, self.http.post(
                f"{self.base}/v1/sessions", json={"user_id": f"bench-user-{n:05d}"},
                headers={"Authorization": f"Bearer {APP_KEY}"},
            ) as r:
                body = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"POST /v1/sessions: {r.status} {body}")
                return body["session_id"], body["token"]

        self.sessions = list(await asyncio.gather(*(create(n) for n in range(self.clients))))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    def _request(self, n: int, route: str, stream: bool) -> tuple[str, bytes, dict[str, str]]:
        session_id, token = self.sessions[n]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if route == "chat":
            headers["X-Session-ID"] = session_id
            body = {"model": "assistant", "messages": [{"role": "user", "content": TEXT}],
                    "stream": stream}
            return f"{self.base}/v1/chat/completions", json.dumps(body).encode(), headers
        body = {"content": TEXT, "stream": stream}
        return f"{self.base}/v1/sessions/{session_id}/messages", json.dumps(body).encode(), headers

    async def run(self, duration: float, rate: float | None, route: str = "messages",
                  stream: bool = False) -> dict[str, Any]:
        window = Window()
        round_trips: list[float] = []
        added: list[float] = []
        overhead: list[float] = []
        ttfb: list[float] = []
        errors: Counter[str] = Counter()
        think = think_mean_s(self.clients, rate)
        marker = b"event: delta" if route == "messages" else b"data: "

        async def client(n: int) -> None:
            url, body, headers = self._request(n, route, stream)
            rng = random.Random(n)
            await window.pause(rng, think * rng.random())  # spread the first turns
            while not window.stopping:
                started = time.perf_counter()
                first = 0.0
                async with self.http.post(url, data=body, headers=headers) as r:
                    if stream and r.status == 200:
                        buffered = b""
                        async for chunk in r.content.iter_any():
                            if not first:
                                buffered += chunk
                                if marker in buffered:
                                    first = time.perf_counter()
                        timing = ""
                    else:
                        await r.read()
                        timing = r.headers.get("server-timing", "")
                    status = r.status
                finished = time.perf_counter()
                if window.holds(finished):
                    if status != 200:
                        errors[str(status)] += 1
                    elif stream and not first:
                        errors["200 without an event"] += 1
                    elif stream:
                        round_trips.append(finished - started)
                        ttfb.append(first - started)
                    else:
                        engine_s, model_s = server_timing(timing)
                        round_trips.append(finished - started)
                        added.append(finished - started - engine_s)
                        overhead.append(engine_s - model_s)
                await window.pause(rng, think)

        cpu: dict[str, float] = {}

        def on_start() -> None:
            cpu["server"], cpu["client"] = self.server.cpu_s(), time.process_time()

        workers = [asyncio.create_task(client(n)) for n in range(self.clients)]
        elapsed = await run_window(window, workers, duration, on_start)
        server_cpu = self.server.cpu_s() - cpu["server"]
        client_cpu = time.process_time() - cpu["client"]
        turns = len(round_trips)
        result: dict[str, Any] = {
            "clients": self.clients,
            **rates(rate, turns / elapsed),
            "turns": turns,
            "errors_by_status": dict(errors),
            "round_trip_ms": percentiles_ms(round_trips),
        }
        if stream:
            result["ttfb_ms"] = percentiles_ms(ttfb)
        else:
            result["added_ms"] = percentiles_ms(added)
            result["engine_overhead_ms"] = percentiles_ms(overhead)
        result["server_cpu_percent"] = round(100 * server_cpu / elapsed, 1)
        result["server_cpu_ms_per_turn"] = round(1000 * server_cpu / turns, 3) if turns else None
        result["turns_per_server_cpu_s"] = round(turns / server_cpu, 1) if server_cpu else None
        result["client_cpu_percent"] = round(100 * client_cpu / elapsed, 1)
        return result


# -- the in-process baseline (its own process) -------------------------------------------------
async def in_process_run(clients: int, duration: float, rate: float | None,
                         durable_ack: bool) -> dict[str, Any]:
    from engine import Engine

    with tempfile.TemporaryDirectory(prefix="http-gateway-bench-") as folder:
        async with Engine(bench_config(Path(folder), durable_ack)) as engine:
            sessions = [await engine.create_session(f"bench-user-{n:05d}")
                        for n in range(clients)]
            window = Window()
            totals: list[float] = []
            overhead: list[float] = []
            think = think_mean_s(clients, rate)

            async def client(n: int) -> None:
                session = sessions[n]
                rng = random.Random(n)
                await window.pause(rng, think * rng.random())
                while not window.stopping:
                    started = time.perf_counter()
                    reply = await engine.send(session.session_id, session.token, TEXT)
                    finished = time.perf_counter()
                    if window.holds(finished):
                        totals.append(finished - started)
                        overhead.append(finished - started - reply.model_latency_s)
                    await window.pause(rng, think)

            cpu: dict[str, float] = {}
            workers = [asyncio.create_task(client(n)) for n in range(clients)]
            elapsed = await run_window(
                window, workers, duration, lambda: cpu.setdefault("at", time.process_time())
            )
            used = time.process_time() - cpu["at"]
    return {
        "clients": clients,
        **rates(rate, len(totals) / elapsed),
        "turns": len(totals),
        "send_ms": percentiles_ms(totals),
        "engine_overhead_ms": percentiles_ms(overhead),
        "cpu_percent": round(100 * used / elapsed, 1),
        "cpu_ms_per_turn": round(1000 * used / len(totals), 3) if totals else None,
        "turns_per_cpu_s": round(len(totals) / used, 1) if used else None,
    }


def in_process(clients: int, duration: float, rate: float, durable_ack: bool) -> dict[str, Any]:
    """Closed loop and fixed rate for `clients` callers, in a fresh process (one core)."""
    done = subprocess.run(
        [sys.executable, __file__, "--in-process", str(clients), "--duration", str(duration),
         "--rate", str(rate), "--durable-ack", str(int(durable_ack))],
        capture_output=True, text=True, env=child_env(), check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


async def in_process_main(clients: int, duration: float, rate: float, durable_ack: bool) -> None:
    closed = await in_process_run(clients, duration, None, durable_ack)
    fixed = await in_process_run(clients, duration, rate, durable_ack)
    print(json.dumps({"closed_loop": closed, "fixed_rate": fixed}))


# -- the orchestration -------------------------------------------------------------------------
def progress(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


async def http_runs(mode: str, clients: int, duration: float, rate: float | None,
                    durable_ack: bool, extra: bool = False,
                    closed: bool = True) -> dict[str, Any]:
    """One server: closed loop, fixed rate (None: RATE_SHARE of the closed loop's), and (with
    `extra`) the two SSE routes."""
    server = ServerProcess([__file__, "--serve", mode, "--durable-ack", str(int(durable_ack))])
    out: dict[str, Any] = {}
    try:
        async with HttpLoad(server, clients) as load:
            if closed:
                progress(f"{mode} server, {clients} clients: closed loop")
                out["closed_loop"] = await load.run(duration, None)
            if rate is None:
                rate = max(10.0, round(RATE_SHARE * out["closed_loop"]["turns_per_s"]))
            progress(f"{mode} server, {clients} clients: fixed rate {rate:g} turns/s")
            out["fixed_rate"] = await load.run(duration, rate)
            if extra:
                progress(f"{mode} server, {clients} clients: SSE, sessions route")
                out["sse_messages"] = await load.run(duration, rate, "messages", stream=True)
                progress(f"{mode} server, {clients} clients: SSE, chat completions")
                out["sse_chat"] = await load.run(duration, rate, "chat", stream=True)
    finally:
        server.stop()
    return out


async def console_pairs(rate: float, duration: float, headless: dict[str, Any]) -> dict[str, Any]:
    """The console at 2 Hz against headless at the same fixed rate, CONSOLE_PAIRS times, each
    console run followed at once by a headless one (a pair shares the machine's weather); the
    ratio is the median of the pairs' p99 ratios. The first console server also runs the
    closed loop."""
    pairs = []
    closed: dict[str, Any] | None = None
    for n in range(CONSOLE_PAIRS):
        progress(f"console at 2 Hz, 100 clients, pair {n + 1} of {CONSOLE_PAIRS}")
        console = await http_runs("console", 100, duration, rate, True, closed=n == 0)
        closed = closed or console["closed_loop"]
        progress(f"headless, paired with console run {n + 1}")
        paired = await http_runs("headless", 100, duration, rate, True, closed=False)
        c, h = console["fixed_rate"], paired["fixed_rate"]
        pairs.append({
            "console_overhead_p50_ms": c["engine_overhead_ms"]["p50"],
            "headless_overhead_p50_ms": h["engine_overhead_ms"]["p50"],
            "console_overhead_p99_ms": c["engine_overhead_ms"]["p99"],
            "headless_overhead_p99_ms": h["engine_overhead_ms"]["p99"],
            "ratio": ratio(c["engine_overhead_ms"]["p99"], h["engine_overhead_ms"]["p99"]),
            "console_server_cpu_ms_per_turn": c["server_cpu_ms_per_turn"],
            "headless_server_cpu_ms_per_turn": h["server_cpu_ms_per_turn"],
            "below_capacity": c["below_capacity"] and h["below_capacity"],
            "errors_by_status": {"console": c["errors_by_status"],
                                 "headless": h["errors_by_status"]},
        })
    ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
    assert closed is not None
    return {
        "clients": 100,
        "fixed_rate": {
            "offered_turns_per_s": rate,
            "pairs": pairs,
            "ratio": round(statistics.median(ratios), 3) if ratios else None,
        },
        "closed_loop": {
            "console_turns_per_s": closed["turns_per_s"],
            "headless_turns_per_s": headless["closed_loop"]["turns_per_s"],
            "console_overhead_p99_ms": closed["engine_overhead_ms"]["p99"],
            "headless_overhead_p99_ms": headless["closed_loop"]["engine_overhead_ms"]["p99"],
        },
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def difference(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


async def orchestrate(counts: list[int], duration: float, rate: float | None,
                      fast_ack: bool) -> dict[str, Any]:
    began = time.perf_counter()
    load_before = load_average()
    out: dict[str, Any] = {
        "benchmark": "http_gateway",
        "settings": {
            "simulator": "sim, zero latency",
            "durable_ack": True,
            "durability": "process",
            "warmup_s": WARMUP_S,
            "duration_s": duration,
            "fixed_rate_turns_per_s": rate,  # set below once derived
            "client": "aiohttp, one keep-alive connection per client, separate process",
            "added_definition": "client round trip - whole engine.send time (Server-Timing "
                                "engine;dur: the whole engine.send call, commit wait included)",
            "overhead_definition": "whole engine.send time - model time",
        },
        "in_process": {},
        "http": {},
    }
    for clients in counts:
        key = f"clients_{clients}"
        http = await http_runs("headless", clients, duration, rate, True, extra=clients == 100)
        rate = out["settings"]["fixed_rate_turns_per_s"] = http["fixed_rate"]["offered_turns_per_s"]
        progress(f"in-process baseline, {clients} callers")
        base = in_process(clients, duration, rate, True)
        out["in_process"][key] = base
        sse = {k: http.pop(k) for k in ("sse_messages", "sse_chat") if k in http}
        if sse:
            out["sse_ttfb_ms"] = {
                "clients": clients, "offered_turns_per_s": rate,
                "note": "zero-latency simulator: the whole reply is ready at once, so this is "
                        "the gateway's and engine's own path to the first event",
                "messages_route": {**sse["sse_messages"]["ttfb_ms"],
                                   "errors_by_status": sse["sse_messages"]["errors_by_status"]},
                "chat_completions": {**sse["sse_chat"]["ttfb_ms"],
                                     "errors_by_status": sse["sse_chat"]["errors_by_status"]},
            }
        http["http_over_in_process_turns_ratio"] = ratio(
            http["closed_loop"]["turns_per_s"], base["closed_loop"]["turns_per_s"]
        )
        http["gateway_cpu_ms_per_turn"] = difference(
            http["closed_loop"]["server_cpu_ms_per_turn"], base["closed_loop"]["cpu_ms_per_turn"]
        )
        out["http"][key] = http
    if 100 in counts:
        out["console_2hz"] = await console_pairs(rate, duration, out["http"]["clients_100"])
    if fast_ack and 100 in counts:
        progress("durable_ack=False, 100 clients")
        out["without_durable_ack"] = {
            "in_process": in_process(100, duration, rate, False),
            "http": await http_runs("headless", 100, duration, rate, False),
        }
    out["targets"] = targets(out)
    out["machine"] = machine(
        load_average_1m_before=load_before, load_average_1m_after=load_average()
    )
    out["runtime_s"] = round(time.perf_counter() - began, 1)
    return out


def targets(out: dict[str, Any]) -> dict[str, Any]:
    def check(value: float | None, limit: float, at_most: bool) -> dict[str, Any]:
        met = value is not None and (value <= limit if at_most else value >= limit)
        return {"value": value, "target": limit, "met": met}

    result: dict[str, Any] = {}
    h100 = out["http"].get("clients_100")
    if h100:
        added = h100["fixed_rate"]["added_ms"]
        result["gateway_added_p50_ms_at_100"] = check(
            added.get("p50"), TARGETS["added_ms_p50_at_100"], True)
        result["gateway_added_p99_ms_at_100"] = check(
            added.get("p99"), TARGETS["added_ms_p99_at_100"], True)
    best = max((h["closed_loop"]["turns_per_s"] for h in out["http"].values()), default=None)
    result["http_turns_per_s_one_process"] = check(best, TARGETS["http_turns_per_s"], False)
    if "console_2hz" in out:
        result["console_overhead_p99_ratio"] = check(
            out["console_2hz"]["fixed_rate"]["ratio"], TARGETS["console_overhead_p99_ratio"], True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds measured per run, after the warm-up (default: %(default)s)")
    parser.add_argument("--clients", default="100,1000",
                        help="client counts, comma-separated (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=None,
                        help="turns/s all clients offer together in the fixed-rate runs "
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="4 s runs, 100 clients")
    parser.add_argument("--with-fast-ack", action="store_true",
                        help="also measure durable_ack=False at 100 clients")
    # Internal: the child processes this script starts.
    parser.add_argument("--serve", choices=("headless", "console"), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--in-process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--durable-ack", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve_main(args.serve, args.data_dir, bool(args.durable_ack)))
    if args.in_process:
        asyncio.run(in_process_main(args.in_process, args.duration, args.rate,
                                    bool(args.durable_ack)))
        return
    duration, counts = args.duration, [int(c) for c in args.clients.split(",")]
    if args.quick:
        duration, counts = 4.0, [100]
    result = asyncio.run(orchestrate(counts, duration, args.rate, args.with_fast_ack))
    print_json(result)


if __name__ == "__main__":
    main()
