"""Durable storage: one SQLite file through aiosqlite, written by group commit.

Why it is built this way:

- Every write goes through one writer that puts whatever concurrent turns queued into one
  transaction (group commit), so one fsync covers hundreds of writes. With `durable_ack` (the
  default) `write()` returns only after the transaction holding its ops has committed, in WAL
  mode with `synchronous=FULL` (`power_safe`, the default): nothing a caller was told is saved
  is lost to `kill -9` or a power cut (with `power_safe=False`, to `kill -9` only).
  `durable_ack=False` returns as soon as the ops are queued; that is for benchmarks
  and risks the last few milliseconds of acknowledged writes on a crash, and a failed commit
  (disk full) is then only logged and counted, never reported to the writer.
- The writer is callbacks, not a task: the next batch starts as the previous commit's result
  arrives, and the waiters are resolved straight from the connection thread's completion,
  because under a busy event loop every extra hop through the loop is milliseconds of
  acknowledgement latency.
- Commits never checkpoint (`wal_autocheckpoint = 0`): a `_Checkpointer` thread copies the WAL
  into the database file from its own connection (see there for how the WAL stays bounded).
- All ops of one `write()` call commit together or not at all; an op rejected by a constraint
  (a message for a session that is not stored) fails its own `write()` only.
- The store keeps bytes and records and knows nothing of the engine: message content arrives
  encrypted with the session's data key, the data key arrives wrapped by the master key, tokens
  arrive hashed. Deleting a session's row deletes its wrapped key (crypto-shredding), and
  `secure_delete` zeroes the freed bytes in the file. The zeroed page reaches the database file
  at the checkpointer's next pass (every `CHECKPOINT_S`); older -wal frames may hold the key
  until the log restarts and new frames overwrite them, and close() empties the -wal.
- One store per file: `open` first takes an exclusive `flock` on `<path>.lock` and `close`
  releases it, so a second engine on the same file is refused before it reads a byte, instead
  of interleaving its sessions and shredding with the first one's. The OS drops the lock when
  its holder dies, so a killed engine never blocks a restart. The lock file stays on disk:
  deleting it would race with the next opener.
- A file that fails a check at open (not SQLite, another application's, a newer schema,
  corrupt) is inspected through a read-only connection and never modified; the `StoreError`
  names the file and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite

from engine import migrations
from engine.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PATH = Path("data/sessions.db")
QUOTA_BUCKETS_PER_WINDOW = 60  # the quota rings' own granularity: rebuilding loses nothing
METRICS_RESTORE_S = 3600.0  # roll-ups handed back on restore, enough for the console's charts
BACKLOG_OPS = 32_768  # without durable_ack, writers wait once this many ops are queued
CHECKPOINT_S = 0.2  # how often the checkpointer copies new WAL frames into the database file
WAL_RESTART_FRAMES = 2048  # a log this long (~8 MB) that never restarted: the writer helps
_SQLITE_MAGIC = b"SQLite format 3\x00"

# synchronous is set per store (power_safe). secure_delete zeroes deleted rows, so a shredded
# wrapped key does not linger in free space. No automatic checkpoints: the commit that crossed
# 1,000 WAL pages used to copy them all and fsync the database file (see `_Checkpointer`).
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA secure_delete = ON",
    "PRAGMA cache_size = -32768",
    "PRAGMA journal_size_limit = 67108864",
    "PRAGMA wal_autocheckpoint = 0",
)

# SQLite primary result codes, for advice in error messages.
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_ADVICE = {
    3: "permission denied: make the file and its folder accessible to this user",
    5: "another process holds the database: stop the other engine using this file",
    6: "another connection holds the database: stop the other engine using this file",
    8: (
        "it is read-only: make the file, its -wal and -shm companions and its folder writable"
    ),
    _SQLITE_IOERR: "the disk reported an I/O error: check the volume, then retry",
    11: (
        "it is corrupt: restore it from a backup, or move it away to start empty "
        "(a file that fails the check at open is left untouched)"
    ),
    _SQLITE_FULL: "the disk is full: free space on the volume holding it, then retry",
    14: "it cannot be opened: check that its folder exists and is writable",
    19: "a write was rejected: the session it refers to is not stored (ended or never saved)",
    26: "it is not a SQLite database or is corrupt: move it away or configure another path",
}


# --- records and ops ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A live session as stored (upsert). Field order is the table's column order.

    On conflict the wrapped key is kept: only `rewrap_keys` changes it, so a late upsert carrying
    a key wrapped under a retired master key cannot undo a rotation. Activity and counters only
    move forward.
    """

    session_id: str
    user_id: str
    tier: str
    metadata_json: str
    created_at: float
    last_active_at: float
    idle_timeout_s: float
    lifetime_s: float
    token_hash: bytes = field(repr=False)
    token_issued_at: float
    token_expires_at: float
    wrapped_key: bytes = field(repr=False)
    worker: str | None = None
    agent_type: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0

    @property
    def deadline(self) -> float:
        return min(self.last_active_at + self.idle_timeout_s, self.created_at + self.lifetime_s)


@dataclass(frozen=True, slots=True)
class Touch:
    """Activity after a turn. Everything only grows, so touches may arrive late or reordered.

    An empty `agent_type` keeps the stored one.
    """

    session_id: str
    last_active_at: float
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    agent_type: str = ""


@dataclass(frozen=True, slots=True)
class TokenUpdate:
    """A rotated token: its hash and lifetime replace the old ones."""

    session_id: str
    token_hash: bytes = field(repr=False)
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Assign:
    """The session now lives on `worker` (placement or a rebalancing move)."""

    session_id: str
    worker: str | None


@dataclass(slots=True)
class MessageRow:
    """One encrypted message. `size` is the plaintext's bytes, so context bounds survive a
    restart without decrypting anything.

    Treat as immutable. Not frozen only because a restore builds millions of these and a
    frozen dataclass takes four times as long to construct.
    """

    session_id: str
    seq: int
    role: str
    ciphertext: bytes = field(repr=False)
    at: float
    size: int


@dataclass(frozen=True, slots=True)
class TrimMessages:
    """Context trimming: delete the session's messages with seq <= `through_seq`."""

    session_id: str
    through_seq: int


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    """Usage counted against a sliding window of `window_s` seconds.

    Stored summed per (user, resource, window, window/60 bucket) with the latest `at` of the
    bucket, so restored usage never expires before the original would have.
    """

    user_id: str
    resource: str
    at: float
    amount: float
    window_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"quota window_s must be > 0 seconds, got {self.window_s!r}")


@dataclass(frozen=True, slots=True)
class EndSession:
    """Delete the session's wrapped key and messages; with retention, keep an audit row."""

    session_id: str
    ended_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert, field for field like `engine.alerts.Alert` (upsert by alert_id)."""

    alert_id: int
    key: str
    rule: str
    severity: str
    message: str
    subject: str | None
    first_at: float
    last_at: float
    count: int = 1
    acknowledged: bool = False
    resolved_at: float | None = None


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """A one-minute roll-up; `minute` is the epoch second the minute starts (upsert)."""

    minute: int
    scope: str
    turns: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    p50_s: float
    p95_s: float
    p99_s: float


@dataclass(frozen=True, slots=True)
class Prune:
    """Housekeeping as of `now`: expired quota buckets, audit rows past retention, alerts beyond
    `alert_keep`, roll-ups older than `metrics_keep_s`. Keeps every table bounded."""

    now: float


Op = (
    SessionRow
    | Touch
    | TokenUpdate
    | Assign
    | MessageRow
    | TrimMessages
    | QuotaEvent
    | EndSession
    | AlertRow
    | MetricsRow
    | Prune
)


@dataclass(frozen=True, slots=True)
class RestoreCounts:
    sessions: int
    purged: int
    messages: int
    quota_buckets: int
    alerts: int


@dataclass(frozen=True, slots=True)
class Restored:
    """What `load_live` found: everything the engine needs to resume where it stopped.

    `messages` maps session id to its messages, oldest first. `max_alert_id` lets the alert
    list continue numbering after the stored alerts. `clean_shutdown` is False when the last
    run ended without `close()` (a crash or kill).
    """

    sessions: list[SessionRow]
    messages: dict[str, list[MessageRow]]
    quota: list[QuotaEvent]
    alerts: list[AlertRow]
    metrics: list[MetricsRow]
    max_alert_id: int
    clean_shutdown: bool
    counts: RestoreCounts


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """Keys rewrapped, and sessions whose key `fn` could not rewrap (left as they were)."""

    rewrapped: int
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """For the console: the writer's queue and throughput, the last failure, the file sizes."""

    path: str
    durable_ack: bool
    queue_depth: int
    batches: int
    writes: int
    ops: int
    avg_batch_ops: float
    last_commit_ms: float
    failed_batches: int
    rejected_writes: int
    last_error: str | None
    file_bytes: int
    wal_bytes: int
    checkpoints: int = 0
    wal_frames: int = 0


@dataclass(slots=True)
class _Queued:
    """A write (ops) or an exclusive job (load, rewrap) waiting for the writer."""

    ops: tuple[Op, ...]
    future: asyncio.Future[Any] | None
    enqueued: float
    job: Callable[[], Awaitable[Any]] | None = None
    error: StoreError | None = None


# --- SQL ---------------------------------------------------------------------------------------

_SESSION_COLUMNS = ", ".join(SessionRow.__dataclass_fields__)
_EXPIRED = "min(last_active_at + idle_timeout_s, created_at + lifetime_s) <= ?1"
_AUDIT_COLUMNS = (
    "session_id, user_id, tier, metadata_json, created_at, last_active_at, {ended_at}, {reason},"
    " turns, prompt_tokens, completion_tokens,"
    " (SELECT count(*) FROM messages m WHERE m.session_id = s.session_id)"
)

_UPSERT_SESSION = f"""
INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({", ".join("?" * len(SessionRow.__slots__))})
ON CONFLICT (session_id) DO UPDATE SET
    tier = excluded.tier,
    metadata_json = excluded.metadata_json,
    last_active_at = max(last_active_at, excluded.last_active_at),
    idle_timeout_s = excluded.idle_timeout_s,
    lifetime_s = excluded.lifetime_s,
    token_hash = excluded.token_hash,
    token_issued_at = excluded.token_issued_at,
    token_expires_at = excluded.token_expires_at,
    worker = excluded.worker,
    agent_type = coalesce(nullif(excluded.agent_type, ''), agent_type),
    turns = max(turns, excluded.turns),
    prompt_tokens = max(prompt_tokens, excluded.prompt_tokens),
    completion_tokens = max(completion_tokens, excluded.completion_tokens),
    errors = max(errors, excluded.errors)
"""
_UPDATE_TOKEN = (
    "UPDATE sessions SET token_hash = ?2, token_issued_at = ?3, token_expires_at = ?4"
    " WHERE session_id = ?1"
)
_ASSIGN = "UPDATE sessions SET worker = ?2 WHERE session_id = ?1"
_TRIM = "DELETE FROM messages WHERE session_id = ?1 AND seq <= ?2"
_AUDIT_ENDED = (
    "INSERT OR REPLACE INTO session_audit SELECT "
    + _AUDIT_COLUMNS.format(ended_at="?2", reason="?3")
    + " FROM sessions s WHERE session_id = ?1"
)
_AUDIT_EXPIRED = (
    "INSERT OR REPLACE INTO session_audit SELECT "
    + _AUDIT_COLUMNS.format(
        ended_at="min(last_active_at + idle_timeout_s, created_at + lifetime_s)",
        reason=(
            "CASE WHEN created_at + lifetime_s <= last_active_at + idle_timeout_s"
            " THEN 'absolute lifetime reached while the engine was stopped'"
            " ELSE 'idle timeout while the engine was stopped' END"
        ),
    )
    + f" FROM sessions s WHERE {_EXPIRED}"
)
_DELETE_SESSION = "DELETE FROM sessions WHERE session_id = ?"
_UPSERT_ALERT = "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_METRICS = "INSERT OR REPLACE INTO metrics_minute VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PRUNE_QUOTA = "DELETE FROM quota_usage WHERE expires_at <= ?"
_PRUNE_AUDIT = "DELETE FROM session_audit WHERE ended_at <= ?"
_PRUNE_ALERTS = (
    "DELETE FROM alerts WHERE alert_id <="
    " (SELECT alert_id FROM alerts ORDER BY alert_id DESC LIMIT 1 OFFSET ?)"
)
_PRUNE_METRICS = "DELETE FROM metrics_minute WHERE minute < ?"

_SELECT_SESSIONS = f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY session_id"
_SELECT_MESSAGES = (
    "SELECT session_id, seq, role, ciphertext, at, size FROM messages ORDER BY session_id, seq"
)
_SELECT_QUOTA = (
    "SELECT user_id, resource, at, amount, window_s FROM quota_usage"
    " WHERE expires_at > ? ORDER BY at"
)
_SELECT_ALERTS = (
    "SELECT * FROM alerts WHERE resolved_at IS NULL AND NOT acknowledged ORDER BY alert_id"
)
_SELECT_METRICS = "SELECT * FROM metrics_minute WHERE minute >= ? ORDER BY minute, scope"

# Errors caused by what one write contains rather than by the file: they fail that write only.
_OP_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)

Statement = tuple[str, list[tuple[Any, ...]]]  # SQL and the parameters of each execution
Statements = Iterator[Statement]


class _ManyRows:
    """A statement that takes many rows per execution, in chunks of a few fixed sizes.

    The sqlite3 module releases the GIL around every step of a statement and must take it
    back from a busy event loop, so `executemany` costs the connection thread a handoff per
    row. One statement whose VALUES list holds N rows is one step: draining a backlog of
    20,000 turns' writes (6 rows each) beside a loop kept 80% busy took 0.58 s instead of
    0.83-0.92 s. Chunk sizes are powers of two, so a batch needs few executions and the
    connection's statement cache holds few texts.
    """

    CHUNKS = tuple(2**i for i in range(9, -1, -1))  # 512 rows of up to 7 columns: 3,584 bound

    def __init__(self, template: str, row: str) -> None:
        """`template` has `{rows}` where the VALUES list goes; `row` is one row's `(?, ...)`."""
        self._sql = {n: template.format(rows=", ".join([row] * n)) for n in self.CHUNKS}

    def statements(self, rows: list[tuple[Any, ...]]) -> Statements:
        start = 0
        for size in self.CHUNKS:
            while len(rows) - start >= size:
                chunk = rows[start:start + size]
                yield self._sql[size], [tuple(chain.from_iterable(chunk))]
                start += size


_INSERT_MESSAGES = _ManyRows(
    "INSERT INTO messages (session_id, seq, role, ciphertext, at, size) VALUES {rows}",
    "(?, ?, ?, ?, ?, ?)",
)
# A bucket's rows in one statement add up: each row after the first takes the DO UPDATE path.
_ADD_USAGE = _ManyRows(
    """
INSERT INTO quota_usage (user_id, resource, window_s, bucket, at, amount, expires_at)
VALUES {rows}
ON CONFLICT (user_id, resource, window_s, bucket) DO UPDATE SET
    amount = amount + excluded.amount,
    at = max(at, excluded.at),
    expires_at = max(expires_at, excluded.expires_at)
""",
    "(?, ?, ?, ?, ?, ?, ?)",
)
# One row per session: with two, UPDATE ... FROM would apply an arbitrary one (see _touch_sql).
_TOUCH = _ManyRows(
    """
UPDATE sessions SET
    last_active_at = max(last_active_at, t.column2),
    turns = max(turns, t.column3),
    prompt_tokens = max(prompt_tokens, t.column4),
    completion_tokens = max(completion_tokens, t.column5),
    errors = max(errors, t.column6),
    agent_type = coalesce(nullif(t.column7, ''), agent_type)
FROM (VALUES {rows}) AS t
WHERE sessions.session_id = t.column1
""",
    "(?, ?, ?, ?, ?, ?, ?)",
)


class Store:
    """The engine's SQLite store. Create with `await Store.open(path)`; `await close()`."""

    def __init__(
        self,
        path: Path,
        db: aiosqlite.Connection,
        *,
        durable_ack: bool,
        batch_ms: float,
        batch_max: int,
        retention_s: float,
        alert_keep: int,
        metrics_keep_s: float,
        clean_shutdown: bool,
        lock_fd: int,
        synchronous: str = "FULL",
    ) -> None:
        """Use `Store.open`, which locks and checks the file first."""
        self.path = path
        self.durable_ack = durable_ack
        self.retention_s = retention_s
        self.alert_keep = alert_keep
        self.metrics_keep_s = metrics_keep_s
        self.clean_shutdown = clean_shutdown
        self._db = db
        self._lock_fd = lock_fd
        self._batch_s = batch_ms / 1000
        self._batch_max = batch_max
        self._backlog = max(batch_max, BACKLOG_OPS)
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Queued] = deque()
        self._queued_ops = 0
        self._busy = False  # a batch or a job is in flight: the next one waits for it
        self._pump_scheduled = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._job: asyncio.Task[None] | None = None
        self._last_batch_writes = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._batches = self._writes = self._ops = self._failed = self._rejected = 0
        self._last_commit_ms = 0.0
        self._last_error: str | None = None
        # Fixed order in which a batch's ops are applied, each kind with one executemany:
        # rows exist before what refers to them, and ending a session comes after everything
        # else written for it in the same batch.
        self._phases: tuple[tuple[type, Callable[[list[Any]], Statements]], ...] = (
            (SessionRow, self._sessions_sql),
            (Assign, self._assign_sql),
            (TokenUpdate, self._token_sql),
            (Touch, self._touch_sql),
            (MessageRow, self._messages_sql),
            (TrimMessages, self._trim_sql),
            (QuotaEvent, self._usage_sql),
            (AlertRow, self._alerts_sql),
            (MetricsRow, self._metrics_sql),
            (EndSession, self._end_sql),
            (Prune, self._prune_sql),
        )
        self._kinds = frozenset(kind for kind, _ in self._phases)
        self._checkpointer = _Checkpointer(path, synchronous, CHECKPOINT_S)

    @classmethod
    async def open(
        cls,
        path: Path | str = DEFAULT_PATH,
        *,
        durable_ack: bool = True,
        batch_ms: float = 0.0,
        batch_max: int = 4096,
        retention_s: float = 0.0,
        alert_keep: int = 1000,
        metrics_keep_s: float = 7 * 86400.0,
        power_safe: bool = True,
    ) -> Store:
        """Lock and check the file, migrate it forward, and start the writer.

        `power_safe` (synchronous=FULL) fsyncs the WAL at every commit, so an acknowledged
        write survives a power cut. False (synchronous=NORMAL) leaves the commit in the OS page
        cache: it still survives the process crashing or being killed, not the machine
        losing power, and an acknowledgement then costs a write() instead of an fsync.

        The writer commits as soon as it is free; writes queued meanwhile form the next batch,
        so batches grow by themselves with load and with slow disks. `batch_ms` > 0 makes it
        also wait up to that long (from the oldest queued write, only while writes arrive
        concurrently) for a fuller batch: fewer fsyncs for that much more latency (see
        benchmarks/store.py). `batch_max` caps ops per transaction; it is large so that a writer
        that fell behind (a collector pause, a burst of new sessions) catches up in a few big
        commits instead of queueing until writers must wait. `durable_ack=False`: see the
        module docstring for what it risks. `retention_s` > 0 keeps an audit row (metadata, no
        content) per ended session that long.
        """
        if batch_max < 1 or not batch_ms >= 0 or not retention_s >= 0 or alert_keep < 1:
            raise ValueError(
                "batch_max and alert_keep must be >= 1, batch_ms and retention_s >= 0; got "
                f"{batch_max=}, {batch_ms=}, {retention_s=}, {alert_keep=}"
            )
        _check_aiosqlite()
        path = Path(path)
        lock_fd = _lock(path)  # before anything reads the file: it may be another engine's
        try:
            await asyncio.to_thread(_check_file, path)
            synchronous = "FULL" if power_safe else "NORMAL"
            db = await _connect(path, synchronous)
            try:
                _check_aiosqlite(db)
                clean = await _prepare(db, path)
                return cls(
                    path,
                    db,
                    durable_ack=durable_ack,
                    batch_ms=batch_ms,
                    batch_max=batch_max,
                    retention_s=retention_s,
                    alert_keep=alert_keep,
                    metrics_keep_s=metrics_keep_s,
                    clean_shutdown=clean,
                    lock_fd=lock_fd,
                    synchronous=synchronous,
                )
            except BaseException:
                await db.close()
                raise
        except BaseException:
            _unlock(lock_fd)
            raise

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit everything queued, mark a clean shutdown, close the file and release its
        lock. Idempotent."""
        if self._closer is None:
            self._closing = True
            self._stop_lingering()
            self._pump()
            self._closer = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._closer)

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, *ops: Op) -> None:
        """Queue `ops` to commit in one transaction; with durable_ack, return once committed.

        Raises StoreError when the transaction failed (nothing of it was saved) or when this
        write was rejected (e.g. a message for a session that is not stored).
        """
        self._check_ops(ops)
        durable = self.durable_ack or self._queued_ops >= self._backlog
        future = self._enqueue(ops, None, durable)
        if future is not None:
            await future

    def write_nowait(self, *ops: Op) -> None:
        """Queue `ops` without waiting, for synchronous callers (alert and metrics hooks).

        They commit in order with everything else; a failure is only logged and counted in
        `stats()`, so use `write` for anything a caller is told is saved.
        """
        self._check_ops(ops)
        self._enqueue(ops, None, False)

    async def save_session(self, row: SessionRow) -> None:
        await self.write(row)

    async def append_messages(self, rows: Sequence[MessageRow], *also: Op) -> None:
        """Messages plus whatever belongs to the same turn (Touch, TrimMessages, QuotaEvent)."""
        await self.write(*rows, *also)

    async def end_session(self, session_id: str, ended_at: float, reason: str) -> None:
        await self.write(EndSession(session_id, ended_at, reason))

    async def prune(self, now: float) -> None:
        await self.write(Prune(now))

    async def flush(self) -> None:
        """Wait until everything queued so far has committed, whatever durable_ack says."""
        await self._submit(None)

    # -- start-up and maintenance ----------------------------------------------------------------
    async def load_live(self, now: float) -> Restored:
        """Purge sessions whose deadline passed, prune, and return everything still live.

        Bulk reads ordered by (session_id, seq), never a query per session.
        """
        return await self._submit(partial(self._load_live, now))

    async def rewrap_keys(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        """Replace every wrapped key by `fn(wrapped)` in one transaction (pass keyring.rewrap).

        Message ciphertext is untouched. `fn` runs in a worker thread. A key `fn` cannot
        rewrap is left as it was and listed in `failed`: do not drop the old master key while
        any remain.
        """
        return await self._submit(partial(self._rewrap, fn))

    def stats(self) -> StoreStats:
        return StoreStats(
            path=str(self.path),
            durable_ack=self.durable_ack,
            queue_depth=self._queued_ops,
            batches=self._batches,
            writes=self._writes,
            ops=self._ops,
            avg_batch_ops=self._ops / self._batches if self._batches else 0.0,
            last_commit_ms=self._last_commit_ms,
            failed_batches=self._failed,
            rejected_writes=self._rejected,
            last_error=self._last_error,
            file_bytes=_size(self.path),
            wal_bytes=_size(self.path.with_name(self.path.name + "-wal")),
            checkpoints=self._checkpointer.checkpoints,
            wal_frames=self._checkpointer.wal_frames,
        )

    # -- the writer ------------------------------------------------------------------------------
    # No task: `_pump` starts the next batch or job when the writer is free, and `_batch_done`
    # runs straight from the connection thread. After a commit, its acknowledgements cost two
    # loop iterations (that callback, then the callers resuming) and the next batch starts in
    # the first; a writer task took three and two, and under a busy loop an iteration can take
    # milliseconds. A write that finds the writer idle waits one iteration, as for the task.
    def _check_ops(self, ops: tuple[Op, ...]) -> None:
        for op in ops:
            if type(op) not in self._kinds:
                raise TypeError(f"not a store op: {op!r}")

    def _enqueue(
        self, ops: tuple[Op, ...], job: Callable[[], Awaitable[Any]] | None, wait: bool
    ) -> asyncio.Future[Any] | None:
        if self._closing:
            raise StoreError(f"store {self.path} is closed; open it again to read or write")
        future = self._loop.create_future() if wait else None
        self._queue.append(_Queued(ops, future, self._loop.time(), job))
        self._queued_ops += len(ops)
        if self._queued_ops >= self._batch_max:
            self._stop_lingering()  # the batch is full: waiting cannot make it bigger
        self._pump_soon()
        return future

    async def _submit(self, job: Callable[[], Awaitable[Any]] | None) -> Any:
        """Run `job` alone in the writer's turn (None: an empty write) and wait for it."""
        future = self._enqueue((), job, True)
        assert future is not None
        return await future

    def _pump_soon(self) -> None:
        """Pump once the callbacks already scheduled have run, so that writes made together
        commit together. Starting at the first would commit it alone, and then split
        concurrent writers into two groups taking turns: half the batch, twice the fsyncs.
        Busy or lingering, the commit's callback or the timer pumps instead."""
        if not (self._busy or self._pump_scheduled or self._linger_timer is not None):
            self._pump_scheduled = True
            self._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump(self, linger: bool = True) -> None:
        """Start the next batch or job unless one is in flight; closing, say when drained."""
        if self._busy or self._linger_timer is not None:
            return
        if not self._queue:
            if self._closing:
                self._drained.set()
            return
        if self._queue[0].job is not None:
            self._start_job(self._queue.popleft())
        elif linger and (delay := self._linger_delay()) > 0:
            self._linger_timer = self._loop.call_later(delay, self._linger_over)
        else:
            self._start_batch(self._take_batch())

    def _linger_delay(self) -> float:
        """How much longer to wait for a fuller batch: up to batch_ms from the oldest write.

        Only while writes arrive concurrently: a lone writer gains nothing from waiting.
        """
        if (
            self._batch_s <= 0
            or self._closing
            or self._last_batch_writes < 2
            or self._queued_ops >= self._batch_max
        ):
            return 0.0
        return self._queue[0].enqueued + self._batch_s - self._loop.time()

    def _linger_over(self) -> None:
        """Commit after the callbacks already scheduled: writers whose timers fired on the
        same tick as this one then join the batch instead of waiting for the next."""
        self._linger_timer = None
        self._loop.call_soon(self._pump, False)

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _take_batch(self) -> list[_Queued]:
        """Whole writes, oldest first, up to batch_max ops (a bigger single write goes alone)."""
        batch: list[_Queued] = []
        count = 0
        queue = self._queue
        while queue and queue[0].job is None:
            size = len(queue[0].ops)
            if batch and count + size > self._batch_max:
                break
            batch.append(queue.popleft())
            count += size
        self._queued_ops -= count
        return batch

    def _start_batch(self, batch: list[_Queued]) -> None:
        """Hand the batch to the connection thread; `_batch_done` hears how it went."""
        self._busy = True
        done = partial(self._batch_done, batch, time.perf_counter())
        try:
            ops = [op for queued in batch for op in queued.ops]
            commit = partial(
                _commit_batch,
                self._statements(ops),
                [queued.ops for queued in batch],
                self._statements,
                self._checkpointer.take_restart(),
            )
            _on_connection_thread(self._db, commit, done)
        except Exception as exc:  # an op the statements cannot take: fail it like a commit
            self._loop.call_soon(done, None, exc)

    def _batch_done(
        self,
        batch: list[_Queued],
        started: float,
        rejected: dict[int, Exception] | None,
        error: BaseException | None,
    ) -> None:
        """Resolve the batch's waiters and start the next batch: the writer outlives anything."""
        try:
            if error is None:
                self._batch_committed(batch, rejected or {}, started)
            else:
                self._batch_failed(batch, error)
        finally:
            self._busy = False
            self._pump()

    def _batch_failed(self, batch: list[_Queued], exc: BaseException) -> None:
        """Nothing of the batch was saved (rolled back on the thread): every waiter hears it."""
        error = _store_error(self.path, exc, f"committing {len(batch)} writes")
        self._failed += 1
        self._last_error = str(error)
        if any(queued.future is None for queued in batch):
            log.error("%s", error)  # someone was not waiting to hear it
        for queued in batch:
            _fail(queued.future, error)

    def _batch_committed(
        self, batch: list[_Queued], rejected: dict[int, Exception], started: float
    ) -> None:
        for index, exc in rejected.items():
            batch[index].error = _store_error(self.path, exc, "a write")
        self._last_commit_ms = (time.perf_counter() - started) * 1000
        self._batches += 1
        self._writes += len(batch)
        self._ops += sum(len(queued.ops) for queued in batch)
        self._last_batch_writes = len(batch)
        for queued in batch:
            if queued.error is None:
                if queued.future is not None and not queued.future.done():
                    queued.future.set_result(None)
                continue
            self._rejected += 1
            self._last_error = str(queued.error)
            if queued.future is None:
                log.error("%s", queued.error)
            _fail(queued.future, queued.error)

    def _statements(self, ops: Sequence[Op]) -> list[Statement]:
        """The statements that apply `ops`, in phase order, one executemany per statement."""
        groups: dict[type, list[Any]] = {}
        for op in ops:
            groups.setdefault(type(op), []).append(op)
        return [
            statement
            for kind, statements in self._phases
            if (chosen := groups.get(kind))
            for statement in statements(chosen)
        ]

    def _start_job(self, queued: _Queued) -> None:
        self._busy = True
        self._job = self._loop.create_task(self._run_job(queued))

    async def _run_job(self, queued: _Queued) -> None:
        """A maintenance job, alone: no batch commits until it is done."""
        assert queued.job is not None
        try:
            result = await queued.job()
        except Exception as exc:
            await self._rollback()
            _fail(queued.future, _store_error(self.path, exc, "a maintenance job"))
        else:
            if queued.future is not None and not queued.future.done():
                queued.future.set_result(result)
        finally:
            _fail(queued.future, StoreError(f"store {self.path}: a maintenance job was cancelled"))
            self._job = None
            self._busy = False
            self._pump()

    async def _rollback(self) -> None:
        """After a failure SQLite may already have rolled back; never raise from here."""
        with contextlib.suppress(Exception):
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")

    async def _shutdown(self) -> None:
        """Once everything queued has committed: stop checkpointing, mark, truncate, close,
        unlock."""
        await self._drained.wait()
        await self._checkpointer.stop()
        try:
            await self._db.execute(
                "UPDATE store_meta SET value = 1 WHERE key = 'clean_shutdown'"
            )
        except sqlite3.Error as exc:
            log.warning("%s", _store_error(self.path, exc, "marking a clean shutdown"))
        try:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("%s", _store_error(self.path, exc, "the last checkpoint"))
        try:
            await self._db.close()
        finally:
            _unlock(self._lock_fd)

    # -- statements per op kind ------------------------------------------------------------------
    def _sessions_sql(self, rows: list[SessionRow]) -> Statements:
        yield _UPSERT_SESSION, [
            (
                r.session_id, r.user_id, r.tier, r.metadata_json, r.created_at,
                r.last_active_at, r.idle_timeout_s, r.lifetime_s, r.token_hash,
                r.token_issued_at, r.token_expires_at, r.wrapped_key, r.worker, r.agent_type,
                r.turns, r.prompt_tokens, r.completion_tokens, r.errors,
            )
            for r in rows
        ]

    def _assign_sql(self, ops: list[Assign]) -> Statements:
        yield _ASSIGN, [(op.session_id, op.worker) for op in ops]

    def _token_sql(self, ops: list[TokenUpdate]) -> Statements:
        yield _UPDATE_TOKEN, [
            (op.session_id, op.token_hash, op.issued_at, op.expires_at) for op in ops
        ]

    def _touch_sql(self, ops: list[Touch]) -> Statements:
        latest: dict[str, Touch] = {}
        for op in ops:
            earlier = latest.get(op.session_id)
            latest[op.session_id] = op if earlier is None else _merged(earlier, op)
        yield from _TOUCH.statements([
            (
                op.session_id, op.last_active_at, op.turns, op.prompt_tokens,
                op.completion_tokens, op.errors, op.agent_type,
            )
            for op in latest.values()
        ])

    def _messages_sql(self, rows: list[MessageRow]) -> Statements:
        yield from _INSERT_MESSAGES.statements(
            [(r.session_id, r.seq, r.role, r.ciphertext, r.at, r.size) for r in rows]
        )

    def _trim_sql(self, ops: list[TrimMessages]) -> Statements:
        yield _TRIM, [(op.session_id, op.through_seq) for op in ops]

    def _usage_sql(self, events: list[QuotaEvent]) -> Statements:
        yield from _ADD_USAGE.statements([
            (
                e.user_id, e.resource, e.window_s,
                math.floor(e.at * QUOTA_BUCKETS_PER_WINDOW / e.window_s), e.at, e.amount,
                e.at + e.window_s,
            )
            for e in events
        ])

    def _alerts_sql(self, rows: list[AlertRow]) -> Statements:
        yield _UPSERT_ALERT, [
            (
                r.alert_id, r.key, r.rule, r.severity, r.message, r.subject, r.first_at,
                r.last_at, r.count, r.acknowledged, r.resolved_at,
            )
            for r in rows
        ]

    def _metrics_sql(self, rows: list[MetricsRow]) -> Statements:
        yield _UPSERT_METRICS, [
            (
                r.minute, r.scope, r.turns, r.errors, r.prompt_tokens, r.completion_tokens,
                r.p50_s, r.p95_s, r.p99_s,
            )
            for r in rows
        ]

    def _end_sql(self, ops: list[EndSession]) -> Statements:
        if self.retention_s > 0:
            yield _AUDIT_ENDED, [(op.session_id, op.ended_at, op.reason) for op in ops]
        yield _DELETE_SESSION, [(op.session_id,) for op in ops]

    def _prune_sql(self, ops: list[Prune]) -> Statements:
        now = max(op.now for op in ops)
        yield _PRUNE_QUOTA, [(now,)]
        yield _PRUNE_AUDIT, [(now - self.retention_s,)]
        yield _PRUNE_ALERTS, [(self.alert_keep,)]
        yield _PRUNE_METRICS, [(now - self.metrics_keep_s,)]

    # -- exclusive jobs --------------------------------------------------------------------------
    async def _load_live(self, now: float) -> Restored:
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        if self.retention_s > 0:
            await db.execute(_AUDIT_EXPIRED, (now,))
        purged = (await db.execute(f"DELETE FROM sessions WHERE {_EXPIRED}", (now,))).rowcount
        for sql, params in self._prune_sql([Prune(now)]):
            await db.executemany(sql, params)
        await db.execute("COMMIT")
        # Nothing else writes while this job runs, so a second connection reads exactly what
        # was just committed, in one worker thread: no hop per chunk, no GIL ping-pong.
        restored = await asyncio.to_thread(_read_live, self.path, now, self.clean_shutdown)
        return replace(restored, counts=replace(restored.counts, purged=purged))

    async def _rewrap(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        rows = await db.execute_fetchall("SELECT session_id, wrapped_key FROM sessions")
        updates, failed = await asyncio.to_thread(_rewrap_rows, fn, list(rows))
        await db.executemany("UPDATE sessions SET wrapped_key = ?2 WHERE session_id = ?1", updates)
        await db.execute("COMMIT")
        return RewrapReport(len(updates), tuple(failed))


# --- one round trip per batch -------------------------------------------------------------------


def _on_connection_thread(
    db: aiosqlite.Connection,
    fn: Callable[[sqlite3.Connection], T],
    done: Callable[[T | None, BaseException | None], object],
) -> None:
    """Run `fn(raw sqlite3 connection)` on aiosqlite's connection thread, as one round trip;
    then `done(result, None)` or `done(None, error)` runs on the event loop.

    Each `await db.execute(...)` is a round trip, and under a busy loop every hop waits for a
    loop iteration. `done` is scheduled by the thread itself (`call_soon_threadsafe`), one
    iteration after `fn` returns; awaiting aiosqlite's future would add one for its result and
    one for the awaiting task. aiosqlite has no public way to do this: its private `_tx` is the
    thread's queue of (future, callable), and `_conn` is the raw connection, which only that
    thread may use (`_check_aiosqlite` verifies both at open; pyproject.toml pins aiosqlite's
    upper bound). The future handed over only satisfies aiosqlite's worker; nothing awaits it.
    The store closes the connection only once nothing is queued or in flight, so `fn` runs.
    """
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            result = fn(db._conn)
        except BaseException as exc:  # whatever happens, `done` must hear of it
            loop.call_soon_threadsafe(done, None, exc)
        else:
            loop.call_soon_threadsafe(done, result, None)

    db._tx.put_nowait((loop.create_future(), run))


def _check_aiosqlite(db: aiosqlite.Connection | None = None) -> None:
    """Refuse to start on an aiosqlite without the internals `_on_connection_thread` uses.

    `Connection._conn` is checked before anything is opened; `_tx`, an instance attribute,
    on the opened connection `db`.
    """
    if isinstance(getattr(aiosqlite.Connection, "_conn", None), property) and (
        db is None or callable(getattr(getattr(db, "_tx", None), "put_nowait", None))
    ):
        return
    version = getattr(aiosqlite, "__version__", "of unknown version")
    raise StoreError(
        f"aiosqlite {version} lacks Connection._conn or Connection._tx, which the store's "
        "writer uses to commit a batch in one call; install the aiosqlite version "
        "pyproject.toml allows"
    )


def _commit_batch(
    statements: list[Statement],
    writes: list[tuple[Op, ...]],
    statements_of: Callable[[Sequence[Op]], list[Statement]],
    restart_wal: bool,
    conn: sqlite3.Connection,
) -> dict[int, Exception]:
    """One batch's transaction, on the connection thread: apply `statements` and commit.

    If one write is rejected (`_OP_ERRORS`), redo the batch write by write, each in a savepoint,
    so the rejected ones fail alone and the rest commit. Returns the rejected writes' errors by
    index in `writes`. Any other error rolls the transaction back, here in the same round trip,
    and propagates: nothing of the batch is saved. `restart_wal`: see `_Checkpointer`.
    """
    if restart_wal:
        with contextlib.suppress(sqlite3.Error):  # an optimisation; the checkpointer reports
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    try:
        return _apply_batch(statements, writes, statements_of, conn)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise


def _apply_batch(
    statements: list[Statement],
    writes: list[tuple[Op, ...]],
    statements_of: Callable[[Sequence[Op]], list[Statement]],
    conn: sqlite3.Connection,
) -> dict[int, Exception]:
    """`_commit_batch` without the rollback on failure."""
    conn.execute("BEGIN IMMEDIATE")
    rejected: dict[int, Exception] = {}
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
    conn.execute("COMMIT")
    return rejected


def _merged(earlier: Touch, later: Touch) -> Touch:
    """One touch with the effect of applying `earlier`, then `later`, to a stored session."""
    return Touch(
        later.session_id,
        max(earlier.last_active_at, later.last_active_at),
        max(earlier.turns, later.turns),
        max(earlier.prompt_tokens, later.prompt_tokens),
        max(earlier.completion_tokens, later.completion_tokens),
        max(earlier.errors, later.errors),
        later.agent_type or earlier.agent_type,
    )


# --- checkpoints ---------------------------------------------------------------------------------


class _Checkpointer:
    """Copies committed WAL frames into the database file, from its own connection and thread.

    The writer runs with `wal_autocheckpoint = 0`, so no commit pays for a checkpoint (the
    commit that crossed 1,000 WAL pages used to copy them all and fsync the database file,
    several milliseconds on the acknowledgement path). Every `CHECKPOINT_S` this thread runs a
    PASSIVE checkpoint, which never blocks the writer or readers and syncs the WAL before and
    the database file after copying, as the store's `synchronous` setting asks.

    Copying is not enough to bound the WAL: SQLite restarts the log from its beginning only
    when a write transaction starts after every frame was copied, and under steady load the
    writer keeps appending while a concurrent checkpoint runs (at 1,000 engine turns/s it
    appends ~7,000 frames a second and the log never restarts by itself). So when the log has
    grown to `WAL_RESTART_FRAMES`, this thread runs a second, short pass and `take_restart()`
    asks the writer's next batch to checkpoint first, on its own connection: that copies only
    the frames committed during the short pass, and the batch's transaction then restarts the
    log (SQLite syncs the new log header at that commit). That costs one batch a few
    milliseconds per ~8 MB of log; automatic checkpoints cost one batch the copy of a whole
    4 MB every 4 MB. Restarting early matters too: commits that grow the -wal file are slower
    than commits that overwrite a restarted log. If this thread falls behind or fails (errors
    are logged and retried), the WAL grows until a pass succeeds; the file on disk is cut back
    to `journal_size_limit` when the log restarts, and close() truncates it.
    """

    def __init__(self, path: Path, synchronous: str, every_s: float) -> None:
        self.path = path
        self.checkpoints = 0  # passes run
        self.wal_frames = 0  # frames in the log at the last pass
        self._synchronous = synchronous
        self._every_s = every_s
        self._restart = False
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"store-checkpointer {path}", daemon=True
        )
        self._thread.start()

    def take_restart(self) -> bool:
        """True once after a pass found the log too long: the caller checkpoints first."""
        restart, self._restart = self._restart, False
        return restart

    async def stop(self) -> None:
        """Finish the pass under way, if any, and close the connection."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._every_s):
                try:
                    conn = conn or self._connect()
                    self._checkpoint(conn)
                except Exception as exc:  # keep trying: the WAL only grows without this thread
                    self._report(exc)
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """One pass; if the log is too long, a second one right away, so that the writer's
        catch-up has only the frames committed during that short pass left to copy."""
        frames = self._pass(conn)
        if frames >= WAL_RESTART_FRAMES:
            self._pass(conn)
            self._restart = True
        self._last_error = None

    def _pass(self, conn: sqlite3.Connection) -> int:
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        self.wal_frames = frames
        return frames

    def _report(self, exc: Exception) -> None:
        """Log a failure once, not at every pass, until a pass succeeds."""
        error = str(_store_error(self.path, exc, "a background checkpoint"))
        if error != self._last_error:
            log.warning("%s; the WAL grows until a checkpoint succeeds", error)
        self._last_error = error


# --- opening -----------------------------------------------------------------------------------


def _lock(path: Path) -> int:
    """Hold `<path>.lock` exclusively until `_unlock`; refuse a file another store holds.

    An flock belongs to the open file description: a second open in this process conflicts
    too, and the OS drops the lock when the holder dies. It never blocks, so it runs on the
    loop: in a thread, a cancelled open could leave the lock taken and its descriptor lost.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {path.parent} for store {path}: {exc.strerror}; "
            "choose a writable location"
        ) from exc
    lock_path = Path(f"{path}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {lock_path} for store {path}: {exc.strerror}; "
            "make the folder writable or choose a writable location"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StoreError(
            f"store {path} is open in another engine (pid {holder}); stop it, or give this "
            "engine its own data_dir"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(
            f"cannot lock {lock_path} for store {path}: {exc.strerror}; "
            "put the store on a local file system"
        ) from exc
    # The pid only names the holder in a refusal. A full disk fails here first and is better
    # reported by the first write at start-up, with the database's own advice.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """The pid the holder wrote, or "unknown" if it has not written it (yet) or could not."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _unlock(fd: int) -> None:
    """Unlock before closing: a child forked meanwhile shares the lock and would keep it."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _check_file(path: Path) -> None:
    """Refuse a file that is not ours, through a read-only connection that cannot change it."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(
            f"cannot read store {path}: {exc.strerror}; point the store at a readable file"
        ) from exc
    if not header:
        return  # an empty file is an empty database to SQLite
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(
            f"store {path} is not a SQLite database; it was left untouched: "
            "move it away or configure another store path"
        )
    latest = len(migrations.MIGRATIONS)
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "opening read-only to check it") from exc
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if app_id != migrations.APPLICATION_ID and (app_id != 0 or objects):
            raise StoreError(
                f"store {path} is a SQLite database that belongs to another application "
                f"(application_id {app_id:#x}, expected {migrations.APPLICATION_ID:#x}); it "
                "was left untouched: configure another store path"
            )
        if version > latest:
            raise StoreError(
                f"store {path} was written by a newer version of the engine (schema v{version}, "
                f"this code knows up to v{latest}); upgrade the engine to open it. The file was "
                "left untouched"
            )
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(
                f"store {path} is corrupt ({'; '.join(problems)}); it was left untouched: "
                "restore it from a backup, or move it away to start empty"
            )
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "checking") from exc
    finally:
        conn.close()


async def _connect(path: Path, synchronous: str) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "opening") from exc
    try:
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        for pragma in _PRAGMAS:
            await db.execute(pragma)
        (mode,) = next(iter(await db.execute_fetchall("PRAGMA journal_mode = WAL")))
    except sqlite3.Error as exc:
        await db.close()
        raise _store_error(path, exc, "configuring") from exc
    if mode != "wal":
        await db.close()
        raise StoreError(
            f"store {path} cannot use write-ahead logging (journal mode stays {mode!r}); "
            "put it on a local file system"
        )
    return db


async def _prepare(db: aiosqlite.Connection, path: Path) -> bool:
    """Create or migrate the schema and record the open; True if the last run closed cleanly.

    The metadata update doubles as a write probe: a read-only file or a full disk fails here,
    at start-up, rather than on the first user's message.
    """
    latest = len(migrations.MIGRATIONS)
    try:
        await db.execute("BEGIN IMMEDIATE")
        (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
        if version > latest:  # changed since the read-only check
            raise StoreError(
                f"store {path} was written by a newer version of the engine (schema v{version}, "
                f"this code knows up to v{latest}); upgrade the engine to open it"
            )
        for step in migrations.MIGRATIONS[version:]:
            for statement in step:
                await db.execute(statement)
        if version < latest:
            await db.execute(f"PRAGMA application_id = {migrations.APPLICATION_ID}")
            await db.execute(f"PRAGMA user_version = {latest}")
        rows = list(
            await db.execute_fetchall("SELECT value FROM store_meta WHERE key = 'clean_shutdown'")
        )
        await db.execute(
            "INSERT INTO store_meta VALUES ('clean_shutdown', 0)"
            " ON CONFLICT (key) DO UPDATE SET value = 0"
        )
        await db.execute(
            "INSERT INTO store_meta VALUES ('opens', 1)"
            " ON CONFLICT (key) DO UPDATE SET value = value + 1"
        )
        await db.execute("COMMIT")
    except Exception as exc:
        with contextlib.suppress(Exception):
            if db.in_transaction:
                await db.execute("ROLLBACK")
        if isinstance(exc, StoreError):
            raise
        raise _store_error(path, exc, "the first write at start-up") from exc
    return bool(rows[0][0]) if rows else True


# --- helpers -----------------------------------------------------------------------------------


def _store_error(path: Path, exc: BaseException, doing: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_IOERR and _disk_full(path):
        code = _SQLITE_FULL  # SQLite reports a failed -shm or -wal allocation as an I/O error
    advice = _ADVICE.get(code, "check the file and the disk it is on")
    return StoreError(f"store {path}: {doing} failed ({type(exc).__name__}: {exc}); {advice}")


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 64 * 1024
    except OSError:
        return False


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def _read_live(path: Path, now: float, clean_shutdown: bool) -> Restored:
    """Bulk reads for `load_live`, ordered so each conversation comes out whole and in order."""
    conn = sqlite3.connect(_read_only_uri(path), uri=True)
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects would trigger many pointless collections
    try:
        sessions = [SessionRow(*row) for row in conn.execute(_SELECT_SESSIONS)]
        messages: dict[str, list[MessageRow]] = {}
        count = 0
        current_id: str | None = None
        current: list[MessageRow] = []
        for row in conn.execute(_SELECT_MESSAGES):
            if row[0] != current_id:
                current_id = row[0]
                current = messages[current_id] = []
            current.append(MessageRow(*row))
            count += 1
        quota = [QuotaEvent(*row) for row in conn.execute(_SELECT_QUOTA, (now,))]
        alerts = [AlertRow(*row[:9], bool(row[9]), row[10]) for row in conn.execute(_SELECT_ALERTS)]
        since = (now - METRICS_RESTORE_S,)
        metrics = [MetricsRow(*row) for row in conn.execute(_SELECT_METRICS, since)]
        (max_alert_id,) = conn.execute("SELECT coalesce(max(alert_id), 0) FROM alerts").fetchone()
    finally:
        if collecting:
            gc.enable()
        conn.close()
    return Restored(
        sessions=sessions,
        messages=messages,
        quota=quota,
        alerts=alerts,
        metrics=metrics,
        max_alert_id=max_alert_id,
        clean_shutdown=clean_shutdown,
        counts=RestoreCounts(
            sessions=len(sessions),
            purged=0,
            messages=count,
            quota_buckets=len(quota),
            alerts=len(alerts),
        ),
    )


def _read_only_uri(path: Path) -> str:
    return f"file:{quote(str(path.resolve()))}?mode=ro"


def _rewrap_rows(
    fn: Callable[[bytes], bytes], rows: list[tuple[str, bytes]]
) -> tuple[list[tuple[str, bytes]], list[str]]:
    updates: list[tuple[str, bytes]] = []
    failed: list[str] = []
    for session_id, wrapped in rows:
        try:
            updates.append((session_id, fn(wrapped)))
        except Exception:  # fn is the caller's; a key it cannot open stays as it was
            failed.append(session_id)
    return updates, failed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
