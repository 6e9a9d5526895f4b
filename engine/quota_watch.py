"""Users near their quota limits, found without scanning every user at each refresh.

A user enters the watch list when a turn leaves them above the watch level or a reservation is
refused; each snapshot re-reads only the watched users and drops those who fell back below it.

A worker of a cluster counts no quota itself: `share` hands the watch to the cluster's
standings (engine/cluster/standings.py), which read the users a turn reports here, and every
read of this module then answers from them.
"""

from __future__ import annotations

import heapq
from typing import Protocol

from engine.monitor import Monitor
from engine.quotas import QuotaManager, QuotaUsage
from engine.views import QuotaView

TOP_QUOTA_USERS = 20  # rows the console's quota panel can show


class SharedStandings(Protocol):
    """Quota figures counted elsewhere (a cluster), read without a round trip."""

    def served(self, user_id: str) -> None: ...

    def nearest(self) -> tuple[QuotaView, ...]: ...

    def usage(self, user_id: str) -> tuple[QuotaUsage, ...]: ...

    def percents(self, user_id: str) -> tuple[tuple[str, float], ...]: ...


class QuotaWatch:
    def __init__(self, quotas: QuotaManager, monitor: Monitor, watch_percent: float) -> None:
        self._quotas = quotas
        self._monitor = monitor
        self._watch_percent = watch_percent
        self._watched: set[str] = set()
        self._shared: SharedStandings | None = None

    def share(self, standings: SharedStandings) -> None:
        """From now on the users' standings are the cluster's (see the module docstring)."""
        self._shared = standings

    def observe(self, user_id: str) -> None:
        """After a turn: report the user's usage to the monitor; watch them if near a limit."""
        if self._shared is not None:
            self._shared.served(user_id)  # read, and reported, at the next poll
            return
        percents = self._quotas.percents(user_id)
        self._monitor.observe_quotas(user_id, percents)
        highest = 0.0
        for _, percent in percents:
            if percent > highest:
                highest = percent
        if highest >= self._watch_percent:
            self._watched.add(user_id)

    def refused(self, user_id: str, resource: str) -> None:
        """A reservation was refused: the user is at 100% of `resource`."""
        self._monitor.observe_quota(user_id, resource, 100.0)
        if self._shared is not None:
            self._shared.served(user_id)
        else:
            self._watched.add(user_id)

    def usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        """The user's quota report (a cluster's: as of its last read, () before the first)."""
        if self._shared is not None:
            return self._shared.usage(user_id)
        return self._quotas.usage(user_id)

    def percents(self, user_id: str) -> tuple[tuple[str, float], ...]:
        """(resource, percent taken) per quota, without the reset times: cheaper, for ordering."""
        if self._shared is not None:
            return self._shared.percents(user_id)
        return self._quotas.percents(user_id)

    def nearest(self) -> tuple[QuotaView, ...]:
        """The watched users nearest their limits, highest first."""
        if self._shared is not None:
            return self._shared.nearest()
        views = []
        for user_id in list(self._watched):
            percent = self._quotas.highest_percent(user_id)
            if percent < self._watch_percent:
                self._watched.discard(user_id)
                continue
            views.append((percent, user_id))
        return tuple(
            QuotaView(user_id, self._quotas.tier_of(user_id), percent, self._quotas.usage(user_id))
            for percent, user_id in heapq.nlargest(TOP_QUOTA_USERS, views)
        )
