"""What the store's writer needs of a database: the interface a backend implements.

`Store` (writer.py) owns what is the same whatever holds the data: the queue, group commit,
durable acknowledgement, exclusive jobs and the counters in `StoreStats`. A backend owns the
database: opening and checking it, applying a batch of writes as one transaction, the reads at
start-up, rewrapping keys, and closing. `SqliteBackend` (engine/store/sqlite/) is the embedded
default; `PostgresBackend` (engine/store/postgres/) holds the same records for a cluster, and
the engine above does not change.

`commit` hands its result to a callback instead of being awaited: the writer resolves its
waiters and starts the next batch from that callback, and an SQLite backend calls it straight
from its connection thread, because under a busy event loop every extra hop through the loop
is milliseconds of acknowledgement latency. An asyncio backend simply calls it when its
transaction ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.errors import StoreError
from engine.store.ops import Op, Restored, RewrapReport, SessionRecord, StoredSession

CommitDone = Callable[[dict[int, Exception] | None, BaseException | None], object]
"""`done(rejected, None)` after a commit, `done(None, error)` after a failed transaction."""


@dataclass(frozen=True, slots=True)
class StorageFigures:
    """Size and upkeep of the storage for `StoreStats`; 0 where a backend has no such thing."""

    file_bytes: int = 0
    wal_bytes: int = 0
    checkpoints: int = 0
    wal_frames: int = 0


@runtime_checkable
class Backend(Protocol):
    """An open database holding the store's records. The writer calls one method at a time:
    no `commit` starts before the previous one's `done` ran, and no job overlaps a commit."""

    location: str
    """Where the data lives, for stats and error messages: a file path, never a password."""
    clean_shutdown: bool
    """False when the run before this open ended without `aclose()` (a crash or a kill)."""

    def commit(self, writes: Sequence[tuple[Op, ...]], done: CommitDone) -> None:
        """Start one transaction applying `writes` in order; call `done` on the event loop.

        A write rejected for what it contains (a message for a session that is not stored)
        is left out alone: `done(rejected, None)` maps its index in `writes` to its error and
        the others commit. Any other failure saves nothing: `done(None, error)`. May raise
        before starting, when an op cannot be expressed at all; then nothing was written.
        """
        ...

    async def load_live(self, now: float, *, sessions: bool = True) -> Restored:
        """Purge sessions whose deadline passed, prune as `Prune(now)`, return what is live.

        With `sessions=False`, `sessions` and `contexts` come back empty and `counts.sessions`
        is 0: the engine reads them in pages with `load_page` and counts them with
        `count_sessions`, beside its first turns (a count reads a whole index).
        """
        ...

    async def count_sessions(self) -> int:
        """How many sessions are stored, read beside the commits as `load_page` is."""
        ...

    async def load_page(self, after: str, limit: int) -> list[SessionRecord]:
        """Up to `limit` stored sessions' compact records with ids after `after`, in id order.

        Called beside commits, not between them: the caller must not trust it for sessions
        it changed since it started paging (the engine holds those already)."""
        ...

    async def load_session(self, session_id: str) -> StoredSession | None:
        """One live session's wrapped key and messages, oldest first; None if not stored."""
        ...

    async def load_record(self, session_id: str) -> SessionRecord | None:
        """One session's compact record (no key, no message); None if not stored."""
        ...

    async def rewrap_keys(self, fn: Callable[[bytes], bytes]) -> RewrapReport:
        """Replace every wrapped key by `fn(wrapped)` in one transaction; keys `fn` cannot
        rewrap stay as they were and are reported."""
        ...

    async def aclose(self) -> None:
        """After the last commit: record a clean shutdown and release the database."""
        ...

    def error(self, exc: BaseException, doing: str) -> StoreError:
        """`exc`, raised while `doing`, as a StoreError naming the database and what to do."""
        ...

    def figures(self) -> StorageFigures:
        """Cheap enough to call at the console's refresh rate."""
        ...
