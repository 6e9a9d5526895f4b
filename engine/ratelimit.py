"""Request rate limits by GCRA (generic cell rate algorithm).

A key's theoretical arrival time (TAT) is when it would have caught up if requests came exactly
at the sustained rate; a request is allowed if pushing the TAT one interval further keeps it
within `burst` intervals of now. So `burst` requests pass at once, then one per `1 / rate_per_s`
seconds, with O(1) time and memory per key and no per-call lists.

The TAT is kept as two floats, when the key last counted a request (`at`) and how many intervals
it then owed (`owed`, so TAT = at + owed * interval), not as one epoch float: that one rounds to
the clock's grid (2.4e-7 s at today's epoch seconds) on every request, and a burst's worth of
roundings refused a request within the burst whenever the interval is not a binary fraction
(5/s). Counted in intervals, a burst at one instant is exact small integers, and time is rounded
once, to give the instant the next request passes; `retry_after` is that instant minus now
(exact), so advancing the clock by it always lets the request through.
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


@dataclass(slots=True)
class _Owed:
    """A key's state: at `at` it owed `owed` intervals that time had not yet paid back."""

    at: float
    owed: float


def _after_one_more(
    at: float, owed: float, now: float, interval: float, burst: int
) -> tuple[float, float]:
    """Intervals owed once one more request is counted now, and how long before it is allowed.

    engine/cluster/rates.py runs this arithmetic in Lua, operation for operation, so the
    cluster's answers are these to the last bit. A key whose clock stepped back so far that it
    would owe more than `burst` intervals starts over, as a new key, instead of waiting out the
    step; a smaller step counts the request as that much earlier, as a TAT would.
    """
    owed_now = owed - (now - at) / interval
    if owed_now > burst and now < at:
        return 1.0, 0.0
    allowed_at = at + (owed + 1 - burst) * interval
    return max(owed_now, 0.0) + 1, allowed_at - now


class RateLimiter:
    """GCRA limiter for one scope ("session", "user", ...) over any number of keys."""

    __slots__ = ("_burst", "_clock", "_interval", "_keys", "_scope")

    def __init__(self, clock: Clock, rate_per_s: float, burst: int, scope: str) -> None:
        _validate(rate_per_s, burst)
        self._clock = clock
        self._scope = scope
        self._interval = 1.0 / rate_per_s
        self._burst = burst
        self._keys: dict[str, _Owed] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def acquire(self, key: str) -> None:
        """Count one request for `key`, or raise RateLimited saying exactly when one will pass."""
        now = self._clock.now()
        state = self._keys.get(key)
        if state is None:
            self._keys[key] = _Owed(now, 1.0)  # a new key owes just this request
            return
        owed, wait = _after_one_more(state.at, state.owed, now, self._interval, self._burst)
        if wait > 0:
            raise RateLimited(self._scope, wait)
        state.at, state.owed = now, owed

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may make a request (0 if now), without counting one."""
        _, wait = self._next(key, self._clock.now())
        return max(0.0, wait)

    def _next(self, key: str, now: float) -> tuple[float, float]:
        state = self._keys.get(key)
        if state is None:
            return 1.0, 0.0
        return _after_one_more(state.at, state.owed, now, self._interval, self._burst)

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def prune(self) -> int:
        """Drop keys whose TAT has passed (they behave as new keys); returns how many.

        O(keys), so call it rarely (housekeeping). It rebuilds the dict, because a dict never
        shrinks its table on deletes.
        """
        now = self._clock.now()
        kept = {
            key: state
            for key, state in self._keys.items()
            if state.at + state.owed * self._interval > now
        }
        dropped = len(self._keys) - len(kept)
        self._keys = kept
        return dropped
