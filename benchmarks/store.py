"""Store figures, printed as JSON: durable appends/s, ack latency, restore time, bytes/message.

Run: .venv/bin/python benchmarks/store.py [--seconds 3] [--restore 10000,100000]
     [--postgres | --database-url postgresql://user@host/db]
Every figure is measured on a fresh database with the store's real settings: by default an
SQLite file in a temporary folder (WAL, synchronous=FULL); with `--postgres`, a PostgreSQL 16
started for the run from the pgserver wheel (unix socket, its default settings:
synchronous_commit=on, fsync=on); with `--database-url`, new databases created on that server
(the URL's user needs CREATEDB) and dropped afterwards. Messages are real AES-GCM ciphertexts
of ~200-character texts. Progress goes to stderr; only the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from common import print_json
from cryptography.fernet import Fernet

from engine import StoreSettings
from engine.security import SessionCipher
from engine.store import MessageRow, SessionRow, open_store, redacted

MESSAGES_PER_SESSION = 20
TEXT_CHARS = 200
NOW = 1_700_000_000.0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ciphertexts(n: int) -> list[bytes]:
    """A pool of real ciphertexts; reused, since encryption is the engine's cost, not ours.

    Nothing here decrypts them, so the place each is bound to need not match its row's.
    """
    cipher = SessionCipher(Fernet.generate_key())
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz      "
    return [
        cipher.encrypt(
            "".join(rng.choices(alphabet, k=TEXT_CHARS)), session_id="pool", seq=seq, role="user"
        )
        for seq in range(n)
    ]


def session_row(session_id: str, user: int) -> SessionRow:
    return SessionRow(
        session_id=session_id,
        user_id=f"user{user}",
        tier="free",
        metadata_json='{"tier": "free"}',
        created_at=NOW,
        last_active_at=NOW,
        idle_timeout_s=1e9,
        lifetime_s=1e9,
        token_hash=bytes(32),
        token_issued_at=NOW,
        token_expires_at=NOW + 1e9,
        wrapped_key=bytes(120),
    )


class Databases:
    """A fresh database per figure: SQLite files in a folder, or new databases on a server."""

    def __init__(self, folder: Path, server_url: str | None) -> None:
        self.folder = folder
        self.server_url = server_url
        self._created: list[str] = []

    @property
    def kind(self) -> str:
        return "sqlite" if self.server_url is None else "postgresql"

    async def fresh(self, name: str) -> Path | str:
        if self.server_url is None:
            return self.folder / f"{name}.db"
        database = f"store_bench_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        self._created.append(database)
        parts = urlsplit(self.server_url)
        return f"{parts.scheme}://{parts.netloc}/{database}" + (
            f"?{parts.query}" if parts.query else ""
        )

    async def drop_all(self) -> None:
        if not self._created:
            return
        conn = await asyncpg.connect(self.server_url)
        try:
            for database in self._created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """A PostgreSQL server for this run, from the pgserver wheel; its URL."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        import pgserver

    folder = Path(tempfile.mkdtemp(prefix="store-bench-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def appends(
    databases: Databases, writers: int, seconds: float, durable: bool = True
) -> dict:
    """`writers` tasks each append one message per write, back to back, for `seconds`."""
    pool = ciphertexts(64)
    size = len(pool[0])
    target = await databases.fresh(f"appends-{writers}-{durable}")
    async with await open_store(target, StoreSettings(durable_ack=durable)) as store:
        for w in range(writers):
            await store.save_session(session_row(f"s{w}", w))
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        start_stats = store.stats()

        async def writer(w: int) -> int:
            seq = 0
            while time.perf_counter() < stop:
                seq += 1
                t0 = time.perf_counter()
                await store.write(MessageRow(f"s{w}", seq, "user", pool[seq % 64], NOW, size))
                latencies.append(time.perf_counter() - t0)
            return seq

        started = time.perf_counter()
        counts = await asyncio.gather(*(writer(w) for w in range(writers)))
        await store.flush()
        elapsed = time.perf_counter() - started
        stats = store.stats()
    batches = stats.batches - start_stats.batches
    return {
        "appends_per_s": round(sum(counts) / elapsed),
        "ack_ms_p50": round(percentile(latencies, 0.50) * 1000, 3),
        "ack_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
        "avg_batch_ops": round((stats.ops - start_stats.ops) / max(1, batches), 1),
    }


async def paced_latency(
    databases: Databases, writers: int, rate: float, seconds: float, batch_ms: float
) -> dict:
    """Latency a durable ack adds to a turn: writers with random think time, not saturating."""
    pool = ciphertexts(64)
    size = len(pool[0])
    rng = random.Random(11)
    target = await databases.fresh(f"paced-{batch_ms}")
    async with await open_store(target, StoreSettings(batch_ms=batch_ms)) as store:
        for w in range(writers):
            await store.save_session(session_row(f"s{w}", w))
        latencies: list[float] = []
        before = store.stats().batches
        started = time.perf_counter()
        stop = started + seconds

        async def writer(w: int) -> None:
            seq = 0
            while time.perf_counter() < stop:
                await asyncio.sleep(rng.expovariate(rate / writers))
                seq += 2  # a turn stores the user's message and the reply in one write
                t0 = time.perf_counter()
                await store.write(
                    MessageRow(f"s{w}", seq - 1, "user", pool[seq % 64], NOW, size),
                    MessageRow(f"s{w}", seq, "assistant", pool[(seq + 1) % 64], NOW, size),
                )
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.perf_counter() - started
        commits = store.stats().batches - before
    return {
        "batch_ms": batch_ms,
        "writers": writers,
        "turns_per_s": round(len(latencies) / elapsed),
        "commits_per_s": round(commits / elapsed),
        "ack_ms_p50": round(percentile(latencies, 0.50) * 1000, 3),
        "ack_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
    }


async def populate(target: Path | str, sessions: int) -> int:
    """Sessions with MESSAGES_PER_SESSION messages each, written through the store itself."""
    pool = ciphertexts(256)
    async with await open_store(target, StoreSettings(batch_max=8192)) as store:
        next_id = iter(range(sessions))

        async def loader() -> None:
            for i in next_id:
                sid = f"{i:032x}"
                await store.write(
                    session_row(sid, i % 5000),
                    *(
                        MessageRow(sid, seq, "user" if seq % 2 else "assistant",
                                   pool[(i + seq) % 256], NOW, TEXT_CHARS)
                        for seq in range(1, MESSAGES_PER_SESSION + 1)
                    ),
                )
                if i % 20_000 == 0 and i:
                    progress(f"  populated {i:,} sessions")

        await asyncio.gather(*(loader() for _ in range(64)))
    return len(pool[0])


async def restore(databases: Databases, sessions: int) -> dict:
    target = await databases.fresh(f"restore-{sessions}")
    started = time.perf_counter()
    ciphertext_bytes = await populate(target, sessions)
    progress(f"  populated {sessions:,} sessions in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    store = await open_store(target)
    opened = time.perf_counter()
    restored = await store.load_live(NOW + 1)
    loaded = time.perf_counter()
    file_bytes = store.stats().file_bytes  # SQLite: the file; PostgreSQL: the database
    await store.aclose()
    messages = restored.counts.messages
    assert restored.counts.sessions == sessions and messages == sessions * MESSAGES_PER_SESSION
    return {
        "sessions": sessions,
        "messages": messages,
        "open_s": round(opened - started, 3),  # SQLite: includes quick_check of the whole file
        "load_live_s": round(loaded - opened, 3),
        "restore_s": round(loaded - started, 3),
        "file_bytes": file_bytes,
        "bytes_per_message": round(file_bytes / messages, 1),
        "ciphertext_bytes_per_message": ciphertext_bytes,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--restore", default="10000,100000", help="session counts to restore")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--postgres", action="store_true", help="start a PostgreSQL (pgserver) for the run"
    )
    where.add_argument(
        "--database-url", help="a PostgreSQL server to create the run's databases on"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(local_postgres()) if args.postgres else args.database_url
        report = await measure(url, args.seconds, args.restore)
    print_json(report)


async def measure(server_url: str | None, seconds: float, restores: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        databases = Databases(Path(tmp), server_url)
        report: dict = {
            "backend": databases.kind,
            "server": redacted(server_url) if server_url else None,
            "durable_appends": {},
            "target_appends_per_s_100_writers": 20_000,
        }
        try:
            for writers in (1, 10, 100):
                progress(f"durable appends, {writers} writers")
                report["durable_appends"][str(writers)] = await appends(
                    databases, writers, seconds
                )
            progress("non-durable appends (durable_ack=False), 100 writers, for comparison")
            report["non_durable_appends_100_writers"] = await appends(
                databases, 100, seconds, durable=False
            )
            progress("added latency of a durable ack: 50 writers, ~2,000 turns/s offered")
            report["durable_ack_latency"] = [
                await paced_latency(databases, 50, 2000.0, seconds, batch_ms)
                for batch_ms in (0.0, 2.0)
            ]
            report["restore"] = []
            for sessions in (int(n) for n in restores.split(",") if n):
                progress(f"restore, {sessions:,} sessions x {MESSAGES_PER_SESSION} messages")
                report["restore"].append(await restore(databases, sessions))
        finally:
            await databases.drop_all()
    return report


if __name__ == "__main__":
    asyncio.run(main())
