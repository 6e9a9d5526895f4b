"""The sessions table's data half: filter and sort plain session views, at a bounded cost.

Filtering and sorting 100,000 views in Python costs more than a whole refresh tick may spend
(benchmarks/console_refresh.py measures it), and a million about two seconds. So the order is
recomputed at once when the operator changes the sort or the filter, and otherwise only when the
data changed and the `ReorderBudget` allows (reorders stay under `REORDER_SHARE` of the time;
small tables reorder on every changed tick). A table of more than `STEP_ROWS` rows is reordered
in steps of about `STEP_ROWS` rows each (sort runs of that size, then merge them `STEP_ROWS` at a
time; the same order a single sort gives), which the view runs one per frame (`step`), so no
slice of the loop the engine shares sorts a million rows; until it ends the table shows the
previous order. Between reorders the visible rows still show live values when the snapshot
offers `sessions_by_id`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from console.filter_terms import split_terms
from console.ordering import ReorderBudget, SortState
from widgets import Column

# At or below this many sessions every changed snapshot is reordered (deterministic for tests).
THROTTLE_ABOVE = 20_000
REORDER_SHARE = 0.015  # of wall time, above THROTTLE_ABOVE: ~1 reorder/s at 100k sessions
HEALTHY = 100  # below this a session has at least one health reason: "unhealthy" for the toggle
# Rows one reorder step filters and sorts, or merges (~5-15 ms); tables up to this many rows
# are reordered at once.
STEP_ROWS = 10_000


COLUMNS = (
    Column("id", "ID", 8, priority=9),
    Column("user", "USER", 10, flex=True, priority=9),
    Column("agent", "AGENT", 9, priority=5),
    Column("worker", "WORKER", 7, priority=2),
    Column("age", "AGE", 5, "right", priority=4),
    Column("idle", "IDLE", 5, "right", priority=6),
    Column("messages", "MSGS", 5, "right", priority=1),
    Column("tokens", "TOKENS", 6, "right", priority=3),
    Column("errors", "ERR", 4, "right", priority=7),
    Column("health", "HEALTH", 7, "right", priority=8),
    Column("state", "STATE", 5, priority=7),
)

# Column -> (field, inverted). Sorting on the raw field with a C-level attrgetter costs a third
# of a lambda key at 100k rows; age and idle sort by timestamp, inverted, so the order never ages.
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "id": ("session_id", False),
    "user": ("user_id", False),
    "agent": ("agent_type", False),
    "worker": ("worker", False),
    "age": ("created_at", True),
    "idle": ("last_active_at", True),
    "messages": ("messages", False),
    "tokens": ("tokens", False),
    "errors": ("errors", False),
    "health": ("health", False),
    "state": ("state", False),
}

# `/` filter field names (and aliases) -> SessionFilter fields.
FILTER_NAMES = {
    "user": "user", "id": "session_id", "session": "session_id", "session_id": "session_id",
    "state": "state", "agent": "agent", "worker": "worker", "via": "origin",
}
FILTER_USAGE = "user:, id:, state:, agent:, worker:, via:http, health<N or a bare word"


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """`/` filter: space-separated terms, all must match.

    `user:ali` (user id contains), `id:3fa9` (session id prefix), `state:busy`, `agent:research`,
    `worker:w1`, `via:http` (created through the gateway), `health<60`; a bare word matches a
    user id substring or a session id prefix.
    """

    text: str = ""
    user: str | None = None
    session_id: str | None = None
    state: str | None = None
    agent: str | None = None
    worker: str | None = None
    origin: str | None = None
    health_below: int | None = None

    @classmethod
    def parse(cls, query: str) -> SessionFilter:
        health_below = None
        rest = []
        for term in query.split():
            lowered = term.lower()
            if lowered.startswith(("health<", "h<")):
                number = lowered.split("<", 1)[1]
                if not number.isdigit():
                    raise ValueError(f"health filter needs a number: {term!r} (e.g. health<60)")
                health_below = int(number)
            else:
                rest.append(term)
        words, fields = split_terms(" ".join(rest), FILTER_NAMES, FILTER_USAGE)
        return cls(text=" ".join(words), health_below=health_below, **fields)

    def __bool__(self) -> bool:
        return any(
            value not in (None, "")
            for value in (
                self.text, self.user, self.session_id, self.state, self.agent, self.worker,
                self.origin, self.health_below,
            )
        )

    def predicate(self) -> Callable[[Any], bool]:
        words = self.text.split()
        user, prefix, state = self.user, self.session_id, self.state
        agent, worker, below, origin = self.agent, self.worker, self.health_below, self.origin

        def match(v: Any) -> bool:
            if below is not None and v.health >= below:
                return False
            if state is not None and v.state != state:
                return False
            if user is not None and user not in v.user_id.lower():
                return False
            if prefix is not None and not v.session_id.startswith(prefix):
                return False
            if agent is not None and v.agent_type != agent:
                return False
            if worker is not None and worker not in v.worker.lower():
                return False
            if origin is not None and v.origin != origin:
                return False
            for word in words:
                if word not in v.user_id.lower() and not v.session_id.startswith(word):
                    return False
            return True

        return match


class SessionsModel:
    """Ordered, filtered session views for the table; `update` and `step` say whether the order
    moved."""

    def __init__(
        self, *, throttle_above: int = THROTTLE_ABOVE, share: float = REORDER_SHARE,
        step_rows: int = STEP_ROWS,
    ) -> None:
        self.order = SortState(SORT_KEYS, "health")
        self.filter = SessionFilter()
        self.unhealthy_only = False
        self.rows: list[Any] = []
        self.total = 0
        self.index: Mapping[str, Any] | None = None
        self.reorders = 0
        self.budget = ReorderBudget(throttle_above, share)
        self.step_rows = step_rows
        self._source: Sequence[Any] | None = None
        self._dirty = True
        self._complete = True  # the last snapshot listed every live session
        # A reorder under way in steps: the sessions it orders, its steps, when it began and
        # the time its steps took so far.
        self._job: tuple[Sequence[Any], Generator[None, None, list[Any]]] | None = None
        self._job_started = 0.0
        self._job_cost = 0.0

    # -- view changes (take effect on the next update, whatever the throttle) --------------------
    def sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again flips the direction."""
        self.order.choose(column)
        self._dirty = True

    def set_filter(self, query: str) -> None:
        self.filter = SessionFilter.parse(query)  # raises before changing anything
        self._dirty = True

    def toggle_unhealthy(self) -> None:
        self.unhealthy_only = not self.unhealthy_only
        self._dirty = True

    # -- data ------------------------------------------------------------------------------------
    @property
    def reordering(self) -> bool:
        """A reorder is under way: `step` until it ends (`rows` keeps the last order)."""
        return self._job is not None

    def update(
        self, sessions: Sequence[Any], index: Mapping[str, Any] | None = None,
        complete: bool = True,
    ) -> bool:
        """Take a new snapshot's sessions; True when `rows` was recomputed.

        `complete`: the snapshot lists every live session. While it does not (a big store's
        views still being built), a reorder waits for the budget as usual, and the snapshot
        that completes the list is reordered at once. A reorder under way in steps goes on
        with the sessions it began with, unless the operator changed the order."""
        self.index = index
        self.total = len(sessions)
        if complete and not self._complete:
            self._dirty = True
        self._complete = complete
        if not self._dirty:
            if self._job is not None:
                return False
            if sessions is self._source or sessions == self._source:
                return False
            if not self.budget.allows(len(sessions)):
                return False
        self._job = (sessions, self._reorder(sessions))
        self._job_started, self._job_cost = time.perf_counter(), 0.0
        self._dirty = False
        return self.step()

    def step(self) -> bool:
        """Run the next step of the reorder under way; True when it ended and `rows` moved."""
        if self._job is None:
            return False
        sessions, steps = self._job
        started = time.perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            self.rows = done.value
            self._source = sessions
            self._job = None
            self.reorders += 1
            return True
        finally:
            self._job_cost += time.perf_counter() - started
            if self._job is None:
                self.budget.spent(self._job_started, self._job_cost)
        return False

    def current(self, view: Any) -> Any | None:
        """The live version of a listed view; None once the session is gone."""
        if self.index is None:
            return view
        return self.index.get(view.session_id)

    def _reorder(self, sessions: Sequence[Any]) -> Generator[None, None, list[Any]]:
        """Filter and sort `sessions`, yielding between steps of `step_rows` rows: sorted runs,
        then their merge (the order one sort gives)."""
        keep = self._predicate()
        field, inverted = SORT_KEYS[self.order.column]
        # Ties by id: a snapshot lists its sessions in no particular order (engine.view_table).
        key = attrgetter(field) if field == "session_id" else attrgetter(field, "session_id")
        reverse = self.order.reverse != inverted
        size = self.step_rows
        listed = iter(sessions)
        runs: list[list[Any]] = []
        for _ in range(0, len(sessions), size):
            if runs:
                yield
            part = itertools.islice(listed, size)
            run = list(part) if keep is None else list(filter(keep, part))
            run.sort(key=key, reverse=reverse)
            runs.append(run)
        if len(runs) <= 1:
            return runs[0] if runs else []
        merged = heapq.merge(*runs, key=key, reverse=reverse)
        rows: list[Any] = []
        while True:
            yield
            before = len(rows)
            rows.extend(itertools.islice(merged, size))
            if len(rows) - before < size:
                return rows

    def _predicate(self) -> Callable[[Any], bool] | None:
        match = self.filter.predicate() if self.filter else None
        if not self.unhealthy_only:
            return match
        if match is None:
            return lambda v: v.health < HEALTHY
        return lambda v: v.health < HEALTHY and match(v)

    def describe(self) -> str:
        parts = [self.order.describe()]
        if self.filter:
            parts.append(f"filter {self.describe_filter()}")
        if self.unhealthy_only:
            parts.append("unhealthy only")
        return " · ".join(parts)

    def describe_filter(self) -> str:
        f = self.filter
        terms = [f.text] if f.text else []
        for name, value in (
            ("user", f.user), ("id", f.session_id), ("state", f.state),
            ("agent", f.agent), ("worker", f.worker),
        ):
            if value is not None:
                terms.append(f"{name}:{value}")
        if f.health_below is not None:
            terms.append(f"health<{f.health_below}")
        return " ".join(terms)
