"""Shared fixtures: an engine on a manual clock with its key file in a temporary folder."""

from __future__ import annotations

import pytest

from engine import Engine, EngineConfig
from engine.clock import ManualClock
from engine.config import SimSettings

INSTANT = SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)


@pytest.fixture(autouse=True)
def _no_master_key_from_environment(monkeypatch):
    monkeypatch.delenv("SESSION_CONSOLE_MASTER_KEY", raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_config(tmp_path, clock):
    def make(**overrides) -> EngineConfig:
        overrides.setdefault("sim", INSTANT)
        overrides.setdefault("tune_gc", False)  # process-wide; tests open hundreds of engines
        overrides.setdefault("overload", None)  # sheds on the machine's real loop lag
        return EngineConfig(data_dir=tmp_path / "data", clock=clock, **overrides)

    return make


@pytest.fixture
async def engine(make_config):
    async with Engine(make_config()) as running:
        yield running
