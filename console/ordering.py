"""What the sortable tables share: the sort column and its direction, and a time budget for
reordering big tables.

Sorting 100,000 rows costs tens of milliseconds of Python, more than a refresh tick may spend.
So a model reorders a big table only when its `ReorderBudget` allows, which keeps reorders under
`share` of wall time; small tables reorder whenever their data changed (deterministic for tests).
The operator's own changes (a sort key, a filter) bypass the budget in the models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class SortState:
    """The sort column and its direction; the same column chosen again reverses (as in k9s)."""

    __slots__ = ("column", "columns", "reverse")

    def __init__(self, columns: Iterable[str], column: str, reverse: bool = False) -> None:
        self.columns = tuple(columns)
        if column not in self.columns:
            raise ValueError(f"no column {column!r}")
        self.column = column
        self.reverse = reverse

    def choose(self, column: str) -> None:
        """Sort by `column`, ascending; if it is already the sort column, flip the direction."""
        if column not in self.columns:
            raise ValueError(f"no column {column!r}")
        if column == self.column:
            self.reverse = not self.reverse
        else:
            self.column, self.reverse = column, False

    def describe(self) -> str:
        return f"sort {self.column} {'▼' if self.reverse else '▲'}"


class ReorderBudget:
    """May a table of `rows` rows be reordered now? Always up to `throttle_above` rows; above,
    only once the last reorder's cost divided by `share` has passed since it started."""

    __slots__ = ("next_at", "share", "throttle_above")

    def __init__(self, throttle_above: int, share: float) -> None:
        self.throttle_above = throttle_above
        self.share = share
        self.next_at = 0.0

    def allows(self, rows: int) -> bool:
        return rows <= self.throttle_above or time.perf_counter() >= self.next_at

    def run(self, reorder: Callable[[], T]) -> T:
        """Call `reorder` and time it: the next throttled reorder waits cost / share."""
        started = time.perf_counter()
        result = reorder()
        self.spent(started, time.perf_counter() - started)
        return result

    def spent(self, started: float, cost: float) -> None:
        """A reorder begun at `started` (perf_counter) cost `cost` seconds, perhaps in steps:
        the next throttled reorder waits cost / share from its start."""
        self.next_at = started + cost / self.share
