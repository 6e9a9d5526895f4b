"""What load to drive: `LoadOptions`, the random quantities and mixes it is made of, scenarios."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from engine import EngineConfig, SimSettings
from loadgen.shapes import ShapeStep, Spike


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


@dataclass(frozen=True, slots=True)
class WeightedChoice:
    """A mix as a choice costing one `rng.random()` draw."""

    names: tuple[str, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, mix: Mix) -> WeightedChoice:
        total = 0.0
        cumulative = []
        for _, weight in mix:
            total += weight
            cumulative.append(total)
        return cls(tuple(name for name, _ in mix), tuple(cumulative))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.names, cum_weights=self.cumulative)[0]


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
