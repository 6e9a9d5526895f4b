"""Load shedding: while the engine is overloaded, refuse turns from the heaviest users first.

Overloaded means that, within the last `hold_s`, a probe timer on the event loop fired more than
`lag_bound_s` late `late_readings` times in a row (one collector pause or a busy neighbour on
the machine is not overload), or the store's write queue held more than `max_store_queue` ops.
Each such reading halves a ceiling on users' recent turn attempts, starting from the heaviest
user's; a user above the ceiling and above the fair share (all recent attempts over the users
making them) is refused with `RateLimited` before any of the turn's work. So the heaviest users
go first, then the next, while the overload lasts; a lone user is never shed, and the ceiling
never falls below `min_rate_per_s`, so a quiet user's established session keeps its turns and
its latency. Shedding lifts `hold_s` after the last sign of overload. Attempts count whether
they succeed or not: a client retrying refused turns (rate-limited, over quota) without waiting
is among the heaviest. Callers failing authentication never get this far (engine/admission.py).

Recent attempts decay with a half-life on the engine's clock, one (score, at) pair per user in
a bounded LRU that also forgets users idle for `forget_after_s`: O(1) amortised per call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.clock import Clock
from engine.errors import RateLimited

SCOPE = "engine overload"  # RateLimited's scope for a shed turn


@dataclass(frozen=True, slots=True)
class OverloadPolicy:
    lag_bound_s: float = 0.05  # the probe timer firing later than this, late_readings times
    late_readings: int = 3  # in a row: overloaded
    max_store_queue: int = 20_000  # store ops queued past this: overloaded
    probe_interval_s: float = 0.05
    hold_s: float = 1.0  # shedding lifts this long after the last sign of overload
    half_life_s: float = 5.0  # of a user's recent attempts
    min_rate_per_s: float = 1.0  # users attempting fewer turns a second are never shed
    forget_after_s: float = 60.0
    max_users: int = 100_000

    def __post_init__(self) -> None:
        if min(self.lag_bound_s, self.probe_interval_s, self.hold_s, self.half_life_s) <= 0:
            raise ValueError("overload bounds, intervals and half-life must be > 0")
        if min(self.max_users, self.max_store_queue, self.late_readings) < 1:
            raise ValueError("max_users, max_store_queue and late_readings must be >= 1")
        if self.min_rate_per_s <= 0:
            raise ValueError("min_rate_per_s must be > 0")


@dataclass(frozen=True, slots=True)
class OverloadStats:
    overloaded: bool
    last_lag_s: float  # the probe's latest reading
    episodes: int  # times the engine went from not overloaded to overloaded
    shed: int  # turns refused while overloaded
    users_tracked: int


class LoadShedder:
    """Decides per turn attempt; `observe` (fed by `watch`) says when the engine is overloaded."""

    def __init__(self, clock: Clock, policy: OverloadPolicy) -> None:
        self._clock = clock
        self._policy = policy
        self._decay = math.log(2) / policy.half_life_s
        self._floor = policy.min_rate_per_s / self._decay  # the score of that steady rate
        self._users: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._total = 0.0  # the users' scores summed, as of `_total_at`
        self._total_at = clock.now()
        self._late = 0  # late readings in a row
        self._heaviest = 0.0  # highest score seen since the ceiling last moved
        self._ceiling = math.inf  # users scoring above it are shed
        self._overloaded_until = -math.inf
        self._last_lag = 0.0
        self._episodes = 0
        self._shed = 0

    @property
    def overloaded(self) -> bool:
        now = self._clock.now()
        return now < self._until(now)

    def _until(self, now: float) -> float:
        """When shedding lifts: never more than `hold_s` ahead, even after the clock stepped
        back (overload is about the loop, not the wall clock)."""
        self._overloaded_until = min(self._overloaded_until, now + self._policy.hold_s)
        return self._overloaded_until

    def observe(self, lag_s: float, store_queue: int) -> None:
        """One probe reading: how late the timer fired and how many store ops are queued."""
        self._last_lag = lag_s
        policy = self._policy
        now = self._clock.now()
        self._late = self._late + 1 if lag_s > policy.lag_bound_s else 0
        if self._late >= policy.late_readings or store_queue > policy.max_store_queue:
            if now >= self._until(now):
                self._episodes += 1
                self._ceiling = math.inf
            self._overloaded_until = now + policy.hold_s
            # Halve from the heaviest score seen since the ceiling last moved.
            reference = min(self._ceiling, self._heaviest or self._ceiling)
            if reference < math.inf:
                self._ceiling = max(self._floor, reference / 2)
            self._heaviest = 0.0
        elif now >= self._until(now):
            self._ceiling = math.inf

    def admit(self, user_id: str) -> None:
        """Count one turn attempt by `user_id`; RateLimited when it is shed."""
        now = self._clock.now()
        score = self._score(self._users.pop(user_id, None), now) + 1.0
        self._users[user_id] = (score, now)
        self._total = self._total * self._decayed(now - self._total_at) + 1.0
        self._total_at = now
        self._forget_idle(now)
        if score > self._heaviest:
            self._heaviest = score
        if (
            score > self._ceiling
            and now < self._until(now)
            and score * len(self._users) > self._total  # above the fair share
        ):
            self._shed += 1
            raise RateLimited(SCOPE, self._overloaded_until - now)

    def _score(self, entry: tuple[float, float] | None, now: float) -> float:
        return 0.0 if entry is None else entry[0] * self._decayed(now - entry[1])

    def _decayed(self, elapsed: float) -> float:
        """What is left of a score after `elapsed`; a clock stepped back decays nothing
        (growing scores instead would shed every user the step caught)."""
        return math.exp(-self._decay * max(0.0, elapsed))

    def _forget_idle(self, now: float) -> None:
        users, policy = self._users, self._policy
        while users:
            oldest = next(iter(users))
            if now - users[oldest][1] < policy.forget_after_s and len(users) <= policy.max_users:
                return
            self._total = max(0.0, self._total - self._score(users.pop(oldest), self._total_at))

    async def watch(
        self, store_queue: Callable[[], int], turns_waited_s: Callable[[], float]
    ) -> None:
        """Probe the loop every `probe_interval_s` until cancelled (the engine runs it).

        Lag is real time, whatever clock the engine was given: it is the loop's own delay, or
        the wait of the oldest turn held at the turn gate (engine/turn_gate.py) if longer:
        turns the gate holds back would otherwise have lagged the loop by as much.
        """
        interval = self._policy.probe_interval_s
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            lag = max(time.perf_counter() - before - interval, turns_waited_s())
            self.observe(lag, store_queue())

    def stats(self) -> OverloadStats:
        return OverloadStats(
            self.overloaded, self._last_lag, self._episodes, self._shed, len(self._users)
        )
