"""How load changes over a run: user-count steps (`--shape`) and model latency spikes (`--spike`).

A shape says how many ordinary users to aim for from each moment on; a spike multiplies the sim
model's latency for a while. Both are plain schedules read against the run's elapsed time.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.config import SimSettings


@dataclass(frozen=True, slots=True)
class ShapeStep:
    """From `at_s` seconds into the run, aim for `users`, moving at `spawn_rate` if given."""

    at_s: float
    users: int
    spawn_rate: float | None = None


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


def shape_step_at(shape: tuple[ShapeStep, ...], elapsed: float) -> ShapeStep | None:
    """The step in force `elapsed` seconds into the run (None before the first one)."""
    return next((s for s in reversed(shape) if s.at_s <= elapsed), None)


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


class SimControl(Protocol):
    """The part of an in-process engine a spike needs: its live sim model settings."""

    @property
    def sim_settings(self) -> SimSettings: ...

    def set_sim(self, settings: SimSettings) -> None: ...


class SpikeSchedule:
    """Applies spikes to a sim model as the run goes on, and restores its calm settings."""

    __slots__ = ("_calm", "_current", "_sim", "_spikes")

    def __init__(self, spikes: tuple[Spike, ...], sim: SimControl) -> None:
        self._spikes = spikes
        self._sim = sim
        self._calm: SimSettings | None = None  # the settings outside any spike
        self._current: Spike | None = None

    def apply(self, elapsed: float) -> None:
        """Multiply the model's latency while a spike is active; restore it after."""
        spike = next((s for s in self._spikes if s.active(elapsed)), None)
        if spike is self._current:
            return
        if self._calm is None:
            self._calm = self._sim.sim_settings
        calm = self._calm
        self._sim.set_sim(
            calm if spike is None else dataclasses.replace(
                calm,
                median_latency_s=calm.median_latency_s * spike.factor,
                p99_latency_s=calm.p99_latency_s * spike.factor,
            )
        )
        self._current = spike

    def end(self) -> None:
        """Put the calm settings back (the run stopped, mid-spike or not)."""
        if self._current is not None and self._calm is not None:
            self._sim.set_sim(self._calm)
        self._current = None
