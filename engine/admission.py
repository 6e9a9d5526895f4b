"""Backoff for presenters that keep failing authentication, without ever refusing a right token.

A client retrying a dead session's token (a browser tab left open, or an attacker) fails the
same way again and again. Two bounded tables of strikes follow who keeps failing, each with
its own exponential backoff once `free_failures` are spent:

- a presentation: the session id together with the token. A dead token sent again while in
  backoff is refused at once, before the token is hashed and before the session is looked up,
  so the work and the answer are the same whether the session exists or not. A right token
  never failed, so it is never in this table and cannot be refused by it.
- a client (an HTTP address, or the in-process caller): a failure from a client in backoff is
  answered with `AuthBackoff` and its retry_after. The token is still checked first (one
  SHA-256, less than a successful call costs), because a right token must always work: an
  attacker sharing the victim's address (or the in-process caller) must not lock the victim
  out. For the same reason a session id alone is never backed off: anyone can present a
  victim's id. Bursts per presented id still raise the monitor's auth_burst alert.

A presentation is kept as Python's `hash()` of the pair: SipHash under a per-process random key,
64 bits, never the token itself and not a cryptographic check (a right token sharing the key of
a failing one: about 2^-64 per failing pair). Memory is bounded per table (least recently struck
dropped first) and a key with no failure for `forget_after_s` starts over.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from engine.clock import Clock
from engine.security import MAX_TOKEN_CHARS

IN_PROCESS = "in-process"  # the client identity of callers that pass none
_MAX_KEY_CHARS = 64  # presented ids and client names are caller-chosen: bounded in memory


@dataclass(frozen=True, slots=True)
class AuthBackoffPolicy:
    """How many failures are free, and how the backoff after them grows."""

    free_failures: int = 10
    base_s: float = 0.5  # the first backoff; each further failure doubles it
    max_s: float = 60.0
    forget_after_s: float = 600.0  # a key with no failure for this long starts over
    max_keys: int = 10_000  # per table

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.max_keys < 1:
            raise ValueError("free_failures must be >= 0 and max_keys >= 1")
        if not 0 < self.base_s <= self.max_s <= self.forget_after_s:
            raise ValueError("backoff needs 0 < base_s <= max_s <= forget_after_s")


class _StrikeTable:
    """Strikes per key: a bounded table, O(1) amortised per call.

    A key's strikes are a tuple (failures, last failure at, in backoff until) of plain numbers,
    replaced on each strike: the collector stops tracking such tuples, so a full table adds
    nothing to its passes (lists or records here made a failure cost 5x more in collections).
    A struck key is popped and put back, so the dict's order is least recently struck first;
    past `max_keys` the least recently struck quarter goes in one pass. A plain dict this way
    costs less per failure than an OrderedDict's linked list, and never pays for the holes
    that removing from the front of a dict one key at a time leaves behind.
    """

    __slots__ = ("_forget_after_s", "_free", "_keep", "_max_keys", "_max_s", "_strikes", "_waits")

    def __init__(self, policy: AuthBackoffPolicy) -> None:
        self._free = policy.free_failures
        self._max_s = policy.max_s
        # The backoff after the n-th failure past the free ones, doubling up to the cap.
        waits = [policy.base_s]
        while waits[-1] < policy.max_s:
            waits.append(waits[-1] * 2.0)
        waits[-1] = policy.max_s
        self._waits = tuple(waits)
        self._forget_after_s = policy.forget_after_s
        self._max_keys = policy.max_keys
        self._keep = policy.max_keys - max(1, policy.max_keys // 4)
        self._strikes: dict[str | int, tuple[int, float, float]] = {}

    def __len__(self) -> int:
        return len(self._strikes)

    def retry_after(self, key: str | int, now: float) -> float:
        strikes = self._strikes.get(key)
        if strikes is None or strikes[2] <= now:
            return 0.0
        if strikes[2] - now > self._max_s:  # the clock stepped back: hold it to the bound
            strikes = self._strikes[key] = (strikes[0], min(strikes[1], now), now + self._max_s)
        return strikes[2] - now

    def strike(self, key: str | int, now: float) -> float:
        """Count one failure for `key`; returns how long it is now in backoff (0: not).

        Written without min/max calls: under a storm this runs twice per failure, and each
        builtin call cost as much as the dict work."""
        table = self._strikes
        strikes = table.pop(key, None)
        if strikes is None or now - strikes[1] >= self._forget_after_s:
            failures, until = 1, now
        else:
            failures, until = strikes[0] + 1, strikes[2]
            if until > now + self._max_s:  # the clock stepped back: hold it to the bound
                until = now + self._max_s
        over = failures - self._free
        if over > 0:
            waits = self._waits
            wait = waits[over - 1] if over <= len(waits) else self._max_s
            if now + wait > until:
                until = now + wait
        table[key] = (failures, now, until)
        if len(table) > self._max_keys:
            self._strikes = dict(islice(table.items(), len(table) - self._keep, None))
        return until - now


@dataclass(frozen=True, slots=True)
class AuthFailureStats:
    refused_unchecked: int  # refused in backoff before any hashing
    backoffs: int  # failures answered with a retry_after
    presentations: int  # keys tracked per table
    clients: int


def presentation_key(session_id: object, token: object) -> int:
    """A presented (session id, token) pair as 64 bits: cheap, keyed per process, never the
    token. Malformed tokens share one value (they are never right)."""
    well_formed = isinstance(token, str) and len(token) <= MAX_TOKEN_CHARS
    return hash((presented_key(session_id), token if well_formed else None))


def presented_key(value: object) -> str:
    """A caller-chosen id or client name as a bounded table key."""
    return value[:_MAX_KEY_CHARS] if isinstance(value, str) else ""


class AuthFailures:
    """Who keeps failing authentication, and for how long each is refused."""

    def __init__(self, clock: Clock, policy: AuthBackoffPolicy | None = None) -> None:
        policy = policy or AuthBackoffPolicy()
        self._clock = clock
        self._presentations = _StrikeTable(policy)
        self._clients = _StrikeTable(policy)
        self._refused_unchecked = 0
        self._backoffs = 0

    def refuse_unchecked(self, presentation: int) -> float:
        """retry_after > 0 when this id and token already failed and are in backoff: refuse
        before hashing. Constant work: the session is not looked up."""
        wait = self._presentations.retry_after(presentation, self._clock.now())
        if wait > 0:
            self._refused_unchecked += 1
        return wait

    def failed(self, presentation: int, client: str) -> float:
        """Count a failed check; the longer backoff now holding either (0: none)."""
        now = self._clock.now()
        wait = self._presentations.strike(presentation, now)
        client_wait = self._clients.strike(presented_key(client), now)
        if client_wait > wait:
            wait = client_wait
        if wait > 0:
            self._backoffs += 1
        return wait

    def stats(self) -> AuthFailureStats:
        return AuthFailureStats(
            self._refused_unchecked, self._backoffs,
            len(self._presentations), len(self._clients),
        )
