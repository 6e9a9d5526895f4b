"""Valkey going away mid-use: every call fails with ClusterUnavailable naming it (never a local
decision), the password never shows, and the same objects work again once it is back."""

from __future__ import annotations

import asyncio

import pytest

from engine import ClusterSettings, LimitSettings, RateLimit
from engine.cluster import ClusterState, WorkerLoad
from engine.cluster.rebuild import NotRebuilt
from engine.errors import ClusterUnavailable, ConfigurationError, EngineError, QuotaExceeded


def calls(state: ClusterState):
    """One call of every kind a worker makes."""
    return {
        "reserve": lambda: state.quotas.reserve("u", {"api_calls": 1}),
        "usage": lambda: state.quotas.usage("u"),
        "set_tier": lambda: state.quotas.set_tier("u", "pro"),
        "rate": lambda: state.rates.acquire([("session", "s"), ("user", "u")]),
        "lease": lambda: state.leases.acquire("s", "w1"),
        "holder": lambda: state.leases.holder("s"),
        "enter": lambda: state.inflight.enter("u", 2),
        "heartbeat": lambda: state.registry.heartbeat("w1", WorkerLoad()),
        "alive": lambda: state.registry.alive(),
        "admit": lambda: state.turns.admit("s", "u", {"api_calls": 1}),
        "start": lambda: state.turns.start("s2", "u", "w1", 5),
    }


async def test_stopped_valkey_fails_every_call_typed_and_works_again_after_restart(
    private_valkey, clock
):
    settings = ClusterSettings(redis_url=private_valkey.url, timeout_s=2.0)
    state = await ClusterState.open(settings, clock)
    for call in calls(state).values():
        await call()  # everything works, and every script is loaded

    private_valkey.stop()
    for name, call in calls(state).items():
        with pytest.raises(ClusterUnavailable) as down:
            await call()
        message = str(down.value)
        assert "Valkey/Redis" in message, name
        assert f"127.0.0.1:{private_valkey.port}" in message
        assert private_valkey.password not in message
        assert isinstance(down.value, EngineError)
        assert down.value.url == f"redis://127.0.0.1:{private_valkey.port}/0"

    private_valkey.start()  # empty again: no data, no scripts
    for call in calls(state).values():
        await call()
    reservations = [await state.quotas.reserve("u", {"api_calls": 1}) for _ in range(5)]
    assert len({r.id for r in reservations}) == 5
    await state.aclose()


async def test_a_server_out_of_memory_refuses_typed_until_it_has_room(private_valkey, clock):
    state = await ClusterState.open(ClusterSettings(redis_url=private_valkey.url), clock)
    with private_valkey.client() as admin:
        admin.config_set("maxmemory", 1)  # every byte is over: no write is allowed
        try:
            with pytest.raises(ClusterUnavailable, match="OutOfMemoryError"):
                await state.quotas.reserve("u", {"api_calls": 1})
        finally:
            admin.config_set("maxmemory", 0)
    await state.quotas.reserve("u", {"api_calls": 1})
    await state.aclose()


async def test_a_cap_is_still_enforced_after_a_restart_not_bypassed(private_valkey, clock):
    """While down nothing is granted; after the restart the limit holds from zero."""
    state = await ClusterState.open(ClusterSettings(redis_url=private_valkey.url), clock)
    private_valkey.stop()
    with pytest.raises(ClusterUnavailable):
        await state.quotas.reserve("u", {"api_calls": 1})
    private_valkey.start()
    granted = 0
    with pytest.raises(QuotaExceeded):
        while True:
            await state.quotas.reserve("u", {"api_calls": 1})
            granted += 1
    assert granted == 60  # the free tier's api_calls, no more
    await state.aclose()


async def test_opening_against_a_stopped_server_fails_at_once(private_valkey, clock):
    url = private_valkey.url
    private_valkey.stop()
    with pytest.raises(ClusterUnavailable, match=r"Valkey/Redis at redis://127\.0\.0\.1"):
        await ClusterState.open(ClusterSettings(redis_url=url), clock)
    with pytest.raises(ConfigurationError, match="SESSION_CONSOLE_REDIS_URL"):
        await ClusterState.open(ClusterSettings(), clock)


async def test_calls_in_flight_when_the_server_dies_fail_typed_and_then_recover(
    private_valkey, clock
):
    """Stop and restart the server under 32 concurrent callers: every call either succeeds or
    raises ClusterUnavailable (never another error, never hangs), and after the restart every
    caller succeeds again."""
    settings = ClusterSettings(redis_url=private_valkey.url, timeout_s=2.0, max_connections=8)
    unlimited = RateLimit(rate_per_s=1e9, burst=10**9)
    limits = LimitSettings(session_rate=unlimited, user_rate=unlimited)
    state = await ClusterState.open(settings, clock, limits)
    await state.rebuild.done("test")  # what a worker's rebuild of the empty server leaves
    outcomes: dict[str, int] = {}
    phase = "before"
    stop = asyncio.Event()

    async def caller(i: int) -> None:
        while not stop.is_set():
            try:
                reservation = await state.turns.admit(f"s{i}", f"u{i}", {"api_calls": 0})
                if isinstance(reservation, NotRebuilt):
                    outcome = "not rebuilt"  # the restarted server came back empty
                else:
                    await state.quotas.settle(reservation, {"api_calls": 0})
                    outcome = "ok"
            except ClusterUnavailable:
                outcome = "unavailable"
            key = f"{phase}:{outcome}"
            outcomes[key] = outcomes.get(key, 0) + 1
            await asyncio.sleep(0.005)

    callers = [asyncio.create_task(caller(i)) for i in range(32)]
    async with asyncio.timeout(120):  # a bound on a hang, not a timing assertion
        while outcomes.get("before:ok", 0) < 100:
            await asyncio.sleep(0.01)
        private_valkey.stop()
        phase = "down"
        while outcomes.get("down:unavailable", 0) < 50:
            await asyncio.sleep(0.01)
        private_valkey.start()
        phase = "after"
        while outcomes.get("after:not rebuilt", 0) < 10:  # nothing is decided on empty state
            await asyncio.sleep(0.01)
        await state.rebuild.done("test")
        while outcomes.get("after:ok", 0) < 200:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*callers)  # any other exception surfaces here
    assert set(outcomes) <= {
        "before:ok", "down:ok", "down:unavailable", "after:ok", "after:unavailable",
        "after:not rebuilt",
    }
    await state.aclose()
