"""The SQLite backend: one file in WAL mode, written through a connection thread the store owns.

Why it is built this way:

- Durability: in WAL mode with `synchronous=FULL` (durability "power", the default) every
  commit fsyncs the log, so nothing the writer acknowledged is lost to `kill -9` or a power
  cut; with "process" (`synchronous=NORMAL`) the commit stays in the OS page cache and
  survives the process dying, not the machine.
- A batch is one call on the connection thread (`transactions.commit_batch`): begin, apply,
  commit or roll back, and the thread itself schedules the writer's callback. The thread is
  the store's own, not aiosqlite's (`connection.py` says why).
- Commits never checkpoint (`wal_autocheckpoint = 0`): the `Checkpointer` copies the WAL into
  the database file from its own connection and thread, and says how the WAL stays bounded.
- Crypto-shredding: `secure_delete` zeroes the bytes a deleted session row frees, its wrapped
  key among them. The zeroed page reaches the database file at the checkpointer's next pass
  (every `checkpoint_s`); older -wal frames may hold the key until the log restarts and new
  frames overwrite them, and `aclose()` empties the -wal.
- One store per file (`filelock.py`), and a file that fails a check at open is left untouched
  (`checks.py`). A file too large to read whole at start-up has its pages checked after open,
  beside the writes, and a problem is logged (`checks.IntegrityCheck`). A file deleted or
  replaced while open fails every commit until it is put back (`checks.FileIdentity`):
  SQLite alone would go on writing where no restart can read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from engine.config import StoreSettings
from engine.errors import StoreError
from engine.store.backend import CommitDone, StorageFigures
from engine.store.ops import Op, Restored, RewrapReport, SessionRecord, StoredSession
from engine.store.sqlite import filelock
from engine.store.sqlite.checkpointer import Checkpointer
from engine.store.sqlite.checks import FileIdentity, IntegrityCheck, check_file, store_error
from engine.store.sqlite.connection import ConnectionThread
from engine.store.sqlite.restore import (
    count_sessions,
    read_live,
    read_page,
    read_record,
    read_session,
)
from engine.store.sqlite.statements import SqliteStatements
from engine.store.sqlite.transactions import (
    close_out,
    commit_batch,
    connect,
    prepare,
    purge_expired,
    rewrap,
)


class SqliteBackend:
    """`Backend` on one SQLite file. Create with `await SqliteBackend.open(path, settings)`."""

    def __init__(
        self,
        path: Path,
        connection: ConnectionThread,
        settings: StoreSettings,
        *,
        clean_shutdown: bool,
        lock_fd: int,
        identity: FileIdentity,
        integrity: IntegrityCheck | None = None,
    ) -> None:
        """Use `open`, which locks, checks and migrates the file first."""
        self.path = path
        self.location = str(path)
        self.clean_shutdown = clean_shutdown
        self.connection = connection
        self.checkpointer = Checkpointer(
            path, _synchronous(settings), identity, settings.checkpoint_s,
            settings.wal_restart_frames,
        )
        self._statements = SqliteStatements(
            settings.audit_retention_s, settings.alert_keep, settings.metrics_keep_s
        )
        self._lock_fd = lock_fd
        self._identity = identity
        self.integrity = integrity  # a large file's pages, checked after open

    @classmethod
    async def open(cls, path: Path, settings: StoreSettings) -> SqliteBackend:
        """Lock the file, check it read-only, connect, and migrate it forward.

        From `settings`: `durability` (the module docstring says what each level survives),
        `audit_retention_s`, `alert_keep` and `metrics_keep_s` (what a `Prune` keeps), and
        the checkpointer's `checkpoint_s` and `wal_restart_frames`.
        """
        lock_fd = filelock.lock(path)  # before anything reads the file: it may be another's
        try:
            checked = await asyncio.to_thread(check_file, path)
            connection = await ConnectionThread.open(
                partial(connect, path, _synchronous(settings)), name=f"store-writer {path}"
            )
            try:
                clean = await connection.run(partial(prepare, path))
                identity = await asyncio.to_thread(FileIdentity.of, path)
                integrity = None if checked else IntegrityCheck(path)
                if integrity is not None:
                    integrity.start()
                return cls(
                    path, connection, settings, clean_shutdown=clean, lock_fd=lock_fd,
                    identity=identity, integrity=integrity,
                )
            except BaseException:
                await connection.aclose()
                raise
        except BaseException:
            filelock.unlock(lock_fd)
            raise

    def commit(self, writes: Sequence[tuple[Op, ...]], done: CommitDone) -> None:
        """Statements are built here on the loop; the transaction is one connection call."""
        statements = self._statements.of([op for ops in writes for op in ops])
        batch = partial(
            commit_batch,
            statements,
            writes,
            self._statements.of,
            self.checkpointer.take_restart(),
            self._identity,
        )
        self.connection.call(batch, done)

    async def load_live(self, now: float, *, sessions: bool = True) -> Restored:
        purged = await self.connection.run(partial(purge_expired, self._statements, now))
        return await asyncio.to_thread(
            partial(read_live, self.path, now, self.clean_shutdown, purged, sessions=sessions)
        )

    async def load_page(self, after: str, limit: int) -> list[SessionRecord]:
        return await asyncio.to_thread(read_page, self.path, after, limit)

    async def count_sessions(self) -> int:
        return await asyncio.to_thread(count_sessions, self.path)

    async def load_session(self, session_id: str) -> StoredSession | None:
        """On the writer's connection, so it reads every write committed before it."""
        return await self.connection.run(partial(read_session, session_id))

    async def load_record(self, session_id: str) -> SessionRecord | None:
        return await self.connection.run(partial(read_record, session_id))

    async def rewrap_keys(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        """`fn` runs on the connection thread, inside the transaction."""
        return await self.connection.run(partial(rewrap, fn))

    async def aclose(self) -> None:
        """Stop checkpointing, mark a clean shutdown, empty the WAL, close, unlock."""
        try:
            if self.integrity is not None:
                await self.integrity.stop()
            await self.checkpointer.stop()
            try:
                await self.connection.run(partial(close_out, self.path))
            finally:
                await self.connection.aclose()
        finally:
            filelock.unlock(self._lock_fd)

    def error(self, exc: BaseException, doing: str) -> StoreError:
        return store_error(self.path, exc, doing)

    def figures(self) -> StorageFigures:
        return StorageFigures(
            file_bytes=_size(self.path),
            wal_bytes=_size(self.path.with_name(self.path.name + "-wal")),
            checkpoints=self.checkpointer.checkpoints,
            wal_frames=self.checkpointer.wal_frames,
        )


def _synchronous(settings: StoreSettings) -> str:
    """FULL fsyncs the WAL at every commit (durability "power"); NORMAL leaves it to the OS."""
    return "FULL" if settings.durability == "power" else "NORMAL"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
