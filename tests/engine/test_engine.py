"""The Engine facade: the contract's happy path, its typed failures, and isolation."""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, errors
from engine.config import SimSettings
from engine.ratelimit import RateLimit


def view_of(engine, session_id):
    return next(v for v in engine.snapshot().sessions if v.session_id == session_id)


async def test_round_trip_create_send_history_end(engine):
    s = await engine.create_session("alice", metadata={"tier": "pro"})
    reply = await engine.send(s.session_id, s.token, "hello there", agent_type="research")
    assert "hello there" in reply.text
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    history = await engine.history(s.session_id, s.token)
    assert [(m.role, m.content) for m in history] == [
        ("user", "hello there"), ("assistant", reply.text),
    ]
    await engine.end_session(s.session_id, s.token)
    with pytest.raises(errors.AuthenticationError):
        await engine.history(s.session_id, s.token)


async def test_turns_leave_the_stored_context_exactly_as_sent(engine):
    """The agent gets the context's own message dicts (not copies): no turn may change one."""
    s = await engine.create_session("alice")
    expected = []
    for i in range(4):
        reply = await engine.send(s.session_id, s.token, f"message {i}")
        expected += [("user", f"message {i}"), ("assistant", reply.text)]
        # Each reply echoes what the model received: every earlier turn, verbatim.
        assert f"ctx {2 * i + 2} msgs" in reply.text
    history = await engine.history(s.session_id, s.token)
    assert [(m.role, m.content) for m in history] == expected
    detail = engine.operator.inspect(s.session_id)
    assert [m.content for m in detail.messages] == [c for _, c in expected]


async def test_unknown_session_and_wrong_token_are_indistinguishable(engine):
    s = await engine.create_session("alice")
    failures = []
    for session_id, token in [
        (s.session_id, "not-the-token"),
        ("0" * 32, s.token),
        (s.session_id, None),
        (s.session_id, 12345),
        (None, s.token),
        (s.session_id, ""),
        (s.session_id, s.token + "x"),
    ]:
        with pytest.raises(errors.AuthenticationError) as info:
            await engine.send(session_id, token, "hi")
        failures.append((type(info.value), str(info.value)))
    assert len(set(failures)) == 1
    assert engine.snapshot().monitor.auth_failures == 7


async def test_token_never_appears_in_reprs_or_snapshot(engine):
    s = await engine.create_session("alice")
    await engine.send(s.session_id, s.token, "hi")
    assert s.token not in repr(s)
    assert s.token not in repr(engine.snapshot())


async def test_rotated_token_replaces_the_old_one(engine):
    s = await engine.create_session("alice")
    new = await engine.rotate_token(s.session_id, s.token)
    assert new != s.token
    with pytest.raises(errors.AuthenticationError):
        await engine.send(s.session_id, s.token, "hi")
    assert (await engine.send(s.session_id, new, "hi")).text


async def test_idle_session_expires_on_access_then_is_unknown(engine, clock):
    s = await engine.create_session("alice")
    clock.advance(engine.config.sessions.idle_timeout_s + 1)
    with pytest.raises(errors.SessionExpired, match="idle"):
        await engine.send(s.session_id, s.token, "hi")
    with pytest.raises(errors.AuthenticationError):
        await engine.send(s.session_id, s.token, "hi")


async def test_background_housekeeping_expires_without_any_access(engine, clock):
    s = await engine.create_session("alice")
    keep = await engine.create_session("bob")
    clock.advance(engine.config.sessions.idle_timeout_s / 2)
    await engine.send(keep.session_id, keep.token, "still here")
    clock.advance(engine.config.sessions.idle_timeout_s / 2 + 1)
    for _ in range(5):
        await asyncio.sleep(0)
    ids = {v.session_id for v in engine.snapshot().sessions}
    assert ids == {keep.session_id}
    assert engine.snapshot().session_events["expired"] == 1
    assert s.session_id not in ids


@pytest.mark.parametrize(
    ("user_id", "match"),
    [("", "empty"), ("   ", "empty"), ("x" * 129, "limit"), ("a\nb", "control"), (42, "string")],
)
async def test_bad_user_ids_are_refused_and_nothing_is_created(engine, user_id, match):
    with pytest.raises(errors.InvalidInput, match=match):
        await engine.create_session(user_id)
    assert engine.snapshot().sessions == ()


@pytest.mark.parametrize(
    ("metadata", "match"),
    [([1, 2], "mapping"), ({1: "x"}, "keys"), ({"x": object()}, "JSON"),
     ({"x": "y" * 5000}, "limit"), ({"tier": "platinum"}, "tier")],
)
async def test_bad_metadata_is_refused(engine, metadata, match):
    with pytest.raises(errors.InvalidInput, match=match):
        await engine.create_session("alice", metadata=metadata)
    assert engine.snapshot().sessions == ()


@pytest.mark.parametrize(
    ("text", "agent_type", "match"),
    [
        ("", "assistant", "empty"),
        (" \n", "assistant", "empty"),
        ("x" * 40_000, "assistant", "limit"),
        (None, "assistant", "string"),
        ("hi", "wizard", "unknown agent type"),
    ],
)
async def test_bad_send_arguments_consume_nothing(engine, text, agent_type, match):
    s = await engine.create_session("alice")
    with pytest.raises(errors.InvalidInput, match=match):
        await engine.send(s.session_id, s.token, text, agent_type=agent_type)
    assert await engine.history(s.session_id, s.token) == []
    assert all(u.used == 0 and u.reserved == 0 for u in engine.operator.quota_usage("alice"))


async def test_calls_before_open_and_after_close_are_refused(make_config):
    engine = Engine(make_config())
    with pytest.raises(errors.EngineClosed, match="not open"):
        await engine.create_session("alice")
    await engine.open()
    s = await engine.create_session("alice")
    await engine.aclose()
    with pytest.raises(errors.EngineClosed, match="closed"):
        await engine.send(s.session_id, s.token, "hi")


async def test_session_rate_limit_gives_retry_after_and_spends_no_quota(make_config, clock):
    config = make_config(limits={"session_rate": RateLimit(rate_per_s=1.0, burst=2)})
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, "one")
        await engine.send(s.session_id, s.token, "two")
        usage = engine.operator.quota_usage
        calls_before = {u.resource: u.used for u in usage("alice")}["api_calls"]
        with pytest.raises(errors.RateLimited) as info:
            await engine.send(s.session_id, s.token, "three")
        assert info.value.scope == "session" and info.value.retry_after > 0
        assert {u.resource: u.used for u in engine.operator.quota_usage("alice")}["api_calls"] == (
            calls_before
        )
        clock.advance(info.value.retry_after)
        await engine.send(s.session_id, s.token, "three")


async def test_quota_exceeded_names_resource_and_alerts(engine, clock):
    s = await engine.create_session("alice")  # free tier
    with pytest.raises(errors.QuotaExceeded) as info:
        for i in range(1000):
            clock.advance(1.0)  # stay under the rate limits
            await engine.send(s.session_id, s.token, f"msg {i}")
    exc = info.value
    limits = {u.resource: u.limit for u in engine.operator.quota_usage("alice")}
    assert exc.limit == limits[exc.resource] and exc.retry_after > 0
    assert all(u.reserved == 0 for u in engine.operator.quota_usage("alice"))
    snap = engine.snapshot()
    assert snap.quotas[0].user_id == "alice" and snap.quotas[0].highest_percent >= 80
    assert any(
        a.key == f"quota_exceeded:alice:{exc.resource}" and a.severity == "critical"
        for a in snap.monitor.alerts
    )


async def test_quota_percents_agree_with_the_full_usage_report(engine, clock):
    s = await engine.create_session("alice")
    for i in range(3):
        clock.advance(1.0)
        await engine.send(s.session_id, s.token, f"msg {i}")
    report = {u.resource: u.percent for u in engine.operator.quota_usage("alice")}
    assert dict(engine.operator.quota_percents("alice")) == report
    assert report["api_calls"] > 0 and report["tokens"] > 0
    assert dict(engine.operator.quota_percents("nobody")) == {r: 0.0 for r in report}


async def test_model_failure_is_llm_error_and_leaves_everything_consistent(make_config, clock):
    config = make_config(llm={"sim": SimSettings(median_latency_s=0.0, p99_latency_s=0.0,
                                         error_rate=0.5, seed=3)})
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        outcomes = []
        for i in range(12):
            clock.advance(1.0)
            try:
                await engine.send(s.session_id, s.token, f"question {i}")
                outcomes.append("ok")
            except errors.LLMError as exc:
                assert "simulated model error" in str(exc)
                outcomes.append("error")
            assert all(u.reserved == 0 for u in engine.operator.quota_usage("alice"))
        assert {"ok", "error"} <= set(outcomes)
        view = engine.snapshot().sessions[0]
        assert view.errors == outcomes.count("error") and view.state == "idle"
        history = await engine.history(s.session_id, s.token)
        assert len(history) == 2 * outcomes.count("ok")
        assert all(p.in_use == 0 for p in engine.snapshot().pools)


async def test_timeout_and_cancellation_release_the_turn(make_config):
    hang = SimSettings(median_latency_s=0.0, p99_latency_s=0.0, timeout_rate=1.0, seed=1)
    async with Engine(make_config(llm={"turn_timeout_s": 0.05, "sim": hang})) as engine:
        s = await engine.create_session("alice")
        with pytest.raises(errors.LLMError, match=r"no reply within|timed out"):
            await engine.send(s.session_id, s.token, "hi")
        assert all(p.in_use == 0 for p in engine.snapshot().pools)
    slow = SimSettings(median_latency_s=5.0, p99_latency_s=6.0, seed=1)
    async with Engine(make_config(llm={"sim": slow})) as engine:
        s = await engine.create_session("alice")
        turn = asyncio.create_task(engine.send(s.session_id, s.token, "hi"))
        await asyncio.sleep(0.05)
        assert view_of(engine, s.session_id).state == "busy"
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        snap = engine.snapshot()
        assert view_of(engine, s.session_id).state == "idle"
        assert all(p.in_use == 0 for p in snap.pools)
        assert all(u.reserved == 0 for u in engine.operator.quota_usage("alice"))


async def test_session_ended_mid_turn_keeps_nothing(make_config):
    slow = SimSettings(median_latency_s=0.1, p99_latency_s=0.1, seed=1)
    async with Engine(make_config(llm={"sim": slow})) as engine:
        s = await engine.create_session("alice")
        turn = asyncio.create_task(engine.send(s.session_id, s.token, "secret"))
        await asyncio.sleep(0.01)
        await engine.end_session(s.session_id, s.token)
        await turn
        assert s.session_id not in {v.session_id for v in engine.snapshot().sessions}


async def test_unknown_agent_type_and_pool_exhaustion(make_config, tmp_path):
    types = tmp_path / "agents.toml"
    types.write_text(
        '[solo]\nrole = "r"\ngoal = "g"\nbackstory = "b"\ninstructions = "i"\n'
        'model = "sim-solo"\nmin_instances = 0\nmax_instances = 1\n'
    )
    slow = SimSettings(median_latency_s=1.0, p99_latency_s=1.0, seed=1)
    config = make_config(
        llm={"sim": slow}, pools={"agent_types_file": types, "workers": 1, "timeout_s": 0.05}
    )
    async with Engine(config) as engine:
        assert engine.agent_types == ("solo",)
        a = await engine.create_session("alice")
        b = await engine.create_session("bob")
        with pytest.raises(errors.InvalidInput, match="unknown agent type"):
            await engine.send(a.session_id, a.token, "hi", agent_type="assistant")
        first = asyncio.create_task(engine.send(a.session_id, a.token, "hi", agent_type="solo"))
        await asyncio.sleep(0.01)
        with pytest.raises(errors.PoolTimeout, match="solo"):
            await engine.send(b.session_id, b.token, "hi", agent_type="solo")
        assert all(u.reserved == 0 for u in engine.operator.quota_usage("bob"))
        await first
        assert (await engine.send(b.session_id, b.token, "now", agent_type="solo")).text


async def test_thousands_of_concurrent_turns_stay_isolated(make_config):
    config = make_config(limits={
        "session_rate": RateLimit(rate_per_s=1000.0, burst=1000),
        "user_rate": RateLimit(rate_per_s=1000.0, burst=1000),
    })
    async with Engine(config) as engine:
        for user in range(200):
            await engine.operator.set_tier(f"user{user}", "enterprise")
        sessions = [await engine.create_session(f"user{i % 200}") for i in range(400)]

        async def converse(s, n):
            for k in range(n):
                await engine.send(s.session_id, s.token, f"secret-{s.session_id}-{k}")

        await asyncio.gather(*(converse(s, 5) for s in sessions))
        for s in sessions:
            history = await engine.history(s.session_id, s.token)
            assert len(history) == 10
            assert all(s.session_id in m.content for m in history)
        snap = engine.snapshot()
        assert snap.monitor.turns == 2000 and len(snap.sessions) == 400


async def test_sim_faults_change_live_and_back(engine, clock):
    s = await engine.create_session("alice")
    calm = engine.sim_settings
    engine.set_sim(SimSettings(median_latency_s=0.0, p99_latency_s=0.0, error_rate=1.0, seed=1))
    with pytest.raises(errors.LLMError, match="simulated model error"):
        await engine.send(s.session_id, s.token, "during the drill")
    with pytest.raises(errors.ConfigurationError, match="error_rate"):
        engine.set_sim(SimSettings(error_rate=2.0))
    engine.set_sim(calm)
    clock.advance(1.0)
    assert (await engine.send(s.session_id, s.token, "after the drill")).text


async def test_the_operator_ends_and_rotates_by_id_without_a_token(engine):
    s = await engine.create_session("alice")
    other = await engine.create_session("bob")
    operator = engine.operator
    assert await operator.rotate_token(s.session_id)
    with pytest.raises(errors.AuthenticationError):
        await engine.history(s.session_id, s.token)
    assert operator.session_exists(s.session_id) and operator.inspect(s.session_id) is not None
    assert await operator.end_session(s.session_id)
    assert not await operator.end_session(s.session_id)
    assert not await operator.rotate_token(s.session_id)
    assert not operator.session_exists(s.session_id) and operator.inspect(s.session_id) is None
    assert await engine.history(other.session_id, other.token) == []
