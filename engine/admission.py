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

Both back off the same way: the backoff starts once the free failures are spent and doubles
with each failure after it has run out; a failure while it runs does not lengthen it (a
presentation in backoff is refused before it can fail at all, and a client is treated alike).

A presentation is kept as Python's `hash()` of the pair: SipHash under a per-process random key,
64 bits, never the token itself and not a cryptographic check (a right token sharing the key of
a failing one: about 2^-64 per failing pair). Memory is fixed per table (least recently struck
dropped first) and a key with no failure for `forget_after_s` starts over.

A failure costs no more than a successful call (issue 15), whatever the caller chose to
present: a key's first failure only takes a slot of two flat arrays, and a client already in
backoff is only looked up.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from itertools import islice

from engine.clock import Clock
from engine.security import MAX_TOKEN_CHARS

IN_PROCESS = "in-process"  # the client identity of callers that pass none
_MAX_KEY_CHARS = 64  # presented ids and client names are caller-chosen: bounded in memory
_NEVER = -math.inf  # when an empty slot's key failed


@dataclass(frozen=True, slots=True)
class AuthBackoffPolicy:
    """How many failures are free, and how the backoff after them grows."""

    free_failures: int = 10
    base_s: float = 0.5  # the first backoff; a failure after a backoff ran out doubles it
    max_s: float = 60.0
    forget_after_s: float = 600.0  # a key with no failure for this long starts over
    max_keys: int = 10_000  # per table

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.max_keys < 1:
            raise ValueError("free_failures must be >= 0 and max_keys >= 1")
        if not 0 < self.base_s <= self.max_s <= self.forget_after_s:
            raise ValueError("backoff needs 0 < base_s <= max_s <= forget_after_s")


class _StrikeTable:
    """Strikes per key: fixed memory, O(1) amortised per call.

    A key's first failure is only noted in a slot of two flat arrays (its 64-bit hash, when),
    the slot picked by that hash. A flood of guesses is mostly keys that fail once and never
    again, and an entry for each (the insert, the dict's growth, evicting the oldest, and with
    it a repeat offender this table is there to follow) cost a fresh failure more than a
    successful call costs. A key failing again within `forget_after_s` finds its slot and gets
    an entry; with no free failures it gets one at once. Two keys sharing a slot overwrite each
    other: a first failure can be forgotten (one more failure is then needed), and one is
    taken for another's only if their 64-bit hashes are equal. Flat arrays rather than (key,
    when) tuples, so that noting a key frees nothing an earlier key left elsewhere in memory.

    An entry is a tuple (failures, last failure at) of plain numbers, replaced on each strike:
    the collector stops tracking such tuples, so a full table adds nothing to its passes (lists
    or records here made a failure cost 5x more in collections). A key is in backoff until its
    last failure plus the wait for its count. A struck key is popped and put back, so the dict's
    order is least recently struck first; past `max_keys` the least recently struck quarter
    goes in one pass. A plain dict this way costs less per failure than an OrderedDict's linked
    list, and never pays for the holes that removing from the front of a dict one key at a time
    leaves behind.
    """

    __slots__ = (
        "first_at", "first_hash", "forget_after_s", "free", "keep", "mask", "max_keys",
        "max_s", "most", "strikes", "waits",
    )

    def __init__(self, policy: AuthBackoffPolicy) -> None:
        self.free = policy.free_failures
        self.max_s = policy.max_s
        # The backoff after a key's n-th failure, n = 0, 1, ...: none while failures are free,
        # then doubling up to the cap. A count past the cap stays at the cap's index: it would
        # change nothing, and a small count is one less number to allocate per strike.
        waits = [0.0] * (policy.free_failures + 1)
        wait = policy.base_s
        while wait < policy.max_s:
            waits.append(wait)
            wait *= 2.0
        waits.append(policy.max_s)
        self.waits = tuple(waits)
        self.most = len(waits) - 1
        self.forget_after_s = policy.forget_after_s
        self.max_keys = policy.max_keys
        self.keep = policy.max_keys - max(1, policy.max_keys // 4)
        self.strikes: dict[str | int, tuple[int, float]] = {}
        slots = 1 << (policy.max_keys.bit_length() - 1)  # a power of two, at most max_keys
        self.mask = slots - 1
        self.first_hash = array("q", bytes(8 * slots))
        self.first_at = array("d", [_NEVER]) * slots  # _NEVER: an empty slot

    def __len__(self) -> int:
        """Keys tracked: with an entry, or noted once (O(max_keys): for stats only)."""
        return len(self.strikes) + sum(at != _NEVER for at in self.first_at)

    def retry_after(self, key: str | int, now: float) -> float:
        """How long `key` is still in backoff (0: not)."""
        strikes = self.strikes.get(key)
        if strikes is None:
            return 0.0
        left = strikes[1] + self.waits[strikes[0]] - now
        if left > self.max_s:  # the clock stepped back: hold it to the bound from now on
            return self._hold(key, strikes[0], now)
        return left if left > 0 else 0.0

    def strike(self, key: str | int, now: float) -> float:
        """Count one failure for `key`; returns how long it is now in backoff (0: not).

        A key in backoff is only looked up: this failure does not lengthen its backoff."""
        table = self.strikes
        strikes = table.get(key)
        if strikes is None:
            if self.free:  # a first failure is free: noted in a slot, no entry yet
                key_hash = hash(key)
                slot = key_hash & self.mask
                if (
                    self.first_hash[slot] != key_hash
                    or now - self.first_at[slot] >= self.forget_after_s
                ):
                    self.first_hash[slot] = key_hash
                    self.first_at[slot] = now
                    return 0.0
                self.first_at[slot] = _NEVER  # the key has an entry from now on
            failures = 2 if self.free else 1
            table[key] = (failures, now)
            if len(table) > self.max_keys:  # only a new key makes the table grow
                self.strikes = dict(islice(table.items(), len(table) - self.keep, None))
            return self.waits[failures]
        failures, last = strikes
        left = last + self.waits[failures] - now
        if left > 0:
            return left if left <= self.max_s else self._hold(key, failures, now)
        if now - last >= self.forget_after_s:
            failures = 1
        elif failures < self.most:
            failures += 1
        del table[key]  # put back below: the most recently struck last
        table[key] = (failures, now)
        return self.waits[failures]

    def _hold(self, key: str | int, failures: int, now: float) -> float:
        """The clock stepped back into a backoff: it ends `max_s` from now at the latest."""
        self.strikes[key] = (failures, now + self.max_s - self.waits[failures])
        return self.max_s


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

    def refuse_unchecked(self, presentation: int, now: float | None = None) -> float:
        """retry_after > 0 when this id and token already failed and are in backoff: refuse
        before hashing. Constant work: the session is not looked up. `now`: the caller's
        reading of the clock, if it has one (one reading per authentication)."""
        wait = self._presentations.retry_after(
            presentation, self._clock.now() if now is None else now
        )
        if wait > 0:
            self._refused_unchecked += 1
        return wait

    def failed(self, presentation: int, client: str, now: float | None = None) -> float:
        """Count a failed check; the longer backoff now holding either (0: none).

        The two common cases are written out rather than called (`_StrikeTable.strike` does
        the rest): a presentation failing for the first time is only noted, and a client
        already in backoff is only looked up. A failure must cost no more than a success, and
        here each call cost about as much as the work it did (issue 15)."""
        if now is None:
            now = self._clock.now()
        table = self._presentations
        if presentation in table.strikes or not table.free:
            wait = table.strike(presentation, now)
        else:
            key_hash = hash(presentation)
            slot = key_hash & table.mask
            first_hash = table.first_hash
            if first_hash[slot] != key_hash or now - table.first_at[slot] >= table.forget_after_s:
                first_hash[slot] = key_hash  # a first failure (or the first since forgotten)
                table.first_at[slot] = now
                wait = 0.0
            else:
                wait = table.strike(presentation, now)  # noted before: it gets an entry
        table = self._clients
        client = client[:_MAX_KEY_CHARS]  # presented_key: caller-chosen, so bounded
        strikes = table.strikes.get(client)
        client_wait = strikes[1] + table.waits[strikes[0]] - now if strikes is not None else 0.0
        if not 0 < client_wait <= table.max_s:  # not in backoff (or the clock stepped back)
            client_wait = table.strike(client, now)
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
