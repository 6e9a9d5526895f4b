"""The load generator over HTTP: a real gateway (uvicorn on 127.0.0.1, port 0) in the test's loop.

The transport's calls and error mapping are checked against the gateway itself; a headless
`demo_load.py --target` run in a subprocess drives it with the mixed scenario and its report is
checked against the engine's own counts. Assertions are about counts and outcomes, never about
how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import (
    Engine,
    EngineConfig,
    GatewaySettings,
    LimitSettings,
    LLMSettings,
    SimSettings,
    StoreSettings,
)
from engine.errors import AuthenticationError, EngineClosed, InvalidInput, RateLimited
from engine.gateway import Gateway
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit
from loadgen import GatewayTransport, TurnReply
from loadgen.http import AppKeyRefused, UnexpectedReply, error_from_response, parse_server_timing

ROOT = Path(__file__).resolve().parents[2]
APP_KEY = "loadgen-test-app-key-0123456789"


@pytest.fixture(autouse=True)
def _app_keys(monkeypatch):
    monkeypatch.setenv("SESSION_CONSOLE_APP_KEYS", APP_KEY)
    monkeypatch.delenv("SESSION_CONSOLE_APP_KEY", raising=False)


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, limits: LimitSettings | None = None
) -> AsyncIterator[tuple[Engine, str]]:
    """An engine on the real clock and its gateway on a free loopback port."""
    config = EngineConfig(
        store=StoreSettings(data_dir=tmp_path / "data", durability="process"),
        tune_gc=False,
        llm=LLMSettings(sim=SimSettings(median_latency_s=0.002, p99_latency_s=0.01, seed=1)),
        limits=limits or LimitSettings(),
        gateway=GatewaySettings(app_keys=(APP_KEY,)),
    )
    async with Engine(config) as engine:
        gw = Gateway(engine)
        address = await gw.start("127.0.0.1:0")
        try:
            yield engine, f"http://{address}"
        finally:
            await gw.stop()


async def test_the_transport_makes_the_five_calls_and_reads_the_engines_share(tmp_path):
    async with gateway(tmp_path) as (engine, url), GatewayTransport(
        url, APP_KEY, connections=2
    ) as transport:
        assert transport.agent_types == engine.agent_types
        grant = await transport.create_session("alice", "pro")
        assert engine.snapshot().sessions_by_id[grant.session_id].user_id == "alice"
        reply = await transport.send(grant.session_id, grant.token, "hello", "research")
        assert isinstance(reply, TurnReply)
        assert reply.engine_s is not None and reply.engine_s >= reply.model_s > 0
        assert await transport.history(grant.session_id, grant.token) == 2
        token = await transport.rotate_token(grant.session_id, grant.token)
        assert token != grant.token
        with pytest.raises(AuthenticationError):
            await transport.send(grant.session_id, grant.token, "old token", "assistant")
        with pytest.raises(InvalidInput):
            await transport.send(grant.session_id, token, "hello", "no-such-agent")
        await transport.end_session(grant.session_id, token)
        with pytest.raises(AuthenticationError):
            await transport.history(grant.session_id, token)


async def test_gateway_refusals_become_the_engines_error_types(tmp_path):
    async with gateway(tmp_path, LimitSettings(session_rate=RateLimit(0.01, 1))) as (engine, url):
        with pytest.raises(AppKeyRefused):  # a wrong app key: refused before anything
            async with GatewayTransport(url, "not-the-key", connections=1):
                pass
        async with GatewayTransport(url, APP_KEY, connections=1) as transport:
            grant = await transport.create_session("bob", None)
            await transport.send(grant.session_id, grant.token, "one", "assistant")
            with pytest.raises(RateLimited) as limited:
                await transport.send(grant.session_id, grant.token, "two", "assistant")
            assert math.isfinite(limited.value.retry_after) and limited.value.retry_after > 0
            await engine.drain(0.0)  # the engine stops taking turns: users must stop too
            with pytest.raises(EngineClosed):
                await transport.send(grant.session_id, grant.token, "three", "assistant")


def test_replies_outside_the_contract_are_their_own_category():
    import httpx

    plain = httpx.Response(503, text="Service Unavailable")
    assert isinstance(error_from_response(plain), UnexpectedReply)
    internal = httpx.Response(500, json={"error": {"type": "internal_error", "message": "x"}})
    assert isinstance(error_from_response(internal), UnexpectedReply)
    assert parse_server_timing("engine;dur=12.5, model;dur=10") == {"engine": 12.5, "model": 10.0}
    assert parse_server_timing("cache;desc=hit, engine;dur=bad") == {}


async def demo_load(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "demo_load.py"), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_headless_target_run_drives_the_gateway_and_splits_turn_latency(tmp_path):
    free = {**DEFAULT_TIERS["free"], "tokens": QuotaLimit(3000, 3600.0)}  # hogs run out
    report_file = tmp_path / "run.json"
    limits = LimitSettings(tiers={**DEFAULT_TIERS, "free": free})
    async with gateway(tmp_path, limits) as (engine, url):
        code, out, err = await demo_load(
            "--target", url, "--app-key", APP_KEY, "--users", "8", "--spawn-rate", "50",
            "--duration", "3", "--seed", "3", "--think", "exp:0.05", "--tier-mix", "pro=1",
            "--hogs", "1", "--chatty", "1", "--attackers", "1", "--attack-rate", "20",
            "--stats-interval", "1", "--report", str(report_file),
        )
        snap = engine.snapshot()
    assert code == 0, err
    assert "=== summary (completed) ===" in out and "outside the engine" in out
    report = json.loads(report_file.read_text())
    assert report["target"] == url
    summary = report["summary"]
    ops = {op["name"]: op for op in summary["operations"]}
    assert ops["send"]["successes"] > 0 and ops["create_session"]["failures"] == 0
    for op in [*ops.values(), summary["total"]]:
        assert op["requests"] == op["successes"] + op["failures"], op["name"]
    # The split: the client's round trip, the engine's overhead, and what lies outside it.
    assert summary["client_turn_p50_ms"] > 0 and summary["outside_engine_p50_ms"] > 0
    assert summary["client_turn_p99_ms"] >= summary["overhead_p50_ms"]
    # Attacks over HTTP: wrong tokens against other sessions' ids, every one a 401.
    assert ops["attack"]["requests"] > 0 and ops["attack"]["failures"] == 0
    assert summary["attacks_succeeded"] == 0
    assert snap.monitor.auth_failures >= ops["attack"]["requests"]
    errors = {(f["operation"], f["error"]) for f in summary["failures"]}
    assert ("hog_send", "QuotaExceeded") in errors
    # Every session the users opened over HTTP, the engine created; every one they ended, ended.
    assert summary["sessions_open"] == 0
    assert snap.session_events["created"] == summary["sessions_opened"]
    assert snap.session_events["ended"] == summary["sessions_ended"]


async def test_target_runs_refuse_sim_flags_and_a_missing_app_key(tmp_path):
    code, _, err = await demo_load("--target", "http://127.0.0.1:9", "--spike", "1:1:2")
    assert code == 2 and "--spike" in err
    code, _, err = await demo_load("--target", "http://127.0.0.1:9")
    assert code == 2 and "app key" in err
    async with gateway(tmp_path) as (_, url):
        code, _, err = await demo_load("--target", url, "--app-key", "wrong", "--duration", "1")
    assert code == 2 and "refused the app key" in err
