"""What a simulated user sees of a run (Locust's Environment): never the runner itself.

Users call the engine through `transport`, have every call counted by `request`, log their
decisions with `note` (what a seed replays), and register the sessions they hold in `sessions`,
the shared list an attacker picks other users' session ids from.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import Literal, TypeVar

from engine.clock import SystemClock
from engine.errors import AuthenticationError, EngineError
from loadgen.options import LoadOptions, WeightedChoice
from loadgen.stats import ATTACK_SUCCEEDED, CANCELLED, RequestRecorder
from loadgen.transport import Transport, TurnReply

log = logging.getLogger("loadgen")

VICTIM_REFRESH_S = 1.0  # how stale the attacker's list of other sessions may be

T = TypeVar("T")
Outcome = Literal["ended", "abandoned", "lost"]


class SessionLedger:
    """Sessions the users hold: counts by fate, and the live ids (insertion-ordered)."""

    __slots__ = ("_ids", "_ids_at", "_ids_cache", "abandoned", "ended", "lost", "opened")

    def __init__(self) -> None:
        self.opened = self.ended = self.abandoned = self.lost = 0
        self._ids: dict[str, None] = {}
        self._ids_cache: tuple[str, ...] = ()
        self._ids_at = -math.inf

    @property
    def open(self) -> int:
        return self.opened - self.ended - self.abandoned - self.lost

    def add(self, session_id: str) -> None:
        self.opened += 1
        self._ids[session_id] = None

    def drop(self, session_id: str, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self._ids.pop(session_id, None)

    def held_ids(self) -> tuple[str, ...]:
        """Ids of sessions users hold, refreshed at most once a second (cheap per attack)."""
        now = time.monotonic()
        if now - self._ids_at >= VICTIM_REFRESH_S:
            self._ids_at = now
            self._ids_cache = tuple(self._ids)
        return self._ids_cache


class Environment:
    """The run as its users see it: transport, options, seed, recorder, session ledger."""

    def __init__(
        self, transport: Transport, options: LoadOptions, seed: int, *,
        record_decisions: bool = False,
    ) -> None:
        self.transport = transport
        self.options = options
        self.seed = seed
        self.agents = WeightedChoice.of(options.agent_mix)
        self.tiers = WeightedChoice.of(options.tier_mix)
        self.sessions = SessionLedger()
        self.clock = SystemClock()
        self.stats = RequestRecorder(self.clock)
        self._decisions: dict[str, list[tuple[object, ...]]] | None = (
            {} if record_decisions else None
        )
        self._logged_errors: set[tuple[str, str]] = set()

    def reset_stats(self) -> None:
        """Start request figures afresh; calls in flight finish uncounted."""
        self.stats = RequestRecorder(self.clock)

    def note(self, user_id: str, *decision: object) -> None:
        """Log one decision of a user (only when the run records decisions)."""
        if self._decisions is not None:
            self._decisions.setdefault(user_id, []).append(decision)

    def decision_log(self) -> dict[str, tuple[tuple[object, ...], ...]]:
        return {user: tuple(entries) for user, entries in (self._decisions or {}).items()}

    async def request(
        self, op: str, call: Awaitable[T], *, attack: bool = False
    ) -> tuple[T | None, BaseException | None]:
        """Await one engine call, counted once: success, failure, or (attack) refusal = success."""
        stats = self.stats  # the recorder that counted the request also counts its outcome
        recorder = stats.begin(op)
        started = time.perf_counter()
        try:
            value = await call
        except asyncio.CancelledError:
            stats.finish(recorder, time.perf_counter() - started, CANCELLED)
            raise
        except Exception as exc:
            refused = attack and isinstance(exc, AuthenticationError)
            name = type(exc).__name__
            stats.finish(recorder, time.perf_counter() - started, None if refused else name)
            if not isinstance(exc, EngineError) and (op, name) not in self._logged_errors:
                self._logged_errors.add((op, name))
                log.error("%s raised a non-engine error (reported once)", op, exc_info=exc)
            return None, exc
        elapsed = time.perf_counter() - started
        if attack:
            stats.finish(recorder, elapsed, ATTACK_SUCCEEDED)
            log.critical("an attack succeeded: the engine accepted a forged request (%s)", op)
        else:
            stats.finish(recorder, elapsed, None)
            if isinstance(value, TurnReply):
                stats.turn(elapsed, value.engine_s, value.model_s)
        return value, None
