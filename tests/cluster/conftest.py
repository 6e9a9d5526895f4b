"""Cluster tests run against a real valkey-server (tests/servers/valkey.py)."""

from __future__ import annotations

import pytest

from engine import ClusterSettings
from engine.cluster import ClusterState
from tests.servers.valkey import private_valkey, redis_url, valkey

__all__ = ["private_valkey", "redis_url", "valkey"]


@pytest.fixture
async def cluster(redis_url, clock):
    """The shared state on the test's manual clock, as one worker opens it."""
    state = await ClusterState.open(ClusterSettings(redis_url=redis_url), clock)
    yield state
    await state.aclose()
