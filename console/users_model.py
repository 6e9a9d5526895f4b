"""The users table's data half: users with live sessions, counted, filtered by `/`, sorted by any
column.

Counting sessions per user is O(sessions) and runs only when the sessions changed. In a cluster
a user's count is the cluster's (`live`: every worker's sessions, as last read), the listed
sessions' count until a read has reached the user. Sorting by a quota column (or, in a
cluster, by sessions) asks the engine for every listed user's figure, and that order moves with
time even when the sessions do not, so such a table reorders on every tick while it is small
and within a `ReorderBudget` above `THROTTLE_ABOVE` users, as the sessions table does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from console.filter_terms import split_terms
from console.ordering import ReorderBudget, SortState

RESOURCES = ("api_calls", "tokens", "storage_mb", "compute_seconds")
SORT_COLUMNS = ("user", "tier", "sessions", *RESOURCES, "worst")
QUOTA_COLUMNS = frozenset((*RESOURCES, "worst"))  # need the engine's quota percents to sort

THROTTLE_ABOVE = 1_000  # users; above this, quota-column reorders share the ReorderBudget
REORDER_SHARE = 0.015

FILTER_NAMES = {"user": "user", "tier": "tier"}
FILTER_USAGE = "user:, tier: or a bare word (part of a user id)"

# user id -> (resource, percent taken) for each of that user's quotas.
PercentsOf = Callable[[str], Sequence[tuple[str, float]]]
# user id -> the user's live sessions cluster-wide, None when not known (yet).
LiveOf = Callable[[str], int | None]


@dataclass(frozen=True, slots=True)
class UserFilter:
    """`/` filter: space-separated terms, all must match.

    `tier:pro` (exact tier), `user:ali` or a bare word `ali` (part of the user id).
    """

    words: tuple[str, ...] = ()
    tier: str | None = None

    @classmethod
    def parse(cls, query: str) -> UserFilter:
        words, fields = split_terms(query, FILTER_NAMES, FILTER_USAGE)
        if "user" in fields:
            words.append(fields["user"])
        return cls(words=tuple(words), tier=fields.get("tier"))

    def __bool__(self) -> bool:
        return bool(self.words) or self.tier is not None

    def matches(self, user_id: str, tier: str) -> bool:
        if self.tier is not None and tier.lower() != self.tier:
            return False
        lowered = user_id.lower()
        return all(word in lowered for word in self.words)

    def describe(self) -> str:
        return " ".join([*self.words, *([f"tier:{self.tier}"] if self.tier else [])])


class UsersModel:
    """User ids, filtered and ordered for the table; `update` says whether the order moved.

    The default order is the fullest quota first (`worst`, descending); ties go by user id.
    """

    def __init__(
        self,
        percents: PercentsOf,
        *,
        live: LiveOf | None = None,
        throttle_above: int = THROTTLE_ABOVE,
        share: float = REORDER_SHARE,
    ) -> None:
        self.order = SortState(SORT_COLUMNS, "worst", reverse=True)
        self.filter = UserFilter()
        self.rows: list[str] = []
        self.counts: Counter[str] = Counter()
        self.tiers: dict[str, str] = {}
        self.reorders = 0
        self.budget = ReorderBudget(throttle_above, share)
        self._percents = percents
        self._live = live
        self._moving = QUOTA_COLUMNS | {"sessions"} if live is not None else QUOTA_COLUMNS
        self._source: Sequence[Any] | None = None
        self._dirty = True

    @property
    def total(self) -> int:
        """Users with live sessions, before the filter."""
        return len(self.counts)

    # -- view changes (take effect on the next update, whatever the budget) ----------------------
    def sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again flips the direction."""
        self.order.choose(column)
        self._dirty = True

    def set_filter(self, query: str) -> None:
        self.filter = UserFilter.parse(query)  # raises before changing anything
        self._dirty = True

    # -- data ------------------------------------------------------------------------------------
    def update(self, sessions: Sequence[Any]) -> bool:
        """Take a new snapshot's session views; True when `rows` was recomputed."""
        changed = not (sessions is self._source or sessions == self._source)
        if changed:
            self._source = sessions
            self.counts = Counter(v.user_id for v in sessions)
            self.tiers = {v.user_id: v.tier for v in sessions}
        if not self._dirty:
            if not changed and self.order.column not in self._moving:
                return False
            if not self.budget.allows(len(self.counts)):
                return False
        self.rows = self.budget.run(self._reorder)
        self._dirty = False
        self.reorders += 1
        return True

    def sessions_of(self, user_id: str) -> int:
        """The user's live sessions: the cluster's count once read, else those listed."""
        if self._live is not None and (counted := self._live(user_id)) is not None:
            return counted
        return self.counts.get(user_id, 0)

    def percent(self, user_id: str, column: str) -> float:
        """The user's percent of one resource's quota, or of the fullest one for `worst`."""
        return max(
            (p for resource, p in self._percents(user_id) if column in ("worst", resource)),
            default=0.0,
        )

    def _reorder(self) -> list[str]:
        users = sorted(self.counts)  # by id: ties keep this order (sorts are stable)
        if self.filter:
            match, tiers = self.filter.matches, self.tiers
            users = [u for u in users if match(u, tiers.get(u, ""))]
        column, reverse = self.order.column, self.order.reverse
        key: Callable[[str], Any] | None
        if column == "user":
            key = None
        elif column == "tier":
            key = self.tiers.get
        elif column == "sessions":
            key = self.sessions_of
        else:
            key = lambda user: self.percent(user, column)  # noqa: E731
        users.sort(key=key, reverse=reverse)
        return users

    def describe(self) -> str:
        parts = [self.order.describe()]
        if self.filter:
            parts.append(f"filter {self.describe_filter()}")
        return " · ".join(parts)

    def describe_filter(self) -> str:
        return self.filter.describe()
