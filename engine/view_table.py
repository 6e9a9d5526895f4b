"""Session views by id in copy-on-write chunks, so a frozen copy of all of them costs O(chunks).

Each snapshot hands the console every listed session's view, and a snapshot never changes once
taken. Copying a dict of a million views and a tuple of them took ~80 ms at every refresh, on
the loop the engine shares. Here the views are spread over `CHUNKS` dicts by their id's hash;
`freeze` hands the chunks out as they are, with each one's size, and marks them shared. A change
or removal in a shared chunk copies it first (~250 views at a million); an addition does not: a
dict keeps insertion order, so a frozen copy reads only the first `size` entries of each chunk.
Listing a million sessions, 2,000 at a time spread over every chunk, then copies nothing, while
a snapshot costs the chunks changed since the last one, not every view.

A frozen copy's lookups may find a view added after the freeze (its iteration, length and
sequence never do); they never find one changed or removed after it. The frozen views come in
chunk order (by hash), not in the order the sessions were listed.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar, overload

V = TypeVar("V")
T = TypeVar("T")

CHUNKS = 4096  # ~250 views a chunk at a million: a chunk's copy costs a few microseconds


class ViewTable(Generic[V]):
    """Views by session id, loop-owned; `freeze` gives a read-only copy at O(chunks)."""

    __slots__ = ("_all_shared", "_chunks", "_mask", "_shared", "_size")

    def __init__(self, chunks: int = CHUNKS) -> None:
        if chunks < 1 or chunks & (chunks - 1):
            raise ValueError(f"chunks must be a power of two, got {chunks}")
        self._chunks: list[dict[str, V]] = [{} for _ in range(chunks)]
        self._shared = bytearray(chunks)  # 1: a frozen copy holds the chunk; copy it to change
        self._all_shared = b"\x01" * chunks
        self._mask = chunks - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._chunks[hash(session_id) & self._mask]

    def get(self, session_id: str) -> V | None:
        return self._chunks[hash(session_id) & self._mask].get(session_id)

    def __setitem__(self, session_id: str, view: V) -> None:
        at = hash(session_id) & self._mask
        chunk = self._chunks[at]
        if session_id in chunk:
            chunk = self._writable(at)
        else:  # appended: past the size any frozen copy reads
            self._size += 1
        chunk[session_id] = view

    def pop(self, session_id: str) -> V | None:
        at = hash(session_id) & self._mask
        if session_id not in self._chunks[at]:
            return None
        self._size -= 1
        return self._writable(at).pop(session_id)

    def freeze(self) -> FrozenViews[V]:
        """Every view as of now, never changed later."""
        self._shared[:] = self._all_shared
        chunks = tuple(self._chunks)
        return FrozenViews(chunks, tuple(map(len, chunks)), self._size)

    def _writable(self, at: int) -> dict[str, V]:
        chunk = self._chunks[at]
        if self._shared[at]:
            chunk = self._chunks[at] = chunk.copy()
            self._shared[at] = 0
        return chunk


class FrozenViews(Mapping[str, V]):
    """The views at one instant by session id; `sequence` gives them as a sequence."""

    __slots__ = ("_chunks", "_mask", "_size", "_sizes")

    def __init__(
        self, chunks: tuple[dict[str, V], ...], sizes: tuple[int, ...], size: int
    ) -> None:
        self._chunks = chunks
        self._sizes = sizes  # each chunk's entries as frozen: later ones are appended after
        self._mask = len(chunks) - 1
        self._size = size

    def __getitem__(self, session_id: str) -> V:
        return self._chunks[hash(session_id) & self._mask][session_id]

    def get(self, session_id: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._chunks[hash(session_id) & self._mask].get(session_id, default)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._chunks[hash(session_id) & self._mask]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(
            _frozen(chunk.keys(), size)
            for chunk, size in zip(self._chunks, self._sizes, strict=True)
        )

    def __len__(self) -> int:
        return self._size

    def sequence(self) -> ViewSequence[V]:
        return ViewSequence(self._chunks, self._sizes, self._size)


class ViewSequence(Sequence[V]):
    """The views at one instant, chunk by chunk. Iterating costs O(views) in C; an index finds
    its chunk by bisection (the chunks' offsets are added up at the first index asked)."""

    __slots__ = ("_chunks", "_offsets", "_size", "_sizes")

    def __init__(
        self, chunks: tuple[dict[str, V], ...], sizes: tuple[int, ...], size: int
    ) -> None:
        self._chunks = chunks
        self._sizes = sizes
        self._size = size
        self._offsets: list[int] | None = None  # where each chunk starts

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[V]:
        return itertools.chain.from_iterable(
            _frozen(chunk.values(), size)
            for chunk, size in zip(self._chunks, self._sizes, strict=True)
        )

    def __eq__(self, other: object) -> bool:
        """Equal to a list or tuple of the same views in the same order; to another frozen
        sequence, at the cost of the chunks that differ (an unchanged snapshot compares in
        microseconds)."""
        if isinstance(other, ViewSequence):
            return self._size == other._size and self._sizes == other._sizes and all(
                mine is theirs or list(itertools.islice(mine.items(), size))
                == list(itertools.islice(theirs.items(), size))
                for mine, theirs, size in zip(self._chunks, other._chunks, self._sizes,
                                              strict=True)
            )
        if isinstance(other, list | tuple):
            return self._size == len(other) and all(map(operator.eq, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @overload
    def __getitem__(self, index: int) -> V: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[V, ...]: ...

    def __getitem__(self, index: int | slice) -> V | tuple[V, ...]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._size)
            if step < 0:
                return tuple(self)[index]
            return tuple(itertools.islice(self, start, stop, step))
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError("view index out of range")
        if self._offsets is None:
            self._offsets = list(itertools.accumulate(self._sizes, initial=0))
        at = bisect.bisect_right(self._offsets, index) - 1
        return next(itertools.islice(self._chunks[at].values(), index - self._offsets[at], None))


def _frozen(entries: Iterable[T], size: int) -> list[T]:
    """A chunk's first `size` entries, copied at once: an iteration of a frozen copy may be
    spread over many steps (a big table's reorder), and the table may append to the chunk
    in between, which an iterator over the dict itself would not survive."""
    return list(itertools.islice(entries, size))
