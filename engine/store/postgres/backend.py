"""The PostgreSQL backend: the store's records in a PostgreSQL database, through asyncpg.

Why it is built this way:

- It is the store for a cluster: several engine processes share one database, so nothing here
  assumes it is alone (no lock held for the life of the store, unlike SQLite's file lock).
  Schema migrations take an advisory lock for their transaction, so workers starting together
  migrate once.
- A batch is one transaction on one pooled connection, run as an asyncio task; its result
  reaches the writer straight from that task (`done`), on the loop. The writer never starts a
  commit before the previous one's `done`, so commits keep the order writes were made in.
- Durability is the server's: with `power_safe` (the default) a commit returns once PostgreSQL
  has flushed its WAL (`synchronous_commit = on`); without it (`off`) an acknowledged write
  survives this process being killed but not the database server crashing.
- A small pool (`pool_size`): one connection commits while another serves a start-up read, a
  session warming up, or the periodic size reading for `figures()`. A connection that broke
  (the server restarted) is replaced by the pool on the next use, so the store recovers by
  itself once the server is back; meanwhile every commit fails with a `StoreError` naming the
  database (its URL without a password) and saying it cannot be reached.
- Crypto-shredding is the same as SQLite's: ending a session deletes its row and so its wrapped
  key. PostgreSQL reuses the dead tuple's space after VACUUM; the key bytes may stay in the
  table's free space and the server's WAL until then, as the -wal frames may in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from engine.errors import StoreError
from engine.store.backend import CommitDone, StorageFigures
from engine.store.ops import Op, Restored, RewrapReport, SessionRecord, StoredSession
from engine.store.postgres.dsn import redacted, without_password
from engine.store.postgres.errors import store_error
from engine.store.postgres.restore import read_live, read_page, read_record, read_session
from engine.store.postgres.statements import PostgresStatements
from engine.store.postgres.transactions import (
    close_out,
    commit_batch,
    prepare,
    purge_expired,
    rewrap,
)
from engine.store.statements import OpStatements, Statement

log = logging.getLogger(__name__)

SIZE_EVERY_S = 5.0  # how often `figures()`'s database size is read again, after a commit
CLOSE_TIMEOUT_S = 10.0  # then connections still busy are terminated


class PostgresBackend:
    """`Backend` on a PostgreSQL database. Create with `await PostgresBackend.open(dsn)`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        location: str,
        statements: OpStatements,
        *,
        clean_shutdown: bool,
        size: int,
    ) -> None:
        """Use `open`, which connects, checks and migrates the database first."""
        self.location = location
        self.clean_shutdown = clean_shutdown
        self.pool = pool
        self._statements = statements
        self._size = size
        self._sized_at = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        retention_s: float = 0.0,
        alert_keep: int = 1000,
        metrics_keep_s: float = 7 * 86400.0,
        power_safe: bool = True,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 60.0,
    ) -> PostgresBackend:
        """Connect a pool of up to `pool_size`, check the database, and migrate it forward.

        `retention_s`, `alert_keep` and `metrics_keep_s` as for SQLite (see `Prune`);
        `power_safe`: see the module docstring. A statement taking longer than
        `command_timeout_s` fails (a server that stopped answering), and so does its batch.
        """
        if pool_size < 2 or not retention_s >= 0 or alert_keep < 1:
            raise ValueError(
                "pool_size must be >= 2 (a commit and a read), alert_keep >= 1 and retention_s "
                f">= 0; got {pool_size=}, {alert_keep=}, {retention_s=}"
            )
        location = redacted(dsn)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings={
                    "application_name": "session-console",
                    "synchronous_commit": "on" if power_safe else "off",
                },
            )
        except Exception as exc:
            # Not chained: a traceback must not carry a password some driver message repeated.
            error = store_error(location, exc, "connecting")
            raise StoreError(without_password(str(error), dsn)) from None
        try:
            async with pool.acquire() as conn:
                clean = await prepare(conn, location)
                size = await conn.fetchval("SELECT pg_database_size(current_database())")
        except BaseException as exc:
            await _close_pool(pool)
            if isinstance(exc, Exception):
                raise store_error(location, exc, "preparing the schema at start-up") from exc
            raise
        return cls(
            pool,
            location,
            PostgresStatements(retention_s, alert_keep, metrics_keep_s),
            clean_shutdown=clean,
            size=size,
        )

    def commit(self, writes: Sequence[tuple[Op, ...]], done: CommitDone) -> None:
        """Statements are built here, on the loop (an op they cannot take raises now, before
        anything is sent); the transaction runs as a task that calls `done` when it ends."""
        statements = self._statements.of([op for ops in writes for op in ops])
        self._spawn(self._commit(statements, writes, done))

    async def _commit(
        self, statements: list[Statement], writes: Sequence[tuple[Op, ...]], done: CommitDone
    ) -> None:
        try:
            async with self.pool.acquire() as conn:
                rejected = await commit_batch(conn, statements, writes, self._statements.of)
        except BaseException as exc:
            done(None, exc)
            if not isinstance(exc, Exception):
                raise
            return
        done(rejected, None)
        if time.monotonic() - self._sized_at >= SIZE_EVERY_S:
            await self._measure()

    async def _measure(self) -> None:
        """Read the database's size for `figures()`; a failure keeps the last reading."""
        self._sized_at = time.monotonic()
        try:
            async with self.pool.acquire() as conn:
                self._size = await conn.fetchval("SELECT pg_database_size(current_database())")
        except Exception as exc:
            log.debug("%s", store_error(self.location, exc, "reading the database size"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load_live(self, now: float, *, sessions: bool = True) -> Restored:
        async with self.pool.acquire() as conn:
            purged = await purge_expired(conn, self._statements, now)
            return await read_live(conn, now, self.clean_shutdown, purged, sessions=sessions)

    async def load_page(self, after: str, limit: int) -> list[SessionRecord]:
        async with self.pool.acquire() as conn:
            return await read_page(conn, after, limit)

    async def count_sessions(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM sessions"))

    async def load_session(self, session_id: str) -> StoredSession | None:
        """Runs between commits (an exclusive job), so it reads every write committed before."""
        async with self.pool.acquire() as conn:
            return await read_session(conn, session_id)

    async def load_record(self, session_id: str) -> SessionRecord | None:
        async with self.pool.acquire() as conn:
            return await read_record(conn, session_id)

    async def rewrap_keys(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        """`fn` runs on a worker thread, inside the transaction."""
        async with self.pool.acquire() as conn:
            return await rewrap(conn, fn)

    async def aclose(self) -> None:
        """Let the last size reading end, mark a clean shutdown, close the pool."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            async with self.pool.acquire() as conn:
                await close_out(conn, self.location)
        except Exception as exc:
            log.warning("%s", store_error(self.location, exc, "marking a clean shutdown"))
        finally:
            await _close_pool(self.pool)

    def error(self, exc: BaseException, doing: str) -> StoreError:
        return store_error(self.location, exc, doing)

    def figures(self) -> StorageFigures:
        """The database's size as last read (at most `SIZE_EVERY_S` old under writes)."""
        return StorageFigures(file_bytes=self._size)


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully; connections a dead server left hanging are terminated."""
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        with contextlib.suppress(Exception):
            pool.terminate()
