"""Durable storage: one SQLite file through aiosqlite, written by group commit.

Why it is built this way:

- Every write goes through one writer task that puts whatever concurrent turns queued into one
  transaction (group commit), so one fsync covers hundreds of writes. With `durable_ack` (the
  default) `write()` returns only after the transaction holding its ops has committed, in WAL
  mode with `synchronous=FULL` (`power_safe`, the default): nothing a caller was told is saved
  is lost to `kill -9` or a power cut (with `power_safe=False`, to `kill -9` only).
  `durable_ack=False` returns as soon as the ops are queued; that is for benchmarks
  and risks the last few milliseconds of acknowledged writes on a crash, and a failed commit
  (disk full) is then only logged and counted, never reported to the writer.
- All ops of one `write()` call commit together or not at all; an op rejected by a constraint
  (a message for a session that is not stored) fails its own `write()` only.
- The store keeps bytes and records and knows nothing of the engine: message content arrives
  encrypted with the session's data key, the data key arrives wrapped by the master key, tokens
  arrive hashed. Deleting a session's row deletes its wrapped key (crypto-shredding), and
  `secure_delete` zeroes the freed bytes in the file.
- A file that fails a check at open (not SQLite, another application's, a newer schema,
  corrupt) is inspected through a read-only connection and never modified; the `StoreError`
  names the file and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
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
BACKLOG_BATCHES = 64  # without durable_ack, writers wait once this many full batches are queued
_SQLITE_MAGIC = b"SQLite format 3\x00"

# synchronous is set per store (power_safe). secure_delete zeroes deleted rows, so a shredded
# wrapped key does not linger in free space.
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA secure_delete = ON",
    "PRAGMA cache_size = -32768",
    "PRAGMA journal_size_limit = 67108864",
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


@dataclass(slots=True)
class _Queued:
    """A write (ops) or an exclusive job (load, rewrap) waiting for the writer task."""

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
_TOUCH = """
UPDATE sessions SET
    last_active_at = max(last_active_at, ?2),
    turns = max(turns, ?3),
    prompt_tokens = max(prompt_tokens, ?4),
    completion_tokens = max(completion_tokens, ?5),
    errors = max(errors, ?6),
    agent_type = coalesce(nullif(?7, ''), agent_type)
WHERE session_id = ?1
"""
_UPDATE_TOKEN = (
    "UPDATE sessions SET token_hash = ?2, token_issued_at = ?3, token_expires_at = ?4"
    " WHERE session_id = ?1"
)
_ASSIGN = "UPDATE sessions SET worker = ?2 WHERE session_id = ?1"
_INSERT_MESSAGE = (
    "INSERT INTO messages (session_id, seq, role, ciphertext, at, size) VALUES (?, ?, ?, ?, ?, ?)"
)
_TRIM = "DELETE FROM messages WHERE session_id = ?1 AND seq <= ?2"
_ADD_USAGE = """
INSERT INTO quota_usage (user_id, resource, window_s, bucket, at, amount, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5 + ?3)
ON CONFLICT (user_id, resource, window_s, bucket) DO UPDATE SET
    amount = amount + excluded.amount,
    at = max(at, excluded.at),
    expires_at = max(expires_at, excluded.expires_at)
"""
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
    ) -> None:
        """Use `Store.open`, which checks the file first."""
        self.path = path
        self.durable_ack = durable_ack
        self.retention_s = retention_s
        self.alert_keep = alert_keep
        self.metrics_keep_s = metrics_keep_s
        self.clean_shutdown = clean_shutdown
        self._db = db
        self._batch_s = batch_ms / 1000
        self._batch_max = batch_max
        self._backlog = batch_max * BACKLOG_BATCHES
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Queued] = deque()
        self._queued_ops = 0
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._inflight: list[_Queued] = []
        self._last_batch_writes = 0
        self._closing = False
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
        self._writer = asyncio.create_task(self._run_writer(), name=f"store-writer {path}")

    @classmethod
    async def open(
        cls,
        path: Path | str = DEFAULT_PATH,
        *,
        durable_ack: bool = True,
        batch_ms: float = 0.0,
        batch_max: int = 512,
        retention_s: float = 0.0,
        alert_keep: int = 1000,
        metrics_keep_s: float = 7 * 86400.0,
        power_safe: bool = True,
    ) -> Store:
        """Check the file, migrate it forward, and start the writer.

        `power_safe` (synchronous=FULL) fsyncs the WAL at every commit, so an acknowledged
        write survives a power cut. False (synchronous=NORMAL) leaves the commit in the OS page
        cache: it still survives the process crashing or being killed, not the machine
        losing power, and an acknowledgement then costs a write() instead of an fsync.

        The writer commits as soon as it is free; writes queued meanwhile form the next batch,
        so batches grow by themselves with load and with slow disks. `batch_ms` > 0 makes it
        also wait up to that long (from the oldest queued write, only while writes arrive
        concurrently) for a fuller batch: fewer fsyncs for that much more latency (see
        benchmarks/store.py). `batch_max` caps ops per transaction. `durable_ack=False`: see the
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
        await asyncio.to_thread(_check_file, path)
        db = await _connect(path, power_safe)
        try:
            clean = await _prepare(db, path)
        except BaseException:
            await db.close()
            raise
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
        )

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit everything queued, mark a clean shutdown, close the file. Idempotent."""
        if self._closer is None:
            self._closing = True
            self._wakeup.set()
            self._full.set()
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
        )

    # -- the writer task -------------------------------------------------------------------------
    def _check_ops(self, ops: tuple[Op, ...]) -> None:
        for op in ops:
            if type(op) not in self._kinds:
                raise TypeError(f"not a store op: {op!r}")

    def _enqueue(
        self, ops: tuple[Op, ...], job: Callable[[], Awaitable[Any]] | None, wait: bool
    ) -> asyncio.Future[Any] | None:
        if self._closing:
            raise StoreError(f"store {self.path} is closed; open it again to read or write")
        if self._writer.done():
            raise StoreError(f"store {self.path} stopped writing; restart the engine")
        future = self._loop.create_future() if wait else None
        self._queue.append(_Queued(ops, future, self._loop.time(), job))
        self._queued_ops += len(ops)
        self._wakeup.set()
        if self._queued_ops >= self._batch_max:
            self._full.set()
        return future

    async def _submit(self, job: Callable[[], Awaitable[Any]] | None) -> Any:
        """Run `job` alone in the writer's turn (None: an empty write) and wait for it."""
        future = self._enqueue((), job, True)
        assert future is not None
        return await future

    async def _run_writer(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if self._queue[0].job is not None:
                    self._inflight = [self._queue.popleft()]
                    await self._run_job(self._inflight[0])
                else:
                    await self._linger()
                    self._inflight = self._take_batch()
                    await self._commit(self._inflight)
                self._inflight = []
        finally:
            # Never leave a caller waiting forever.
            error = StoreError(
                f"store {self.path} stopped before this write was confirmed; it may not be saved"
            )
            for queued in (*self._inflight, *self._queue):
                _fail(queued.future, error)
            self._queue.clear()

    async def _linger(self) -> None:
        """Wait up to batch_ms (counted from the oldest queued write) for a fuller batch.

        Only while writes arrive concurrently: a lone writer gains nothing from waiting.
        """
        if (
            self._batch_s <= 0
            or self._closing
            or self._last_batch_writes < 2
            or self._queued_ops >= self._batch_max
        ):
            return
        delay = self._queue[0].enqueued + self._batch_s - self._loop.time()
        if delay > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._full.wait()

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

    async def _commit(self, batch: list[_Queued]) -> None:
        ops = [op for queued in batch for op in queued.ops]
        started = time.perf_counter()
        try:
            commit = partial(
                _commit_batch, self._statements(ops), [q.ops for q in batch], self._statements
            )
            rejected = await _on_connection_thread(self._db, commit)
        except Exception as exc:  # the writer must outlive any failure, or writers hang
            await self._rollback()
            error = _store_error(self.path, exc, f"committing {len(batch)} writes")
            self._failed += 1
            self._last_error = str(error)
            if any(queued.future is None for queued in batch):
                log.error("%s", error)  # someone was not waiting to hear it
            for queued in batch:
                _fail(queued.future, error)
            return
        for index, exc in rejected.items():
            batch[index].error = _store_error(self.path, exc, "a write")
        self._last_commit_ms = (time.perf_counter() - started) * 1000
        self._batches += 1
        self._writes += len(batch)
        self._ops += len(ops)
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

    async def _run_job(self, queued: _Queued) -> None:
        assert queued.job is not None
        try:
            result = await queued.job()
        except Exception as exc:
            await self._rollback()
            _fail(queued.future, _store_error(self.path, exc, "a maintenance job"))
        else:
            if queued.future is not None and not queued.future.done():
                queued.future.set_result(result)

    async def _rollback(self) -> None:
        """After a failure SQLite may already have rolled back; never raise from here."""
        with contextlib.suppress(Exception):
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")

    async def _shutdown(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        try:
            await self._db.execute(
                "UPDATE store_meta SET value = 1 WHERE key = 'clean_shutdown'"
            )
        except sqlite3.Error as exc:
            log.warning("%s", _store_error(self.path, exc, "marking a clean shutdown"))
        await self._db.close()

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
        yield _TOUCH, [
            (
                op.session_id, op.last_active_at, op.turns, op.prompt_tokens,
                op.completion_tokens, op.errors, op.agent_type,
            )
            for op in ops
        ]

    def _messages_sql(self, rows: list[MessageRow]) -> Statements:
        yield _INSERT_MESSAGE, [
            (r.session_id, r.seq, r.role, r.ciphertext, r.at, r.size) for r in rows
        ]

    def _trim_sql(self, ops: list[TrimMessages]) -> Statements:
        yield _TRIM, [(op.session_id, op.through_seq) for op in ops]

    def _usage_sql(self, events: list[QuotaEvent]) -> Statements:
        yield _ADD_USAGE, [
            (
                e.user_id, e.resource, e.window_s,
                math.floor(e.at * QUOTA_BUCKETS_PER_WINDOW / e.window_s), e.at, e.amount,
            )
            for e in events
        ]

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
    db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]
) -> Awaitable[T]:
    """Run `fn(raw sqlite3 connection)` on aiosqlite's connection thread, as one round trip.

    Each `await db.execute(...)` is a round trip from the event loop to aiosqlite's thread and
    back, and under a busy loop every one of them waits for a loop iteration, so a commit made of
    several awaits acknowledges late under load. aiosqlite exposes no public way to run several
    statements in one round trip; its private `Connection._execute(fn)` queues any callable on
    that thread (`_check_aiosqlite` verifies it exists at open; pyproject.toml pins aiosqlite's
    upper bound). The raw connection (`_conn`) is fetched on that thread, the only one that may
    use it.
    """
    return db._execute(lambda: fn(db._conn))


def _check_aiosqlite() -> None:
    """Refuse to start on an aiosqlite without the internals `_on_connection_thread` uses."""
    connection = aiosqlite.Connection
    if not (
        callable(getattr(connection, "_execute", None))
        and isinstance(getattr(connection, "_conn", None), property)
    ):
        version = getattr(aiosqlite, "__version__", "of unknown version")
        raise StoreError(
            f"aiosqlite {version} lacks Connection._execute or Connection._conn, which the "
            "store's writer uses to commit a batch in one call; install the aiosqlite version "
            "pyproject.toml allows"
        )


def _commit_batch(
    statements: list[Statement],
    writes: list[tuple[Op, ...]],
    statements_of: Callable[[Sequence[Op]], list[Statement]],
    conn: sqlite3.Connection,
) -> dict[int, Exception]:
    """One batch's transaction, on the connection thread: apply `statements` and commit.

    If one write is rejected (`_OP_ERRORS`), redo the batch write by write, each in a savepoint,
    so the rejected ones fail alone and the rest commit. Returns the rejected writes' errors by
    index in `writes`. Any other error propagates with the transaction left for the caller's
    rollback: nothing of the batch is saved.
    """
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


# --- opening -----------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    """Refuse a file that is not ours, through a read-only connection that cannot change it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {path.parent} for store {path}: {exc.strerror}; "
            "choose a writable location"
        ) from exc
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


async def _connect(path: Path, power_safe: bool) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "opening") from exc
    try:
        await db.execute(f"PRAGMA synchronous = {'FULL' if power_safe else 'NORMAL'}")
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
