"""Request rate limits by GCRA (generic cell rate algorithm).

Each key's whole state is one float, its theoretical arrival time (TAT): when the key would have
caught up if requests came exactly at the sustained rate. A request is allowed if pushing the TAT
one interval further keeps it within `burst` intervals of now. So `burst` requests pass at once,
then one per `1 / rate_per_s` seconds, with O(1) time and memory per key and no per-call lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.clock import Clock
from engine.errors import ConfigurationError, RateLimited


def _validate(rate_per_s: float, burst: int) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ConfigurationError(f"rate_per_s must be a finite number > 0, got {rate_per_s!r}")
    if burst < 1:
        raise ConfigurationError(f"burst must be >= 1, got {burst!r}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A configured rate: `burst` requests at once, then `rate_per_s` sustained."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        _validate(self.rate_per_s, self.burst)


class RateLimiter:
    """GCRA limiter for one scope ("session", "user", ...) over any number of keys."""

    __slots__ = ("_clock", "_interval", "_scope", "_tat", "_tolerance")

    def __init__(self, clock: Clock, rate_per_s: float, burst: int, scope: str) -> None:
        _validate(rate_per_s, burst)
        self._clock = clock
        self._scope = scope
        self._interval = 1.0 / rate_per_s
        # How far the TAT may run ahead of now once a request is counted.
        self._tolerance = burst * self._interval
        self._tat: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def acquire(self, key: str) -> None:
        """Count one request for `key`, or raise RateLimited saying exactly when one will pass."""
        tat, wait = self._next(key, self._clock.now())
        if wait > 0:
            raise RateLimited(self._scope, wait)
        self._tat[key] = tat

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may make a request (0 if now), without counting one."""
        _, wait = self._next(key, self._clock.now())
        return max(0.0, wait)

    def _next(self, key: str, now: float) -> tuple[float, float]:
        """The TAT after one more request, and how long before that request is allowed.

        A TAT never runs more than `tolerance` ahead of now unless the clock stepped back; the
        key then starts over, as a new key, instead of waiting out the step.
        """
        tat = self._tat.get(key, now)
        if tat > now + self._tolerance:
            tat = now
        tat = max(tat, now) + self._interval
        return tat, (tat - self._tolerance) - now

    def forget(self, key: str) -> None:
        self._tat.pop(key, None)

    def prune(self) -> int:
        """Drop keys whose TAT has passed (they behave as new keys); returns how many.

        O(keys), so call it rarely (housekeeping). It rebuilds the dict, because a dict never
        shrinks its table on deletes.
        """
        now = self._clock.now()
        kept = {key: tat for key, tat in self._tat.items() if tat > now}
        dropped = len(self._tat) - len(kept)
        self._tat = kept
        return dropped
