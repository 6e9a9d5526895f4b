"""Load generator: simulated concurrent users driving the engine through its public API only.

`python demo_load.py` opens the console with load running (what `make demo` calls);
`python demo_load.py --headless` prints a live stats table, writes JSON/CSV reports and exits
non-zero when a `--fail-on` condition is met, for CI. From Python, `LoadGenerator(engine,
LoadOptions(...))` is what the console's load panel drives.

Figures are kept the way Locust keeps them: every request is counted once, success or failure,
and response times go into rounded-bucket histograms (constant memory at any request count).
Each simulated user draws from its own RNG seeded by (seed, kind, index), so the same seed
replays every user's choices whatever order the event loop runs them in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import math
import operator
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TextIO

from engine import (
    Engine,
    EngineConfig,
    EngineSnapshot,
    LLMSettings,
    Reply,
    SessionSettings,
    SimSettings,
    StoreSettings,
)
from engine.clock import Clock, SystemClock
from engine.errors import AuthenticationError, EngineClosed, EngineError, SessionExpired
from engine.metrics import LatencyHistogram, RateRing, WindowedHistogram

log = logging.getLogger("demo_load")

OPERATIONS = (
    "create_session", "send", "history", "rotate_token", "end_session",
    "hog_send", "chatty_send", "attack",
)
ATTACK_SUCCEEDED = "attack_succeeded"  # the error type recorded when a defence failed
AGGREGATED = "Aggregated"

CONTROL_TICK_S = 0.1  # how often the spawner steers live users toward the target
RATE_WINDOW_S = 10  # "current" req/s and percentiles cover about this many seconds
HISTORY_S = 3600  # per-second history kept for reports (one hour)
VICTIM_REFRESH_S = 1.0  # how stale the attacker's list of other sessions may be
HEADLESS_DURATION_S = 30.0  # a headless run with no --duration
INTERRUPT_GRACE_S = 2.0  # after Ctrl-C, calls still running this long are cancelled

# Scripted abusers: fixed behaviour, so a scenario means the same thing on every run.
HOG_WORDS = 1500  # about 2,000 tokens a message: a free tier's hourly tokens go in ~8 turns
HOG_PAUSE_S = 0.5
CHATTY_BURST = 20  # back-to-back sends: twice the default per-session burst allowance
CHATTY_PAUSE_S = 3.0

WORDS = (
    "agent", "balance", "cache", "deploy", "error", "forecast", "graph", "help", "invoice",
    "join", "key", "latency", "model", "network", "order", "plan", "query", "refund", "schema",
    "ticket", "update", "vector", "window", "export", "yield", "zone", "please", "why", "how",
    "summarise", "compare", "explain",
)


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Distribution:
    """A random quantity, written `exp:MEAN`, `uniform:LOW:HIGH` or `const:VALUE`.

    `a` is the mean (exp), the low end (uniform) or the value (const); `b` the high end.
    """

    kind: Literal["exp", "uniform", "const"]
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("exp", "uniform", "const"):
            raise ValueError(f"unknown distribution {self.kind!r}; use exp, uniform or const")
        if not (math.isfinite(self.a) and self.a >= 0):
            raise ValueError(f"{self.kind} needs a finite value >= 0, got {self.a!r}")
        if self.kind == "uniform" and not (math.isfinite(self.b) and self.b >= self.a):
            raise ValueError(f"uniform needs LOW <= HIGH, got {self.a:g}:{self.b:g}")

    @classmethod
    def parse(cls, text: str) -> Distribution:
        kind, _, rest = text.strip().partition(":")
        arity = {"exp": 1, "uniform": 2, "const": 1}.get(kind)
        try:
            numbers = [float(part) for part in rest.split(":")] if rest else []
        except ValueError:
            numbers = []
        if arity is None or len(numbers) != arity:
            raise ValueError(
                f"bad distribution {text!r}; use exp:MEAN, uniform:LOW:HIGH or const:VALUE "
                "(e.g. exp:2 or uniform:1:3)"
            )
        return cls(kind, *numbers)  # type: ignore[arg-type]

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def draw(self, rng: random.Random) -> float:
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return self.a

    def draw_count(self, rng: random.Random) -> int:
        """A whole number of at least 1 (turns, words)."""
        return max(1, round(self.draw(rng)))

    def __str__(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{self.a:g}:{self.b:g}"
        return f"{self.kind}:{self.a:g}"


@dataclass(frozen=True, slots=True)
class ShapeStep:
    """From `at_s` seconds into the run, aim for `users`, moving at `spawn_rate` if given."""

    at_s: float
    users: int
    spawn_rate: float | None = None


Mix = tuple[tuple[str, float], ...]


def parse_mix(text: str) -> Mix:
    """`name=weight,name=weight` -> ((name, weight), ...)."""
    pairs: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or not (math.isfinite(value) and value > 0):
            raise ValueError(f"bad mix entry {part!r}; use NAME=WEIGHT,... (e.g. free=6,pro=3)")
        pairs.append((name.strip(), value))
    if not pairs:
        raise ValueError("a mix needs at least one NAME=WEIGHT entry")
    return tuple(pairs)


def parse_shape(spec: str) -> tuple[ShapeStep, ...]:
    """Steps `AT_S:USERS[:SPAWN_RATE]` separated by commas or lines (`#` starts a comment).

    `spec` is either the steps themselves or the path of a small file holding them.
    """
    path = Path(spec)
    text = path.read_text(encoding="utf-8") if path.is_file() else spec
    steps: list[ShapeStep] = []
    for line in text.splitlines():
        for item in filter(None, (p.strip() for p in line.split("#", 1)[0].split(","))):
            parts = item.split(":")
            try:
                if len(parts) not in (2, 3):
                    raise ValueError
                step = ShapeStep(
                    float(parts[0]), int(parts[1]), float(parts[2]) if len(parts) == 3 else None
                )
            except ValueError:
                raise ValueError(
                    f"bad shape step {item!r}; use AT_S:USERS[:SPAWN_RATE], e.g. 0:10,30:50:5"
                ) from None
            if step.at_s < 0 or step.users < 0 or (step.spawn_rate is not None and
                                                   not step.spawn_rate > 0):
                raise ValueError(f"shape step {item!r} needs AT_S >= 0, USERS >= 0, RATE > 0")
            steps.append(step)
    if not steps:
        raise ValueError(f"shape {spec!r} has no steps; use AT_S:USERS[:SPAWN_RATE],...")
    return tuple(sorted(steps, key=operator.attrgetter("at_s")))


@dataclass(frozen=True, slots=True)
class Spike:
    """From `at_s` for `duration_s` seconds the sim model's latency is multiplied by `factor`."""

    at_s: float
    duration_s: float
    factor: float

    @classmethod
    def parse(cls, text: str) -> Spike:
        """`AT_S:DURATION_S:FACTOR`, e.g. 30:10:5 (five times slower from 30 s to 40 s)."""
        try:
            at_s, duration_s, factor = (float(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(
                f"bad spike {text!r}; use AT_S:DURATION_S:FACTOR, e.g. 30:10:5"
            ) from None
        if not (at_s >= 0 and duration_s > 0 and factor > 0):
            raise ValueError(f"spike {text!r} needs AT_S >= 0, DURATION_S > 0 and FACTOR > 0")
        return cls(at_s, duration_s, factor)

    def active(self, elapsed: float) -> bool:
        return self.at_s <= elapsed < self.at_s + self.duration_s


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What load to drive. Every field has a default that gives a moderate, mixed demo."""

    users: int = 50
    spawn_rate: float = 10.0  # users started (and, ramping down, stopped) per second
    duration_s: float | None = None  # None: until stop(); else ramp up, hold, ramp down in it
    shape: tuple[ShapeStep, ...] = ()  # when set, replaces `users` as the target over time
    seed: int | None = None  # None: one is drawn and reported, so any run can be replayed

    think: Distribution = Distribution("exp", 2.0)
    session_turns: Distribution = Distribution("uniform", 2, 10)
    message_words: Distribution = Distribution("uniform", 5, 40)
    sessions_per_user: int = 2  # each user keeps 1..this many sessions open at once
    reuse_probability: float = 0.8  # after a pause, continue in the session used last
    abandon_probability: float = 0.1  # walk away from a finished session (idle expiry)
    history_probability: float = 0.05
    rotate_probability: float = 0.01
    agent_mix: Mix = (("assistant", 6.0), ("research", 3.0), ("support", 1.0))
    tier_mix: Mix = (("free", 6.0), ("pro", 3.0), ("enterprise", 1.0))

    # Behaviours that exercise the engine's defences (scripted users beside `users`).
    hogs: int = 0  # exceed their token quota
    chatty: int = 0  # burst past the rate limits
    attackers: int = 0  # wrong tokens and other users' session ids; must never succeed
    attack_rate: float = 10.0  # attempts per second per attacker
    # Model faults for the sim backend; they live in EngineConfig.llm.sim (see `apply_faults`).
    faults: SimSettings | None = None
    # Latency spikes on the sim backend during the run (the engine's set_sim, live).
    spikes: tuple[Spike, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.users < 0:
            problems.append("users must be >= 0")
        if not (math.isfinite(self.spawn_rate) and self.spawn_rate > 0):
            problems.append("spawn_rate must be > 0")
        if self.duration_s is not None and not self.duration_s > 0:
            problems.append("duration_s must be > 0, or None to run until stopped")
        if self.sessions_per_user < 1:
            problems.append("sessions_per_user must be >= 1")
        for name in ("reuse", "abandon", "history", "rotate"):
            value = getattr(self, f"{name}_probability")
            if not 0 <= value <= 1:
                problems.append(f"{name}_probability must be within 0..1")
        if self.history_probability + self.rotate_probability > 1:
            problems.append("history_probability + rotate_probability must be <= 1")
        if min(self.hogs, self.chatty, self.attackers) < 0:
            problems.append("hogs, chatty and attackers must be >= 0")
        if not self.attack_rate > 0:
            problems.append("attack_rate must be > 0")
        if not (self.agent_mix and self.tier_mix):
            problems.append("agent_mix and tier_mix need at least one entry")
        if problems:
            raise ValueError("; ".join(problems))


SCENARIOS: dict[str, dict[str, Any]] = {
    # Ordinary users plus every defence exercised at once: the demo default.
    "mixed": {
        "hogs": 2,
        "chatty": 2,
        "attackers": 1,
        "faults": SimSettings(
            median_latency_s=0.2, p99_latency_s=2.5, error_rate=0.02, timeout_rate=0.005
        ),
        "spikes": (Spike(60.0, 15.0, 4.0),),  # a minute in, the model slows down for 15 s
    },
    # Ordinary users only, on the engine's own sim settings.
    "steady": {"hogs": 0, "chatty": 0, "attackers": 0, "faults": None, "spikes": ()},
}


def apply_faults(config: EngineConfig, options: LoadOptions) -> EngineConfig:
    """The engine config with the options' model faults (spikes then change latency live)."""
    if options.faults is None:
        return config
    sim = options.faults
    if sim.seed is None and options.seed is not None:
        sim = dataclasses.replace(sim, seed=options.seed)
    return dataclasses.replace(config, llm=dataclasses.replace(config.llm, sim=sim))


# ------------------------------------------------------------------------------------------------
# Stats: plain frozen data out, histograms inside
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OperationStats:
    """One row of the stats table. Percentiles cover the run (since start or reset_stats)."""

    name: str
    requests: int  # counted when the call starts
    successes: int
    failures: int
    rps: float  # over the last few completed seconds
    failures_per_s: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def in_flight(self) -> int:
        return self.requests - self.successes - self.failures

    @property
    def failure_ratio(self) -> float:
        done = self.successes + self.failures
        return self.failures / done if done else 0.0


@dataclass(frozen=True, slots=True)
class FailureCount:
    operation: str
    error: str  # exception class name, or "attack_succeeded"
    count: int


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One second of the run, for charts and the stats-history CSV."""

    elapsed_s: int
    users: int
    target_users: int
    sessions_open: int
    rps: float
    failures_per_s: float
    p50_ms: float  # over the last RATE_WINDOW_S seconds
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Everything the stats table, the console's load panel and the reports show."""

    running: bool
    phase: str  # idle, ramping up, holding, ramping down, stopping, stopped
    seed: int
    elapsed_s: float
    duration_s: float | None
    target_users: int
    live_users: int  # ordinary users whose task is still running
    special_users: int  # hogs, chatty users and attackers still running
    spawn_rate: float
    # Session counters cover the generator's whole life, so they can be checked against the
    # engine's own counts; `reset_stats` leaves them alone.
    sessions_open: int  # held by users right now
    sessions_opened: int
    sessions_ended: int  # by their user, with end_session
    sessions_abandoned: int  # walked away from: left to idle expiry
    sessions_lost: int  # found expired, evicted or ended by someone else
    operations: tuple[OperationStats, ...]
    total: OperationStats
    failures: tuple[FailureCount, ...]  # most frequent first
    attacks_succeeded: int
    # Engine overhead of successful turns (client-observed time minus Reply.model_latency_s).
    overhead_p50_ms: float
    overhead_p95_ms: float
    overhead_p99_ms: float
    history: tuple[HistoryPoint, ...]

    @property
    def total_rps(self) -> float:
        return self.total.rps

    def operation(self, name: str) -> OperationStats | None:
        return next((op for op in self.operations if op.name == name), None)


class _OpRecorder:
    """Counters and histograms of one operation (or of all: the Aggregated row)."""

    __slots__ = ("calls", "failed", "failures", "latency", "max_s", "name", "requests",
                 "successes", "total_s")

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.requests = self.successes = self.failures = 0
        self.total_s = self.max_s = 0.0
        self.latency = LatencyHistogram()
        self.calls = RateRing(clock, RATE_WINDOW_S + 2)
        self.failed = RateRing(clock, RATE_WINDOW_S + 2)

    def finish(self, seconds: float, failed: bool) -> None:
        if failed:
            self.failures += 1
            self.failed.add()
        else:
            self.successes += 1
        self.calls.add()
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        self.latency.record(seconds)

    def view(self, rate_window: int) -> OperationStats:
        done = self.successes + self.failures
        pct = self.latency.percentiles()
        return OperationStats(
            self.name, self.requests, self.successes, self.failures,
            self.calls.rate(rate_window), self.failed.rate(rate_window),
            self.total_s / done * 1000 if done else 0.0, self.max_s * 1000,
            pct.p50 * 1000, pct.p95 * 1000, pct.p99 * 1000,
        )


class _Recorder:
    """All request figures of one run; `reset_stats` swaps in a fresh one."""

    __slots__ = ("attacks_succeeded", "clock", "current", "errors", "ops", "overhead", "sampled",
                 "total")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ops = {name: _OpRecorder(name, clock) for name in OPERATIONS}
        self.total = _OpRecorder(AGGREGATED, clock)
        self.current = WindowedHistogram(clock, window_s=RATE_WINDOW_S, slots=RATE_WINDOW_S)
        # Engine overhead of successful turns: the client-observed time minus the model's share.
        self.overhead = LatencyHistogram()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.attacks_succeeded = 0
        self.sampled = (0, 0, time.monotonic())  # requests, failures, when: for history deltas

    def begin(self, op: str) -> _OpRecorder:
        recorder = self.ops[op]
        recorder.requests += 1
        self.total.requests += 1
        return recorder

    def finish(self, recorder: _OpRecorder, seconds: float, error: str | None) -> None:
        recorder.finish(seconds, error is not None)
        self.total.finish(seconds, error is not None)
        self.current.record(seconds)
        if error is not None:
            self.errors[recorder.name, error] += 1
            if error == ATTACK_SUCCEEDED:
                self.attacks_succeeded += 1


# ------------------------------------------------------------------------------------------------
# Simulated users
# ------------------------------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class _Held:
    """A session a user holds: its id, current token, turns still planned, and its fate."""

    session_id: str
    token: str = field(repr=False)
    turns_left: int
    abandon: bool


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _User:
    """One simulated client. Subclasses define `step`; think pauses come between steps."""

    __slots__ = ("_waker", "closed", "gen", "held", "rng", "stopping", "tier", "user_id")
    kind: ClassVar[str] = "user"
    special: ClassVar[bool] = True

    def __init__(self, gen: LoadGenerator, index: int) -> None:
        self.gen = gen
        self.user_id = f"{self.kind}-{index:05d}"
        self.rng = random.Random(f"{gen.seed}:{self.kind}:{index}")
        self.tier = gen.engine.config.limits.default_tier
        self.held: list[_Held] = []
        self.stopping = False
        self.closed = False  # the engine closed under us: nothing left to end
        self._waker: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            while not self.stopping:
                await self.step()
                if not self.stopping:
                    await self.pause(self.think())
        finally:
            await self.leave()

    async def step(self) -> None:
        raise NotImplementedError

    def think(self) -> float:
        return self.gen.options.think.draw(self.rng)

    def stop(self) -> None:
        """Finish the current call, end held sessions, exit; a pause in progress is cut short."""
        self.stopping = True
        if self._waker is not None:
            _wake(self._waker)

    async def pause(self, seconds: float) -> None:
        """`asyncio.sleep` that `stop()` can wake early (a timer, not a task, per pause)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        self._waker = loop.create_future()
        timer = loop.call_later(seconds, _wake, self._waker)
        try:
            await self._waker
        finally:
            timer.cancel()
            self._waker = None

    def note(self, *decision: object) -> None:
        if self.gen._decisions is not None:
            self.gen._decisions.setdefault(self.user_id, []).append(decision)

    async def call(
        self, op: str, call: Awaitable[Any], *, attack: bool = False
    ) -> tuple[Any, BaseException | None]:
        value, error = await self.gen._request(op, call, attack=attack)
        if isinstance(error, EngineClosed):
            self.stopping = self.closed = True
        return value, error

    # -- sessions ---------------------------------------------------------------------------------
    async def open(self, turns: int, abandon: bool) -> _Held | None:
        self.note("create_session", self.tier, turns, abandon)
        created, _ = await self.call(
            "create_session",
            self.gen.engine.create_session(self.user_id, metadata={"tier": self.tier}),
        )
        if created is None:
            return None
        held = _Held(created.session_id, created.token, turns, abandon)
        self.held.append(held)
        self.gen._sessions["opened"] += 1
        return held

    def drop(self, held: _Held, outcome: Literal["ended", "abandoned", "lost"]) -> None:
        self.held.remove(held)
        self.gen._sessions[outcome] += 1

    async def end(self, held: _Held) -> None:
        if not self.stopping:  # ending on stop follows from stop(), not from this user's RNG
            self.note("end_session", self.held.index(held))
        _, error = await self.call(
            "end_session", self.gen.engine.end_session(held.session_id, held.token)
        )
        self.drop(held, "lost" if error else "ended")

    async def send(self, held: _Held, op: str, agent: str, text: str) -> BaseException | None:
        _, error = await self.call(
            op, self.gen.engine.send(held.session_id, held.token, text, agent_type=agent)
        )
        if isinstance(error, AuthenticationError | SessionExpired):
            self.drop(held, "lost")  # expired, evicted, or ended by someone else
        return error

    async def leave(self) -> None:
        """End every held session: a user who stops closes what it opened."""
        for held in list(self.held):
            if self.closed:
                self.drop(held, "lost")
            else:
                await self.end(held)

    def words(self, count: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=count))


class _Visitor(_User):
    """An ordinary user: a tier, a few sessions, turns with think time, ends or abandons them."""

    __slots__ = ("last", "want")
    special = False

    def __init__(self, gen: LoadGenerator, index: int) -> None:
        super().__init__(gen, index)
        self.tier = gen._tiers.pick(self.rng)
        self.want = 1 + self.rng.randrange(gen.options.sessions_per_user)
        self.last: _Held | None = None

    async def step(self) -> None:
        o = self.gen.options
        rng = self.rng
        if len(self.held) < self.want:
            await self.open(o.session_turns.draw_count(rng), rng.random() < o.abandon_probability)
        # Draw everything every step, so outcomes shift no later draw for this user.
        reuse = rng.random() < o.reuse_probability
        slot_draw = rng.random()
        action = rng.random()
        agent = self.gen._agents.pick(rng)
        words = o.message_words.draw_count(rng)
        if not self.held:
            return
        held = self.last if reuse and self.last in self.held else (
            self.held[int(slot_draw * len(self.held))]
        )
        self.last = held
        slot = self.held.index(held)
        if action < o.history_probability:
            self.note("history", slot)
            await self.call("history", self.gen.engine.history(held.session_id, held.token))
            return
        if action < o.history_probability + o.rotate_probability:
            self.note("rotate_token", slot)
            token, _ = await self.call(
                "rotate_token", self.gen.engine.rotate_token(held.session_id, held.token)
            )
            if token is not None:
                held.token = token
            return
        self.note("send", slot, agent, words)
        error = await self.send(held, "send", agent, self.words(words))
        if error is None:
            held.turns_left -= 1
            if held.turns_left <= 0:
                await self.finish(held)

    async def finish(self, held: _Held) -> None:
        if held.abandon:
            self.note("abandon", self.held.index(held))
            self.drop(held, "abandoned")
        else:
            await self.end(held)


class _Hog(_User):
    """Sends very long messages quickly on the default tier until the token quota refuses."""

    __slots__ = ()
    kind = "hog"

    async def step(self) -> None:
        if not self.held and await self.open(turns=0, abandon=False) is None:
            return
        self.note("hog_send")
        await self.send(self.held[0], "hog_send", self.gen._agents.names[0], self.words(HOG_WORDS))

    def think(self) -> float:
        return HOG_PAUSE_S


class _Chatty(_User):
    """Bursts of back-to-back messages on one session: past the session and user rate limits."""

    __slots__ = ()
    kind = "chatty"

    async def step(self) -> None:
        self.note("chatty_burst", CHATTY_BURST)
        for _ in range(CHATTY_BURST):
            if self.stopping:
                return
            # A session lost mid-burst (expired, evicted) is replaced: the burst goes on.
            if not self.held and await self.open(turns=0, abandon=False) is None:
                return
            await self.send(self.held[0], "chatty_send", self.gen._agents.names[0], self.words(8))

    def think(self) -> float:
        return CHATTY_PAUSE_S


class _Attacker(_User):
    """Presents wrong tokens and other users' session ids; every attempt must be refused.

    It sees session ids as an attacker who leaked or guessed them would: from the engine's
    snapshot. It never sees another user's token. Its own valid token is part of the attack.
    """

    __slots__ = ()
    kind = "attacker"
    ATTACKS = ("forged_token", "own_token_other_session", "guessed_id")
    APIS = ("send", "history", "rotate_token", "end_session")

    async def step(self) -> None:
        if not self.held and await self.open(turns=0, abandon=False) is None:
            return
        rng = self.rng
        kind = rng.choice(self.ATTACKS)
        api = rng.choice(self.APIS)
        victim_draw = rng.random()
        forged = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()
        guessed = rng.randbytes(16).hex()
        own = self.held[0]
        victims = self.gen._victims()
        victim = int(victim_draw * len(victims))
        if victims and victims[victim] == own.session_id:
            victim = (victim + 1) % len(victims)  # someone else's, if there is anyone
        if kind == "guessed_id" or not victims or victims[victim] == own.session_id:
            session_id, token = guessed, forged
        else:
            session_id = victims[victim]
            token = own.token if kind == "own_token_other_session" else forged
        self.note("attack", kind, api)
        engine = self.gen.engine
        call: Awaitable[Any]
        if api == "send":
            agent = self.gen._agents.names[0]
            call = engine.send(session_id, token, "show me your history", agent_type=agent)
        elif api == "history":
            call = engine.history(session_id, token)
        elif api == "rotate_token":
            call = engine.rotate_token(session_id, token)
        else:
            call = engine.end_session(session_id, token)
        await self.call("attack", call, attack=True)

    def think(self) -> float:
        return 1.0 / self.gen.options.attack_rate


@dataclass(frozen=True, slots=True)
class _Weighted:
    """A weighted choice costing one `rng.random()` draw."""

    names: tuple[str, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, mix: Mix) -> _Weighted:
        total = 0.0
        cumulative = []
        for _, weight in mix:
            total += weight
            cumulative.append(total)
        return cls(tuple(name for name, _ in mix), tuple(cumulative))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.names, cum_weights=self.cumulative)[0]


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------
class LoadGenerator:
    """Drives simulated users against `engine` on the running loop; a client, so real time."""

    def __init__(
        self, engine: Engine, options: LoadOptions | None = None, *, record_decisions: bool = False
    ) -> None:
        self.engine = engine
        self.options = options = options or LoadOptions()
        self.seed = (
            options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
        )
        self._clock = SystemClock()
        self._stats = _Recorder(self._clock)
        self._history: deque[HistoryPoint] = deque(maxlen=HISTORY_S)
        self._decisions: dict[str, list[tuple[object, ...]]] | None = (
            {} if record_decisions else None
        )
        self._agents = _Weighted.of(options.agent_mix)
        self._tiers = _Weighted.of(options.tier_mix)
        self._active: list[_User] = []  # ordinary users not asked to stop, oldest first
        self._specials: list[_User] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._live = {False: 0, True: 0}  # running user tasks: ordinary, special
        self._next_index = 0
        self._spawn_rate = options.spawn_rate
        self._manual_users: int | None = None
        self._spike: Spike | None = None
        self._calm_sim: SimSettings | None = None  # the sim settings outside any spike
        self._target = 0
        self._ramping_down = False
        self._allowance = 1.0
        self._controller: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._stopping = False
        self._victim_ids: tuple[str, ...] = ()
        self._victims_at = -math.inf
        self._logged_errors: set[tuple[str, str]] = set()
        self._sessions = Counter[str]()  # opened, ended, abandoned, lost

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
        self._check_against_engine()
        self._stats = _Recorder(self._clock)
        self._history.clear()
        self._finished.clear()
        self._allowance = 1.0
        self._stopping = False
        self._stopped_at = None
        self._started_at = time.monotonic()
        o = self.options
        for cls, count in ((_Hog, o.hogs), (_Chatty, o.chatty), (_Attacker, o.attackers)):
            for index in range(count):
                user = cls(self, index)
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
        self._end_spike()
        self._stop_users()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending:
                self.cancel_users()
                await asyncio.wait(pending)
        self._mark_stopped()
        return self.stats()

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
        self._stats = _Recorder(self._clock)

    def decision_log(self) -> dict[str, tuple[tuple[object, ...], ...]]:
        """Each user's decisions in order (with record_decisions=True): what a seed replays."""
        return {user: tuple(entries) for user, entries in (self._decisions or {}).items()}

    # -- figures ----------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        if self._started_at is None:
            return 0.0
        return (self._stopped_at or time.monotonic()) - self._started_at

    def stats(self) -> LoadStats:
        elapsed = self.elapsed_s
        window = max(1, min(RATE_WINDOW_S, int(elapsed)))
        rec = self._stats
        ops = tuple(r.view(window) for r in rec.ops.values() if r.requests)
        failures = tuple(
            FailureCount(op, error, n)
            for (op, error), n in sorted(rec.errors.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        s = self._sessions
        overhead = rec.overhead.percentiles()
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
            sessions_open=self._sessions_open(),
            sessions_opened=s["opened"],
            sessions_ended=s["ended"],
            sessions_abandoned=s["abandoned"],
            sessions_lost=s["lost"],
            operations=ops,
            total=rec.total.view(window),
            failures=failures,
            attacks_succeeded=rec.attacks_succeeded,
            overhead_p50_ms=overhead.p50 * 1000,
            overhead_p95_ms=overhead.p95 * 1000,
            overhead_p99_ms=overhead.p99 * 1000,
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
    def _check_against_engine(self) -> None:
        agent_types = self.engine.agent_types
        tiers = self.engine.config.limits.tiers
        unknown_agents = set(self._agents.names) - set(agent_types)
        unknown_tiers = set(self._tiers.names) - set(tiers)
        if unknown_agents or unknown_tiers:
            raise ValueError(
                f"the engine knows agent types {', '.join(agent_types)} and tiers "
                f"{', '.join(tiers)}; the options name "
                f"{', '.join(sorted(unknown_agents | unknown_tiers))}"
            )

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
            self._apply_spikes(now - self._started_at)
            last = now
            second = int(now - self._started_at)
            if second > sampled:
                sampled = second
                self._sample(second)
            if duration is not None and now - self._started_at >= duration:
                # Users stop by themselves, so a console that never calls stop() sees the end.
                self._finished.set()
                self._end_spike()
                self._stop_users()
                return

    def _end_spike(self) -> None:
        if self._spike is not None and self._calm_sim is not None:
            self.engine.set_sim(self._calm_sim)
        self._spike = None

    def _apply_spikes(self, elapsed: float) -> None:
        """Multiply the sim model's latency while a spike is active; restore it after."""
        spike = next((s for s in self.options.spikes if s.active(elapsed)), None)
        if spike is self._spike:
            return
        if self._calm_sim is None:
            self._calm_sim = self.engine.sim_settings
        calm = self._calm_sim
        self.engine.set_sim(
            calm if spike is None else dataclasses.replace(
                calm,
                median_latency_s=calm.median_latency_s * spike.factor,
                p99_latency_s=calm.p99_latency_s * spike.factor,
            )
        )
        self._spike = spike

    def _desired(self, elapsed: float) -> tuple[int, float]:
        """Target ordinary users now and the rate to move at; the end of the run ramps down."""
        o = self.options
        rate = self._spawn_rate
        if self._manual_users is not None:
            users = self._manual_users
        elif o.shape:
            step = next((s for s in reversed(o.shape) if s.at_s <= elapsed), None)
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
                user = _Visitor(self, self._next_index)
                self._next_index += 1
                self._active.append(user)
                self._spawn(user)
            else:
                self._active.pop().stop()  # newest first

    def _spawn(self, user: _User) -> None:
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
        rec = self._stats
        requests, failures, at = rec.sampled
        now = time.monotonic()
        span = max(now - at, 1e-9)
        rec.sampled = (rec.total.requests, rec.total.failures, now)
        pct = rec.current.percentiles()
        self._history.append(HistoryPoint(
            second, self._live[False], self._target, self._sessions_open(),
            (rec.total.requests - requests) / span, (rec.total.failures - failures) / span,
            pct.p50 * 1000, pct.p95 * 1000, pct.p99 * 1000,
        ))

    # -- what users call --------------------------------------------------------------------------
    async def _request(
        self, op: str, call: Awaitable[Any], *, attack: bool = False
    ) -> tuple[Any, BaseException | None]:
        """Await one engine call, counted once: success, failure, or (attack) refusal = success."""
        stats = self._stats  # the recorder that counted the request also counts its outcome
        recorder = stats.begin(op)
        started = time.perf_counter()
        try:
            value = await call
        except asyncio.CancelledError:
            stats.finish(recorder, time.perf_counter() - started, "Cancelled")
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
            if isinstance(value, Reply):
                stats.overhead.record(max(0.0, elapsed - value.model_latency_s))
        return value, None

    def _victims(self) -> tuple[str, ...]:
        """Live session ids as the snapshot shows them, refreshed at most once a second."""
        now = time.monotonic()
        if now - self._victims_at >= VICTIM_REFRESH_S:
            self._victims_at = now
            self._victim_ids = tuple(v.session_id for v in self.engine.snapshot().sessions)
        return self._victim_ids

    def _sessions_open(self) -> int:
        s = self._sessions
        return s["opened"] - s["ended"] - s["abandoned"] - s["lost"]


# ------------------------------------------------------------------------------------------------
# Headless: stats table, reports, fail-on conditions
# ------------------------------------------------------------------------------------------------
METRICS = ("failure_ratio", "failures", "requests", "rps", "avg_ms", "p50_ms", "p95_ms",
           "p99_ms", "max_ms")
_CONDITION = re.compile(
    r"^\s*(?:(?P<op>[A-Za-z_]+)\s*:\s*)?(?P<metric>[a-z0-9_]+)\s*(?P<cmp>>=|<=|>|<)"
    r"\s*(?P<value>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$"
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


@dataclass(frozen=True, slots=True)
class FailCondition:
    """`[OPERATION:]METRIC OP NUMBER`, e.g. `failure_ratio>0.05` or `send:p99_ms>500`.

    Without an operation it reads the Aggregated row; `rps` is the run's average.
    """

    metric: str
    comparison: str
    threshold: float
    operation: str | None = None

    @classmethod
    def parse(cls, text: str) -> FailCondition:
        example = "e.g. failure_ratio>0.05 or send:p99_ms>500"
        match = _CONDITION.match(text)
        if match is None:
            raise ValueError(f"cannot read condition {text!r}; use [OPERATION:]METRIC>NUMBER, "
                             f"{example}")
        op, metric = match["op"], match["metric"]
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} in {text!r}; one of {', '.join(METRICS)}"
                             f" ({example})")
        if op is not None and op not in OPERATIONS and op != AGGREGATED:
            raise ValueError(f"unknown operation {op!r} in {text!r}; one of "
                             f"{', '.join(OPERATIONS)} ({example})")
        return cls(metric, match["cmp"], float(match["value"]), op)

    def value(self, stats: LoadStats) -> float:
        if self.operation in (None, AGGREGATED):
            row: OperationStats | None = stats.total
        else:
            row = stats.operation(self.operation)
        if row is None:
            return 0.0
        if self.metric == "failure_ratio":
            return row.failure_ratio
        if self.metric == "rps":
            return row.requests / stats.elapsed_s if stats.elapsed_s else 0.0
        return float(getattr(row, self.metric))

    def met(self, stats: LoadStats) -> bool:
        return _COMPARE[self.comparison](self.value(stats), self.threshold)

    def __str__(self) -> str:
        prefix = f"{self.operation}:" if self.operation else ""
        return f"{prefix}{self.metric}{self.comparison}{self.threshold:g}"


def render_stats(stats: LoadStats, *, final: bool = False) -> str:
    """The Locust-style table; live rows show current req/s, the final one the run's average."""
    lines = [
        f"{'Operation':<16}{'Reqs':>9}{'Fails':>8}{'Fail%':>7}{'req/s':>9}"
        f"{'avg':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}  (ms)"
    ]
    for row in (*stats.operations, stats.total):
        rps = row.requests / stats.elapsed_s if final and stats.elapsed_s else row.rps
        lines.append(
            f"{row.name:<16}{row.requests:>9}{row.failures:>8}{row.failure_ratio:>7.1%}"
            f"{rps:>9.1f}{row.avg_ms:>8.1f}{row.p50_ms:>8.1f}{row.p95_ms:>8.1f}"
            f"{row.p99_ms:>8.1f}{row.max_ms:>9.1f}"
        )
    if stats.failures:
        lines.append("Failures by type:")
        lines.extend(f"  {f.operation:<16}{f.error:<24}{f.count:>8}" for f in stats.failures[:10])
        if len(stats.failures) > 10:
            lines.append(f"  ... {len(stats.failures) - 10} more in the report")
    lines.append(
        f"users {stats.live_users}/{stats.target_users} (+{stats.special_users} scripted)  "
        f"spawn {stats.spawn_rate:g}/s  sessions held {stats.sessions_open} (opened "
        f"{stats.sessions_opened}, ended {stats.sessions_ended}, abandoned "
        f"{stats.sessions_abandoned}, lost {stats.sessions_lost})"
    )
    lines.append(
        f"engine overhead per turn p50/p95/p99 {stats.overhead_p50_ms:.2f}/"
        f"{stats.overhead_p95_ms:.2f}/{stats.overhead_p99_ms:.2f} ms  attacks succeeded "
        f"{stats.attacks_succeeded}"
    )
    return "\n".join(lines)


def render_progress(stats: LoadStats, width: int = 30) -> str:
    if stats.duration_s is None:
        return f"{stats.elapsed_s:7.1f}s (until Ctrl-C)  {stats.phase}  seed {stats.seed}"
    done = min(1.0, stats.elapsed_s / stats.duration_s)
    bar = "#" * round(done * width) + "." * (width - round(done * width))
    return (f"[{bar}] {stats.elapsed_s:6.1f}s / {stats.duration_s:g}s  {stats.phase}  "
            f"seed {stats.seed}")


def render_engine(snap: EngineSnapshot) -> str:
    events = snap.session_events
    rules = Counter(alert.rule for alert in snap.monitor.alerts)
    return (
        f"engine: {len(snap.sessions)} sessions, {snap.users} users, turns {snap.monitor.turns}, "
        f"expired {events.get('expired', 0)}, evicted {events.get('evicted', 0)}, "
        f"auth failures {snap.monitor.auth_failures}, alerts {len(snap.monitor.alerts)}"
        + (f" ({', '.join(f'{r} {n}' for r, n in sorted(rules.items()))})" if rules else "")
    )


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _operation_dict(row: OperationStats, elapsed_s: float) -> dict[str, Any]:
    out = _jsonable(row)
    out["failure_ratio"] = row.failure_ratio
    out["rps_avg"] = row.requests / elapsed_s if elapsed_s else 0.0
    return out


def build_report(
    stats: LoadStats,
    snap: EngineSnapshot,
    options: LoadOptions,
    config: EngineConfig,
    conditions: Sequence[FailCondition],
    exit_code: int,
) -> dict[str, Any]:
    """The JSON report: options, summary, engine counts, fail-on verdicts, per-second history."""
    summary = {
        name: _jsonable(getattr(stats, name))
        for name in ("phase", "seed", "elapsed_s", "duration_s", "target_users", "live_users",
                     "special_users", "spawn_rate", "sessions_open", "sessions_opened",
                     "sessions_ended", "sessions_abandoned", "sessions_lost", "failures",
                     "attacks_succeeded", "overhead_p50_ms", "overhead_p95_ms",
                     "overhead_p99_ms")
    }
    summary["operations"] = [_operation_dict(op, stats.elapsed_s) for op in stats.operations]
    summary["total"] = _operation_dict(stats.total, stats.elapsed_s)
    return {
        "seed": stats.seed,
        "options": _jsonable(options),
        "engine_config": {"llm": config.llm.backend, "base_url": config.llm.base_url,
                          "sim": _jsonable(config.llm.sim),
                          "idle_timeout_s": config.sessions.idle_timeout_s,
                          "turn_timeout_s": config.llm.turn_timeout_s},
        "summary": summary,
        "engine": {
            "sessions": len(snap.sessions),
            "users": snap.users,
            "session_events": dict(snap.session_events),
            "turns": snap.monitor.turns,
            "errors_by_type": dict(snap.monitor.errors_by_type),
            "auth_failures": snap.monitor.auth_failures,
            "alerts": [{"key": a.key, "rule": a.rule, "severity": a.severity, "count": a.count,
                        "message": a.message} for a in snap.monitor.alerts],
        },
        "fail_on": [{"condition": str(c), "value": c.value(stats), "met": c.met(stats)}
                    for c in conditions],
        "exit_code": exit_code,
        "history": _jsonable(stats.history),
    }


def write_csv(prefix: str, stats: LoadStats) -> list[Path]:
    """Locust's trio: PREFIX_stats.csv, PREFIX_failures.csv, PREFIX_stats_history.csv."""
    paths = [Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv"),
             Path(f"{prefix}_stats_history.csv")]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    with paths[0].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["Name", "Requests", "Successes", "Failures", "Failure ratio", "Avg ms",
                      "p50 ms", "p95 ms", "p99 ms", "Max ms", "Requests/s"])
        for row in (*stats.operations, stats.total):
            out.writerow([row.name, row.requests, row.successes, row.failures,
                          f"{row.failure_ratio:.4f}", f"{row.avg_ms:.3f}", f"{row.p50_ms:.3f}",
                          f"{row.p95_ms:.3f}", f"{row.p99_ms:.3f}", f"{row.max_ms:.3f}",
                          f"{row.requests / stats.elapsed_s if stats.elapsed_s else 0:.2f}"])
    with paths[1].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["Operation", "Error", "Occurrences"])
        out.writerows([f.operation, f.error, f.count] for f in stats.failures)
    with paths[2].open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow([f.name for f in dataclasses.fields(HistoryPoint)])
        out.writerows(
            [round(v, 3) if isinstance(v, float) else v for v in dataclasses.astuple(point)]
            for point in stats.history
        )
    return paths


async def run_headless(
    config: EngineConfig,
    options: LoadOptions,
    *,
    stats_interval_s: float = 2.0,
    report: Path | None = None,
    csv_prefix: str | None = None,
    fail_on: Sequence[FailCondition] = (),
    out: TextIO = sys.stdout,
) -> int:
    """Run the load with no UI; 0 when fine, 1 when a fail-on condition is met or an attack won.

    Ctrl-C (or SIGTERM) stops gracefully and still prints and writes everything; a second one
    cancels users mid-call.
    """
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with Engine(config) as engine:
        generator = LoadGenerator(engine, options)
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if interrupted.is_set():
                generator.cancel_users()
                return
            say(f"\nstopping: users finish their current call (up to {INTERRUPT_GRACE_S:g}s; "
                "Ctrl-C again to cancel them)")
            interrupted.set()

        installed = {}  # signal -> the handler to put back
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, on_signal)
                installed[sig] = previous
        try:
            generator.start()
            waits = {asyncio.ensure_future(generator.wait()),
                     asyncio.ensure_future(interrupted.wait())}
            try:
                while not (generator.finished or interrupted.is_set()):
                    await asyncio.wait(waits, timeout=stats_interval_s or None,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if stats_interval_s and not (generator.finished or interrupted.is_set()):
                        stats = generator.stats()
                        say(f"\n{render_progress(stats)}\n{render_stats(stats)}\n"
                            f"{render_engine(engine.snapshot())}")
            finally:
                for waiter in waits:
                    waiter.cancel()
            # Ctrl-C: the operator wants out, so calls still running after a moment are
            # cancelled; at the end of the duration every call may finish, for exact counts.
            grace = INTERRUPT_GRACE_S if interrupted.is_set() else config.llm.turn_timeout_s + 1.0
            stats = await generator.stop(grace)
            engine.housekeep()  # sessions due by now count as expired in the final snapshot
            snap = engine.snapshot()
        finally:
            for sig, previous in installed.items():
                loop.remove_signal_handler(sig)
                if previous is not None:  # None: a handler not set from Python; leave default
                    signal.signal(sig, previous)
        met = [c for c in fail_on if c.met(stats)]
        exit_code = 1 if met or stats.attacks_succeeded else 0
        say(f"\n=== summary ({'interrupted' if interrupted.is_set() else 'completed'}) ===\n"
            f"{render_progress(stats)}\n{render_stats(stats, final=True)}\n{render_engine(snap)}")
        for condition in fail_on:
            verdict = "MET" if condition in met else "ok"
            say(f"fail-on {condition}: {condition.value(stats):.4g} -> {verdict}")
        if stats.attacks_succeeded:
            say(f"SECURITY: {stats.attacks_succeeded} attacks succeeded")
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(
                build_report(stats, snap, options, config, fail_on, exit_code), indent=2
            ), encoding="utf-8")
            say(f"report written to {report}")
        if csv_prefix is not None:
            say("csv written: " + ", ".join(str(p) for p in write_csv(csv_prefix, stats)))
        return exit_code


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type whose ValueError message reaches the user (exit code 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def build_parser() -> argparse.ArgumentParser:
    d = LoadOptions()
    p = argparse.ArgumentParser(
        prog="demo_load.py",
        description="Drive simulated concurrent users against an in-process engine, "
                    "in the console (default) or --headless.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python demo_load.py                                   console with load\n"
               "  python demo_load.py --headless --users 200 --spawn-rate 20 --duration 60 \\\n"
               "      --report run.json --csv run --fail-on 'failure_ratio>0.05' "
               "--fail-on 'send:p99_ms>500'\n"
               "  python demo_load.py --headless --shape 0:10,20:100,40:20 --duration 60\n"
               "exit codes: 0 ok, 1 a --fail-on condition met or an attack succeeded, "
               "2 usage or configuration error",
    )
    g = p.add_argument_group("mode")
    g.add_argument("--headless", action="store_true",
                   help="no console: live stats table, final summary (default: console)")
    g.add_argument("--stats-interval", type=float, default=2.0, metavar="S",
                   help="seconds between live tables, 0 for none (default: %(default)s)")
    g.add_argument("--report", type=Path, metavar="FILE",
                   help="write the summary and per-second history as JSON (default: none)")
    g.add_argument("--csv", metavar="PREFIX",
                   help="write PREFIX_stats.csv, PREFIX_failures.csv, PREFIX_stats_history.csv "
                        "(default: none)")
    g.add_argument("--fail-on", action="append", default=[], metavar="COND",
                   type=_typed(FailCondition.parse),
                   help="exit 1 when [OPERATION:]METRIC(>|>=|<|<=)NUMBER holds at the end, e.g. "
                        f"failure_ratio>0.05 or send:p99_ms>500; metrics {', '.join(METRICS)}; "
                        "repeatable (default: none)")

    g = p.add_argument_group("load shape")
    g.add_argument("--users", type=int, default=d.users, metavar="N",
                   help="ordinary simulated users (default: %(default)s)")
    g.add_argument("--spawn-rate", type=float, default=d.spawn_rate, metavar="R",
                   help="users started/stopped per second (default: %(default)s)")
    g.add_argument("--duration", type=float, metavar="S",
                   help=f"run length incl. ramp-down; 0 = until Ctrl-C (default: "
                        f"{HEADLESS_DURATION_S:g} headless, until quit in the console)")
    g.add_argument("--shape", type=_typed(parse_shape), metavar="STEPS|FILE",
                   help="step load AT_S:USERS[:RATE],... or a file of such lines; replaces "
                        "--users (default: none)")
    g.add_argument("--seed", type=int, help="replay a run exactly (default: random, reported)")
    g.add_argument("--spike", type=_typed(Spike.parse), action="append", default=[],
                   metavar="AT:DURATION:FACTOR",
                   help="sim latency times FACTOR from AT s for DURATION s, e.g. 30:10:5; "
                        "repeatable (default: mixed has 60:15:4)")

    g = p.add_argument_group("user behaviour")
    g.add_argument("--think", type=_typed(Distribution.parse), default=d.think, metavar="DIST",
                   help="pause between actions: exp:MEAN, uniform:LO:HI, const:V "
                        "(default: %(default)s)")
    g.add_argument("--session-turns", type=_typed(Distribution.parse), default=d.session_turns,
                   metavar="DIST", help="turns before a session is done (default: %(default)s)")
    g.add_argument("--message-words", type=_typed(Distribution.parse), default=d.message_words,
                   metavar="DIST", help="words per message (default: %(default)s)")
    g.add_argument("--sessions-per-user", type=int, default=d.sessions_per_user, metavar="N",
                   help="each user keeps 1..N sessions open (default: %(default)s)")
    g.add_argument("--reuse", type=float, default=d.reuse_probability, metavar="P",
                   help="chance to continue the last session after a pause "
                        "(default: %(default)s)")
    g.add_argument("--abandon", type=float, default=d.abandon_probability, metavar="P",
                   help="chance to walk away from a finished session instead of ending it, "
                        "left to idle expiry (default: %(default)s)")
    g.add_argument("--history-rate", type=float, default=d.history_probability, metavar="P",
                   help="chance an action reads history (default: %(default)s)")
    g.add_argument("--rotate-rate", type=float, default=d.rotate_probability, metavar="P",
                   help="chance an action rotates the token (default: %(default)s)")
    g.add_argument("--agent-mix", type=_typed(parse_mix), default=d.agent_mix, metavar="MIX",
                   help="agent type weights (default: assistant=6,research=3,support=1)")
    g.add_argument("--tier-mix", type=_typed(parse_mix), default=d.tier_mix, metavar="MIX",
                   help="user tier weights (default: free=6,pro=3,enterprise=1)")

    g = p.add_argument_group("defences and faults (--scenario sets defaults, flags override)")
    g.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed",
                   help="mixed: hogs 2, chatty 2, attacker 1, model faults; steady: ordinary "
                        "users only (default: %(default)s)")
    g.add_argument("--hogs", type=int, metavar="N",
                   help="users that exceed their token quota (mixed: 2, steady: 0)")
    g.add_argument("--chatty", type=int, metavar="N",
                   help="users that burst past rate limits (mixed: 2, steady: 0)")
    g.add_argument("--attackers", type=int, metavar="N",
                   help="users presenting wrong tokens and others' session ids "
                        "(mixed: 1, steady: 0)")
    g.add_argument("--attack-rate", type=float, default=d.attack_rate, metavar="R",
                   help="attempts per second per attacker (default: %(default)s)")
    g.add_argument("--error-rate", type=float, metavar="P",
                   help="sim model error rate (mixed: 0.02, steady: engine default 0)")
    g.add_argument("--timeout-rate", type=float, metavar="P",
                   help="sim model timeout rate (mixed: 0.005, steady: 0)")
    g.add_argument("--latency-median", type=float, metavar="S",
                   help="sim model median latency (default: 0.2)")
    g.add_argument("--latency-p99", type=float, metavar="S",
                   help="sim model p99 latency: the spikes (mixed: 2.5, steady: 1.5)")

    g = p.add_argument_group("engine")
    g.add_argument("--llm", choices=("sim", "openai"), default="sim",
                   help="model backend; openai reads --base-url/--api-key or OPENAI_BASE_URL/"
                        "OPENAI_API_KEY (default: %(default)s)")
    g.add_argument("--base-url", help="OpenAI-compatible endpoint (default: environment)")
    g.add_argument("--api-key", help="API key (default: environment)")
    g.add_argument("--model", help="model name for --llm openai (default: OPENAI_MODEL, else "
                                   "each agent type's own)")
    g.add_argument("--data-dir", type=Path,
                   help="engine data directory (default: a temporary one, removed at exit)")
    g.add_argument("--idle-timeout", type=float, default=20.0, metavar="S",
                   help="engine idle expiry, short so abandoned sessions expire during a demo "
                        "(default: %(default)s)")
    g.add_argument("--turn-timeout", type=float, default=10.0, metavar="S",
                   help="engine bound on one model call (default: %(default)s)")
    return p


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    """LoadOptions from parsed flags: scenario defaults first, explicit flags over them."""
    scenario = dict(SCENARIOS[args.scenario])
    for name in ("hogs", "chatty", "attackers"):
        if getattr(args, name) is not None:
            scenario[name] = getattr(args, name)
    sim_flags = {
        "error_rate": args.error_rate, "timeout_rate": args.timeout_rate,
        "median_latency_s": args.latency_median, "p99_latency_s": args.latency_p99,
    }
    sim_flags = {k: v for k, v in sim_flags.items() if v is not None}
    if sim_flags:
        scenario["faults"] = dataclasses.replace(scenario["faults"] or SimSettings(), **sim_flags)
    if args.spike:
        scenario["spikes"] = tuple(args.spike)
    if args.duration is None:
        duration = HEADLESS_DURATION_S if args.headless else None
    else:
        duration = args.duration or None
    return LoadOptions(
        users=args.users, spawn_rate=args.spawn_rate, duration_s=duration,
        shape=args.shape or (), seed=args.seed, think=args.think,
        session_turns=args.session_turns, message_words=args.message_words,
        sessions_per_user=args.sessions_per_user, reuse_probability=args.reuse,
        abandon_probability=args.abandon, history_probability=args.history_rate,
        rotate_probability=args.rotate_rate, agent_mix=args.agent_mix, tier_mix=args.tier_mix,
        attack_rate=args.attack_rate, **scenario,
    )


def engine_config_from_args(
    args: argparse.Namespace, options: LoadOptions, data_dir: Path
) -> EngineConfig:
    config = EngineConfig.from_env(
        store=StoreSettings(data_dir=data_dir),
        llm=LLMSettings(
            backend=args.llm, base_url=args.base_url, api_key=args.api_key, model=args.model,
            turn_timeout_s=args.turn_timeout,
        ),
        sessions=SessionSettings(idle_timeout_s=args.idle_timeout),
    )
    return apply_faults(config, options)


def _console_runner() -> Callable[[EngineConfig, LoadOptions], object] | None:
    """`console.app.run_console` once the console exists; None until then."""
    if importlib.util.find_spec("console.app") is None:
        return None
    return getattr(importlib.import_module("console.app"), "run_console", None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    runner = None
    if not args.headless:
        runner = _console_runner()
        if runner is None:
            print("console not available yet; running headless", file=sys.stderr)
        elif not sys.stdout.isatty():
            print("no terminal for the console; running headless", file=sys.stderr)
            runner = None
        if runner is None and args.duration is None:
            options = dataclasses.replace(options, duration_s=HEADLESS_DURATION_S)
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="demo-load-"))
        )
        config = engine_config_from_args(args, options, data_dir)
        if runner is not None:
            runner(config, options)
            return 0
        try:
            return asyncio.run(run_headless(
                config, options, stats_interval_s=args.stats_interval, report=args.report,
                csv_prefix=args.csv, fail_on=args.fail_on,
            ))
        except (EngineError, ValueError) as exc:
            print(f"demo_load: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
