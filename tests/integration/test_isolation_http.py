"""Acceptance: many users over real HTTP through shared pools; no request carries another's data.

The engine runs the `openai` backend against the project's OpenAI-compatible simulator on
loopback, with pools far smaller than the number of sessions so agents are reused constantly.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from engine import Engine, errors
from engine.config import TenantCredentials
from engine.ratelimit import RateLimit
from engine.simserver import Fault, SimServer

SECRET = re.compile(r"secret-[0-9a-f]{32}-\d+")


def small_pools(tmp_path: Path) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        "".join(
            f'[{name}]\nrole = "r"\ngoal = "g"\nbackstory = "b"\ninstructions = "i"\n'
            f'model = "sim-{name}"\nmin_instances = 1\nmax_instances = 3\n'
            for name in ("assistant", "research")
        )
    )
    return path


@pytest.fixture
async def server():
    async with SimServer() as running:
        yield running


def http_config(make_config, tmp_path, server, llm=None):
    return make_config(
        llm={"backend": "openai", "base_url": server.base_url, "api_key": "sk-local-default",
             "turn_timeout_s": 5.0, **(llm or {})},
        pools={"agent_types_file": small_pools(tmp_path), "timeout_s": 30.0},
        limits={"session_rate": RateLimit(1000.0, 1000), "user_rate": RateLimit(1000.0, 1000)},
    )


async def test_no_request_contains_another_sessions_content(make_config, tmp_path, server):
    async with Engine(http_config(make_config, tmp_path, server)) as engine:
        users = [f"user{i}" for i in range(40)]
        for user in users:
            await engine.operator.set_tier(user, "enterprise")
        sessions = [await engine.create_session(users[i % len(users)]) for i in range(80)]
        rng = random.Random(5)

        async def converse(s) -> None:
            for k in range(4):
                await asyncio.sleep(rng.random() / 100)
                agent_type = rng.choice(["assistant", "research"])
                await engine.send(
                    s.session_id, s.token, f"secret-{s.session_id}-{k}", agent_type=agent_type
                )

        await asyncio.gather(*(converse(s) for s in sessions))
        pools = engine.snapshot().pools
        assert sum(p.created for p in pools) <= 12 < len(sessions)

    bodies = [r.body for r in server.requests]
    assert len(bodies) == 80 * 4
    for body in bodies:
        text = json.dumps(body["messages"])
        owners = {m.split("-")[1] for m in SECRET.findall(text)}
        assert len(owners) == 1, f"a request mixed sessions {owners}"
        # Each request carries exactly the session's own prior turns, in order.
        user_turns = [m["content"] for m in body["messages"] if m["role"] == "user"]
        (owner,) = owners
        assert user_turns == [f"secret-{owner}-{k}" for k in range(len(user_turns))]


async def test_backend_faults_end_in_typed_errors_and_leave_state_consistent(
    make_config, tmp_path, server
):
    config = http_config(
        make_config, tmp_path, server, llm={"turn_timeout_s": 0.5, "max_retries": 1}
    )
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        for fault, match in [
            (Fault.error(500), "500"),
            (Fault.rate_limited(0.01), "429"),
            (Fault.malformed(), "JSON|malformed|invalid"),
            (Fault.hang(), "no reply within|timed out"),
        ]:
            server.inject(fault, times=2)  # the first try and the one retry
            with pytest.raises(errors.LLMError, match=match):
                await engine.send(s.session_id, s.token, "hello")
            server.faults.clear()
            snap = engine.snapshot()
            assert all(p.in_use == 0 for p in snap.pools)
            assert all(u.reserved == 0 for u in engine.operator.quota_usage("alice"))
            assert "sk-local-default" not in repr(snap)
        server.inject(Fault.rate_limited(0.01), times=1)  # one 429, then the retry succeeds
        reply = await engine.send(s.session_id, s.token, "still usable")
        assert "still usable" in reply.text
        assert snap.sessions[0].errors == 4


async def test_tenant_clients_are_cached_bounded_and_never_show_keys(
    make_config, tmp_path, server
):
    tenants = {
        f"tenant{i}": TenantCredentials(api_key=f"sk-tenant-secret-{i}", base_url=server.base_url)
        for i in range(5)
    }
    config = http_config(
        make_config, tmp_path, server, llm={"tenants": tenants, "max_cached_clients": 2}
    )
    async with Engine(config) as engine:
        for user in tenants:
            s = await engine.create_session(user)
            await engine.send(s.session_id, s.token, f"hi from {user}")
        stats = engine.snapshot().clients
        assert stats is not None
        assert (stats.misses, stats.size, stats.evictions) == (5, 2, 3)
        assert stats.leased == 0
        shown = repr(engine.snapshot())
        assert not any(c.api_key in shown for c in tenants.values())
    fingerprints = {r.api_key_fingerprint for r in server.requests}
    assert len(fingerprints) == 5
