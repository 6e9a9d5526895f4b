"""The operator's tier change is kept with the user's stored sessions: a restart restores it."""

from __future__ import annotations

import pytest

from engine import Engine
from engine.errors import InvalidInput


async def test_a_tier_set_by_the_operator_outlasts_a_restart(make_config):
    config = make_config()
    async with Engine(config) as engine:
        first = await engine.create_session("nia")
        second = await engine.create_session("nia", metadata={"tier": "pro"})
        await engine.operator.set_tier("nia", "enterprise")
        with pytest.raises(InvalidInput):
            await engine.operator.set_tier("nia", "platinum")
        views = engine.snapshot().sessions_by_id
        assert {views[s.session_id].tier for s in (first, second)} == {"enterprise"}
    async with Engine(config) as engine:
        views = engine.snapshot().sessions_by_id
        assert {views[s.session_id].tier for s in (first, second)} == {"enterprise"}
        usage = {u.resource: u for u in engine.operator.quota_usage("nia")}
        enterprise = config.limits.tiers["enterprise"]["api_calls"].limit
        assert usage["api_calls"].limit == enterprise
