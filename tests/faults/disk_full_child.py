"""The disk-full run, in a process of its own: `python disk_full_child.py DATA_DIR`.

Runs an engine under load, then lowers this process's file size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored) to the size its database files have: every write that would grow them fails
with EFBIG, as writes do on a full disk, and needs no root. The load goes on against the limit,
then the limit is lifted and the load goes on again. Prints one JSON object: the sessions and
their tokens, the turns each acknowledged, and what the callers saw meanwhile. The limit binds
the whole process, which is why this is not run inside pytest's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import signal
import sys
from pathlib import Path

from engine import (
    Engine,
    EngineConfig,
    LimitSettings,
    LLMSettings,
    SessionSettings,
    SimSettings,
    StoreSettings,
)
from engine.errors import EngineError
from engine.quotas import RESOURCES, QuotaLimit
from engine.ratelimit import RateLimit

USERS = 6
CONCURRENCY = 12
MAX_ATTEMPTS = 5000  # per phase: a phase that never gets its outcome ends, and the test says so


def config(data_dir: Path) -> EngineConfig:
    unlimited = RateLimit(rate_per_s=1e6, burst=1_000_000)
    no_quota = {"free": {resource: QuotaLimit(1e15, None) for resource in RESOURCES}}
    return EngineConfig(
        store=StoreSettings(data_dir=data_dir),
        sessions=SessionSettings(context_max_messages=100_000, context_max_bytes=1 << 30),
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)),
        limits=LimitSettings(
            session_rate=unlimited, user_rate=unlimited, tiers=no_quota, overload=None
        ),
        tune_gc=False,
    )


def database_bytes(data_dir: Path) -> int:
    return max(path.stat().st_size for path in data_dir.glob("sessions.db*"))


async def main(data_dir: Path) -> dict:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    numbers = itertools.count()
    report: dict = {"acked": {}, "errors": [], "reads_while_full": 0}
    async with Engine(config(data_dir)) as engine:
        sessions = [
            await engine.create_session(f"user{i}") for i in range(USERS)
        ]
        report["sessions"] = {s.session_id: s.token for s in sessions}
        acked: dict[str, list[str]] = {s.session_id: [] for s in sessions}
        report["acked"] = acked
        unready: list[bool] = []  # engine.ready read as each failure reached its caller

        async def turns(until: int) -> list[EngineError]:
            """Run turns from CONCURRENCY clients until `until` have failed (or, with `until`
            < 0, -until have succeeded), MAX_ATTEMPTS at most; returns the failures."""
            failures: list[EngineError] = []
            successes = attempts = 0

            async def one_client(index: int) -> None:
                nonlocal successes, attempts
                session = sessions[index % USERS]
                while attempts < MAX_ATTEMPTS and (
                    len(failures) < until if until > 0 else successes < -until
                ):
                    attempts += 1
                    text = f"turn {next(numbers)}"
                    try:
                        await engine.send(session.session_id, session.token, text)
                    except EngineError as exc:
                        failures.append(exc)
                        unready.append(not engine.ready)  # as the caller hears of the failure
                        await asyncio.sleep(0.01)
                    else:
                        acked[session.session_id].append(text)
                        successes += 1

            await asyncio.gather(*(one_client(i) for i in range(CONCURRENCY)))
            return failures

        await turns(-200)  # acknowledged before the disk fills
        report["ready_before"] = engine.ready
        resource.setrlimit(resource.RLIMIT_FSIZE, (database_bytes(data_dir), hard))
        failures = await turns(30)
        report["errors"] = sorted({f"{type(f).__name__}: {f}" for f in failures})
        report["unready_at_each_failure"] = all(unready)
        for session in sessions:  # reads go on
            await engine.history(session.session_id, session.token)
            report["reads_while_full"] += 1
        try:
            await engine.create_session("newcomer")
            report["create_while_full"] = "created"
        except EngineError as exc:
            report["create_while_full"] = f"{type(exc).__name__}: {exc}"
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
        await turns(-50)
        report["ready_after"] = engine.ready
        report["created_after"] = (await engine.create_session("newcomer")).session_id
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
