"""Fault: 10,000 simultaneous session creations for one user.

What the user sees: every creation succeeds, and each beyond the per-user cap
(`SessionSettings.max_per_user`, 5 by default) evicts that user's oldest idle session, whose
token then gets `AuthenticationError`; when all of the user's sessions are mid-turn a creation
is refused with `SessionLimitReached` (409 `session_limit` over HTTP). Other users' sessions
and turns are untouched, and the store holds exactly the live sessions.
"""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, SimSettings
from engine.errors import AuthenticationError, SessionLimitReached

FLOOD = 10_000


async def test_ten_thousand_creations_for_one_user_keep_the_cap(make_config):
    config = make_config(store={"durability": "process"})
    cap = config.sessions.max_per_user
    async with Engine(config) as engine:
        bob = await engine.create_session("bob")
        await engine.send(bob.session_id, bob.token, "before")

        async def bob_turns() -> int:
            done = 0
            for _ in range(5):
                await engine.send(bob.session_id, bob.token, "during")
                done += 1
                await asyncio.sleep(0)
            return done

        created, bob_done = await asyncio.gather(
            asyncio.gather(*(engine.create_session("mallory") for _ in range(FLOOD))),
            bob_turns(),
        )
        assert len({c.session_id for c in created}) == FLOOD
        assert bob_done == 5
        live = [v for v in engine.snapshot().sessions if v.user_id == "mallory"]
        assert len(live) == cap
        assert engine.snapshot().session_events["evicted"] == FLOOD - cap
        kept = {v.session_id for v in live}
        for c in created:  # the survivors work; every evicted token is refused like any other
            if c.session_id in kept:
                await engine.send(c.session_id, c.token, "still here")
        evicted = next(c for c in created if c.session_id not in kept)
        with pytest.raises(AuthenticationError):
            await engine.send(evicted.session_id, evicted.token, "gone")
        history = await engine.history(bob.session_id, bob.token)
        assert [m.content for m in history if m.role == "user"] == ["before"] + ["during"] * 5
        assert engine.ready
    async with Engine(config) as engine:  # the store holds exactly the live sessions
        restored = {v.session_id for v in engine.snapshot().sessions}
        assert restored == kept | {bob.session_id}


async def test_creations_beyond_the_cap_are_refused_while_every_session_is_busy(make_config):
    config = make_config(
        store={"durability": "process"},
        llm={"sim": SimSettings(median_latency_s=0.2, p99_latency_s=0.2, seed=1)},
    )
    cap = config.sessions.max_per_user
    async with Engine(config) as engine:
        sessions = [await engine.create_session("mallory") for _ in range(cap)]
        turns = [
            asyncio.create_task(engine.send(s.session_id, s.token, "busy")) for s in sessions
        ]
        while not all(v.state == "busy" for v in engine.snapshot().sessions):
            await asyncio.sleep(0.005)
        results = await asyncio.gather(
            *(engine.create_session("mallory") for _ in range(1000)), return_exceptions=True
        )
        assert all(isinstance(r, SessionLimitReached) for r in results), {
            type(r).__name__ for r in results
        }
        assert "all busy" in str(results[0])
        other = await engine.create_session("alice")  # other users are not affected
        await engine.send(other.session_id, other.token, "hello")
        replies = await asyncio.gather(*turns)  # the busy sessions finish their turns
        assert all(r.text for r in replies)
        assert len([v for v in engine.snapshot().sessions if v.user_id == "mallory"]) == cap
