"""The load generator's runs: consistent reports, replayable seeds, attacks refused, live control.

Runs are short and real-time (the generator is a client of the engine); assertions are about
counts and outcomes, never about how long anything took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from engine import (
    Engine,
    EngineConfig,
    LimitSettings,
    LLMSettings,
    MonitorSettings,
    QuotaLimit,
    RateLimit,
    SessionSettings,
    SimSettings,
    StoreSettings,
)
from engine.quotas import DEFAULT_TIERS
from loadgen import (
    Distribution,
    EngineTransport,
    LoadGenerator,
    LoadOptions,
    ShapeStep,
    Spike,
    apply_faults,
    run_headless,
)

INSTANT = SimSettings(median_latency_s=0.0, p99_latency_s=0.0)
ROOMY_TIER = {
    "api_calls": QuotaLimit(1e9, 60.0),
    "tokens": QuotaLimit(1e12, 3600.0),
    "storage_mb": QuotaLimit(1e9, None),
    "compute_seconds": QuotaLimit(1e9, 3600.0),
}


def roomy_config(data_dir: Path) -> EngineConfig:
    """No refusals that depend on timing, so a seed's decisions cannot depend on the clock."""
    return EngineConfig(
        store=StoreSettings(data_dir=data_dir),
        llm=LLMSettings(sim=INSTANT),
        limits=LimitSettings(
            tiers={"free": ROOMY_TIER, "pro": ROOMY_TIER, "enterprise": ROOMY_TIER},
            session_rate=RateLimit(1e6, 10**6),
            user_rate=RateLimit(1e6, 10**6),
            overload=None,  # shedding depends on the machine's loop lag
        ),
    )


async def until(predicate, what: str, limit_s: float = 20.0) -> None:
    """Poll for a condition; the limit only guards against a hang."""
    for _ in range(int(limit_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached: {what}")


# -- a mixed headless run, shared by the report tests ------------------------------------------
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    config = EngineConfig(
        store=StoreSettings(data_dir=tmp / "data"),
        sessions=SessionSettings(idle_timeout_s=1.0),  # abandoned sessions expire within the run
        llm=LLMSettings(turn_timeout_s=1.0),
        monitor=MonitorSettings(housekeeping_interval_s=0.2),
        # Hogs and chatty users are on the default tier (free), ordinary users on pro; a small
        # free token quota lets a hog run out within the run.
        limits=LimitSettings(tiers={
            **DEFAULT_TIERS,
            "free": {**DEFAULT_TIERS["free"], "tokens": QuotaLimit(6000, 3600.0)},
        }),
    )
    options = LoadOptions(
        users=30, spawn_rate=30, duration_s=3, seed=7,
        think=Distribution("exp", 0.1), session_turns=Distribution("uniform", 1, 4),
        abandon_probability=0.3, tier_mix=(("pro", 1.0),),
        hogs=1, chatty=1, attackers=1, attack_rate=40,
        faults=SimSettings(
            median_latency_s=0.005, p99_latency_s=0.05, error_rate=0.05, timeout_rate=0.02
        ),
    )
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SESSION_CONSOLE_MASTER_KEY", raising=False)
        code = asyncio.run(run_headless(
            apply_faults(config, options), options, stats_interval_s=1.0,
            report=tmp / "run.json", csv_prefix=str(tmp / "csv" / "run"), out=out,
        ))
    return code, json.loads((tmp / "run.json").read_text()), out.getvalue(), tmp


def test_headless_run_completes_with_live_table_and_summary(mixed_run):
    code, report, output, tmp = mixed_run
    assert code == 0
    assert "Aggregated" in output and "=== summary (completed) ===" in output
    assert report["summary"]["phase"] == "stopped"
    assert report["history"], "a per-second history"
    assert [p["elapsed_s"] for p in report["history"]] == sorted(
        {p["elapsed_s"] for p in report["history"]}
    )
    for name in ("run_stats.csv", "run_failures.csv", "run_stats_history.csv"):
        assert (tmp / "csv" / name).read_text().count("\n") >= 1


def test_every_request_is_counted_once(mixed_run):
    summary = mixed_run[1]["summary"]
    ops = summary["operations"]
    assert {op["name"] for op in ops} >= {"create_session", "send", "end_session", "attack"}
    for op in [*ops, summary["total"]]:
        assert op["requests"] == op["successes"] + op["failures"], op["name"]
    assert summary["total"]["requests"] == sum(op["requests"] for op in ops)
    assert summary["total"]["failures"] == sum(f["count"] for f in summary["failures"])


def test_session_counts_agree_with_the_engine(mixed_run):
    summary, engine = mixed_run[1]["summary"], mixed_run[1]["engine"]
    events = engine["session_events"]
    assert summary["sessions_open"] == 0, "stopped users end what they hold"
    assert events["created"] == summary["sessions_opened"]
    assert events["ended"] == summary["sessions_ended"]
    gone = events["expired"] + events["evicted"]
    assert engine["sessions"] == summary["sessions_opened"] - summary["sessions_ended"] - gone
    # What is still live can only be what users walked away from.
    assert engine["sessions"] <= summary["sessions_abandoned"]
    assert summary["sessions_lost"] <= gone


def test_attacker_never_succeeds_and_raises_the_auth_alert(mixed_run):
    report = mixed_run[1]
    summary = report["summary"]
    attack = next(op for op in summary["operations"] if op["name"] == "attack")
    assert attack["requests"] > 0
    assert attack["failures"] == 0, "every attempt refused with AuthenticationError"
    assert summary["attacks_succeeded"] == 0
    assert report["engine"]["auth_failures"] >= attack["requests"]
    assert any(alert["key"].startswith("auth") for alert in report["engine"]["alerts"])


def test_defences_and_faults_show_up_as_typed_failures(mixed_run):
    errors = {(f["operation"], f["error"]) for f in mixed_run[1]["summary"]["failures"]}
    assert ("hog_send", "QuotaExceeded") in errors
    assert ("chatty_send", "RateLimited") in errors
    assert any(error == "LLMError" for _, error in errors)


# -- determinism ---------------------------------------------------------------------------------
async def decisions(data_dir: Path, seed: int) -> dict[str, tuple]:
    options = LoadOptions(
        users=12, spawn_rate=200, seed=seed, think=Distribution("exp", 0.03),
        session_turns=Distribution("uniform", 1, 4), abandon_probability=0.3,
        history_probability=0.1, rotate_probability=0.1,
    )
    async with Engine(roomy_config(data_dir)) as engine:
        generator = LoadGenerator(EngineTransport(engine), options, record_decisions=True)
        generator.start()
        await until(lambda: generator.stats().total.requests >= 400, "400 requests")
        await generator.stop()
    return generator.decision_log()


async def test_same_seed_gives_the_same_decisions(tmp_path):
    first = await decisions(tmp_path / "a", seed=42)
    second = await decisions(tmp_path / "b", seed=42)
    other = await decisions(tmp_path / "c", seed=43)
    assert first.keys() == second.keys() and len(first) == 12
    compared = 0
    for user, log in first.items():
        n = min(len(log), len(second[user]))  # runs stop at slightly different points
        assert log[:n] == second[user][:n], user
        compared += n
    assert compared >= 200
    assert any(
        log[: min(len(log), len(other[user]))] != other[user][: min(len(log), len(other[user]))]
        for user, log in first.items()
    )


# -- live control --------------------------------------------------------------------------------
async def test_set_users_and_shape_steer_the_population(tmp_path):
    options = LoadOptions(
        spawn_rate=100, shape=(ShapeStep(0, 3), ShapeStep(0.3, 6)),
        think=Distribution("exp", 0.05), seed=1,
    )
    async with Engine(roomy_config(tmp_path / "data")) as engine:
        generator = LoadGenerator(EngineTransport(engine), options)
        generator.start()
        await until(lambda: generator.stats().live_users == 6, "shape's second step")
        generator.set_users(2)
        await until(lambda: generator.stats().live_users == 2, "set_users(2)")
        generator.set_spawn_rate(0)  # frozen: set_users waits for a rate
        generator.set_users(5)
        await asyncio.sleep(0.3)
        assert generator.stats().live_users == 2
        generator.set_spawn_rate(50)
        await until(lambda: generator.stats().live_users == 5, "set_users(5) at 50/s")
        stats = await generator.stop()
        snap = engine.snapshot()
    assert not stats.running and stats.phase == "stopped"
    assert stats.live_users == 0 and stats.sessions_open == 0
    assert len(snap.sessions) == stats.sessions_abandoned - stats.sessions_lost


async def test_a_latency_spike_slows_the_sim_model_live_and_ends(tmp_path):
    base = SimSettings(median_latency_s=0.001, p99_latency_s=0.002, seed=1)
    options = LoadOptions(
        users=3, spawn_rate=100, think=Distribution("exp", 0.05), seed=1,
        spikes=(Spike(0.2, 0.6, 50.0),),
    )
    roomy = roomy_config(tmp_path / "data")
    config = dataclasses.replace(roomy, llm=dataclasses.replace(roomy.llm, sim=base))
    async with Engine(config) as engine:
        generator = LoadGenerator(EngineTransport(engine), options)
        generator.start()
        await until(lambda: engine.sim_settings.median_latency_s == 0.05, "the spike begins")
        assert engine.sim_settings.p99_latency_s == pytest.approx(0.1)
        await until(lambda: engine.sim_settings == base, "the spike ends")
        await generator.stop()
    assert engine.sim_settings == base
