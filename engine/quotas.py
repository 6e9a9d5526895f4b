"""Per-user quotas over sliding windows, with reserve-then-settle for costs known only afterwards.

Each (user, resource) keeps a ring of `buckets_per_window + 1` fixed sub-buckets and a running
total, so checking and consuming cost O(1) amortised (O(buckets) when a call rolls the ring)
whatever the request count, and memory per user is fixed. The price is granularity: usage
recorded at time t expires when its whole sub-bucket has left the window, i.e. between t + window
and t + window + window/buckets_per_window. It never expires early, so a limit is never overrun.

A `QuotaLimit` with `window_s=None` is a running total instead (storage): it goes down only
through `adjust`, and waiting never frees it.

`retry_after` in `QuotaExceeded`:
- seconds until enough windowed usage expires for the request to fit;
- `RESERVATION_RETRY_S` when outstanding reservations, not past usage, are what blocks it (they
  are settled or released within a turn, so a retry soon may pass);
- `math.inf` when waiting cannot help: the amount alone exceeds the limit, or a no-window total
  is full (free some, or raise the limit).
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from types import EllipsisType, MappingProxyType
from typing import ClassVar

from engine.clock import Clock
from engine.errors import ConfigurationError, InvalidInput, QuotaExceeded

RESOURCES = ("api_calls", "tokens", "storage_mb", "compute_seconds")
BYTES_PER_MB = 1_000_000  # storage_mb counts decimal megabytes of stored content

RESERVATION_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class QuotaLimit:
    """At most `limit` per sliding `window_s` seconds, or in total when `window_s` is None."""

    limit: float
    window_s: float | None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.limit) and self.limit >= 0):
            raise ConfigurationError(
                f"quota limit must be a finite number >= 0, got {self.limit!r}"
            )
        if self.window_s is not None and not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ConfigurationError(
                f"quota window must be None or > 0 seconds, got {self.window_s!r}"
            )


def _tier(
    api_calls: float, tokens: float, storage_mb: float, compute_s: float
) -> dict[str, QuotaLimit]:
    return {
        "api_calls": QuotaLimit(api_calls, 60.0),
        "tokens": QuotaLimit(tokens, 3600.0),
        "storage_mb": QuotaLimit(storage_mb, None),
        "compute_seconds": QuotaLimit(compute_s, 3600.0),
    }


DEFAULT_TIERS: dict[str, dict[str, QuotaLimit]] = {
    "free": _tier(60, 20_000, 10, 300),
    "pro": _tier(600, 200_000, 100, 3_000),
    "enterprise": _tier(6_000, 2_000_000, 1_000, 30_000),
}


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on quota between the check and the real cost; settle or release it (repeats no-op)."""

    id: int
    user_id: str
    amounts: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """One resource's standing; `reset_in_s` is inf for a no-window total that holds anything."""

    resource: str
    used: float
    reserved: float
    limit: float
    percent: float
    reset_in_s: float


@dataclass(slots=True)
class _Ring:
    """Windowed usage in sub-buckets: sub-bucket k = floor(t / width) holds what was used in
    it, and the window is the `span` sub-buckets up to `head`, the current one.

    Only sub-buckets holding usage are kept, as (k, amount) pairs in one array, oldest first:
    a user uses a few sub-buckets a window, and a dense ring of 61 doubles for each of three
    resources was the larger part of a hot session's memory (about 2 KB a user).
    """

    window_s: float
    span: int
    head: int
    pairs: array[float]  # k0, amount0, k1, amount1, ...: k rising, each > head - span
    total: float = 0.0

    @classmethod
    def create(cls, window_s: float, buckets: int, now: float) -> _Ring:
        return cls(window_s, buckets + 1, math.floor(now / (window_s / buckets)), array("d"))

    @property
    def width(self) -> float:
        """A sub-bucket's seconds (computed: a float per ring is 24 B, and users have three)."""
        return self.window_s / (self.span - 1)

    def roll(self, now: float) -> None:
        """Expire sub-buckets that left the window.

        A clock that stepped back moves the ring back with it, each sub-bucket keeping its age,
        so usage expires a window after it happened rather than a window plus the step.
        """
        current = math.floor(now / (self.window_s / (self.span - 1)))  # self.width, inlined
        if current == self.head:
            return
        pairs = self.pairs
        if current < self.head:
            shift = self.head - current
            for i in range(0, len(pairs), 2):
                pairs[i] -= shift
            self.head = current
            return
        self.head = current
        oldest = current - self.span  # this sub-bucket and those before it have left
        drop = 0
        while drop < len(pairs) and pairs[drop] <= oldest:
            drop += 2
        if drop:
            del pairs[:drop]
            # Re-summing (not subtracting) keeps float drift from outliving one window.
            self.total = sum(pairs[1::2])

    def used(self, now: float) -> float:
        self.roll(now)
        return self.total

    def add(self, now: float, amount: float) -> None:
        self.roll(now)
        pairs = self.pairs
        if pairs and pairs[-2] == self.head:
            pairs[-1] += amount
        else:
            pairs.extend((self.head, amount))
        self.total += amount

    def add_at(self, now: float, at: float, amount: float) -> None:
        """Put usage that happened at `at` (<= now) back in its sub-bucket, if still in window."""
        self.roll(now)
        k = min(math.floor(at / self.width), self.head)
        if k <= self.head - self.span:
            return
        pairs = self.pairs
        i = 0
        while i < len(pairs) and pairs[i] < k:
            i += 2
        if i < len(pairs) and pairs[i] == k:
            pairs[i + 1] += amount
        else:
            pairs[i:i] = array("d", (k, amount))
        self.total += amount

    def expiry(self, k: float) -> float:
        """When sub-bucket k leaves the window: its end plus the window."""
        return (k + self.span) * self.width

    def time_to_free(self, excess: float, now: float) -> float:
        """Seconds until at least `excess` of the (rolled) usage has expired."""
        pairs = self.pairs
        freed = 0.0
        for i in range(0, len(pairs), 2):
            if pairs[i] >= self.head:
                break
            freed += pairs[i + 1]
            if freed >= excess:
                return self.expiry(pairs[i]) - now
        return self.expiry(self.head) - now

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest usage still in the window expires (0 if none)."""
        pairs = self.pairs
        for i in range(0, len(pairs), 2):
            if pairs[i + 1]:
                return self.expiry(pairs[i]) - now
        return 0.0


@dataclass(slots=True)
class _Total:
    """No-window usage: a running total that only `adjust` brings down."""

    window_s: ClassVar[None] = None
    total: float = 0.0

    def used(self, now: float) -> float:
        return self.total

    def add(self, now: float, amount: float) -> None:
        self.total = max(0.0, self.total + amount)

    def reset_in(self, now: float) -> float:
        return math.inf if self.total else 0.0


@dataclass(slots=True)
class _User:
    """A user's quota state: one field per resource's usage (named as in RESOURCES), None
    until used. Overrides and reservations are None until the user has one: a user of
    restored cold sessions has only their storage until a turn, and a million such users
    are held (a dict of usages and three empty dicts would be about 380 B a user)."""

    tier: str | None = None
    overrides: dict[str, QuotaLimit] | None = None
    reservations: dict[int, Reservation] | None = None
    reserved: dict[str, float] | None = None  # per resource, the sum of `reservations`
    api_calls: _Ring | _Total | None = None
    tokens: _Ring | _Total | None = None
    storage_mb: _Ring | _Total | None = None
    compute_seconds: _Ring | _Total | None = None

    def usages(self) -> tuple[_Ring | _Total | None, ...]:
        return tuple(getattr(self, resource) for resource in RESOURCES)



class QuotaManager:
    """Tiers, per-user overrides, sliding-window usage and outstanding reservations."""

    def __init__(
        self,
        clock: Clock,
        tiers: Mapping[str, Mapping[str, QuotaLimit]] = DEFAULT_TIERS,
        default_tier: str = "free",
        buckets_per_window: int = 60,
    ) -> None:
        check_tiers(tiers, default_tier, buckets_per_window)
        self._clock = clock
        self._tiers = {name: dict(limits) for name, limits in tiers.items()}
        self._default_tier = default_tier
        self._buckets = buckets_per_window
        self._users: dict[str, _User] = {}
        self._prune_round: list[str] = []  # users still to look at in this round of `prune`
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._users)

    # Tiers and overrides.

    def set_tier(self, user_id: str, tier: str) -> None:
        if tier not in self._tiers:
            raise InvalidInput(f"unknown tier {tier!r}; use one of {', '.join(self._tiers)}")
        # The default is stored as None so such users stay prunable.
        self._user(user_id).tier = None if tier == self._default_tier else tier

    def tier_of(self, user_id: str) -> str:
        state = self._users.get(user_id)
        return (state.tier if state else None) or self._default_tier

    def set_override(
        self,
        user_id: str,
        resource: str,
        limit: float,
        window_s: float | EllipsisType | None = ...,
    ) -> None:
        """Replace the tier's limit for one user; `...` keeps the window the tier has right now."""
        check_resource(resource)
        state = self._user(user_id)
        if window_s is ...:
            window_s = self._tiers[state.tier or self._default_tier][resource].window_s
        try:
            override = QuotaLimit(limit, window_s)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"override for {resource}: {exc}") from None
        if state.overrides is None:
            state.overrides = {}
        state.overrides[resource] = override

    def clear_override(self, user_id: str, resource: str) -> None:
        check_resource(resource)
        state = self._users.get(user_id)
        if state is not None and state.overrides is not None:
            state.overrides.pop(resource, None)

    # Reserve, settle, release, record.

    def reserve(self, user_id: str, amounts: Mapping[str, float]) -> Reservation:
        """Hold every amount or none: the first resource that would overrun raises QuotaExceeded."""
        wanted = validated_amounts(amounts)
        now = self._clock.now()
        state = self._users.get(user_id) or _User()
        limits = self._limits(state)
        for resource, amount in wanted.items():
            limit = limits[resource]
            usage = self._usage(state, resource, limit, now, create=False)
            used = usage.used(now) if usage else 0.0
            reserved = state.reserved.get(resource, 0.0) if state.reserved else 0.0
            if used + reserved + amount > limit.limit:
                retry = _retry_after(usage, used, reserved, amount, limit.limit, now)
                raise QuotaExceeded(resource, limit.limit, retry)
        reservation = Reservation(next(self._ids), user_id, MappingProxyType(wanted))
        self._users.setdefault(user_id, state)
        if state.reservations is None or state.reserved is None:
            state.reservations, state.reserved = {}, {}
        state.reservations[reservation.id] = reservation
        reserved_sums = state.reserved
        for resource, amount in wanted.items():
            reserved_sums[resource] = reserved_sums.get(resource, 0.0) + amount
        return reservation

    def settle(self, reservation: Reservation, actual: Mapping[str, float]) -> None:
        """Drop the hold and record what was really used (even above the estimate)."""
        used = validated_amounts(actual)
        state = self._take(reservation)
        if state is None:
            return
        now = self._clock.now()
        limits = self._limits(state)
        for resource, amount in used.items():
            if amount:
                self._usage(state, resource, limits[resource], now).add(now, amount)

    def release(self, reservation: Reservation) -> None:
        """Drop the hold without recording anything (the call failed or was refused)."""
        self._take(reservation)

    def record(self, user_id: str, resource: str, amount: float) -> None:
        """Consume without a check: the usage already happened."""
        (amount,) = validated_amounts({resource: amount}).values()
        if amount:
            state = self._user(user_id)
            now = self._clock.now()
            self._usage(state, resource, self._limit(state, resource), now).add(now, amount)

    def restore(self, user_id: str, resource: str, amount: float, at: float) -> None:
        """Re-count usage recorded at `at` before a restart; windowed resources only."""
        (amount,) = validated_amounts({resource: amount}).values()
        state = self._user(user_id)
        limit = self._limit(state, resource)
        if limit.window_s is None:
            raise InvalidInput(f"{resource} has no window; restore it with adjust()")
        now = self._clock.now()
        usage = self._usage(state, resource, limit, now)
        assert isinstance(usage, _Ring)
        usage.add_at(now, at, amount)

    def window_of(self, user_id: str, resource: str) -> float | None:
        """The window `resource` is counted over for this user (None: a running total)."""
        state = self._users.get(user_id)
        if state is None:
            return self._tiers[self._default_tier][resource].window_s
        return self._limit(state, resource).window_s

    def adjust(self, user_id: str, resource: str, delta: float) -> None:
        """Move a no-window total up or down (storage freed); it never goes below zero."""
        if resource not in RESOURCES:
            check_resource(resource)  # raises
        if not (isinstance(delta, _NUMBER) and math.isfinite(delta)):
            raise InvalidInput(f"delta for {resource} must be a finite number, got {delta!r}")
        state = self._user(user_id)
        limit = self._limit(state, resource)
        if limit.window_s is not None:
            raise InvalidInput(
                f"{resource} is measured over a {limit.window_s:g}s window and expires on its "
                "own; use record() to add to it"
            )
        now = self._clock.now()
        self._usage(state, resource, limit, now).add(now, delta)

    # Reports and housekeeping.

    def usage(self, user_id: str) -> tuple[QuotaUsage, ...]:
        state = self._users.get(user_id) or _User()
        now = self._clock.now()
        report = []
        for resource in RESOURCES:
            limit = self._limit(state, resource)
            usage = self._usage(state, resource, limit, now, create=False)
            used = usage.used(now) if usage else 0.0
            reserved = state.reserved.get(resource, 0.0) if state.reserved else 0.0
            report.append(
                QuotaUsage(
                    resource=resource,
                    used=used,
                    reserved=reserved,
                    limit=limit.limit,
                    percent=percent_taken(used + reserved, limit.limit),
                    reset_in_s=usage.reset_in(now) if usage else 0.0,
                )
            )
        return tuple(report)

    def percents(self, user_id: str) -> tuple[tuple[str, float], ...]:
        """Each resource's percent taken (used + reserved): O(resources), without reset times."""
        state = self._users.get(user_id)
        if state is None:
            return tuple((resource, 0.0) for resource in RESOURCES)
        now = self._clock.now()
        limits = self._limits(state)
        reserved = state.reserved or {}
        taken = []
        for resource in RESOURCES:
            limit = limits[resource]
            usage = self._usage(state, resource, limit, now, create=False)
            amount = (usage.used(now) if usage else 0.0) + reserved.get(resource, 0.0)
            taken.append((resource, percent_taken(amount, limit.limit)))
        return tuple(taken)

    def highest_percent(self, user_id: str) -> float:
        """The fullest resource's percent, for spotting users near a quota."""
        return max(percent for _, percent in self.percents(user_id))

    def forget_user(self, user_id: str) -> None:
        """Drop everything about the user; their open reservations become no-ops."""
        self._users.pop(user_id, None)

    def prune(self, most: int | None = None) -> int:
        """Drop users whose state equals a fresh user's; returns how many. With `most`, look
        at that many users at most, each call going on where the last one stopped (a round
        starts from the users held then): one pass over the 200,000 users of a million
        restored sessions held the loop about 200 ms."""
        now = self._clock.now()
        if most is None:
            looked_at = list(self._users)
        else:
            if not self._prune_round:
                self._prune_round = list(self._users)
            looked_at = self._prune_round[-most:]
            del self._prune_round[-most:]
        dropped = 0
        for user_id in looked_at:
            state = self._users.get(user_id)
            if (
                state is not None
                and state.tier is None
                and not state.overrides
                and not state.reservations
                and not any(usage.used(now) for usage in state.usages() if usage is not None)
            ):
                del self._users[user_id]
                dropped += 1
        return dropped

    # Internals.

    def _user(self, user_id: str) -> _User:
        """The user's state, created if new (without building one to throw away)."""
        state = self._users.get(user_id)
        if state is None:
            state = self._users[user_id] = _User()
        return state

    def _limit(self, state: _User, resource: str) -> QuotaLimit:
        if state.overrides:
            override = state.overrides.get(resource)
            if override is not None:
                return override
        return self._tiers[state.tier or self._default_tier][resource]

    def _limits(self, state: _User) -> Mapping[str, QuotaLimit]:
        """Every resource's limit for the user: one lookup per call, not one per resource."""
        tier = self._tiers[state.tier or self._default_tier]
        return {**tier, **state.overrides} if state.overrides else tier

    def _usage(
        self, state: _User, resource: str, limit: QuotaLimit, now: float, create: bool = True
    ) -> _Ring | _Total | None:
        """The resource's usage in the shape its limit needs now.

        A tier or override that changes the window carries the current amount over as if
        used now: conservative, it can only expire later than it would have.
        """
        usage: _Ring | _Total | None = getattr(state, resource)
        if usage is not None and usage.window_s == limit.window_s:
            return usage
        if usage is None and not create:
            return None
        carried = usage.used(now) if usage is not None else 0.0
        fresh: _Ring | _Total = (
            _Total() if limit.window_s is None else _Ring.create(limit.window_s, self._buckets, now)
        )
        fresh.add(now, carried)
        setattr(state, resource, fresh)
        return fresh

    def _take(self, reservation: Reservation) -> _User | None:
        """Remove an open reservation; None if already settled, released or forgotten."""
        state = self._users.get(reservation.user_id)
        if (
            state is None or state.reservations is None or state.reserved is None
            or state.reservations.pop(reservation.id, None) is None
        ):
            return None
        if state.reservations:
            for resource, amount in reservation.amounts.items():
                state.reserved[resource] -= amount
        else:  # none left: exactly zero, whatever float drift the sums had
            state.reservations = state.reserved = None
        return state


def check_tiers(
    tiers: Mapping[str, Mapping[str, QuotaLimit]], default_tier: str, buckets_per_window: int
) -> None:
    """ConfigurationError unless every tier limits every resource and the default is a tier."""
    for name, limits in tiers.items():
        if set(limits) != set(RESOURCES):
            wanted = ", ".join(RESOURCES)
            raise ConfigurationError(
                f"tier {name!r} must define exactly {wanted}; got {sorted(limits)}"
            )
    if default_tier not in tiers:
        raise ConfigurationError(f"default tier {default_tier!r} is not one of {sorted(tiers)}")
    if buckets_per_window < 1:
        raise ConfigurationError(f"buckets_per_window must be >= 1, got {buckets_per_window}")


def check_resource(resource: str) -> None:
    """InvalidInput unless `resource` is one of RESOURCES."""
    if resource not in RESOURCES:
        raise InvalidInput(f"unknown resource {resource!r}; use one of {', '.join(RESOURCES)}")


def validated_amounts(amounts: Mapping[str, float]) -> dict[str, float]:
    """The amounts as floats, or InvalidInput naming the first unknown resource or bad amount."""
    checked = {}
    for resource, amount in amounts.items():
        if resource not in RESOURCES:
            check_resource(resource)  # raises
        kind = type(amount)
        if kind is not float and kind is not int and (
            isinstance(amount, bool) or not isinstance(amount, _NUMBER)
        ):
            raise InvalidInput(f"amount for {resource} must be a number, got {amount!r}")
        if not (amount >= 0 and math.isfinite(amount)):
            raise InvalidInput(f"amount for {resource} must be finite and >= 0, got {amount!r}")
        checked[resource] = float(amount)
    return checked


_NUMBER = (int, float)


def _retry_after(
    usage: _Ring | _Total | None,
    used: float,
    reserved: float,
    amount: float,
    limit: float,
    now: float,
) -> float:
    """Seconds to wait before `amount` fits; the cases are listed in the module docstring."""
    if amount > limit:
        return math.inf
    if reserved + amount > limit:
        return RESERVATION_RETRY_S
    if isinstance(usage, _Ring):
        return usage.time_to_free(used + reserved + amount - limit, now)
    return math.inf


def percent_taken(taken: float, limit: float) -> float:
    """A zero limit reads as 100%: nothing is available."""
    return 100.0 * taken / limit if limit else 100.0
