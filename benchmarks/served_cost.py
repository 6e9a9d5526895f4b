"""What a cluster's turn pays to say which worker served it, printed as JSON.

Run: .venv/bin/python benchmarks/served_cost.py [--blocks 40] [--per-block 25]
Figures: the check every turn makes (`ClusterWorker.served` when this worker served the last
turn too, the usual case: nothing is written), and a turn's commit to PostgreSQL with and
without the `Served` op a turn adds when the serving worker changed (one UPDATE more in the
same transaction). Commits run in alternating blocks, one at a time; the added time is the
median over pairs of neighbouring blocks, since the machine's load moves between blocks. The
server is the `pgserver` wheel's PostgreSQL 16 on a unix socket. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
import warnings
from pathlib import Path

from common import load_average, machine, print_json

from engine.cluster.worker import ClusterWorker
from engine.sessions import Session
from engine.store import MessageRow, QuotaEvent, Served, SessionRow, Store, Touch, open_store

NOW = 1_700_000_000.0
SESSIONS = 500


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def session_row(n: int) -> SessionRow:
    return SessionRow(
        f"s{n:05d}", f"u{n % 50}", "free", "{}", NOW, NOW, 3600.0, 86400.0,
        b"h" * 32, NOW, NOW + 86400.0, b"k" * 100,
    )


class Turns:
    """A turn's ops as the engine writes them: two messages, the touch, its quota usage."""

    def __init__(self) -> None:
        self._seq = [0] * SESSIONS
        self._n = 0

    def next(self, served: bool) -> list:
        n = self._n % SESSIONS
        self._n += 1
        sid, seq = f"s{n:05d}", self._seq[n]
        self._seq[n] += 2
        ops: list = [
            MessageRow(sid, seq, "user", b"x" * 120, NOW, 40),
            MessageRow(sid, seq + 1, "assistant", b"y" * 400, NOW, 200),
            Touch(sid, NOW + seq, seq // 2 + 1, 10, 20, 0, "assistant"),
            QuotaEvent(f"u{n % 50}", "api_calls", NOW, 1, 3600.0),
            QuotaEvent(f"u{n % 50}", "tokens", NOW, 30, 3600.0),
        ]
        if served:
            ops.append(Served(sid, "w2" if seq % 4 else "w1"))
        return ops


async def block(store: Store, turns: Turns, served: bool, size: int) -> float:
    """The median commit time of `size` turns, one after the other."""
    took = []
    for _ in range(size):
        ops = turns.next(served)
        started = time.perf_counter()
        await store.write(*ops)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


async def commits(url: str, blocks: int, per_block: int) -> dict[str, float]:
    async with await open_store(url) as store:
        for n in range(SESSIONS):
            await store.save_session(session_row(n))
        turns = Turns()
        await block(store, turns, True, 3 * per_block)  # warm up
        without, with_served = [], []
        for b in range(blocks):
            order = (False, True) if b % 2 == 0 else (True, False)
            for served in order:
                (with_served if served else without).append(
                    await block(store, turns, served, per_block)
                )
            progress(f"block pair {b + 1}/{blocks}")
    added = [w - o for w, o in zip(with_served, without, strict=True)]
    return {
        "commit_ms_without_served": round(statistics.median(without) * 1e3, 3),
        "commit_ms_with_served": round(statistics.median(with_served) * 1e3, 3),
        "added_ms_paired_median": round(statistics.median(added) * 1e3, 3),
    }


def check_ns() -> float:
    """`served` when the store already says this worker: the cost every turn pays."""

    class Worker:
        worker_id = "w1"

    worker = Worker()
    session = Session("s", "u", {}, 0.0, 0.0, 1.0, 1.0, None, served_by="w1")
    calls = 1_000_000
    took = timeit.timeit(lambda: ClusterWorker.served(worker, session), number=calls)  # type: ignore[arg-type]
    empty = timeit.timeit(lambda: None, number=calls)
    return round((took - empty) / calls * 1e9, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--per-block", type=int, default=25)
    args = parser.parse_args()
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        import pgserver

    before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE bench;")
            socket_dir = server.get_postmaster_info().socket_dir
            url = f"postgresql://postgres@/bench?host={socket_dir}"
            figures = asyncio.run(commits(url, args.blocks, args.per_block))
        finally:
            server.cleanup()
    print_json({
        "machine": machine(load_before=before, load_after=load_average()),
        "served_check_ns_every_turn": check_ns(),
        "turn_commit_when_the_serving_worker_changed": figures,
    })


if __name__ == "__main__":
    main()
