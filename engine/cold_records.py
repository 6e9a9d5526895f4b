"""Sessions read from the store and not used since, packed in columns: about 150 B each.

Held as a `Session` object, a cold session costs about 1.4 KB: the object, its id and name
strings, a float object per time, its token record, dict and heap entries. Most of a million
restored sessions are never used before they expire, so until its first use a session is a row
here instead: its id and token hash as raw bytes, its times and counters in typed arrays, its
names and timeouts as an index into the few distinct combinations ("profiles") in use.
`engine.sessions.SessionRegistry` looks an id up here when it holds no object for it, turns
the row into a `Session` on first use (`take`), and packs a session that has gone cold again
back into a row (`add_session`). A taken row's place is reused by the next row added, so the
table is as long as the most rows it held at once.

Hand-written because nothing in the standard library or a maintained package maps 16-byte keys
to rows without an object per entry (a dict of bytes to ints costs about 100 B an entry): the
index is open addressing over an `array`, probed linearly (a taken row's entry is removed by
shifting the ones after it back, so no marks pile up), keyed by Python's salted hash of the
id's bytes, so presented ids cannot be chosen to collide.
"""

from __future__ import annotations

import heapq
import json
import math
from array import array
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.security import TokenRecord
from engine.store.ops import ContextFigures, SessionRow

if TYPE_CHECKING:
    from engine.sessions import Session

ID_HEX_CHARS = 32  # engine.sessions.new_session_id: 16 random bytes as lowercase hex
_ID_BYTES = ID_HEX_CHARS // 2
_HASH_BYTES = 32  # SHA-256 of the token (engine.security.hash_token)
# Per row: created, last active, token issued, token expires.
_TIMES = 4
# Per row, 64-bit: prompt tokens, completion tokens.
_TOTALS = 2
# Per row, 32-bit: turns, errors, next seq, stored messages, stored bytes.
_COUNTS = 5
_MAX_COUNT = 2**32 - 1  # the 32-bit counters' bound
# Per row, a 16-bit index into the distinct profiles: (agent type, worker, tier, origin, idle
# timeout, lifetime), which nearly all sessions of a service share a few of.
_MAX_PROFILES = 2**16
_EMPTY = 0  # an index slot without a row (a slot holds its row + 1)
NO_METADATA: Mapping[str, Any] = MappingProxyType({})  # most sessions' metadata: one, shared
_Profile = tuple[str, str, str, str, float, float]


def _raw_id(session_id: str) -> bytes | None:
    """The id's 16 bytes if it is in the one form new_session_id makes, else None."""
    if len(session_id) != ID_HEX_CHARS or not (session_id.islower() or session_id.isdecimal()):
        return None
    try:
        return bytes.fromhex(session_id)
    except ValueError:
        return None


class ColdRecords:
    """Rows of cold sessions by id; loop-owned."""

    __slots__ = (
        "_counts", "_due", "_due_keys", "_free", "_hashes", "_ids", "_index", "_live", "_make",
        "_mask", "_metadata", "_next_of_user", "_profile", "_profile_index", "_profiles",
        "_times", "_totals", "_user", "_user_first", "_user_index", "_user_rows", "_users",
        "rows", "users",
    )

    def __init__(self, make: Callable[..., Session]) -> None:
        """`make`: the session class (engine.sessions imports this module, not the reverse)."""
        self._make = make
        self.rows = 0  # rows held (added and not taken)
        self.users = 0  # users holding at least one row
        self._reset(16)

    def __len__(self) -> int:
        return self.rows

    def reserve(self, rows: int) -> None:
        """Size the index for `rows` more rows now: growing it later rehashes every row at
        once, which at a million rows holds the loop for most of a second."""
        self._grow_to(self.rows + rows)

    # -- rows in -----------------------------------------------------------------------------
    def add(self, row: SessionRow, figures: ContextFigures | None) -> bool:
        """Hold a stored session as a row; False (nothing held) if it does not pack (an id
        not in new_session_id's form, a counter past 32 bits, too many distinct profiles) or
        is held already: the caller keeps such a session as an object."""
        return self._put(
            row.session_id, row.user_id, row.token_hash,
            (row.created_at, row.last_active_at, row.token_issued_at, row.token_expires_at),
            (row.prompt_tokens, row.completion_tokens),
            (
                row.turns, row.errors, figures.next_seq if figures else 0,
                figures.messages if figures else 0, figures.bytes if figures else 0,
            ),
            (
                row.agent_type, row.worker or "", row.tier, row.origin, row.idle_timeout_s,
                row.lifetime_s,
            ),
            None if row.metadata_json == "{}" else json.loads(row.metadata_json),
        )

    def add_session(self, session: Session) -> bool:
        """Pack a cold session back into a row (its context gone, its token valid); False as
        `add`. The caller stops holding the object."""
        token = session.token
        if session.context is not None or token is None or token.revoked:
            return False
        return self._put(
            session.session_id, session.user_id, token.token_hash,
            (session.created_at, session.last_active_at, token.issued_at, token.expires_at),
            (session.prompt_tokens, session.completion_tokens),
            (
                session.turns, session.errors, session.next_seq, session.cold_messages,
                session.cold_bytes,
            ),
            (
                session.agent_type, session.worker, session.tier, session.origin,
                session.idle_timeout_s, session.lifetime_s,
            ),
            session.metadata or None,
        )

    def _put(
        self,
        session_id: str,
        user_id: str,
        token_hash: bytes,
        times: tuple[float, float, float, float],
        totals: tuple[int, int],
        counts: tuple[int, int, int, int, int],
        profile_of: _Profile,
        metadata: Mapping[str, Any] | None,
    ) -> bool:
        raw = _raw_id(session_id)
        if raw is None or len(token_hash) != _HASH_BYTES or self._find(raw) >= 0:
            return False
        profile = self._profile_of(profile_of)
        if max(counts) > _MAX_COUNT or min(counts) < 0 or profile is None:
            return False
        self._grow_to(self.rows + 1)
        user = self._user_index.get(user_id)
        if user is None:
            user = self._user_index[user_id] = len(self._users)
            self._users.append(user_id)
            self._user_rows.append(0)
            self._user_first.append(-1)
        if self._free:
            index = self._free.pop()  # a taken row's place: every column is fixed-width
            self._ids[index * _ID_BYTES:(index + 1) * _ID_BYTES] = raw
            self._hashes[index * _HASH_BYTES:(index + 1) * _HASH_BYTES] = token_hash
            self._times[index * _TIMES:(index + 1) * _TIMES] = array("d", times)
            self._totals[index * _TOTALS:(index + 1) * _TOTALS] = array("q", totals)
            self._counts[index * _COUNTS:(index + 1) * _COUNTS] = array("I", counts)
            self._profile[index] = profile
            self._user[index] = user
            self._next_of_user[index] = self._user_first[user]
            self._live[index] = 1
        else:
            index = len(self._live)
            self._ids += raw
            self._hashes += token_hash
            self._times.extend(times)
            self._totals.extend(totals)
            self._counts.extend(counts)
            self._profile.append(profile)
            self._user.append(user)
            self._next_of_user.append(self._user_first[user])
            self._live.append(1)
        if metadata:
            self._metadata[index] = MappingProxyType(dict(metadata))
        self._user_first[user] = index
        if not self._user_rows[user]:
            self.users += 1
        self._user_rows[user] += 1
        self._place(raw, index)
        self._arm(index)
        self.rows += 1
        return True

    # -- look-ups ----------------------------------------------------------------------------
    def find(self, session_id: str) -> int:
        """The row of `session_id`, or -1: one probe of the index, found or not."""
        raw = _raw_id(session_id)
        return self._find(raw) if raw is not None else -1

    def token(self, index: int) -> TokenRecord | None:
        """The row's token record, to check a presented token before the row is taken; for
        -1 (no row) None, after the same work on the first row, so that a presented id's cost
        does not say whether it has a row. Only while rows are held."""
        at = max(index, 0)
        start = at * _HASH_BYTES
        times = self._times
        record = TokenRecord(
            bytes(self._hashes[start:start + _HASH_BYTES]),
            times[at * _TIMES + 2], times[at * _TIMES + 3],
        )
        return record if index >= 0 else None

    def user_of(self, index: int) -> str:
        return self._users[self._user[index]]

    def count_of(self, user_id: str) -> int:
        user = self._user_index.get(user_id)
        return self._user_rows[user] if user is not None else 0

    def rows_of(self, user_id: str) -> list[int]:
        """The user's rows, most recently added first (a taken row leaves its user's chain)."""
        user = self._user_index.get(user_id)
        rows: list[int] = []
        index = self._user_first[user] if user is not None else -1
        while index >= 0:
            rows.append(index)
            index = self._next_of_user[index]
        return rows

    def session(self, index: int) -> Session:
        """The row as a `Session` (cold: context None), the row left in place: for a look at
        it (the console's table) or before `take`."""
        times, totals, counts = self._times, self._totals, self._counts
        t, s, c = index * _TIMES, index * _TOTALS, index * _COUNTS
        agent_type, worker, tier, origin, idle_timeout_s, lifetime_s = self._profiles[
            self._profile[index]
        ]
        return self._make(
            session_id=self._ids[index * _ID_BYTES:(index + 1) * _ID_BYTES].hex(),
            user_id=self._users[self._user[index]],
            metadata=self._metadata.get(index, NO_METADATA),
            created_at=times[t], last_active_at=times[t + 1],
            idle_timeout_s=idle_timeout_s, lifetime_s=lifetime_s,
            context=None,
            turns=counts[c], errors=counts[c + 1],
            prompt_tokens=totals[s], completion_tokens=totals[s + 1],
            agent_type=agent_type, worker=worker, tier=tier, origin=origin,
            token=self.token(index),
            next_seq=counts[c + 2], cold_messages=counts[c + 3], cold_bytes=counts[c + 4],
        )

    def sessions(self) -> Iterator[Session]:
        """Every row held, as a `Session` each (see `session`), in the order added."""
        live = self._live
        for index in range(len(live)):
            if live[index]:
                yield self.session(index)

    # -- rows out ----------------------------------------------------------------------------
    def take(self, index: int) -> Session:
        """The row as a `Session`, no longer held here: the caller holds the object now."""
        session = self.session(index)
        self._live[index] = 0
        self._unplace(self._slot_of(index))
        self._metadata.pop(index, None)
        user = self._user[index]
        self._unlink(user, index)
        self._free.append(index)
        self._user_rows[user] -= 1
        if not self._user_rows[user]:
            self.users -= 1
        self.rows -= 1
        if not self.rows:
            self._reset(16)
        return session

    def due(self, now: float) -> list[int]:
        """The rows past their deadline at `now` (they stay held until taken). A row's
        deadline never moves while it is a row: any use takes it first. A bucket may still
        name a place taken since, or refilled by a row due at another time: skipped."""
        keys, buckets = self._due_keys, self._due
        found: dict[int, None] = {}  # a refilled place may be named twice in one bucket
        while keys and keys[0] <= now:
            key = heapq.heappop(keys)
            bucket = buckets.pop(key)
            later = array("i")
            for index in bucket:
                if not self._live[index]:
                    continue
                deadline = self.deadline(index)
                if not math.isfinite(deadline) or int(deadline) != key or index in found:
                    continue
                if deadline <= now:
                    found[index] = None
                else:
                    later.append(index)  # in this second, but not yet
            if later:
                buckets[key] = later
                heapq.heappush(keys, key)
                break
        return list(found)

    def deadline(self, index: int) -> float:
        times = self._times
        t = index * _TIMES
        idle_timeout_s, lifetime_s = self._profiles[self._profile[index]][4:]
        return min(times[t + 1] + idle_timeout_s, times[t] + lifetime_s)

    # -- internals ---------------------------------------------------------------------------
    def _reset(self, capacity: int) -> None:
        self._ids = bytearray()
        self._hashes = bytearray()
        self._times = array("d")
        self._totals = array("q")
        self._counts = array("I")
        self._profile = array("H")
        self._profiles: list[_Profile] = []
        self._profile_index: dict[_Profile, int] = {}
        self._metadata: dict[int, Mapping[str, Any]] = {}
        self._user = array("i")
        self._next_of_user = array("i")
        self._users: list[str] = []
        self._user_index: dict[str, int] = {}
        self._user_rows = array("i")
        self._user_first = array("i")
        self._live = bytearray()
        self._free = array("i")  # places of taken rows, to refill
        self._index = array("i", [_EMPTY]) * capacity
        self._mask = capacity - 1
        self._due: dict[int, array[int]] = {}
        self._due_keys: list[int] = []

    def _profile_of(self, profile: _Profile) -> int | None:
        """The profile's index, added if new; None when the 16-bit index has no room left."""
        index = self._profile_index.get(profile)
        if index is None:
            if len(self._profiles) >= _MAX_PROFILES:
                return None
            index = self._profile_index[profile] = len(self._profiles)
            self._profiles.append(profile)
        return index

    def _find(self, raw: bytes) -> int:
        index, ids, mask = self._index, self._ids, self._mask
        slot = hash(raw) & mask
        while True:
            entry = index[slot]
            if entry == _EMPTY:
                return -1
            row = entry - 1
            start = row * _ID_BYTES
            if ids[start:start + _ID_BYTES] == raw:
                return row
            slot = (slot + 1) & mask

    def _slot_of(self, row: int) -> int:
        raw = bytes(self._ids[row * _ID_BYTES:(row + 1) * _ID_BYTES])
        index, mask = self._index, self._mask
        slot = hash(raw) & mask
        while index[slot] != row + 1:
            slot = (slot + 1) & mask
        return slot

    def _place(self, raw: bytes, row: int) -> None:
        index, mask = self._index, self._mask
        slot = hash(raw) & mask
        while index[slot] != _EMPTY:
            slot = (slot + 1) & mask
        index[slot] = row + 1

    def _unplace(self, slot: int) -> None:
        """Empty `slot`, moving back each later entry of its run that probing would no longer
        reach (backward-shift deletion: linear probing without marks)."""
        index, mask, ids = self._index, self._mask, self._ids
        index[slot] = _EMPTY
        later = slot
        while True:
            later = (later + 1) & mask
            entry = index[later]
            if entry == _EMPTY:
                return
            row = entry - 1
            home = hash(bytes(ids[row * _ID_BYTES:(row + 1) * _ID_BYTES])) & mask
            # The entry stays if its home lies cyclically in (slot, later]; else it moves up.
            if (home - slot - 1) & mask < (later - slot) & mask:
                continue
            index[slot] = entry
            index[later] = _EMPTY
            slot = later

    def _unlink(self, user: int, row: int) -> None:
        """Take `row` out of its user's chain (a user holds a few rows: a short walk)."""
        previous, current = -1, self._user_first[user]
        while current != row:
            previous, current = current, self._next_of_user[current]
        following = self._next_of_user[row]
        if previous < 0:
            self._user_first[user] = following
        else:
            self._next_of_user[previous] = following

    def _grow_to(self, rows: int) -> None:
        """Keep the index at most half full."""
        capacity = self._mask + 1
        if 2 * rows <= capacity:
            return
        while 2 * rows > capacity:
            capacity *= 2
        self._index = array("i", [_EMPTY]) * capacity
        self._mask = capacity - 1
        ids, live = self._ids, self._live
        for row in range(len(live)):
            if live[row]:
                self._place(bytes(ids[row * _ID_BYTES:(row + 1) * _ID_BYTES]), row)

    def _arm(self, row: int) -> None:
        deadline = self.deadline(row)
        if not math.isfinite(deadline):
            return
        key = int(deadline)
        bucket = self._due.get(key)
        if bucket is None:
            bucket = self._due[key] = array("i")
            heapq.heappush(self._due_keys, key)
        bucket.append(row)
