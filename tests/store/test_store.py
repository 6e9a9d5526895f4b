"""The store on real databases: checks at open, group commit, durability, restore, shredding.

Behaviour every backend shares runs on both, through the `backend` fixture: a real SQLite file
and a real PostgreSQL database (tests/servers/postgres.py). What only SQLite has (its file
checks, lock, WAL and checkpointer, its connection thread) runs on SQLite files; PostgreSQL's
own (schema version, advice, URLs) is in test_postgres.py.

Faults are real where this machine allows: bytes overwritten in the file, an immutable file
(`chattr +i`, which binds root too) for read-only, a tiny tmpfs for a full disk, SIGKILL of a
writing process. Tests that need root for that skip elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from engine.config import StoreSettings
from engine.errors import StoreError
from engine.security import DecryptionFailed, KeyRing, SessionCipher, hash_token, new_token
from engine.store import (
    AlertRow,
    Assign,
    Backend,
    ContextFigures,
    EndSession,
    MessageRow,
    MetricsRow,
    Prune,
    QuotaEvent,
    Served,
    SessionRow,
    Store,
    TokenUpdate,
    Touch,
    TrimMessages,
    open_store,
)
from engine.store.postgres import migrations as pg_migrations
from engine.store.sqlite import checkpointer as checkpointing
from engine.store.sqlite import checks, migrations

NOW = 1_700_000_000.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]
LATEST = len(migrations.MIGRATIONS)


def session_row(
    session_id: str = "s1",
    user_id: str = "alice",
    *,
    created_at: float = NOW,
    last_active_at: float = NOW,
    idle_timeout_s: float = 600.0,
    lifetime_s: float = 3600.0,
    wrapped_key: bytes = b"wrapped-key",
    token_hash: bytes = bytes(32),
    metadata_json: str = '{"tier": "free"}',
) -> SessionRow:
    return SessionRow(
        session_id=session_id,
        user_id=user_id,
        tier="free",
        metadata_json=metadata_json,
        created_at=created_at,
        last_active_at=last_active_at,
        idle_timeout_s=idle_timeout_s,
        lifetime_s=lifetime_s,
        token_hash=token_hash,
        token_issued_at=created_at,
        token_expires_at=created_at + lifetime_s,
        wrapped_key=wrapped_key,
    )


def message(session_id: str, seq: int, ciphertext: bytes | None = None) -> MessageRow:
    ciphertext = ciphertext if ciphertext is not None else f"ct-{session_id}-{seq}".encode()
    return MessageRow(session_id, seq, "user", ciphertext, NOW + seq, 10)


async def stored_messages(store: Store, session_id: str) -> list[MessageRow]:
    """A session's messages as warming it reads them (none once it has ended)."""
    stored = await store.load_session(session_id)
    return stored.messages if stored is not None else []


def sealed(cipher: SessionCipher, session_id: str, seq: int, text: str) -> bytes:
    """A real ciphertext bound to the place `message` puts it."""
    return cipher.encrypt(text, session_id=session_id, seq=seq, role="user")


def opened(cipher: SessionCipher, row: MessageRow) -> str:
    return cipher.decrypt(row.ciphertext, session_id=row.session_id, seq=row.seq, role=row.role)


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Through a separate plain sqlite3 connection: what any other reader would see."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def disk_bytes(path: Path) -> bytes:
    """The database file and its -wal and -shm companions, as they are on disk."""
    return b"".join(
        p.read_bytes() for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm")))
        if p.exists()
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "sessions.db"


@pytest.fixture
async def store(db_path: Path):
    opened = await Store.open(db_path)
    yield opened
    await opened.aclose()


@dataclass(frozen=True, slots=True)
class Database:
    """A store's database as another client sees it: open the store, query it directly."""

    name: str  # "sqlite" or "postgres"
    target: Path | str  # what `open_store` takes: a file path or a postgresql:// URL

    async def open(self, **settings) -> Store:
        """`settings`: fields of StoreSettings."""
        return await open_store(self.target, StoreSettings(**settings))

    async def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """`sql` with `?` placeholders, through a separate connection (committed)."""
        if self.name == "sqlite":
            with contextlib.closing(sqlite3.connect(self.target)) as conn:
                rows = conn.execute(sql, params).fetchall()
                conn.commit()
            return rows
        numbered = sql.split("?")
        sql = numbered[0] + "".join(f"${n}{part}" for n, part in enumerate(numbered[1:], 1))
        conn = await asyncpg.connect(str(self.target))
        try:
            return [tuple(row) for row in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    async def schema_version(self) -> int:
        sql = "SELECT version FROM schema_version"
        ((version,),) = await self.query("PRAGMA user_version" if self.name == "sqlite" else sql)
        return version

    async def columns(self, table: str) -> set[str]:
        if self.name == "sqlite":
            return {row[1] for row in await self.query(f"PRAGMA table_info({table})")}
        sql = "SELECT column_name::text FROM information_schema.columns WHERE table_name = ?"
        return {name for (name,) in await self.query(sql, (table,))}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, db_path: Path) -> Database:
    """Each backend in turn: an SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return Database("sqlite", db_path)
    return Database("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture
async def backend_store(backend: Database):
    opened = await backend.open()
    yield opened
    await opened.aclose()


def latest_schema(backend: Database) -> int:
    return LATEST if backend.name == "sqlite" else len(pg_migrations.MIGRATIONS)


@contextlib.asynccontextmanager
async def writer_held(store: Store):
    """Keep the writer busy (an exclusive job waiting for the block to end), so that writes
    made inside queue up and then commit as one batch, as they do under load."""
    release = asyncio.Event()
    held = asyncio.ensure_future(store._submit(release.wait))
    await asyncio.sleep(0)  # the job has the writer now
    try:
        yield
        await asyncio.sleep(0)  # writes started inside reach the queue
    finally:
        release.set()
        await held


async def on_writer_connection(store: Store, sql: str) -> tuple | None:
    """Run `sql` on the store's own connection, in its thread (settings such as
    max_page_count belong to one connection); returns the first row."""
    return await store.backend.connection.run(lambda conn: conn.execute(sql).fetchone())


def started(*writes) -> list[asyncio.Future]:
    return [asyncio.ensure_future(write) for write in writes]


async def checkpoint_passes(store: Store, n: int) -> None:
    """Wait for `n` more passes of the checkpointer (a stalled one fails after 30 s)."""
    target = store.stats().checkpoints + n
    async with asyncio.timeout(30):
        while store.stats().checkpoints < target:
            await asyncio.sleep(0.01)


# --- opening, schema, bad files ------------------------------------------------------------------


async def test_open_creates_the_schema_with_version_application_id_and_wal(db_path):
    async with await Store.open(db_path):
        assert query(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert query(db_path, "PRAGMA application_id") == [(migrations.APPLICATION_ID,)]
        assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
        tables = {name for (name,) in query(db_path, "SELECT name FROM sqlite_schema")}
        assert {"sessions", "messages", "quota_usage", "session_audit", "alerts"} <= tables
        assert {"metrics_minute", "store_meta"} <= tables


async def test_reopen_is_idempotent_and_reports_a_clean_shutdown(backend):
    async with await backend.open() as first:
        await first.save_session(session_row())
    async with await backend.open() as second:
        restored = await second.load_live(NOW)
    assert restored.clean_shutdown
    assert [s.session_id for s in restored.sessions] == ["s1"]
    assert await backend.schema_version() == latest_schema(backend)
    assert await backend.query("SELECT value FROM store_meta WHERE key = 'opens'") == [(2,)]


async def test_who_served_a_session_is_written_by_served_alone(backend, backend_store):
    """A cluster's worker says it served a session's turn; an upsert of the session keeps it,
    and every read carries it. SQLite (one process, no cluster) takes the op and keeps None."""
    store = backend_store
    await store.save_session(session_row("s1"))
    assert (await store.load_record("s1")).row.served_by is None
    await store.write(Served("s1", "w1"), Touch("s1", NOW + 1, turns=1))
    await store.write(Served("s1", "w2"))
    await store.save_session(replace(session_row("s1"), served_by="stale"))
    expected = "w2" if backend.name == "postgres" else None
    record = await store.load_record("s1")
    assert record.row.served_by == expected and record.row.turns == 1
    assert [r.row.served_by for r in await store.load_page("", 10)] == [expected]
    assert [s.served_by for s in (await store.load_live(NOW)).sessions] == [expected]


async def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(db_path):
    db_path.parent.mkdir(parents=True)
    junk = random.Random(1).randbytes(8192)
    db_path.write_bytes(junk)
    with pytest.raises(StoreError, match="not a SQLite database") as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == junk
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["sessions.db", "sessions.db.lock"]


async def test_another_applications_sqlite_file_is_refused_and_left_untouched(db_path):
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
        conn.commit()
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="belongs to another application") as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == before


async def test_a_newer_schema_is_refused_and_left_untouched(db_path):
    async with await Store.open(db_path) as store:
        await store.save_session(session_row())
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match=r"newer version of the engine.*upgrade") as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == before


# A process that takes the lock a store takes, and writes its pid there as a store does.
LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


def folder_state(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


async def test_a_second_store_on_an_open_file_is_refused_and_the_file_left_untouched(db_path):
    settings = StoreSettings(checkpoint_s=3600.0)  # no pass moves bytes meanwhile
    async with await Store.open(db_path, settings) as first:
        await first.save_session(session_row())
        before = disk_bytes(db_path)
        with pytest.raises(StoreError, match="is open in another engine") as caught:
            await Store.open(db_path, settings)
        assert str(db_path) in str(caught.value)
        assert f"(pid {os.getpid()})" in str(caught.value)
        assert "data_dir" in str(caught.value)
        assert disk_bytes(db_path) == before
        await first.save_session(session_row("s2"))  # the holder is unaffected
    async with await Store.open(db_path, settings) as again:  # close released the lock
        restored = await again.load_live(NOW)
    assert [s.session_id for s in restored.sessions] == ["s1", "s2"]


async def test_a_store_held_by_another_process_is_refused_until_that_process_is_killed(db_path):
    async with await Store.open(db_path) as store:
        await store.save_session(session_row())
    lock = Path(f"{db_path}.lock")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCK_HOLDER, str(lock),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"locked\n"
        before = folder_state(db_path)
        with pytest.raises(StoreError, match=rf"is open in another engine \(pid {holder.pid}\)"):
            await Store.open(db_path)
        assert folder_state(db_path) == before  # not even a -wal or -shm was created
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    assert holder.returncode == -signal.SIGKILL
    async with await Store.open(db_path) as store:  # the OS dropped the dead holder's lock
        assert [s.session_id for s in (await store.load_live(NOW)).sessions] == ["s1"]
        assert lock.read_text() == f"{os.getpid()}\n"  # rewritten whole, nothing of the old pid


async def test_an_open_that_fails_its_checks_releases_the_lock(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"not a database" * 100)
    for _ in range(2):  # a lock kept by the first refusal would make the second one differ
        with pytest.raises(StoreError, match="not a SQLite database"):
            await Store.open(db_path)
    db_path.unlink()
    async with await Store.open(db_path) as store:
        await store.save_session(session_row())


def _overwrite_page_2(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:8192] = random.Random(2).randbytes(4096)
    path.write_bytes(bytes(data))


def _tear_last_page(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096 - 1000])


@pytest.mark.parametrize("damage", [_overwrite_page_2, _tear_last_page], ids=["page", "torn"])
async def test_a_corrupt_file_is_refused_and_left_untouched(db_path, damage):
    async with await Store.open(db_path) as store:
        for i in range(40):
            await store.write(session_row(f"s{i}"), *(message(f"s{i}", n) for n in range(10)))
    damage(db_path)
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="corrupt") as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert "backup" in str(caught.value)
    assert db_path.read_bytes() == before


async def test_a_large_file_has_its_pages_checked_after_open_and_a_problem_is_logged(
    db_path, monkeypatch, caplog
):
    monkeypatch.setattr(checks, "CHECK_AT_OPEN_BYTES", 0)  # every file is "large"
    async with await Store.open(db_path) as store:
        for i in range(40):
            await store.write(session_row(f"s{i}"), *(message(f"s{i}", n) for n in range(10)))
    async with await Store.open(db_path) as store:
        while store.backend.integrity.problems is None:
            await asyncio.sleep(0.01)
        assert store.backend.integrity.problems == ["ok"]
    size = db_path.stat().st_size
    data = bytearray(db_path.read_bytes())
    data[size - 3 * 4096:size - 2 * 4096] = random.Random(3).randbytes(4096)  # a leaf page
    db_path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        async with await Store.open(db_path) as store:  # opens: the check comes after
            while store.backend.integrity.problems is None:
                await asyncio.sleep(0.01)
            assert store.backend.integrity.problems != ["ok"]
    (record,) = [r for r in caplog.records if "integrity check" in r.getMessage()]
    assert str(db_path) in record.getMessage() and "backup" in record.getMessage()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Read-only even for root: the immutable attribute, or plain permissions for others."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root ignores permissions and chattr is not installed")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("this file system does not support the immutable attribute")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_a_read_only_file_stops_start_up_and_is_left_untouched(db_path):
    async with await Store.open(db_path) as store:
        await store.save_session(session_row())
    before = db_path.read_bytes()
    with read_only(db_path), pytest.raises(StoreError, match="read-only") as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == before


async def test_a_read_only_folder_stops_start_up_with_the_path(db_path):
    db_path.parent.mkdir(parents=True)
    with read_only(db_path.parent), pytest.raises(StoreError) as caught:
        await Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert not db_path.exists()


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "1m") -> Iterator[Path]:
    """A real file system of `size`, to run out of space for real (needs mount rights)."""
    where.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system holding `folder`."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


async def test_a_full_disk_fails_the_batch_keeps_the_store_consistent_and_recovers(tmp_path):
    with tiny_disk(tmp_path / "tiny") as disk:
        path = disk / "sessions.db"
        store = await Store.open(path)
        await store.save_session(session_row())
        await store.write(message("s1", 1))
        filler = fill(disk)
        big = [message("s1", n, os.urandom(3000)) for n in range(2, 200)]
        results = await asyncio.gather(
            *(store.write(row) for row in big), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, StoreError)]
        assert errors, "a full disk must fail the writes it could not commit"
        assert "disk is full" in str(errors[0]) and str(path) in str(errors[0])
        assert store.stats().failed_batches >= 1
        filler.unlink()
        await store.write(message("s1", 500))  # space is back: writing resumes
        saved = {m.seq for m in await stored_messages(store, "s1")}
        committed = {row.seq for row, r in zip(big, results, strict=True) if r is None}
        assert saved == {1, 500} | committed  # every acknowledged write, no failed one
        await store.aclose()
        assert query(path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_full_disk_stops_start_up_with_the_path(tmp_path):
    with tiny_disk(tmp_path / "tiny") as disk:
        path = disk / "sessions.db"
        async with await Store.open(path) as store:
            await store.save_session(session_row())
        filler = fill(disk)
        with pytest.raises(StoreError) as caught:
            await Store.open(path)
        assert str(path) in str(caught.value)
        assert "disk is full" in str(caught.value)
        filler.unlink()


async def test_a_failed_batch_rolls_back_as_a_whole_and_every_waiter_hears_of_it(store):
    """SQLITE_FULL without root: cap the file's page count (fault injection)."""
    await store.save_session(session_row())
    (pages,) = await on_writer_connection(store, "PRAGMA page_count")
    await on_writer_connection(store, f"PRAGMA max_page_count = {pages + 1}")
    failed_before = store.stats().failed_batches
    async with writer_held(store):
        writes = started(*(store.write(message("s1", n, os.urandom(2000))) for n in range(1, 30)))
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert results and all(isinstance(r, StoreError) for r in results)
    assert "disk is full" in str(results[0])
    assert store.stats().failed_batches == failed_before + 1
    await on_writer_connection(store, "PRAGMA max_page_count = 1073741823")
    await store.write(message("s1", 100))
    assert [m.seq for m in await stored_messages(store, "s1")] == [100]


# --- group commit and acknowledgement ------------------------------------------------------------


async def test_concurrent_writes_share_far_fewer_transactions(backend, backend_store):
    store = backend_store
    await store.save_session(session_row())
    before = store.stats()
    await asyncio.gather(*(store.write(message("s1", n)) for n in range(1000)))
    after = store.stats()
    assert after.writes - before.writes == 1000
    assert after.batches - before.batches < 1000 / 5
    assert after.queue_depth == 0 and after.avg_batch_ops > 1
    assert after.file_bytes > 0 and after.failed_batches == 0
    if backend.name == "sqlite":  # PostgreSQL's WAL is the server's, not the database's
        assert after.wal_bytes > 0


async def test_write_nowait_queues_in_order_and_failures_are_counted(backend, backend_store,
                                                                     caplog):
    store = backend_store
    async with writer_held(store):  # nothing can commit yet: only queued
        store.write_nowait(session_row())
        store.write_nowait(message("s1", 1))
        store.write_nowait(message("missing", 1))
        assert await backend.query("SELECT count(*) FROM messages") == [(0,)]
    await store.flush()
    assert await backend.query("SELECT seq FROM messages") == [(1,)]
    assert "foreign key constraint" in caplog.text.lower()
    assert store.stats().rejected_writes == 1


async def test_a_durable_write_is_visible_to_another_connection_when_it_returns(backend,
                                                                                backend_store):
    await backend_store.save_session(session_row())
    await backend_store.write(message("s1", 1))
    assert await backend.query("SELECT seq FROM messages WHERE session_id = 's1'") == [(1,)]


async def test_without_durable_ack_write_returns_before_the_commit(backend):
    async with await backend.open(durable_ack=False) as store:
        async with writer_held(store):  # durable, this write could not return in here
            await store.save_session(session_row())
            assert await backend.query("SELECT count(*) FROM sessions") == [(0,)]
        await store.flush()
        assert await backend.query("SELECT count(*) FROM sessions") == [(1,)]
        for n in range(100):
            await store.write(message("s1", n))
    # close() commits whatever was still queued.
    assert await backend.query("SELECT count(*) FROM messages") == [(100,)]


async def test_a_rejected_write_fails_alone_and_its_batch_mates_commit(backend_store):
    store = backend_store
    await store.save_session(session_row())
    results = await asyncio.gather(
        store.write(message("s1", 1)),
        store.write(message("missing", 1), message("s1", 99)),  # all or nothing
        store.write(message("s1", 2)),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "not stored" in str(results[1])
    assert [m.seq for m in await stored_messages(store, "s1")] == [1, 2]


def count_round_trips(store: Store) -> Callable[[], int]:
    """Calls handed to the store's connection thread from now on."""
    connection = store.backend.connection
    before = connection.round_trips
    return lambda: connection.round_trips - before


async def test_a_batch_commits_in_one_round_trip_to_the_connection_thread(store, db_path):
    calls = count_round_trips(store)
    await store.write(
        session_row(),
        message("s1", 1),
        message("s1", 2),
        Touch("s1", NOW + 5, turns=1, prompt_tokens=3),
        QuotaEvent("alice", "tokens", NOW + 5, 40, 3600.0),
    )
    assert calls() == 1
    assert query(db_path, "SELECT seq FROM messages ORDER BY seq") == [(1,), (2,)]
    assert query(db_path, "SELECT turns, prompt_tokens FROM sessions") == [(1, 3)]
    assert query(db_path, "SELECT amount FROM quota_usage") == [(40.0,)]
    # Concurrent writes grouped into batches: still one round trip per batch.
    before = store.stats()
    await asyncio.gather(
        *(store.write(message("s1", n), Touch("s1", NOW + n, turns=n)) for n in range(3, 40))
    )
    after = store.stats()
    assert after.writes - before.writes == 37
    assert calls() - 1 == after.batches - before.batches < 37


async def test_a_rejected_write_fails_alone_within_the_same_round_trip(store, db_path):
    await store.save_session(session_row())
    calls = count_round_trips(store)
    before = store.stats()
    async with writer_held(store):
        writes = started(
            store.write(message("s1", 1), QuotaEvent("alice", "tokens", NOW, 5, 3600.0)),
            store.write(message("missing", 1), message("s1", 99)),
            store.write(Touch("s1", NOW + 9, turns=4), message("s1", 2)),
        )
    results = await asyncio.gather(*writes, return_exceptions=True)
    after = store.stats()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "not stored" in str(results[1])
    assert calls() == 1 and after.batches - before.batches == 1
    assert after.rejected_writes - before.rejected_writes == 1
    assert after.failed_batches == before.failed_batches
    assert query(db_path, "SELECT seq FROM messages ORDER BY seq") == [(1,), (2,)]
    assert query(db_path, "SELECT turns FROM sessions") == [(4,)]
    assert query(db_path, "SELECT amount FROM quota_usage") == [(5.0,)]


async def test_every_durable_ack_of_a_batch_follows_its_commit(backend, backend_store):
    store = backend_store
    await store.save_session(session_row())
    seen: list[int] = []

    async def turn(n: int) -> None:
        await store.write(message("s1", n))
        # Another connection, the moment write() returns: the row must already be committed.
        rows = await backend.query("SELECT seq FROM messages WHERE seq = ?", (n,))
        seen.extend(seq for (seq,) in rows)

    async with writer_held(store):
        turns = started(*(turn(n) for n in range(1, 60)))
    await asyncio.gather(*turns)
    assert sorted(seen) == list(range(1, 60))


async def test_writes_made_together_commit_together_and_concurrent_writers_stay_in_step(
    backend_store,
):
    store = backend_store
    await store.save_session(session_row())
    before = store.stats().batches

    async def writer(w: int) -> None:
        for n in range(5):
            await store.write(message("s1", 100 * w + n))

    # Ten writers start together on an idle writer, and each writes again once acknowledged:
    # one batch per round. Committing the first write at once would split them into two
    # groups taking turns (ten batches).
    await asyncio.gather(*(writer(w) for w in range(10)))
    assert store.stats().batches - before == 5


async def test_writes_commit_in_the_order_they_were_made_across_batches(backend):
    async with await backend.open(batch_max=3) as store:
        await store.save_session(session_row())
        order: list[int] = []
        waits = []
        for n in range(1, 200):
            order.append(n)
            if n % 3:
                store.write_nowait(message("s1", n))
            else:
                waits.append(asyncio.ensure_future(store.write(message("s1", n))))
                await asyncio.sleep(0)  # it is queued now; batches commit meanwhile
            if n % 10 == 0:
                store.write_nowait(TrimMessages("s1", n - 5))  # only what came before it
                order = [k for k in order if k > n - 5]
        await asyncio.gather(*waits)
        await store.flush()
        assert store.stats().batches > 200 / 3
        rows = await backend.query("SELECT seq FROM messages ORDER BY id")
        assert [seq for (seq,) in rows] == order


async def test_a_job_runs_alone_between_the_writes_queued_before_and_after_it(backend,
                                                                            backend_store):
    store = backend_store
    await store.save_session(session_row())
    async with writer_held(store):
        store.write_nowait(message("s1", 1))
        loading = asyncio.ensure_future(store.load_session("s1"))
        await asyncio.sleep(0)  # the job is queued
        store.write_nowait(message("s1", 2))
    restored = await loading
    assert restored is not None and [m.seq for m in restored.messages] == [1]
    await store.flush()
    assert await backend.query("SELECT seq FROM messages ORDER BY id") == [(1,), (2,)]


async def test_a_write_the_statements_cannot_take_fails_alone_and_the_writer_goes_on(
    backend_store,
):
    store = backend_store
    await store.save_session(session_row())
    with pytest.raises(StoreError, match="OverflowError"):
        await store.write(QuotaEvent("alice", "tokens", float("inf"), 1, 60.0))
    await store.write(message("s1", 1))
    assert store.stats().failed_batches == 1
    assert [m.seq for m in await stored_messages(store, "s1")] == [1]


async def test_lingering_ends_when_the_batch_is_full_or_the_store_closes(backend):
    store = await backend.open(batch_ms=3_600_000, batch_max=4)
    await store.save_session(session_row())
    async with writer_held(store):  # a batch of two writes: writes now arrive concurrently
        first = started(store.write(message("s1", 1)), store.write(message("s1", 2)))
    await asyncio.gather(*first)
    store.write_nowait(message("s1", 3))  # lingers for a fuller batch, up to an hour
    for _ in range(5):
        await asyncio.sleep(0)
    assert await backend.query("SELECT count(*) FROM messages") == [(2,)]
    async with asyncio.timeout(30):  # (not an hour)
        await store.write(message("s1", 4), message("s1", 5), message("s1", 6))  # it is full
    assert await backend.query("SELECT count(*) FROM messages") == [(6,)]
    store.write_nowait(message("s1", 7))  # lingers again; close() does not wait it out
    async with asyncio.timeout(30):
        await store.aclose()
    rows = await backend.query("SELECT seq FROM messages ORDER BY id")
    assert rows == [(n,) for n in range(1, 8)]


async def test_commits_never_checkpoint_and_close_leaves_everything_in_the_file(db_path):
    settings = StoreSettings(checkpoint_s=3600.0)  # no background pass either
    store = await Store.open(db_path, settings)
    assert await on_writer_connection(store, "PRAGMA wal_autocheckpoint") == (0,)
    await store.save_session(session_row())
    for n in range(300):  # ~1,500 pages: an automatic checkpoint would have run at 1,000
        await store.write(*(message("s1", 10 * n + k, os.urandom(2000)) for k in range(10)))
    stats = store.stats()
    assert stats.wal_bytes > 1000 * 4096 > 20 * stats.file_bytes  # all of it still in the WAL
    await store.aclose()
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    assert query(db_path, "SELECT count(*) FROM messages") == [(3000,)]


async def test_the_checkpointer_copies_the_wal_into_the_file_while_the_store_is_open(
    db_path, tmp_path
):
    settings = StoreSettings(checkpoint_s=0.01)
    async with await Store.open(db_path, settings) as store:
        await store.write(session_row(), *(message("s1", n, os.urandom(2000)) for n in range(200)))
        await checkpoint_passes(store, 2)  # one began after the last commit
        assert store.stats().wal_frames > 100
        # The database file alone, without its WAL, now holds every committed row.
        alone = tmp_path / "alone.db"
        shutil.copyfile(db_path, alone)
        assert query(alone, "SELECT count(*) FROM messages") == [(200,)]
        checkpointer = store.backend.checkpointer._thread
        assert checkpointer.is_alive()
    assert not checkpointer.is_alive()
    assert not [t for t in threading.enumerate() if t.name == checkpointer.name]


def wal_frames(path: Path) -> int:
    """Frames in the log since it last restarted: mxFrame in the wal-index header (-shm),
    read without a connection, which could checkpoint."""
    return int.from_bytes(Path(f"{path}-shm").read_bytes()[16:20], sys.byteorder)


async def test_a_log_that_grew_too_long_restarts_at_the_next_batch(db_path):
    settings = StoreSettings(checkpoint_s=3600.0)
    async with await Store.open(db_path, settings) as store:
        await store.save_session(session_row())
        for n in range(50):
            await store.write(*(message("s1", 10 * n + k, os.urandom(2000)) for k in range(10)))
        long_log = wal_frames(db_path)
        await store.write(message("s1", 1000))
        assert wal_frames(db_path) > long_log  # nobody asked: the log keeps growing
        store.backend.checkpointer._restart = True  # as a pass that finds the log too long does
        await store.write(message("s1", 1001))
        assert wal_frames(db_path) < 10  # this batch's frames, at the start of a new log
        assert not store.backend.checkpointer.take_restart()  # asked once, done once
        assert store.stats().checkpoints == 0
        assert query(db_path, "SELECT count(*) FROM messages") == [(502,)]


async def test_a_pass_that_finds_the_log_too_long_asks_the_writer_to_restart_it(db_path):
    settings = StoreSettings(checkpoint_s=3600.0)
    async with await Store.open(db_path, settings) as store:
        await store.write(session_row(), *(message("s1", n, os.urandom(2000)) for n in range(20)))
        checkpointer = store.backend.checkpointer
        with contextlib.closing(checkpointer._connect()) as conn:
            checkpointer.restart_frames = 10**6
            checkpointer._checkpoint(conn)
            assert not checkpointer.take_restart() and checkpointer.checkpoints == 1
            checkpointer.restart_frames = 10
            checkpointer._checkpoint(conn)  # and a second, short pass before asking
            assert checkpointer.take_restart() and checkpointer.checkpoints == 3
            assert not checkpointer.take_restart()


async def test_a_failing_pass_is_logged_once_and_the_checkpointer_goes_on(
    db_path, monkeypatch, caplog
):
    settings = StoreSettings(checkpoint_s=0.01)
    failures = iter([sqlite3.OperationalError("disk I/O error")] * 3)
    real_pass = checkpointing.Checkpointer._pass

    def flaky_pass(self, conn):
        if (failure := next(failures, None)) is not None:
            raise failure
        return real_pass(self, conn)

    monkeypatch.setattr(checkpointing.Checkpointer, "_pass", flaky_pass)
    async with await Store.open(db_path, settings) as store:
        await store.write(session_row())
        await checkpoint_passes(store, 2)
    warnings = [r for r in caplog.records if "background checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "disk I/O error" in warnings[0].getMessage()


async def test_a_shredded_key_leaves_the_database_file_at_the_next_pass(db_path):
    settings = StoreSettings(checkpoint_s=0.01)
    wrapped = os.urandom(48)
    async with await Store.open(db_path, settings) as store:
        await store.write(session_row(wrapped_key=wrapped), message("s1", 1))
        await checkpoint_passes(store, 2)
        assert wrapped in db_path.read_bytes()  # checkpointed into the file itself
        await store.end_session("s1", NOW, "ended by owner")
        await checkpoint_passes(store, 2)
        assert wrapped not in db_path.read_bytes()  # zeroed there too, with the store open


def store_threads(path: Path) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(f" {path}")]


async def test_close_ends_the_stores_threads(db_path):
    store = await Store.open(db_path)
    assert sorted(store_threads(db_path)) == [
        f"store-checkpointer {db_path}", f"store-writer {db_path}"
    ]
    await store.aclose()
    assert store_threads(db_path) == []


async def test_a_failed_open_leaves_no_thread_and_no_lock_behind(db_path, monkeypatch):
    async with await Store.open(db_path):
        pass
    clash = ("CREATE TABLE sessions (id INTEGER)",)  # a migration that cannot apply
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, clash))
    with pytest.raises(StoreError, match="the first write at start-up"):
        await Store.open(db_path)
    assert store_threads(db_path) == []
    monkeypatch.undo()
    async with await Store.open(db_path) as store:  # the lock was released
        assert (await store.load_live(NOW)).counts.sessions == 0


async def test_each_backend_has_every_member_of_the_backend_interface(backend_store):
    assert isinstance(backend_store.backend, Backend)
    assert not isinstance(object(), Backend)


async def test_ops_must_be_store_ops(backend_store):
    with pytest.raises(TypeError, match="not a store op"):
        await backend_store.write("INSERT INTO sessions")  # type: ignore[arg-type]


async def test_a_closed_store_refuses_writes_and_close_is_idempotent(backend):
    store = await backend.open()
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.write(session_row())
    clean = "SELECT value FROM store_meta WHERE key = 'clean_shutdown'"
    assert await backend.query(clean) == [(1,)]


# --- session rows, messages, quotas, alerts, metrics ---------------------------------------------


async def test_updates_only_move_activity_and_counters_forward(backend_store):
    store = backend_store
    await store.save_session(session_row())
    await store.write(
        Touch("s1", NOW + 50, turns=3, prompt_tokens=30, completion_tokens=40, agent_type="a"),
        Touch("s1", NOW + 20, turns=2, prompt_tokens=10, completion_tokens=5, errors=1),
        TokenUpdate("s1", b"\x01" * 32, NOW + 10, NOW + 100),
        Assign("s1", "worker-2"),
    )
    # A late upsert of an older snapshot cannot move anything backwards or swap the key.
    await store.save_session(session_row(wrapped_key=b"stale-key"))
    (row,) = (await store.load_live(NOW)).sessions
    assert (row.last_active_at, row.turns, row.prompt_tokens, row.completion_tokens) == (
        NOW + 50, 3, 30, 40,
    )
    assert (row.errors, row.agent_type, row.wrapped_key) == (1, "a", b"wrapped-key")
    assert row.deadline == NOW + 50 + 600


async def test_a_large_batch_of_every_row_kind_lands_exactly(backend, backend_store):
    """Rows go many per statement (SQLite: in chunks; PostgreSQL: as arrays): any count must
    land, each row once."""
    store = backend_store
    await store.write(*(session_row(f"s{i}") for i in range(301)))
    ops: list = []
    for i in range(301):
        ops += [message(f"s{i}", n) for n in range(3)]
        ops += [
            Touch(f"s{i}", NOW + 9, turns=2, agent_type="b"),
            Touch(f"s{i}", NOW + 5, turns=1, prompt_tokens=7, agent_type="a"),  # late, older
            Touch(f"s{i}", NOW + 6, errors=1),
        ]
        ops.append(QuotaEvent(f"u{i % 7}", "tokens", NOW + 1, 1, 3600.0))
    await store.write(*ops)
    assert await backend.query(
        "SELECT count(*), count(DISTINCT session_id) FROM messages"
    ) == [(903, 301)]
    assert await backend.query(
        "SELECT DISTINCT last_active_at, turns, prompt_tokens, errors, agent_type FROM sessions",
    ) == [(NOW + 9, 2, 7, 1, "a")]  # every field moves forward; the last agent type named wins
    assert await backend.query("SELECT user_id, amount FROM quota_usage ORDER BY user_id") == [
        (f"u{k}", float(len(range(k, 301, 7)))) for k in range(7)
    ]


async def test_messages_come_back_in_seq_order_and_trimming_deletes_the_oldest(backend_store):
    store = backend_store
    await store.write(session_row(), *(message("s1", n) for n in (3, 1, 2, 5, 4)))
    await store.write(TrimMessages("s1", 2))
    stored = await stored_messages(store, "s1")
    assert [m.seq for m in stored] == [3, 4, 5]
    assert stored[0].ciphertext == b"ct-s1-3"
    figures = (await store.load_live(NOW)).contexts["s1"]
    assert (figures.messages, figures.next_seq) == (3, 6)  # read without a ciphertext


async def test_quota_usage_is_summed_per_bucket_and_expires_with_its_window(backend,
                                                                          backend_store):
    store = backend_store
    await store.write(
        QuotaEvent("alice", "tokens", NOW + 1, 100, 3600.0),
        QuotaEvent("alice", "tokens", NOW + 30, 50, 3600.0),  # same 60 s bucket
        QuotaEvent("alice", "tokens", NOW + 90, 7, 3600.0),
        QuotaEvent("alice", "api_calls", NOW + 1, 1, 60.0),
        QuotaEvent("bob", "api_calls", NOW + 2, 1, 60.0),
    )
    restored = await store.load_live(NOW + 100)  # api_calls (60 s window) have expired
    assert [(q.user_id, q.resource, q.at, q.amount, q.window_s) for q in restored.quota] == [
        ("alice", "tokens", NOW + 30, 150.0, 3600.0),  # latest time of its bucket: never early
        ("alice", "tokens", NOW + 90, 7.0, 3600.0),
    ]
    assert await backend.query("SELECT count(*) FROM quota_usage") == [(2,)]  # pruned on load


def test_a_quota_event_needs_a_window():
    with pytest.raises(ValueError, match="window_s"):
        QuotaEvent("alice", "tokens", NOW, 1, 0.0)


async def test_alerts_and_metrics_round_trip_and_prune_keeps_them_bounded(backend):
    async with await backend.open(alert_keep=3, metrics_keep_s=3600) as store:
        await store.write(
            *(
                AlertRow(i, f"k{i}", "rule", "warning", f"alert {i}", None, NOW, NOW)
                for i in range(1, 6)
            ),
            AlertRow(4, "k4", "rule", "warning", "alert 4", None, NOW, NOW + 5, 2, True),
            MetricsRow(int(NOW) - 7200, "global", 1, 0, 1, 1, 0.1, 0.2, 0.3),
            MetricsRow(int(NOW) - 60, "global", 10, 1, 100, 200, 0.1, 0.5, 0.9),
        )
        await store.write(Prune(NOW))
        restored = await store.load_live(NOW)
    assert [a.alert_id for a in restored.alerts] == [3, 5]  # newest 3 kept, 4 acknowledged
    assert restored.max_alert_ids == {"": 5}
    assert [(m.minute, m.turns, m.p99_s) for m in restored.metrics] == [
        (int(NOW) - 60, 10, 0.9)
    ]
    assert await backend.query("SELECT count(*) FROM metrics_minute") == [(1,)]


# --- restore ------------------------------------------------------------------------------------


async def test_restore_brings_back_live_sessions_and_purges_expired_ones(backend):
    async with await backend.open(audit_retention_s=86400) as store:
        await store.write(
            session_row("live", created_at=NOW, last_active_at=NOW + 500),
            session_row("idle", created_at=NOW, last_active_at=NOW),  # idle since NOW + 600
            session_row("old", created_at=NOW - 3000, last_active_at=NOW + 500),  # + 3600
            *(message(sid, n) for sid in ("live", "idle", "old") for n in range(1, 4)),
            QuotaEvent("alice", "tokens", NOW + 500, 42, 3600.0),
            AlertRow(7, "quota:alice", "quota", "critical", "alice at 100%", "alice", NOW, NOW),
        )
    async with await backend.open(audit_retention_s=86400) as store:
        restored = await store.load_live(NOW + 700)
        assert [m.seq for m in await stored_messages(store, "live")] == [1, 2, 3]
    assert [s.session_id for s in restored.sessions] == ["live"]
    assert set(restored.contexts) == {"live"}
    assert [(q.at, q.amount) for q in restored.quota] == [(NOW + 500, 42.0)]
    assert [a.alert_id for a in restored.alerts] == [7]
    counts = restored.counts
    assert (counts.sessions, counts.purged, counts.messages) == (1, 2, 3)
    assert (counts.quota_buckets, counts.alerts) == (1, 1)
    assert await backend.query("SELECT count(*) FROM messages") == [(3,)]
    assert dict(await backend.query("SELECT session_id, reason FROM session_audit")) == {
        "idle": "idle timeout while the engine was stopped",
        "old": "absolute lifetime reached while the engine was stopped",
    }


async def test_a_tampered_message_fails_only_its_own_session(backend):
    keys = {sid: Fernet.generate_key() for sid in ("a", "b")}
    async with await backend.open() as store:
        for sid, key in keys.items():
            cipher = SessionCipher(key)
            await store.write(
                session_row(sid),
                *(message(sid, n, sealed(cipher, sid, n, f"{sid} says {n}")) for n in range(1, 4)),
            )
    await backend.query("UPDATE messages SET ciphertext = ? WHERE session_id = 'a' AND seq = 2",
                        (sealed(SessionCipher(keys["b"]), "a", 2, "forged"),))
    async with await backend.open() as store:  # a tampered row is not corruption
        stored = {sid: await stored_messages(store, sid) for sid in ("a", "b")}
    readable = {}
    for sid, rows in stored.items():
        cipher = SessionCipher(keys[sid])
        try:
            readable[sid] = [opened(cipher, row) for row in rows]
        except DecryptionFailed:
            readable[sid] = None
    assert readable == {"a": None, "b": ["b says 1", "b says 2", "b says 3"]}


# --- ending sessions, key rotation, nothing readable on disk ------------------------------------


async def test_ending_a_session_deletes_its_key_and_messages_without_retention(backend,
                                                                             backend_store):
    store = backend_store
    await store.write(session_row("s1"), session_row("s2"), message("s1", 1), message("s2", 1))
    await store.end_session("s1", NOW + 10, "ended by owner")
    assert await backend.query("SELECT session_id FROM sessions") == [("s2",)]
    assert await backend.query("SELECT session_id FROM messages") == [("s2",)]
    assert await backend.query("SELECT count(*) FROM session_audit") == [(0,)]


async def test_retention_keeps_an_audit_row_without_content_until_it_runs_out(backend):
    async with await backend.open(audit_retention_s=3600) as store:
        await store.write(session_row(metadata_json='{"tier": "pro"}'), message("s1", 1),
                          message("s1", 2))
        await store.write(EndSession("s1", NOW + 10, "ended by owner"))
        audit = await backend.query(
            "SELECT user_id, metadata_json, ended_at, reason, messages FROM session_audit",
        )
        assert audit == [("alice", '{"tier": "pro"}', NOW + 10, "ended by owner", 2)]
        columns = await backend.columns("session_audit")
        assert "messages" in columns and not columns & {"wrapped_key", "ciphertext", "token_hash"}
        assert await backend.query("SELECT count(*) FROM messages") == [(0,)]
        await store.prune(NOW + 10 + 3599)
        assert await backend.query("SELECT count(*) FROM session_audit") == [(1,)]
        await store.prune(NOW + 10 + 3600)
        assert await backend.query("SELECT count(*) FROM session_audit") == [(0,)]


async def test_an_ended_sessions_wrapped_key_is_gone_from_the_file(db_path):
    wrapped = os.urandom(48)
    async with await Store.open(db_path) as store:
        await store.write(session_row(wrapped_key=wrapped), message("s1", 1))
        await store.end_session("s1", NOW, "ended by owner")
    assert wrapped not in disk_bytes(db_path)


async def test_rotation_rewraps_every_key_and_leaves_ciphertext_alone(backend_store):
    store = backend_store
    old_master, new_master = Fernet.generate_key(), Fernet.generate_key()
    ring = KeyRing([old_master])
    ciphers = {}
    for sid in ("s1", "s2", "s3"):
        ciphers[sid], wrapped = ring.new_data_key()
        await store.write(
            session_row(sid, wrapped_key=wrapped),
            *(message(sid, n, sealed(ciphers[sid], sid, n, f"{sid}/{n}")) for n in range(1, 3)),
        )
    await store.write(session_row("lost", wrapped_key=b"not a wrapped key"))
    before = await store.load_live(NOW)
    messages_before = {s.session_id: await stored_messages(store, s.session_id)
                       for s in before.sessions}

    rotated = ring.rotate(new_master)
    report = await store.rewrap_keys(rotated.rewrap)

    assert (report.rewrapped, report.failed) == (3, ("lost",))
    after = await store.load_live(NOW)
    messages_after = {s.session_id: await stored_messages(store, s.session_id)
                      for s in after.sessions}
    assert messages_after == messages_before  # every ciphertext byte identical
    new_only = rotated.drop_old_keys()
    keys_before = {s.session_id: s.wrapped_key for s in before.sessions}
    for row in after.sessions:
        if row.session_id == "lost":
            assert row.wrapped_key == b"not a wrapped key"
            continue
        assert row.wrapped_key != keys_before[row.session_id]
        cipher = new_only.unwrap(row.wrapped_key)
        assert [opened(cipher, m) for m in messages_after[row.session_id]] == [
            f"{row.session_id}/1", f"{row.session_id}/2",
        ]


async def test_no_plaintext_token_or_key_is_ever_written_to_disk(db_path):
    master = Fernet.generate_key()
    data_key = Fernet.generate_key()
    wrapped = Fernet(master).encrypt(data_key)  # how KeyRing wraps a data key
    cipher = SessionCipher(data_key)
    token = new_token()
    texts = [f"secret plaintext number {n}: the launch code is 0000-{n:04d}" for n in range(50)]
    secrets = [
        master, base64.urlsafe_b64decode(master), data_key, base64.urlsafe_b64decode(data_key),
        token.encode(), *(text.encode() for text in texts),
    ]
    async with await Store.open(db_path) as store:
        await store.write(session_row(wrapped_key=wrapped, token_hash=hash_token(token)))
        for n, text in enumerate(texts):
            await store.write(message("s1", n, sealed(cipher, "s1", n, text)))
        on_disk = disk_bytes(db_path)
        assert Path(f"{db_path}-wal").stat().st_size > 0
        assert hash_token(token) in on_disk  # the check can see what is there
        assert not [s for s in secrets if s in on_disk]
    on_disk = disk_bytes(db_path)
    assert hash_token(token) in on_disk
    assert not [s for s in secrets if s in on_disk]


# --- migrations ---------------------------------------------------------------------------------


async def test_an_older_file_is_migrated_forward_in_place(db_path, monkeypatch):
    async with await Store.open(db_path) as store:
        await store.save_session(session_row())
    step = ("CREATE TABLE later_feature (id INTEGER PRIMARY KEY)",)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    async with await Store.open(db_path) as store:
        restored = await store.load_live(NOW)
    assert [s.session_id for s in restored.sessions] == ["s1"]
    assert query(db_path, "PRAGMA user_version") == [(LATEST + 1,)]
    assert query(db_path, "SELECT name FROM sqlite_schema WHERE name = 'later_feature'")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="newer version"):
        await Store.open(db_path)


async def test_a_first_version_file_gains_session_origins_marked_python(db_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    async with await Store.open(db_path):
        pass
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        columns = [c for c in SessionRow.__dataclass_fields__ if c not in ("origin", "served_by")]
        row = session_row()
        conn.execute(
            f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [getattr(row, c) for c in columns],
        )
        conn.commit()
    monkeypatch.undo()
    async with await Store.open(db_path) as store:
        record = await store.load_record("s1")
        await store.save_session(replace(session_row("s2"), origin="http"))
        assert (await store.load_record("s2")).row.origin == "http"
    assert record is not None and record.row.origin == "python"
    assert query(db_path, "PRAGMA user_version") == [(LATEST,)]


# --- crash safety -------------------------------------------------------------------------------

CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from engine.store import MessageRow, QuotaEvent, SessionRow, Touch, open_store

WRITERS = 20

def body(sid, seq):
    # Some messages spill to overflow pages, as long replies do.
    return f"{sid}:{seq}:".encode() * (400 if seq % 7 == 0 else 4)

async def main(target, run):
    store = await open_store(target)
    sids = [f"run{run}-w{w}" for w in range(WRITERS)]
    for sid in sids:
        await store.save_session(SessionRow(
            sid, "u", "free", "{}", 0.0, 0.0, 1e12, 1e12, bytes(32), 0.0, 1e12, b"k"))
    print("ready", flush=True)

    async def writer(sid):
        seq = 0
        while True:
            seq += 1
            await store.write(
                MessageRow(sid, seq, "user", body(sid, seq), float(seq), 10),
                Touch(sid, float(seq), turns=seq),
                QuotaEvent("u", "tokens", float(seq), 1.0, 3600.0),
            )
            sys.stdout.write(f"{sid} {seq}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer(sid) for sid in sids))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def read_acks(stream: asyncio.StreamReader, into: list[tuple[str, int]]) -> None:
    """The child's acknowledged ids, line by line as they come."""
    async for line in stream:
        if line.endswith(b"\n"):  # a line cut by the kill was never acknowledged
            sid, seq = line.split()
            into.append((sid.decode(), int(seq)))


def _body(sid: str, seq: int) -> bytes:
    return f"{sid}:{seq}:".encode() * (400 if seq % 7 == 0 else 4)


async def test_every_acknowledged_write_survives_sigkill(tmp_path, backend):
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    target = str(backend.target)
    rng = random.Random(20240607)
    total = 0
    for run in range(12):
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(script), target, str(run), str(PROJECT_ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None and child.stderr is not None
        ready = await asyncio.wait_for(child.stdout.readline(), 60)
        assert ready == b"ready\n", (await child.stderr.read()).decode()
        acknowledged: list[tuple[str, int]] = []
        reader = asyncio.create_task(read_acks(child.stdout, acknowledged))
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        await child.wait()
        await reader
        total += len(acknowledged)

        async with await backend.open() as store:  # SQLite: quick_check passes, WAL recovered
            restored = await store.load_live(0.0)
            stored = {
                (s.session_id, row.seq): row.ciphertext
                for s in restored.sessions
                for row in await stored_messages(store, s.session_id)
            }
        assert not restored.clean_shutdown
        missing = [ack for ack in acknowledged if ack not in stored]
        assert not missing, f"run {run}: {len(missing)} acknowledged writes lost"
        assert all(stored[ack] == _body(*ack) for ack in acknowledged)
        if backend.name == "sqlite":
            assert await backend.query("PRAGMA integrity_check") == [("ok",)]
    assert total > 0


async def test_a_session_record_reads_without_key_or_messages_until_it_ends(backend_store):
    """What a worker that has not seen a session reads to authenticate it and hold it cold."""
    store = backend_store
    assert await store.load_record("s1") is None
    await store.write(session_row("s1"))
    bare = await store.load_record("s1")
    assert bare is not None and bare.row == session_row("s1") and bare.figures is None
    await store.write(message("s1", 0), message("s1", 1))
    record = await store.load_record("s1")
    assert record is not None and record.figures == ContextFigures(2, 20, 2)
    await store.write(EndSession("s1", NOW + 10, "ended by owner"))
    assert await store.load_record("s1") is None


async def test_sessions_come_in_pages_in_id_order_with_their_figures(backend_store):
    store = backend_store
    ids = [f"s{n:02d}" for n in range(7)]
    await store.write(*(session_row(sid) for sid in reversed(ids)))
    await store.write(*(message(sid, seq) for sid in ("s01", "s05") for seq in (1, 2, 3)))
    restored = await store.load_live(NOW, sessions=False)
    assert (restored.sessions, restored.contexts, restored.counts.sessions) == ([], {}, 0)
    assert await store.count_sessions() == 7  # counted apart, beside the first turns
    pages, after = [], ""
    while page := await store.load_page(after, 3):
        pages.append([r.row.session_id for r in page])
        after = page[-1].row.session_id
        for record in page:
            figures = record.figures
            if record.row.session_id in ("s01", "s05"):
                assert figures is not None and (figures.messages, figures.next_seq) == (3, 4)
            else:
                assert figures is None
    assert pages == [ids[0:3], ids[3:6], ids[6:]]
