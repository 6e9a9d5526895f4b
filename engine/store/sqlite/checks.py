"""Checks and error advice for SQLite files: what a file is before the store touches it, and
what a failure means to the person who must fix it.

A file that fails a check at open (not SQLite, another application's, a newer schema, corrupt)
is inspected through a read-only connection and never modified; the `StoreError` names the file
and what to do. SQLite's result codes map to advice a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from engine.errors import StoreError
from engine.store.sqlite import migrations

log = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
# quick_check reads every page, about a second per GB here: a larger file is checked after
# open, beside the writes (IntegrityCheck), so start-up does not grow with the store.
CHECK_AT_OPEN_BYTES = 256 * 2**20
_CORRUPT_ADVICE = (
    "restore it from a backup, or move it away to start empty"
)

# SQLite primary result codes, for advice in error messages.
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_FILE_SIZE_LIMIT = -1  # not SQLite's: EFBIG, which SQLite reports as an I/O error
_ROOM = 64 * 1024  # less room than this left to write in: treat an I/O error as "full"
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
    _FILE_SIZE_LIMIT: (
        "the disk is full for this process: the file reached its file size limit "
        "(RLIMIT_FSIZE, `ulimit -f`); raise the limit, then retry"
    ),
    14: "it cannot be opened: check that its folder exists and is writable",
    19: "a write was rejected: the session it refers to is not stored (ended or never saved)",
    26: "it is not a SQLite database or is corrupt: move it away or configure another path",
}


def check_file(path: Path) -> bool:
    """Refuse a file that is not ours, through a read-only connection that cannot change it.

    False when the file is too large for its pages to be checked now (CHECK_AT_OPEN_BYTES):
    run an IntegrityCheck once it is open."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StoreError(
            f"cannot read store {path}: {exc.strerror}; point the store at a readable file"
        ) from exc
    if not header:
        return True  # an empty file is an empty database to SQLite
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(
            f"store {path} is not a SQLite database; it was left untouched: "
            "move it away or configure another store path"
        )
    latest = len(migrations.MIGRATIONS)
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise store_error(path, exc, "opening read-only to check it") from exc
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
        if size > CHECK_AT_OPEN_BYTES:
            return False
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(
                f"store {path} is corrupt ({'; '.join(problems)}); it was left untouched: "
                f"{_CORRUPT_ADVICE}"
            )
        return True
    except sqlite3.Error as exc:
        raise store_error(path, exc, "checking") from exc
    finally:
        conn.close()


class IntegrityCheck:
    """`quick_check` of a file too large to check at open, on a read-only connection of its
    own beside the writes. A problem found is logged as an error saying what to do; nothing
    stops (SQLite reports a damaged page again whenever it is read). `stop` ends it early."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stopping = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Future[None] | None = None
        self.problems: list[str] | None = None  # None until it has finished

    def start(self) -> None:
        # Connected here: `stop` may interrupt it from the loop's thread at any time.
        self._conn = sqlite3.connect(
            read_only_uri(self._path), uri=True, check_same_thread=False
        )
        self._task = asyncio.ensure_future(asyncio.to_thread(self._run, self._conn))

    async def stop(self) -> None:
        self._stopping.set()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed: it had finished
                self._conn.interrupt()  # thread-safe: the running check fails "interrupted"
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            if self._stopping.is_set():
                return
            problems = [str(exc)]
        finally:
            conn.close()
        self.problems = problems
        if problems != ["ok"]:
            log.error(
                "store %s failed its integrity check (%s): %s", self._path,
                "; ".join(problems), _CORRUPT_ADVICE,
            )


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which files the store opened (device and inode of the database and its -wal), so that a
    file deleted or replaced under the running engine is noticed before the next commit.

    SQLite keeps writing through the descriptors it holds: into a deleted file no one will
    read again, or into the old file while another now has its name. Either way it would
    acknowledge writes that a restart cannot find, so the store refuses them instead; a file
    put back under its name (the same inode) is written to again.
    """

    path: Path
    files: tuple[tuple[Path, int, int], ...]

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        files = []
        for file in (path, path.with_name(path.name + "-wal")):
            st = os.stat(file)
            files.append((file, st.st_dev, st.st_ino))
        return cls(path, tuple(files))

    def check(self) -> None:
        """StoreError if the database or its -wal is no longer the file the store opened."""
        for file, device, inode in self.files:
            try:
                st = os.stat(file)
            except FileNotFoundError:
                raise StoreError(
                    f"store {self.path}: {file.name} was deleted while the engine had it open; "
                    "writes are refused rather than acknowledged into a file that is gone. Put "
                    "the file back, or restart the engine to start an empty store"
                ) from None
            except OSError as exc:
                raise store_error(self.path, exc, f"checking {file.name}") from exc
            if (st.st_dev, st.st_ino) != (device, inode):
                raise StoreError(
                    f"store {self.path}: {file.name} was replaced by another file while the "
                    "engine had it open; writes are refused rather than made to the old file "
                    "out of sight. Put the original back, or restart the engine to open the "
                    "new one"
                )


def store_error(path: Path, exc: BaseException, doing: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_IOERR and _disk_full(path):
        code = _SQLITE_FULL  # SQLite reports a failed -shm or -wal allocation as an I/O error
    elif code == _SQLITE_IOERR and _at_file_size_limit(path):
        code = _FILE_SIZE_LIMIT
    advice = _ADVICE.get(code, "check the file and the disk it is on")
    return StoreError(f"store {path}: {doing} failed ({type(exc).__name__}: {exc}); {advice}")


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < _ROOM
    except OSError:
        return False


def _at_file_size_limit(path: Path) -> bool:
    """The database or one of its companions cannot grow: a write to it failed with EFBIG."""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit == resource.RLIM_INFINITY:
        return False
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.stat().st_size + _ROOM > limit:
                return True
        except OSError:
            continue
    return False


def read_only_uri(path: Path) -> str:
    return f"file:{quote(str(path.resolve()))}?mode=ro"
