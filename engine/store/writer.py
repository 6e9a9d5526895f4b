"""The store: one group-commit writer in front of a database backend.

Why it is built this way:

- Every write goes through one writer that puts whatever concurrent turns queued into one
  transaction (group commit), so one fsync covers hundreds of writes. With `durable_ack` (the
  default) `write()` returns only after the transaction holding its ops has committed: nothing
  a caller was told is saved is lost to `kill -9` (or, with durability "power", a power
  cut). `durable_ack=False` returns as soon as the ops are queued; that is for
  benchmarks and risks the last few milliseconds of acknowledged writes on a crash, and a
  failed commit (disk full) is then only logged and counted, never reported to the writer.
  Those writes are paced while the writer is behind (`pacing.py`): past `pacing_ops` queued,
  each waits for a share of the queue ahead of it to commit, growing with the queue, so a
  sustained overload slows every writer a little instead of stalling a few for a catch-up.
- The writer is callbacks, not a task: the next batch starts as the previous commit's result
  arrives, and the first waiters are resolved straight from the backend's completion callback
  (for SQLite, scheduled by its connection thread), because under a busy event loop every
  extra hop through the loop is milliseconds of acknowledgement latency. The rest follow a
  share per loop iteration (`waking.py`), so a big batch's resumed turns never hold up
  everything else on the loop at once.
- All ops of one `write()` call commit together or not at all; an op rejected by a constraint
  (a message for a session that is not stored) fails its own `write()` only.
- Start-up reads and key rotation are exclusive jobs: they run alone between batches.
- The writer knows nothing of SQL: what it needs of a database is `Backend` (backend.py), and
  `Store.open` opens the default one, `SqliteBackend` on one file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engine.config import StoreSettings
from engine.errors import StoreError
from engine.store.backend import Backend
from engine.store.ops import (
    OP_KINDS,
    EndSession,
    MessageRow,
    Op,
    Prune,
    Restored,
    RewrapReport,
    SessionRecord,
    SessionRow,
    StoredSession,
    StoreStats,
)
from engine.store.pacing import Pacer
from engine.store.sqlite import SqliteBackend
from engine.store.waking import Outcome, Waker

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queued:
    """A write (ops) or an exclusive job (load, rewrap) waiting for the writer."""

    ops: tuple[Op, ...]
    future: asyncio.Future[Any] | None
    enqueued: float
    job: Callable[[], Awaitable[Any]] | None = None
    error: StoreError | None = None


class Store:
    """The engine's store. Create with `await Store.open(path, settings)` (an SQLite file) or
    `Store(backend, settings)` over another open `Backend`; `await aclose()`."""

    def __init__(self, backend: Backend, settings: StoreSettings | None = None) -> None:
        """Run the writer, on the running loop, over an open `backend`; `aclose()` closes it.

        The writer's tuning is `settings`' (`StoreSettings`, engine/config.py, says what each
        does); `Store.open` does this for an SQLite file.
        """
        self.settings = settings = settings or StoreSettings()
        self.backend = backend
        self.durable_ack = settings.durable_ack
        self._batch_s = settings.batch_ms / 1000
        self._batch_max = settings.batch_max
        self._paced_batch_max = settings.paced_batch_max
        self._backlog = settings.backlog_ops
        self._pacer = Pacer(settings.pacing_ops, settings.backlog_ops)
        self._taken_ops = 0  # ops handed to batches so far (the pacer's positions)
        self._done_ops = 0  # ops whose batch has finished, committed or not
        self._backlog_writes = 0
        self._loop = asyncio.get_running_loop()
        self._waker = Waker(self._loop)
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

    @classmethod
    async def open(cls, path: Path | str, settings: StoreSettings | None = None) -> Store:
        """Open the SQLite file at `path` (lock, check, migrate) and start the writer.

        `settings` (`StoreSettings`, the defaults if None) tune the writer and the file: how
        durable an acknowledgement is, batching, the backlog bound, what a prune keeps and
        the checkpointer; engine/config.py says what each does. `durable_ack=False`: see the
        module docstring for what it risks.
        """
        settings = settings or StoreSettings()
        backend = await SqliteBackend.open(Path(path), settings)
        return cls(backend, settings)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit everything queued, then close the backend (SQLite: mark a clean shutdown,
        close the file and release its lock). Idempotent."""
        if self._closer is None:
            self._closing = True
            self._stop_lingering()
            self._pump()
            self._closer = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._closer)

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, *ops: Op) -> None:
        """Queue `ops` to commit in one transaction; with durable_ack, return once committed.

        Without durable_ack, return at once unless the writer is behind: past `pacing_ops`
        queued, once a share of the queue ahead has committed; past `backlog_ops`, once these
        ops have. Raises StoreError when the transaction failed (nothing of it was saved) or
        when this write was rejected (e.g. a message for a session that is not stored).
        """
        self._check_ops(ops)
        depth = self._queued_ops
        if self.durable_ack or depth >= self._backlog:
            future = self._enqueue(ops, None, True)
            self._backlog_writes += not self.durable_ack
        else:
            self._enqueue(ops, None, False)  # takes no batch yet: the positions still hold
            future = self._pacer.hold(self._loop, self._taken_ops, depth)
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
    async def load_live(self, now: float, *, sessions: bool = True) -> Restored:
        """Purge sessions whose deadline passed, prune, and return everything still live
        (without `sessions`: how many sessions, not the sessions; `load_page` reads them).

        Bulk reads ordered by (session_id, seq), never a query per session.
        """
        return await self._submit(partial(self.backend.load_live, now, sessions=sessions))

    async def count_sessions(self) -> int:
        """How many sessions are stored: a count of a whole index (about 0.1 s a million rows
        in the OS's cache, seconds when not), read beside the commits."""
        return await self.backend.count_sessions()

    async def load_page(self, after: str, limit: int) -> list[SessionRecord]:
        """A page of stored sessions' compact records, ids after `after` in id order.

        Not an exclusive job: it is read beside the commits, so a start-up paging through a
        million sessions never holds up a turn's commit. Writes still queued may be missing
        from it; they belong to sessions the engine already holds."""
        return await self.backend.load_page(after, limit)

    async def load_session(self, session_id: str) -> StoredSession | None:
        """One session's wrapped key and messages, oldest first (None once it has ended).

        An exclusive job like `load_live`: it runs after every write queued before it has
        committed, so a session demoted with writes still queued reads them back.
        """
        return await self._submit(partial(self.backend.load_session, session_id))

    async def load_record(self, session_id: str) -> SessionRecord | None:
        """One session's compact record (no key, no message; None once it has ended), for a
        worker of a cluster that has not seen the session. After the writes queued before it."""
        return await self._submit(partial(self.backend.load_record, session_id))

    async def rewrap_keys(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        """Replace every wrapped key by `fn(wrapped)` in one transaction (pass keyring.rewrap).

        Message ciphertext is untouched. `fn` runs off the event loop (SQLite: on the
        connection thread). A key `fn` cannot
        rewrap is left as it was and listed in `failed`: do not drop the old master key while
        any remain.
        """
        return await self._submit(partial(self.backend.rewrap_keys, fn))

    def stats(self) -> StoreStats:
        figures = self.backend.figures()
        return StoreStats(
            path=self.backend.location,
            durable_ack=self.durable_ack,
            queue_depth=self._queued_ops,
            batches=self._batches,
            writes=self._writes,
            ops=self._ops,
            avg_batch_ops=self._ops / self._batches if self._batches else 0.0,
            last_commit_ms=self._last_commit_ms,
            failed_batches=self._failed,
            rejected_writes=self._rejected,
            paced_writes=self._pacer.paced,
            backlog_writes=self._backlog_writes,
            last_error=self._last_error,
            file_bytes=figures.file_bytes,
            wal_bytes=figures.wal_bytes,
            checkpoints=figures.checkpoints,
            wal_frames=figures.wal_frames,
        )

    # -- the writer ------------------------------------------------------------------------------
    # No task: `_pump` starts the next batch or job when the writer is free, and `_batch_done`
    # runs straight from the backend's completion (for SQLite, scheduled by its thread). After
    # a commit, its acknowledgements cost two loop iterations (that callback, then the callers
    # resuming) and the next batch starts in the first; a writer task took three and two, and
    # under a busy loop an iteration can take milliseconds. A write that finds the writer idle
    # waits one iteration, as for the task.
    def _check_ops(self, ops: tuple[Op, ...]) -> None:
        for op in ops:
            if type(op) not in OP_KINDS:
                raise TypeError(f"not a store op: {op!r}")

    def _enqueue(
        self, ops: tuple[Op, ...], job: Callable[[], Awaitable[Any]] | None, wait: bool
    ) -> asyncio.Future[Any] | None:
        if self._closing:
            raise StoreError(
                f"store {self.backend.location} is closed; open it again to read or write"
            )
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
        if self._waker.settling and self._queued_ops < self._batch_max:
            # Writers are still being resumed a share per iteration and write next: one
            # batch for them all, not one per share.
            self._loop.call_soon(self._scheduled_pump)
            return
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
        """Whole writes, oldest first, up to batch_max ops (a bigger single write goes alone);
        up to paced_batch_max while writes are paced, whose waits end as batches do: small
        batches keep those waits short and alike (`pacing.py`)."""
        batch: list[_Queued] = []
        count = 0
        queue = self._queue
        pacing = not self.durable_ack and self._queued_ops > self._pacer.pacing_ops
        limit = min(self._batch_max, self._paced_batch_max) if pacing else self._batch_max
        while queue and queue[0].job is None:
            size = len(queue[0].ops)
            if batch and count + size > limit:
                break
            batch.append(queue.popleft())
            count += size
        self._queued_ops -= count
        self._taken_ops += count
        return batch

    def _start_batch(self, batch: list[_Queued]) -> None:
        """Hand the batch to the backend; `_batch_done` hears how it went."""
        self._busy = True
        done = partial(self._batch_done, batch, time.perf_counter())
        try:
            self.backend.commit([queued.ops for queued in batch], done)
        except Exception as exc:  # an op the backend cannot take: fail it like a commit
            self._loop.call_soon(done, None, exc)

    def _batch_done(
        self,
        batch: list[_Queued],
        started: float,
        rejected: dict[int, Exception] | None,
        error: BaseException | None,
    ) -> None:
        """Resolve the batch's waiters and start the next batch: the writer outlives anything."""
        outcomes: list[Outcome] = []
        try:
            if error is None:
                self._batch_committed(batch, rejected or {}, started, outcomes)
            else:
                self._batch_failed(batch, error, outcomes)
        finally:
            self._done_ops += sum(len(queued.ops) for queued in batch)
            outcomes.extend((future, None) for future in self._pacer.release(self._done_ops))
            self._busy = False
            self._pump()
            self._waker.settle(outcomes)

    def _batch_failed(
        self, batch: list[_Queued], exc: BaseException, outcomes: list[Outcome]
    ) -> None:
        """Nothing of the batch was saved (rolled back): every waiter hears it."""
        error = self.backend.error(exc, f"committing {len(batch)} writes")
        self._failed += 1
        self._last_error = str(error)
        if any(queued.future is None for queued in batch):
            log.error("%s", error)  # someone was not waiting to hear it
        outcomes.extend((queued.future, error) for queued in batch if queued.future is not None)

    def _batch_committed(
        self,
        batch: list[_Queued],
        rejected: dict[int, Exception],
        started: float,
        outcomes: list[Outcome],
    ) -> None:
        for index, exc in rejected.items():
            batch[index].error = self.backend.error(exc, "a write")
        self._last_commit_ms = (time.perf_counter() - started) * 1000
        self._batches += 1
        self._writes += len(batch)
        self._ops += sum(len(queued.ops) for queued in batch)
        self._last_batch_writes = len(batch)
        for queued in batch:
            if queued.error is not None:
                self._rejected += 1
                self._last_error = str(queued.error)
                if queued.future is None:
                    log.error("%s", queued.error)
            if queued.future is not None:
                outcomes.append((queued.future, queued.error))

    def _start_job(self, queued: _Queued) -> None:
        self._busy = True
        self._job = self._loop.create_task(self._run_job(queued))

    async def _run_job(self, queued: _Queued) -> None:
        """A maintenance job, alone: no batch commits until it is done."""
        assert queued.job is not None
        try:
            result = await queued.job()
        except Exception as exc:
            _fail(queued.future, self.backend.error(exc, "a maintenance job"))
        else:
            if queued.future is not None and not queued.future.done():
                queued.future.set_result(result)
        finally:
            cancelled = f"store {self.backend.location}: a maintenance job was cancelled"
            _fail(queued.future, StoreError(cancelled))
            self._job = None
            self._busy = False
            self._pump()

    async def _shutdown(self) -> None:
        """Once everything queued has committed, close the backend."""
        await self._drained.wait()
        await self.backend.aclose()


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)
