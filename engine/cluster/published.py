"""What each worker of the cluster published under one kind of key, decoded once per value.

The alert board and the session board each read every other worker's latest value once a
heartbeat; most values have not changed since the last read, so a value is decoded again only
when it differs. A worker whose value cannot be decoded (another version, say) is skipped, and
said once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class PublishedByWorker(Generic[T]):
    """The latest decoded value of each worker, for one kind of value (`what`: for the log)."""

    def __init__(self, what: str, decode: Callable[[str, str], T]) -> None:
        self._what = what
        self._decode = decode  # (worker id, value) -> decoded; raises ValueError and the like
        self._last: dict[str, tuple[str, T]] = {}  # per worker: value, decoded
        self._unreadable: set[str] = set()  # workers whose value could not be read, said once

    def decoded(self, workers: Sequence[str], values: Sequence[str | None]) -> Iterable[T]:
        """The workers' values (None: none published yet, or it stopped), decoded."""
        last, self._last = self._last, {}
        for worker_id, value in zip(workers, values, strict=True):
            if value is None:
                continue
            seen = last.get(worker_id)
            if seen is not None and seen[0] == value:
                self._last[worker_id] = seen
                yield seen[1]
                continue
            try:
                decoded = self._decode(worker_id, value)
            except (ValueError, TypeError, KeyError) as exc:
                if worker_id not in self._unreadable:
                    self._unreadable.add(worker_id)
                    log.warning("worker %s published %s this worker cannot read: %s",
                                worker_id, self._what, exc)
                continue
            self._last[worker_id] = (value, decoded)
            yield decoded
