"""One store per file: an exclusive `flock` on `<path>.lock`, held while the store is open.

`open` takes it before reading a byte, so a second engine on the same file is refused instead
of interleaving its sessions and shredding with the first one's. The OS drops the lock when its
holder dies, so a killed engine never blocks a restart. The lock file stays on disk: deleting
it would race with the next opener.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from engine.errors import StoreError


def lock(path: Path) -> int:
    """Hold `<path>.lock` exclusively until `unlock`; refuse a file another store holds.

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


def unlock(fd: int) -> None:
    """Unlock before closing: a child forked meanwhile shares the lock and would keep it."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
