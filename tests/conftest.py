"""Shared fixtures: an engine on a manual clock with its key file in a temporary folder."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine import Engine, EngineConfig, LimitSettings, LLMSettings, SimSettings, StoreSettings
from engine.clock import ManualClock

INSTANT = SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=1)

pytest_plugins = ("tests.servers.postgres",)  # postgres_server, postgres_url: a real PostgreSQL


@pytest.fixture(autouse=True)
def _no_keys_from_environment(monkeypatch):
    """EngineConfig.from_env() (the CLIs, their subprocesses) never sees a developer's keys."""
    monkeypatch.delenv("SESSION_CONSOLE_MASTER_KEY", raising=False)
    monkeypatch.delenv("SESSION_CONSOLE_APP_KEYS", raising=False)
    monkeypatch.delenv("SESSION_CONSOLE_REDIS_URL", raising=False)
    monkeypatch.delenv("SESSION_CONSOLE_DATABASE_URL", raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_config(tmp_path, clock):
    """A config in the test's folder, on its clock, with an instant sim. A part given as a dict
    changes those fields of it (`make_config(pools={"workers": 1})`); any other value replaces."""

    def make(**changes) -> EngineConfig:
        base = EngineConfig(
            store=StoreSettings(data_dir=tmp_path / "data"),
            llm=LLMSettings(sim=INSTANT),
            limits=LimitSettings(overload=None),  # sheds on the machine's real loop lag
            tune_gc=False,  # process-wide; tests open hundreds of engines
            clock=clock,
        )
        return replace(base, **{
            name: replace(getattr(base, name), **value) if isinstance(value, dict) else value
            for name, value in changes.items()
        })

    return make


@pytest.fixture
async def engine(make_config):
    async with Engine(make_config()) as running:
        yield running
