"""What runs on one pooled connection: each function is one transaction (or its close-out).

A failed transaction is rolled back before the function returns, so a connection goes back to
the pool clean. Rejected writes are found as in SQLite (engine/store/sqlite/transactions.py):
the batch is redone write by write, each in a savepoint, so a rejected write fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from engine.errors import StoreError
from engine.store.ops import Op, RewrapReport
from engine.store.postgres import migrations
from engine.store.postgres.errors import store_error
from engine.store.postgres.statements import AUDIT_EXPIRED, DELETE_EXPIRED
from engine.store.statements import OpStatements, Statement

log = logging.getLogger(__name__)

# Errors caused by what one write contains rather than by the database: they fail that write
# only. asyncpg reports a value it cannot encode as a ValueError of its own.
OP_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError, ValueError)


async def run(conn: asyncpg.Connection, statements: Sequence[Statement]) -> None:
    """Each statement in one round trip: `execute`, or a pipelined `executemany`."""
    for sql, args in statements:
        if len(args) == 1:
            await conn.execute(sql, *args[0])
        else:
            await conn.executemany(sql, args)


async def prepare(conn: asyncpg.Connection, location: str) -> bool:
    """Check, create or migrate the schema and record the open; True if the last run closed
    cleanly. Workers starting together take turns (an advisory lock held for the transaction).

    The metadata update doubles as a write probe: a read-only server or a missing privilege
    fails here, at start-up, rather than on the first user's message. A database refused here
    (foreign, newer) is left as it was: the transaction rolls back.
    """
    latest = len(migrations.MIGRATIONS)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", migrations.MIGRATION_LOCK)
        version = await _stored_version(conn, location)
        if version > latest:
            raise StoreError(
                f"store {location} was written by a newer version of the engine (schema "
                f"v{version}, this code knows up to v{latest}); upgrade the engine to open it. "
                "The database was left untouched"
            )
        if version < 0:
            await conn.execute(migrations.CREATE_SCHEMA_VERSION)
            await conn.execute(
                "INSERT INTO schema_version (application, version) VALUES ($1, 0)",
                migrations.APPLICATION,
            )
        for step in migrations.MIGRATIONS[max(version, 0):]:
            for statement in step:
                await conn.execute(statement)
        if version < latest:
            await conn.execute("UPDATE schema_version SET version = $1", latest)
        clean = await conn.fetchval("SELECT value FROM store_meta WHERE key = 'clean_shutdown'")
        await conn.execute(
            "INSERT INTO store_meta VALUES ('clean_shutdown', 0)"
            " ON CONFLICT (key) DO UPDATE SET value = 0"
        )
        await conn.execute(
            "INSERT INTO store_meta VALUES ('opens', 1)"
            " ON CONFLICT (key) DO UPDATE SET value = store_meta.value + 1"
        )
    return True if clean is None else bool(clean)


async def _stored_version(conn: asyncpg.Connection, location: str) -> int:
    """The schema version, or -1 for a database without the store's tables; refuse a database
    whose tables another application made."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        taken = await conn.fetchval(
            "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables"
            " WHERE schemaname = current_schema() AND tablename = ANY($1::text[])",
            list(migrations.OWN_TABLES),
        )
        if taken:
            raise StoreError(
                f"store {location} already has tables named {', '.join(taken)} that this engine "
                "did not create; it was left untouched: use another database or schema"
            )
        return -1
    rows = await conn.fetch("SELECT application, version FROM schema_version")
    if len(rows) != 1 or rows[0]["application"] != migrations.APPLICATION:
        raise StoreError(
            f"store {location} has a schema_version table that belongs to another application; "
            "it was left untouched: use another database or schema"
        )
    return rows[0]["version"]


async def commit_batch(
    conn: asyncpg.Connection,
    statements: list[Statement],
    writes: Sequence[tuple[Op, ...]],
    statements_of: Callable[[Sequence[Op]], list[Statement]],
) -> dict[int, Exception]:
    """One batch's transaction: apply `statements` (those of all `writes`) and commit.

    If one write is rejected (`OP_ERRORS`), redo the batch write by write, each in a savepoint,
    so the rejected ones fail alone and the rest commit. Returns the rejected writes' errors by
    index in `writes`. Any other error rolls back and propagates: nothing of the batch is saved.
    """
    try:
        async with conn.transaction():
            await run(conn, statements)
        return {}
    except OP_ERRORS:
        pass
    rejected: dict[int, Exception] = {}
    async with conn.transaction():
        for index, ops in enumerate(writes):
            try:
                async with conn.transaction():  # a savepoint
                    await run(conn, statements_of(ops))
            except OP_ERRORS as exc:
                rejected[index] = exc
    return rejected


async def purge_expired(conn: asyncpg.Connection, statements: OpStatements, now: float) -> int:
    """Delete sessions whose deadline passed (auditing them with retention) and prune as of
    `now`; returns how many sessions were purged."""
    async with conn.transaction():
        if statements.retention_s > 0:
            await conn.execute(AUDIT_EXPIRED, now)
        status = await conn.execute(DELETE_EXPIRED, now)  # "DELETE <count>"
        await run(conn, list(statements.prune(now)))
    return int(status.rsplit(" ", 1)[-1])


async def rewrap(conn: asyncpg.Connection, fn: Callable[[bytes], bytes]) -> RewrapReport:
    """Every wrapped key replaced by `fn(wrapped)`, `fn` on a worker thread; a key `fn` cannot
    open stays as it was. The rows stay locked until the new keys are written."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT session_id, wrapped_key FROM sessions ORDER BY session_id FOR UPDATE"
        )
        updates, failed = await asyncio.to_thread(_rewrapped, rows, fn)
        await conn.execute(
            "UPDATE sessions SET wrapped_key = u.wrapped_key"
            " FROM unnest($1::text[], $2::bytea[]) AS u(session_id, wrapped_key)"
            " WHERE sessions.session_id = u.session_id",
            [session_id for session_id, _ in updates],
            [wrapped for _, wrapped in updates],
        )
    return RewrapReport(len(updates), tuple(failed))


def _rewrapped(
    rows: list[asyncpg.Record], fn: Callable[[bytes], bytes]
) -> tuple[list[tuple[str, bytes]], list[str]]:
    updates: list[tuple[str, bytes]] = []
    failed: list[str] = []
    for session_id, wrapped in rows:
        try:
            updates.append((session_id, fn(wrapped)))
        except Exception:  # fn is the caller's; a key it cannot open stays as it was
            failed.append(session_id)
    return updates, failed


async def close_out(conn: asyncpg.Connection, location: str) -> None:
    """The last call: mark a clean shutdown. A failure is logged, not raised: what was
    committed is safe either way."""
    try:
        await conn.execute("UPDATE store_meta SET value = 1 WHERE key = 'clean_shutdown'")
    except Exception as exc:
        log.warning("%s", store_error(location, exc, "marking a clean shutdown"))
