"""Fault: the database file is deleted, or replaced by another, while the engine runs under load.

What the user sees: from the next commit on, every turn and session creation fails with
`StoreError` saying the file was deleted or replaced (503 `unavailable` over HTTP), and
`engine.ready` and `/readyz` turn false; `/healthz` stays 200 and reads of live sessions go on.
SQLite alone would keep writing through its open descriptors, into a deleted file or the old
one out of sight, acknowledging turns no restart could find. A replaced file put back under
its name is written to again. Nothing acknowledged is lost from the original file while it
exists: moved aside, it holds every acknowledged turn once the engine closes; deleted, it is
gone with what it held, and a restart starts an empty store.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine import Engine, EngineConfig
from engine.errors import StoreError
from engine.ratelimit import RateLimit
from engine.views import CreatedSession

GENEROUS = {"session_rate": RateLimit(1000.0, 1000), "user_rate": RateLimit(1000.0, 1000)}
USERS = 4


async def load(engine: Engine, sessions: list[CreatedSession], turns: int, tag: str):
    """`turns` turns on each session, all sessions at once; (acknowledged texts, failures)."""
    acked: dict[str, list[str]] = {s.session_id: [] for s in sessions}
    failures: list[BaseException] = []

    async def client(session: CreatedSession) -> None:
        for n in range(turns):
            text = f"{tag} {n}"
            try:
                await engine.send(session.session_id, session.token, text)
            except StoreError as exc:
                failures.append(exc)
            else:
                acked[session.session_id].append(text)

    await asyncio.gather(*(client(s) for s in sessions))
    return acked, failures


async def stored_turns(config: EngineConfig, sessions: list[CreatedSession]) -> dict:
    async with Engine(config) as engine:
        return {
            s.session_id: [
                m.content for m in await engine.history(s.session_id, s.token) if m.role == "user"
            ]
            for s in sessions
        }


def move_aside(db: Path, to: Path) -> None:
    """Rename the database to `to` and put a stranger's file under its name."""
    os.rename(db, to)
    db.write_bytes(b"a stranger's file")


async def test_a_deleted_database_refuses_writes_and_readyz_turns_false(serve, make_config):
    async with serve(limits=GENEROUS) as s:
        engine = s.engine
        db = engine.config.store.db_path
        sessions = [await engine.create_session(f"user{i}") for i in range(USERS)]
        acked, failures = await load(engine, sessions, 10, "before")
        assert not failures and (await s.http.get("/readyz")).status_code == 200
        for file in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            file.unlink(missing_ok=True)

        after, failures = await load(engine, sessions, 5, "after")
        assert all(texts == [] for texts in after.values())  # not one acknowledged
        assert len(failures) == USERS * 5
        assert all("was deleted while the engine had it open" in str(f) for f in failures)
        assert not engine.ready
        assert (await s.http.get("/readyz")).status_code == 503
        assert (await s.http.get("/healthz")).status_code == 200
        sid, token = sessions[0].session_id, sessions[0].token
        refused = await s.http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "over http"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 503 and "was deleted" in refused.json()["error"]["message"]
        created = await s.http.post(
            "/v1/sessions", json={"user_id": "newcomer"},
            headers={"Authorization": f"Bearer {s.app_key}"},
        )
        assert created.status_code == 503
        history = await engine.history(sid, token)  # reads of live sessions go on
        # ... and show only acknowledged turns: the refused ones were dropped from memory.
        assert [m.content for m in history if m.role == "user"] == acked[sid]
    config = make_config(limits=GENEROUS)
    async with Engine(config) as engine:  # the file is gone with what it held: a new store
        assert engine.snapshot().sessions == ()
        assert engine.ready


async def test_a_replaced_database_refuses_writes_until_put_back(make_config):
    config = make_config(limits=GENEROUS, store={"durability": "process"})
    db = config.store.db_path
    original = db.with_name("original.db")
    async with Engine(config) as engine:
        sessions = [await engine.create_session(f"user{i}") for i in range(USERS)]
        before, _ = await load(engine, sessions, 10, "before")
        move_aside(db, original)

        during, failures = await load(engine, sessions, 5, "during")
        assert all(texts == [] for texts in during.values())
        assert failures and all("was replaced by another file" in str(f) for f in failures)
        with pytest.raises(StoreError, match="replaced"):
            await engine.create_session("newcomer")
        assert not engine.ready

        os.replace(original, db)  # the original back under its name: writes resume
        engine.housekeep()  # with no traffic at all, a probe write finds the store back
        for _ in range(100):
            if engine.ready:
                break
            await asyncio.sleep(0.01)
        assert engine.ready
        after, failures = await load(engine, sessions, 5, "after")
        assert not failures and engine.ready
        for s in sessions:  # the refused turns are not in memory either
            history = await engine.history(s.session_id, s.token)
            texts = [m.content for m in history if m.role == "user"]
            assert texts == before[s.session_id] + after[s.session_id]
    stored = await stored_turns(config, sessions)
    assert stored == {sid: before[sid] + after[sid] for sid in stored}


async def test_a_database_moved_aside_keeps_every_acknowledged_turn(make_config):
    config = make_config(limits=GENEROUS)
    db = config.store.db_path
    original = db.with_name("original.db")
    async with Engine(config) as engine:
        sessions = [await engine.create_session(f"user{i}") for i in range(USERS)]
        before, _ = await load(engine, sessions, 20, "before")
        move_aside(db, original)
        _, failures = await load(engine, sessions, 3, "during")
        assert len(failures) == USERS * 3
    # Closing checkpointed the log into the original file, wherever it now is.
    db.unlink()
    os.replace(original, db)
    assert await stored_turns(config, sessions) == before
