"""Scripted engine demo (the load generator and console arrive with later issues).

Runs a handful of simulated users against an in-process engine with the stand-in model and
prints what happens: turns, a rate limit, a quota refusal, a wrong token, expiry, the snapshot.
"""

from __future__ import annotations

import asyncio
import random

from engine import Engine, EngineConfig, errors
from engine.clock import ManualClock


def say(text: str) -> None:
    print(f"  {text}", flush=True)


async def main() -> None:
    clock = ManualClock()  # the demo moves time itself so it runs in a second, not an hour
    async with Engine(EngineConfig(clock=clock)) as engine:
        rng = random.Random(7)
        print("Creating sessions for 6 users (tiers free/pro)...")
        users = [("alice", "pro"), ("bob", "free"), ("carol", "free"), ("dave", "pro"),
                 ("erin", "free"), ("mallory", "free")]
        sessions = {u: await engine.create_session(u, metadata={"tier": t}) for u, t in users}
        for user, s in sessions.items():
            say(f"{user:8} session {s.session_id[:8]}… (token shown once, stored hashed)")

        print("\nConcurrent turns (stand-in model reply)...")

        async def chat(user: str, turns: int) -> None:
            s = sessions[user]
            for k in range(turns):
                clock.advance(rng.uniform(0.2, 0.6))
                kind = rng.choice(["assistant", "research", "support"])
                try:
                    reply = await engine.send(
                        s.session_id, s.token, f"question {k}", agent_type=kind
                    )
                    say(f"{user:8} -> {kind:9} {reply.text[:60]}")
                except errors.EngineError as exc:
                    say(f"{user:8} !! {type(exc).__name__}: {exc}")

        await asyncio.gather(*(chat(u, 3) for u, _ in users[:5]))

        print("\nA chatty user bursts past the session rate limit...")
        bob = sessions["bob"]
        for k in range(12):
            try:
                await engine.send(bob.session_id, bob.token, f"spam {k}")
            except errors.RateLimited as exc:
                say(f"bob      !! RateLimited after {k} quick sends: {exc}")
                break

        print("\nAn attacker tries wrong tokens and someone else's session...")
        for attempt in range(6):
            try:
                await engine.history(sessions["alice"].session_id, f"guess-{attempt}")
            except errors.AuthenticationError as exc:
                if attempt == 0:
                    say(f"mallory  !! AuthenticationError: {exc}")
        say("mallory  !! ... 5 more refusals, same message")

        print("\nA free user runs into a quota...")
        carol = sessions["carol"]
        try:
            for k in range(200):
                clock.advance(1.0)
                await engine.send(carol.session_id, carol.token, f"again {k}")
        except errors.QuotaExceeded as exc:
            say(f"carol    !! QuotaExceeded: {exc}")

        print("\nTime passes: idle sessions expire...")
        clock.advance(engine.config.idle_timeout_s + 1)
        expired = engine.housekeep()
        say(f"{expired} sessions expired by the deadline heap")

        snap = engine.snapshot()
        print("\nSnapshot:")
        say(f"live sessions {len(snap.sessions)}, users {snap.users}, events {snap.session_events}")
        say(f"turns {snap.monitor.turns}, errors {snap.monitor.errors}, "
            f"auth failures {snap.monitor.auth_failures}")
        for alert in snap.monitor.alerts[:6]:
            say(f"alert [{alert.severity}] {alert.message}")


if __name__ == "__main__":
    asyncio.run(main())
