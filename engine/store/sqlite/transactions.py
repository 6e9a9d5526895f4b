"""What runs on the writer's connection thread: each function is one call, one round trip.

Each function takes the raw connection last, so `partial(fn, ...)` is the call handed to
`ConnectionThread`. A transaction that fails is rolled back in the same call: the thread never
holds a transaction open between calls, and the next call starts clean.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from engine.errors import StoreError
from engine.store.ops import Op, RewrapReport
from engine.store.sqlite import migrations
from engine.store.sqlite.checks import FileIdentity, store_error
from engine.store.sqlite.statements import AUDIT_EXPIRED, EXPIRED
from engine.store.statements import OpStatements, Statement

log = logging.getLogger(__name__)

# synchronous is set per store (StoreSettings.durability). secure_delete zeroes deleted rows,
# so a shredded wrapped key does not linger in free space. No automatic checkpoints: the
# commit that crossed 1,000 WAL pages used to copy them all and fsync the database file (see
# `Checkpointer`).
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA secure_delete = ON",
    "PRAGMA cache_size = -32768",
    "PRAGMA journal_size_limit = 67108864",
    "PRAGMA wal_autocheckpoint = 0",
)

# Errors caused by what one write contains rather than by the file: they fail that write only.
_OP_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """The writer's connection, configured: WAL, `synchronous`, no automatic checkpoints."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_error(path, exc, "opening") from exc
    try:
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise store_error(path, exc, "configuring") from exc
    if mode != "wal":
        conn.close()
        raise StoreError(
            f"store {path} cannot use write-ahead logging (journal mode stays {mode!r}); "
            "put it on a local file system"
        )
    return conn


def prepare(path: Path, conn: sqlite3.Connection) -> bool:
    """Create or migrate the schema and record the open; True if the last run closed cleanly.

    The metadata update doubles as a write probe: a read-only file or a full disk fails here,
    at start-up, rather than on the first user's message.
    """
    latest = len(migrations.MIGRATIONS)
    try:
        with _transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > latest:  # changed since the read-only check
                raise StoreError(
                    f"store {path} was written by a newer version of the engine (schema "
                    f"v{version}, this code knows up to v{latest}); upgrade the engine to open it"
                )
            for step in migrations.MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version < latest:
                conn.execute(f"PRAGMA application_id = {migrations.APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {latest}")
            row = conn.execute(
                "SELECT value FROM store_meta WHERE key = 'clean_shutdown'"
            ).fetchone()
            conn.execute(
                "INSERT INTO store_meta VALUES ('clean_shutdown', 0)"
                " ON CONFLICT (key) DO UPDATE SET value = 0"
            )
            conn.execute(
                "INSERT INTO store_meta VALUES ('opens', 1)"
                " ON CONFLICT (key) DO UPDATE SET value = value + 1"
            )
    except StoreError:
        raise
    except Exception as exc:
        raise store_error(path, exc, "the first write at start-up") from exc
    return bool(row[0]) if row else True


def commit_batch(
    statements: list[Statement],
    writes: Sequence[tuple[Op, ...]],
    statements_of: Callable[[Sequence[Op]], list[Statement]],
    restart_wal: bool,
    identity: FileIdentity,
    conn: sqlite3.Connection,
) -> dict[int, Exception]:
    """One batch's transaction: apply `statements` (those of all `writes`) and commit.

    If one write is rejected (`_OP_ERRORS`), redo the batch write by write, each in a savepoint,
    so the rejected ones fail alone and the rest commit. Returns the rejected writes' errors by
    index in `writes`. Any other error rolls the transaction back and propagates: nothing of
    the batch is saved. `restart_wal`: see `Checkpointer`. A database deleted or replaced
    since it was opened (`identity`) fails the batch before anything is written.
    """
    identity.check()
    if restart_wal:
        with contextlib.suppress(sqlite3.Error):  # an optimisation; the checkpointer reports
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    rejected: dict[int, Exception] = {}
    with _transaction(conn):
        try:
            for sql, params in statements:
                conn.executemany(sql, params)
        except _OP_ERRORS:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for index, ops in enumerate(writes):
                conn.execute("SAVEPOINT one_write")
                try:
                    for sql, params in statements_of(ops):
                        conn.executemany(sql, params)
                except _OP_ERRORS as exc:
                    conn.execute("ROLLBACK TO one_write")
                    rejected[index] = exc
                conn.execute("RELEASE one_write")
    return rejected


def purge_expired(statements: OpStatements, now: float, conn: sqlite3.Connection) -> int:
    """Delete sessions whose deadline passed (auditing them with retention) and prune as of
    `now`; returns how many sessions were purged."""
    with _transaction(conn):
        if statements.retention_s > 0:
            conn.execute(AUDIT_EXPIRED, (now,))
        purged = conn.execute(f"DELETE FROM sessions WHERE {EXPIRED}", (now,)).rowcount
        for sql, params in statements.prune(now):
            conn.executemany(sql, params)
    return purged


def rewrap(fn: Callable[[bytes], bytes], conn: sqlite3.Connection) -> RewrapReport:
    """Every wrapped key replaced by `fn(wrapped)`; one `fn` cannot open stays as it was."""
    with _transaction(conn):
        updates: list[tuple[str, bytes]] = []
        failed: list[str] = []
        for session_id, wrapped in conn.execute("SELECT session_id, wrapped_key FROM sessions"):
            try:
                updates.append((session_id, fn(wrapped)))
            except Exception:  # fn is the caller's; a key it cannot open stays as it was
                failed.append(session_id)
        conn.executemany("UPDATE sessions SET wrapped_key = ?2 WHERE session_id = ?1", updates)
    return RewrapReport(len(updates), tuple(failed))


def close_out(path: Path, conn: sqlite3.Connection) -> None:
    """The last call: mark a clean shutdown and empty the WAL into the file. Failures are
    logged, not raised: what was committed is safe either way."""
    try:
        conn.execute("UPDATE store_meta SET value = 1 WHERE key = 'clean_shutdown'")
    except sqlite3.Error as exc:
        log.warning("%s", store_error(path, exc, "marking a clean shutdown"))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning("%s", store_error(path, exc, "the last checkpoint"))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if anything raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise
