"""Users' quota standings as the cluster counts them, for the console and the quota alerts.

A worker of a cluster decides quotas in Valkey/Redis and keeps no count of its own, so the
console's quota figures are read there: every `poll` (a periodic task, never a turn) reads in
one round trip the cluster-wide usage of a bounded set of users, in this order: the cluster's
users nearest their limits, the users this worker watches (served here, at or above the watch
level), the users the console asked for, the users served here since the last poll. The console's
reads (`nearest`, `usage`, `percents`) are answered from the last poll, never by a round trip.

The nearest users are one shared sorted set (user -> the fullest quota's percent): each worker
adds the users it reads at or above the watch level and removes those below it, so a user
served only by another worker is listed here too, and one whose worker died leaves the set at
the next read of any worker once their usage fell. The set is trimmed to `SHARED_NEAREST`.

The users served here are reported to the monitor with their cluster-wide percents, which
raise and resolve its quota alerts as a single process's turns do.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.clock import Clock
from engine.cluster.connection import ClusterClient
from engine.cluster.quotas import ClusterQuotas
from engine.monitor import Monitor
from engine.quota_watch import TOP_QUOTA_USERS
from engine.quotas import QuotaUsage
from engine.views import QuotaView

log = logging.getLogger(__name__)

READ_MAX = 256  # users read per poll: about 50 us of this worker's CPU each
CHUNK = 16  # users read per round trip: no slice of the loop longer than ~0.5 ms for them
WANTED_MAX = 256  # users the console asked for, the newest kept
SERVED_MAX = 256  # users served here since the last poll, the newest kept
CACHED_MAX = 4096  # users whose last standing is kept for the console
SHARED_NEAREST = 1000  # users kept in the shared set


@dataclass(frozen=True, slots=True)
class Standing:
    """One user's quotas as the cluster counted them at `read_at` (engine clock)."""

    tier: str
    usage: tuple[QuotaUsage, ...]
    read_at: float

    @property
    def highest_percent(self) -> float:
        return max((u.percent for u in self.usage), default=0.0)


class QuotaStandings:
    """The last cluster-wide quota figures of the users worth showing, refreshed by `poll`."""

    def __init__(
        self,
        client: ClusterClient,
        quotas: ClusterQuotas,
        clock: Clock,
        monitor: Monitor,
        watch_percent: float,
    ) -> None:
        self._client = client
        self._quotas = quotas
        self._clock = clock
        self._monitor = monitor
        self._watch_percent = watch_percent
        self._shared_key = client.key("quota-nearest")
        self._cache: dict[str, Standing] = {}  # oldest read first
        self._served: dict[str, None] = {}  # ordered sets: the newest last
        self._wanted: dict[str, None] = {}
        self._watched: dict[str, None] = {}  # the least recently read first
        self._reported: dict[str, tuple[tuple[str, float], ...]] = {}  # watched: last reported
        self._cluster_nearest: tuple[str, ...] = ()  # the shared set's top, at the last poll
        self._nearest: tuple[QuotaView, ...] = ()
        self.read_at: float | None = None  # the last poll that was answered

    # -- what the turn path and the console tell it (no round trip) -------------------------------
    def served(self, user_id: str) -> None:
        """A turn of the user ran or was refused here: read them at the next poll."""
        _remember(self._served, user_id, SERVED_MAX)

    def nearest(self) -> tuple[QuotaView, ...]:
        """The cluster's users nearest their limits at the last poll, fullest first."""
        return self._nearest

    def usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        """The user's last cluster-wide report; () until a poll has read them (the next one
        will: asking is what puts a user on the list)."""
        _remember(self._wanted, user_id, WANTED_MAX)
        standing = self._cache.get(user_id)
        return standing.usage if standing is not None else ()

    def percents(self, user_id: str) -> tuple[tuple[str, float], ...]:
        return tuple((u.resource, u.percent) for u in self.usage(user_id))

    # -- the periodic read -------------------------------------------------------------------------
    async def poll(self) -> None:
        """Read the users worth showing; raises ClusterUnavailable (the last figures stay)."""
        served, self._served = tuple(self._served), {}
        users = _pick(READ_MAX, (
            (self._cluster_nearest, TOP_QUOTA_USERS),
            (reversed(served), READ_MAX // 2),
            (reversed(self._wanted), READ_MAX // 4),
            (self._watched, READ_MAX),
        ))
        try:
            standings, near = await self._read(users)
        except BaseException:
            for user_id in served:  # read them at the next poll instead
                _remember(self._served, user_id, SERVED_MAX)
            raise
        self._report(standings, served, near)
        self._nearest = tuple(
            QuotaView(user_id, self._cache[user_id].tier, percent, self._cache[user_id].usage)
            for user_id, percent in heapq.nlargest(
                TOP_QUOTA_USERS, near.items(), key=lambda item: item[1]
            )
        )
        while len(self._cache) > CACHED_MAX:
            del self._cache[next(iter(self._cache))]

    async def _read(
        self, users: list[str]
    ) -> tuple[dict[str, tuple[str, tuple[QuotaUsage, ...]]], dict[str, float]]:
        """The users' standings into the cache and the shared set; the set's top for the next
        poll. Returns the standings and the users at or above the watch level."""
        standings = {}
        for start in range(0, len(users), CHUNK):  # the loop runs turns between two chunks
            standings.update(await self._quotas.standings(users[start : start + CHUNK]))
        now = self._clock.now()
        near, below = {}, []
        for user_id, (tier, usage) in standings.items():
            standing = Standing(tier, usage, now)
            self._cache.pop(user_id, None)
            self._cache[user_id] = standing
            highest = standing.highest_percent
            if highest >= self._watch_percent:
                near[user_id] = highest
            else:
                below.append(user_id)
        async with self._client.redis.pipeline(transaction=False) as pipe:
            if below:
                pipe.zrem(self._shared_key, *below)
            if near:
                pipe.zadd(self._shared_key, near)
            pipe.zremrangebyrank(self._shared_key, 0, -SHARED_NEAREST - 1)
            pipe.zrevrange(self._shared_key, 0, TOP_QUOTA_USERS - 1)
            replies = await self._client.run(pipe.execute())
        self._cluster_nearest = tuple(replies[-1])
        self.read_at = now
        return standings, near

    def _report(
        self, standings: dict[str, tuple[str, tuple[QuotaUsage, ...]]],
        served: tuple[str, ...], near: dict[str, float],
    ) -> None:
        """The monitor's quota alerts follow the users served here, once a poll as a turn
        reports them once, and the users it still watches whenever their figures move (so an
        alert resolves once the window frees enough, without turns here)."""
        reported, watched = self._reported, self._watched
        for user_id in (*served, *watched):
            got = standings.get(user_id)
            if got is None:
                continue
            percents = tuple((u.resource, u.percent) for u in got[1])
            watched.pop(user_id, None)  # back in last, as the most recently read
            if user_id in near:
                watched[user_id] = None
            if reported.get(user_id) == percents and user_id not in served:
                continue
            self._monitor.observe_quotas(user_id, percents)
            if user_id in near:
                reported[user_id] = percents
            else:
                reported.pop(user_id, None)


def _remember(users: dict[str, None], user_id: str, most: int) -> None:
    """Put `user_id` last in the ordered set, dropping the oldest beyond `most`."""
    users.pop(user_id, None)
    users[user_id] = None
    if len(users) > most:
        del users[next(iter(users))]


def _pick(most: int, groups: Sequence[tuple[Iterable[str], int]]) -> list[str]:
    """At most `most` distinct users: first up to each group's own share, in order, then
    whatever room is left from the groups in the same order (so no group starves another)."""
    groups = [(list(users), share) for users, share in groups]
    picked: dict[str, None] = {}
    for shares in (True, False):
        for users, share in groups:
            taken = 0
            for user_id in users:
                if len(picked) >= most or (shares and taken >= share):
                    break
                if user_id not in picked:
                    picked[user_id] = None
                    taken += 1
    return list(picked)
