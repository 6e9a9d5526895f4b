"""Putting back the cluster's shared state after Valkey/Redis lost it, once, by one worker.

A Valkey/Redis that restarts without persistence comes back empty: quota counters at zero
would let every user spend their window again, and emptied session sets would let a user past
the session cap. A marker key says the state is whole. While it is missing (the cluster's first
start, or a server that came back empty) the decisions that would count from zero, admitting a
turn and claiming a place under the session cap, answer `NotRebuilt` instead of deciding, until
one worker has put back from the store what must not restart at zero: the users' tiers, their
live sessions, and the quota windows from the quota events in PostgreSQL. Each live session's
affinity is put back next (`place`), once the marker lets decisions go ahead (none reads it):
on the worker that served its last turn (the store's `served_by`) if that one is alive and not
draining, else on the alive worker with the fewest (engine/cluster/placement.py), so a loss
moves no session whose worker is still there, and a drain moves only the sessions placed on
the draining worker.

The worker that first finds the marker missing claims the rebuild (`SET NX` with a TTL, so a
worker that dies mid-rebuild frees it), replays, and sets the marker; the others wait for the
marker. The replay adds to the counters, so it must happen once per loss: the claim sees to
it, as long as a replay ends within the claim's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.cluster.connection import ClusterClient
from engine.cluster.quotas import ClusterQuotas
from engine.errors import InvalidInput
from engine.store import Restored

if TYPE_CHECKING:
    from engine.cluster.placement import ClusterPlacement
    from engine.cluster.user_sessions import UserSessions

NOT_REBUILT = "rebuild"  # what a script answers while the marker is missing

# True once the marker says the state was rebuilt (or never lost).
REBUILT_FN = r"""
local function rebuilt(marker)
  local value = redis.call('GET', marker)
  return value and string.sub(value, 1, 5) == 'done|'
end
"""

REPLAY_CONCURRENCY = 64  # replay calls in flight at once: a pipeline's worth, not a flood
PLACE_CHUNK = 200  # sessions placed per script: 1.6 ms of the server's time, nothing else runs


@dataclass(frozen=True, slots=True)
class NotRebuilt:
    """The shared state was lost and is not rebuilt yet: rebuild (or wait), then ask again."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a rebuild put back."""

    users: int
    sessions: int
    quota_events: int


class StateRebuild:
    """The marker, the claim on the rebuild, and the replay itself."""

    def __init__(
        self,
        client: ClusterClient,
        key: str,
        quotas: ClusterQuotas,
        sessions: UserSessions,
        placement: ClusterPlacement,
        claim_ttl_s: float = 60.0,
    ) -> None:
        self._client = client
        self.key = key
        self._quotas = quotas
        self._sessions = sessions
        self._placement = placement
        self.claim_ttl_s = claim_ttl_s

    async def is_rebuilt(self) -> bool:
        value = await self._client.run(self._client.redis.get(self.key))
        return value is not None and value.startswith("done|")

    async def claim(self, worker_id: str) -> bool:
        """True for exactly one caller per loss of the server's data: that worker replays."""
        claimed = await self._client.run(self._client.redis.set(
            self.key, f"claimed|{worker_id}", nx=True, px=round(self.claim_ttl_s * 1000)
        ))
        return bool(claimed)

    async def done(self, worker_id: str) -> None:
        """The state is whole: decisions go ahead on every worker."""
        await self._client.run(self._client.redis.set(self.key, f"done|{worker_id}"))

    async def abandon(self, worker_id: str) -> None:
        """A replay that failed midway frees its claim (another worker may then replay over
        what it put back: counters can only come out high, never low)."""
        value = await self._client.run(self._client.redis.get(self.key))
        if value == f"claimed|{worker_id}":
            await self._client.run(self._client.redis.delete(self.key))

    async def replay(self, restored: Restored, lifetime_s: float) -> Replayed:
        """Put back the tiers, the live sessions under their users' caps and the windowed
        quota usage the store holds. Tiers first: they decide which windows count."""
        newest: dict[str, tuple[float, str]] = {}  # user -> (created_at, tier) of the newest
        by_user: dict[str, list[tuple[str, float]]] = {}
        for row in restored.sessions:
            by_user.setdefault(row.user_id, []).append((row.session_id, row.created_at))
            if row.user_id not in newest or row.created_at >= newest[row.user_id][0]:
                newest[row.user_id] = (row.created_at, row.tier)
        await _bounded(
            self._set_tier(user_id, tier) for user_id, (_, tier) in newest.items()
        )
        await _bounded(
            self._sessions.add(user_id, sessions, lifetime_s)
            for user_id, sessions in by_user.items()
        )
        await _bounded(
            self._restore(e.user_id, e.resource, e.amount, e.at) for e in restored.quota
        )
        return Replayed(len(by_user), len(restored.sessions), len(restored.quota))

    async def place(self, restored: Restored, workers: Sequence[str]) -> int:
        """Give each live session not placed since an affinity to one of `workers` (the alive
        ones, not draining): the one that served it last, else the fewest first; returns how
        many were placed. Once the state is `done`: no decision waits for it."""
        sessions = [(row.session_id, row.served_by) for row in restored.sessions]
        placed = 0
        for start in range(0, len(sessions), PLACE_CHUNK):  # in order: each sees the last's counts
            placed += await self._placement.restore(sessions[start : start + PLACE_CHUNK], workers)
        return placed

    async def _set_tier(self, user_id: str, tier: str) -> None:
        with contextlib.suppress(InvalidInput):  # a tier no longer configured: the default
            await self._quotas.set_tier(user_id, tier)  # tier applies, as at open

    async def _restore(self, user_id: str, resource: str, amount: float, at: float) -> None:
        with contextlib.suppress(InvalidInput):  # the user's tier counts this resource
            await self._quotas.restore(user_id, resource, amount, at)  # without a window now


async def _bounded(calls: Iterable[Awaitable[None]]) -> None:
    """Await every call, at most REPLAY_CONCURRENCY at a time."""
    gate = asyncio.Semaphore(REPLAY_CONCURRENCY)

    async def one(call: Awaitable[None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))
