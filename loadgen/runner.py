"""`LoadGenerator`: starts, steers and stops simulated users on the running event loop.

It owns spawn control (users and spawn rate, Locust's two knobs), the run's timeline and the
per-second history; users reach it only through their `Environment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections import deque

from loadgen.environment import Environment
from loadgen.options import LoadOptions
from loadgen.shapes import SpikeSchedule, shape_step_at
from loadgen.stats import RATE_WINDOW_S, HistoryPoint, LoadStats
from loadgen.transport import Transport
from loadgen.users import Attacker, Chatty, Hog, User, Visitor

log = logging.getLogger("loadgen")

CONTROL_TICK_S = 0.1  # how often the spawner steers live users toward the target
HISTORY_S = 3600  # per-second history kept for reports (one hour)


class LoadGenerator:
    """Drives simulated users through `transport` on the running loop; a client, so real time."""

    def __init__(
        self, transport: Transport, options: LoadOptions | None = None, *,
        record_decisions: bool = False,
    ) -> None:
        self.options = options = options or LoadOptions()
        self.seed = (
            options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
        )
        self.env = Environment(transport, options, self.seed, record_decisions=record_decisions)
        self._spikes: SpikeSchedule | None = None
        self._history: deque[HistoryPoint] = deque(maxlen=HISTORY_S)
        self._active: list[User] = []  # ordinary users not asked to stop, oldest first
        self._specials: list[User] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._live = {False: 0, True: 0}  # running user tasks: ordinary, special
        self._next_index = 0
        self._spawn_rate = options.spawn_rate
        self._manual_users: int | None = None
        self._target = 0
        self._ramping_down = False
        self._allowance = 1.0
        self._controller: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._stopping = False

    # -- control ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started_at is not None and self._stopped_at is None

    @property
    def finished(self) -> bool:
        """The duration has run out (or stop() was called)."""
        return self._finished.is_set()

    def start(self) -> None:
        """Begin a run on the running loop: fresh stats and timeline, scripted users at once,
        ordinary users ramped. Plain, not async: it only schedules tasks, so a UI action can
        call it directly. `set_users`/`set_spawn_rate` made before it still apply.
        """
        if self.running:
            raise RuntimeError("load is already running; stop() it first")
        self._check_against_transport()
        self.env.reset_stats()
        self._history.clear()
        self._finished.clear()
        self._allowance = 1.0
        self._stopping = False
        self._stopped_at = None
        self._started_at = time.monotonic()
        o = self.options
        for cls, count in ((Hog, o.hogs), (Chatty, o.chatty), (Attacker, o.attackers)):
            for index in range(count):
                user = cls(self.env, index)
                self._specials.append(user)
                self._spawn(user)
        self._steer(0.0)
        self._controller = asyncio.create_task(self._control(), name="load-controller")

    async def wait(self) -> None:
        """Until the duration has run out or stop() was called."""
        await self._finished.wait()

    async def stop(self, grace_s: float = 10.0) -> LoadStats:
        """Stop every user: each finishes its current call and ends its sessions.

        Users still busy after `grace_s` (a hung model call) are cancelled.
        """
        if not self.running:
            return self.stats()
        if self._controller is not None:
            self._controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
            self._controller = None
        self._end_spikes()
        self._stop_users()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending:
                self.cancel_users()
                await asyncio.wait(pending)
        self._mark_stopped()
        return self.stats()

    def cancel_users(self) -> None:
        """Cancel every user mid-call (a second Ctrl-C); their sessions are still ended."""
        for task in self._tasks:
            task.cancel()

    def set_users(self, users: int) -> None:
        """Aim for `users` ordinary users from now on (replaces the shape), at the spawn rate."""
        if users < 0:
            raise ValueError("users must be >= 0")
        self._manual_users = users

    def set_spawn_rate(self, rate: float) -> None:
        """Users started or stopped per second from now on; 0 freezes the number of users."""
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError("spawn rate must be >= 0")
        self._spawn_rate = rate

    def reset_stats(self) -> None:
        """Start request figures afresh (Locust's reset); calls in flight finish uncounted."""
        self.env.reset_stats()

    def decision_log(self) -> dict[str, tuple[tuple[object, ...], ...]]:
        """Each user's decisions in order (with record_decisions=True): what a seed replays."""
        return self.env.decision_log()

    # -- figures ----------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        if self._started_at is None:
            return 0.0
        return (self._stopped_at or time.monotonic()) - self._started_at

    def stats(self) -> LoadStats:
        elapsed = self.elapsed_s
        window = max(1, min(RATE_WINDOW_S, int(elapsed)))
        rec = self.env.stats
        sessions = self.env.sessions
        overhead = rec.overhead.percentiles()
        client = rec.client_turn.percentiles()
        outside = rec.outside_engine.percentiles()
        return LoadStats(
            running=self.running,
            phase=self._phase(),
            seed=self.seed,
            elapsed_s=elapsed,
            duration_s=self.options.duration_s,
            target_users=self._target,
            live_users=self._live[False],
            special_users=self._live[True],
            spawn_rate=self._spawn_rate,
            sessions_open=sessions.open,
            sessions_opened=sessions.opened,
            sessions_ended=sessions.ended,
            sessions_abandoned=sessions.abandoned,
            sessions_lost=sessions.lost,
            operations=tuple(r.view(window) for r in rec.ops.values() if r.requests),
            total=rec.total.view(window),
            failures=rec.failures(),
            attacks_succeeded=rec.attacks_succeeded,
            overhead_p50_ms=overhead.p50 * 1000,
            overhead_p95_ms=overhead.p95 * 1000,
            overhead_p99_ms=overhead.p99 * 1000,
            client_turn_p50_ms=client.p50 * 1000,
            client_turn_p95_ms=client.p95 * 1000,
            client_turn_p99_ms=client.p99 * 1000,
            outside_engine_p50_ms=outside.p50 * 1000,
            outside_engine_p95_ms=outside.p95 * 1000,
            outside_engine_p99_ms=outside.p99 * 1000,
            history=tuple(self._history),
        )

    def _phase(self) -> str:
        if self._started_at is None:
            return "idle"
        if self._stopped_at is not None:
            return "stopped"
        if self._stopping:
            return "stopping"
        live = len(self._active)
        if self._ramping_down or live > self._target:
            return "ramping down"
        return "ramping up" if live < self._target else "holding"

    # -- spawning ---------------------------------------------------------------------------------
    def _check_against_transport(self) -> None:
        transport = self.env.transport
        agent_types = transport.agent_types
        unknown = set(self.env.agents.names) - set(agent_types)
        known = f"agent types {', '.join(agent_types)}"
        if transport.tiers is not None:
            unknown |= set(self.env.tiers.names) - set(transport.tiers)
            known += f"; tiers {', '.join(transport.tiers)}"
        if unknown:
            raise ValueError(f"the options name {', '.join(sorted(unknown))}, which the engine "
                             f"does not know ({known})")
        if self.options.spikes:
            if transport.sim is None:
                raise ValueError(f"latency spikes need an in-process engine, not "
                                 f"{transport.target}")
            self._spikes = SpikeSchedule(self.options.spikes, transport.sim)

    async def _control(self) -> None:
        """Steer users toward the target, sample history each second, end after the duration."""
        assert self._started_at is not None
        last = time.monotonic()
        sampled = 0
        duration = self.options.duration_s
        while True:
            await asyncio.sleep(CONTROL_TICK_S)
            now = time.monotonic()
            self._steer(now - last)
            if self._spikes is not None:
                self._spikes.apply(now - self._started_at)
            last = now
            second = int(now - self._started_at)
            if second > sampled:
                sampled = second
                self._sample(second)
            if duration is not None and now - self._started_at >= duration:
                # Users stop by themselves, so a console that never calls stop() sees the end.
                self._finished.set()
                self._end_spikes()
                self._stop_users()
                return

    def _end_spikes(self) -> None:
        if self._spikes is not None:
            self._spikes.end()

    def _stop_users(self) -> None:
        """Ask every user to stop; the run counts as stopped once the last one has left."""
        self._stopping = True
        for user in self._active + self._specials:
            user.stop()
        self._active.clear()
        self._specials.clear()
        if not self._tasks:
            self._mark_stopped()

    def _mark_stopped(self) -> None:
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
            self._finished.set()

    def _desired(self, elapsed: float) -> tuple[int, float]:
        """Target ordinary users now and the rate to move at; the end of the run ramps down."""
        o = self.options
        rate = self._spawn_rate
        if self._manual_users is not None:
            users = self._manual_users
        elif o.shape:
            step = shape_step_at(o.shape, elapsed)
            users = step.users if step else 0
            rate = step.spawn_rate if step and step.spawn_rate else rate
        else:
            users = o.users
        self._ramping_down = False
        if o.duration_s is not None and self._spawn_rate > 0:
            room = int(self._spawn_rate * max(0.0, o.duration_s - elapsed))
            if room < users:
                users, self._ramping_down = room, True
        return users, rate

    def _steer(self, dt: float) -> None:
        """Start or stop users toward the target, at most `rate` a second."""
        assert self._started_at is not None
        target, rate = self._desired(time.monotonic() - self._started_at)
        self._target = target
        gap = target - len(self._active)
        if rate <= 0:
            return
        if gap == 0:
            self._allowance = 1.0  # a change starts with one user at once, like Locust
            return
        # Capped at a second's worth, so a stalled loop does not release a burst.
        self._allowance = min(self._allowance + rate * dt, max(1.0, rate))
        n = min(abs(gap), int(self._allowance))
        self._allowance -= n
        for _ in range(n):
            if gap > 0:
                user = Visitor(self.env, self._next_index)
                self._next_index += 1
                self._active.append(user)
                self._spawn(user)
            else:
                self._active.pop().stop()  # newest first

    def _spawn(self, user: User) -> None:
        task = asyncio.create_task(user.run(), name=user.user_id)
        self._tasks.add(task)
        self._live[user.special] += 1
        task.add_done_callback(functools.partial(self._user_done, special=user.special))

    def _user_done(self, task: asyncio.Task[None], special: bool) -> None:
        self._tasks.discard(task)
        self._live[special] -= 1
        if self._stopping and not self._tasks:
            self._mark_stopped()
        if not task.cancelled() and task.exception() is not None:
            log.error("simulated user %s crashed", task.get_name(), exc_info=task.exception())

    def _sample(self, second: int) -> None:
        rec = self.env.stats
        requests, failures, at = rec.sampled
        now = time.monotonic()
        span = max(now - at, 1e-9)
        rec.sampled = (rec.total.requests, rec.total.failures, now)
        pct = rec.current.percentiles()
        self._history.append(HistoryPoint(
            second, self._live[False], self._target, self.env.sessions.open,
            (rec.total.requests - requests) / span, (rec.total.failures - failures) / span,
            pct.p50 * 1000, pct.p95 * 1000, pct.p99 * 1000,
        ))
