"""Users near their quota limits, found without scanning every user at each refresh.

A user enters the watch list when a turn leaves them above the watch level or a reservation is
refused; each snapshot re-reads only the watched users and drops those who fell back below it.
"""

from __future__ import annotations

import heapq

from engine.monitor import Monitor
from engine.quotas import QuotaManager
from engine.views import QuotaView

TOP_QUOTA_USERS = 20  # rows the console's quota panel can show


class QuotaWatch:
    def __init__(self, quotas: QuotaManager, monitor: Monitor, watch_percent: float) -> None:
        self._quotas = quotas
        self._monitor = monitor
        self._watch_percent = watch_percent
        self._watched: set[str] = set()

    def observe(self, user_id: str) -> None:
        """After a turn: report the user's usage to the monitor; watch them if near a limit."""
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
        self._watched.add(user_id)

    def nearest(self) -> tuple[QuotaView, ...]:
        """The watched users nearest their limits, highest first."""
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
