"""The checkpointer: copies committed WAL frames into the database file on its own thread.

It runs plain `sqlite3` on a connection and thread of its own, so no commit on the writer's
connection ever pays for a checkpoint; the class docstring says how the WAL stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

from engine.store.sqlite.checks import FileIdentity, store_error

log = logging.getLogger(__name__)


class Checkpointer:
    """Copies committed WAL frames into the database file, from its own connection and thread.

    The writer runs with `wal_autocheckpoint = 0`, so no commit pays for a checkpoint (the
    commit that crossed 1,000 WAL pages used to copy them all and fsync the database file,
    several milliseconds on the acknowledgement path). Every `every_s` this thread runs a
    PASSIVE checkpoint, which never blocks the writer or readers and syncs the WAL before and
    the database file after copying, as the store's `synchronous` setting asks.

    Copying is not enough to bound the WAL: SQLite restarts the log from its beginning only
    when a write transaction starts after every frame was copied, and under steady load the
    writer keeps appending while a concurrent checkpoint runs (at 1,000 engine turns/s it
    appends ~7,000 frames a second and the log never restarts by itself). So when the log has
    grown to `restart_frames`, this thread runs a second, short pass and `take_restart()`
    asks the writer's next batch to checkpoint first, on its own connection: that copies only
    the frames committed during the short pass, and the batch's transaction then restarts the
    log (SQLite syncs the new log header at that commit). That costs one batch a few
    milliseconds per ~8 MB of log; automatic checkpoints cost one batch the copy of a whole
    4 MB every 4 MB. Restarting early matters too: commits that grow the -wal file are slower
    than commits that overwrite a restarted log. If this thread falls behind or fails (errors
    are logged and retried), the WAL grows until a pass succeeds; the file on disk is cut back
    to `journal_size_limit` when the log restarts, and aclose() truncates it.
    """

    def __init__(
        self,
        path: Path,
        synchronous: str,
        identity: FileIdentity,
        every_s: float,
        restart_frames: int,
    ) -> None:
        """Start the thread: a pass every `every_s`; the writer helps at `restart_frames`.

        `identity`: a pass is skipped (and reported) while the file is deleted or replaced,
        so this connection never opens, or checkpoints the log into, a stranger's file."""
        self.path = path
        self._identity = identity
        self.every_s = every_s
        self.restart_frames = restart_frames
        self.checkpoints = 0  # passes run
        self.wal_frames = 0  # frames in the log at the last pass
        self._synchronous = synchronous
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
            while not self._stop.wait(self.every_s):
                try:
                    self._identity.check()
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
        if frames >= self.restart_frames:
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
        error = str(store_error(self.path, exc, "a background checkpoint"))
        if error != self._last_error:
            log.warning("%s; the WAL grows until a checkpoint succeeds", error)
        self._last_error = error
