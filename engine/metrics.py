"""Latency histograms and per-second rate rings: constant memory at any request count.

Latencies are kept the way Locust keeps response times: a count per rounded value (two
significant figures), so p50/p95/p99 come from a walk over a few hundred sorted keys rather than
a sorted list of every sample. Values are rounded in microseconds, not Locust's milliseconds, so
an in-process backend answering in 0.4 ms reads as 0.4 ms rather than 0.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from engine.clock import Clock
from engine.errors import ConfigurationError

_MAX_US = 10**10  # ~2.8 hours; longer values count as this, which bounds the number of keys
_QUANTILES = (0.5, 0.95, 0.99)


# The rounding step for a value of 3 to 11 digits: 10 ** (digits - 2), found by bisecting.
_DIGIT_BOUNDS = tuple(10**k for k in range(3, 11))
_SCALES = tuple(10**k for k in range(1, 10))


def _key(seconds: float) -> int:
    """Microseconds rounded to two significant figures (below 100 µs: exact)."""
    if not seconds > 0:  # also NaN
        return 0
    us = _MAX_US if seconds >= _MAX_US / 1e6 else round(seconds * 1e6)
    if us < 100:
        return us
    scale = _SCALES[bisect_right(_DIGIT_BOUNDS, us)]
    return (us + scale // 2) // scale * scale


@dataclass(frozen=True, slots=True)
class Percentiles:
    """p50/p95/p99 in seconds, with the sample count they came from (all 0 when empty)."""

    count: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0


class LatencyHistogram:
    """Counts per rounded latency; percentiles by walking the sorted keys.

    Keys and counts are one typed array, the sorted keys in its first half and each key's count
    at the same place in the second: every hot session has one of these, and a dict and a
    list of ints for a session's few keys were about 300 bytes (a key found by bisection costs
    about 0.1 us more than by a dict).
    """

    __slots__ = ("_cells", "count")

    # 0..99 µs exact, then 90 two-figure values per decade up to 10^10 µs, plus the cap itself.
    MAX_KEYS = 100 + 90 * 8 + 1

    def __init__(self) -> None:
        self._cells = array("q")  # keys (sorted), then their counts; a new key is rare
        self.count = 0

    def record(self, seconds: float) -> None:
        self._add(_key(seconds), 1)

    def _add(self, key: int, n: int) -> None:
        cells = self._cells
        keys = len(cells) // 2
        i = bisect_left(cells, key, 0, keys)
        if i < keys and cells[i] == key:
            cells[keys + i] += n
        else:
            cells.insert(keys + i, n)
            cells.insert(i, key)
        self.count += n

    def _items(self) -> Iterator[tuple[int, int]]:
        """(key, count) in key order."""
        cells = self._cells
        keys = len(cells) // 2
        return zip(cells[:keys], cells[keys:], strict=True)

    def merge(self, other: LatencyHistogram) -> None:
        for key, n in other._items():
            self._add(key, n)

    def subtract(self, other: LatencyHistogram) -> None:
        """Remove counts earlier merged from `other`: how a sliding window forgets a slot."""
        cells = self._cells
        for key, n in other._items():
            keys = len(cells) // 2
            i = bisect_left(cells, key, 0, keys)
            left = cells[keys + i] - n
            if left > 0:
                cells[keys + i] = left
            else:
                del cells[keys + i]
                del cells[i]
            self.count -= n

    @property
    def key_count(self) -> int:
        return len(self._cells) // 2

    def percentile(self, q: float) -> float:
        """The value at quantile `q` (0..1) in seconds, rounded as stored; 0.0 when empty."""
        return self._walk((q,))[0]

    def percentiles(self) -> Percentiles:
        p50, p95, p99 = self._walk(_QUANTILES)
        return Percentiles(self.count, p50, p95, p99)

    def _walk(self, quantiles: tuple[float, ...]) -> tuple[float, ...]:
        """One pass for several ascending quantiles (nearest-rank definition)."""
        if not self.count:
            return tuple(0.0 for _ in quantiles)
        ranks = [max(1, math.ceil(round(min(max(q, 0.0), 1.0) * self.count, 9))) for q in quantiles]
        found: list[float] = []
        seen = 0
        for key, n in self._items():
            seen += n
            while len(found) < len(ranks) and seen >= ranks[len(found)]:
                found.append(key / 1e6)
            if len(found) == len(ranks):
                break
        return tuple(found)


class WindowedHistogram:
    """Percentiles over about the last `window_s` seconds: Locust's "current" figures.

    A ring of `slots` sub-histograms plus their running sum; a slot that ages out is subtracted,
    so a read is one walk over the sum's keys whatever the traffic. The window covers between
    `window_s - window_s / slots` and `window_s` seconds.
    """

    __slots__ = ("_clock", "_slot_s", "_slots", "_total", "slots", "window_s")

    def __init__(self, clock: Clock, window_s: float = 60.0, slots: int = 6) -> None:
        if window_s <= 0 or slots < 1:
            raise ConfigurationError("window_s must be positive and slots at least 1")
        self._clock = clock
        self.window_s = window_s
        self.slots = slots
        self._slot_s = window_s / slots
        self._slots: deque[tuple[int, LatencyHistogram]] = deque()
        self._total = LatencyHistogram()

    def _expire(self) -> int:
        index = math.floor(self._clock.now() / self._slot_s)
        while self._slots and self._slots[0][0] <= index - self.slots:
            self._total.subtract(self._slots.popleft()[1])
        return index

    def record(self, seconds: float) -> None:
        index = self._expire()
        if not self._slots or self._slots[-1][0] < index:
            self._slots.append((index, LatencyHistogram()))
        key = _key(seconds)
        self._slots[-1][1]._add(key, 1)
        self._total._add(key, 1)

    @property
    def count(self) -> int:
        self._expire()
        return self._total.count

    def percentile(self, q: float) -> float:
        self._expire()
        return self._total.percentile(q)

    def percentiles(self) -> Percentiles:
        self._expire()
        return self._total.percentiles()


class RateRing:
    """Per-second counts over the last `seconds` seconds: the data behind a sparkline.

    A fixed list indexed by second modulo its length. Slots between the last write and now are
    zeroed when time moves on (at most one pass over the ring however long the gap), so `add` is
    O(1) amortised and memory is fixed.
    """

    __slots__ = ("_clock", "_last", "_slots", "seconds")

    def __init__(self, clock: Clock, seconds: int = 300) -> None:
        if seconds < 2:
            raise ConfigurationError("a rate ring needs at least 2 seconds")
        self._clock = clock
        self.seconds = seconds
        self._slots = [0.0] * seconds
        self._last = math.floor(clock.now())

    def _advance(self) -> int:
        now = math.floor(self._clock.now())
        gap = now - self._last
        if gap >= self.seconds:
            self._slots = [0.0] * self.seconds
        else:
            for second in range(self._last + 1, now + 1):
                self._slots[second % self.seconds] = 0.0
        # A clock that stepped back keeps writing to the newest slot rather than rewrite history.
        self._last = max(self._last, now)
        return self._last

    def add(self, n: float = 1.0) -> None:
        self._slots[self._advance() % self.seconds] += n

    def series(self) -> tuple[float, ...]:
        """Counts per second, oldest first; the last entry is the second in progress."""
        start = (self._advance() + 1) % self.seconds
        return tuple(self._slots[start:] + self._slots[:start])

    def total(self, window_s: int) -> float:
        """Sum over the last `window_s` seconds, including the one in progress."""
        last = self._advance()
        n = min(window_s, self.seconds)
        return sum(self._slots[(last - i) % self.seconds] for i in range(n))

    def rate(self, window_s: int = 10) -> float:
        """Average per second over the last `window_s` completed seconds.

        The second in progress is left out: a fresh, partly counted second would drag it down.
        """
        last = self._advance()
        n = max(1, min(window_s, self.seconds - 1))
        return sum(self._slots[(last - i) % self.seconds] for i in range(1, n + 1)) / n
