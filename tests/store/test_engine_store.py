"""The engine on its SQLite store: restart restores, ends shred, nothing readable at rest,
and every acknowledged message survives SIGKILL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from engine import Engine, EngineConfig, LLMSettings, SessionSettings, StoreSettings, errors
from engine.security import KeyRing
from tests.conftest import INSTANT
from tests.engine.test_security import unbound_ciphertext

ROOT = Path(__file__).resolve().parents[2]


async def test_restart_restores_context_tokens_quotas_and_deadlines(make_config, clock):
    config = make_config()
    async with Engine(config) as engine:
        s = await engine.create_session("alice", metadata={"tier": "pro", "team": "blue"})
        for i in range(3):
            await engine.send(s.session_id, s.token, f"remember {i}")
        before_history = await engine.history(s.session_id, s.token)
        before_quota = engine.operator.quota_usage("alice")
        before_view = engine.snapshot().sessions[0]
    clock.advance(10)
    async with Engine(config) as engine:
        report = engine.restore_report
        assert report is not None and report.sessions == 1 and report.messages == 6
        assert report.clean_shutdown
        view = engine.snapshot().sessions[0]  # before history(), which is activity
        assert (view.turns, view.tier, view.last_active_at) == (
            before_view.turns, "pro", before_view.last_active_at,
        )
        assert await engine.history(s.session_id, s.token) == before_history
        assert engine.snapshot().sessions[0].last_active_at == clock.now()
        assert [u.used for u in engine.operator.quota_usage("alice")] == pytest.approx(
            [u.used for u in before_quota]
        )
        reply = await engine.send(s.session_id, s.token, "and now?")
        assert "ctx 8 msgs" in reply.text  # system + 6 restored + this one reached the model
    clock.advance(config.sessions.idle_timeout_s + 1)
    async with Engine(config) as engine:
        assert engine.restore_report.purged == 1 and engine.snapshot().sessions == ()


async def test_sessions_created_over_http_stay_marked_after_a_restart(make_config):
    config = make_config()
    async with Engine(config) as engine:
        web = await engine.create_session("alice", origin="http")
        await engine.create_session("bob")
    async with Engine(config) as engine:
        origins = {v.user_id: v.origin for v in engine.snapshot().sessions}
        assert origins == {"alice": "http", "bob": "python"}
        await engine.send(web.session_id, web.token, "still marked once warm?")
        assert engine.snapshot().sessions_by_id[web.session_id].origin == "http"


async def test_alert_ids_continue_after_a_restart(make_config):
    config = make_config()
    async with Engine(config) as engine:
        for attempt in range(6):
            with pytest.raises(errors.AuthenticationError):
                await engine.history("f" * 32, f"guess-{attempt}")
        first = max(a.alert_id for a in engine.snapshot().monitor.alerts)
    async with Engine(config) as engine:
        for attempt in range(6):
            with pytest.raises(errors.AuthenticationError):
                await engine.history("e" * 32, f"guess-{attempt}")
        assert min(a.alert_id for a in engine.snapshot().monitor.alerts) > first
    with sqlite3.connect(config.store.db_path) as db:
        assert db.execute("select count(*) from alerts").fetchone()[0] >= 2


async def test_ended_session_is_gone_after_restart_and_its_rows_deleted(make_config):
    config = make_config()
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, "short-lived")
        await engine.end_session(s.session_id, s.token)
    with sqlite3.connect(config.store.db_path) as db:
        assert db.execute("select count(*) from messages").fetchone() == (0,)
    async with Engine(config) as engine:
        with pytest.raises(errors.AuthenticationError):
            await engine.history(s.session_id, s.token)


async def test_nothing_readable_at_rest(make_config):
    config = make_config()
    secret = "correct horse battery staple 7731"
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, secret)
        await engine.rotate_token(s.session_id, s.token)
        store = config.store
        files = [p for p in store.data_dir.iterdir() if p.name.startswith(store.db_file)]
        blobs = b"".join(p.read_bytes() for p in files)
    master = KeyRing.load(config.store.master_key_file)
    assert len(files) >= 2  # the database and its WAL, read while the engine had them open
    assert secret.encode() not in blobs
    assert s.token.encode() not in blobs
    assert all(
        line.strip() not in blobs
        for line in config.store.master_key_file.read_bytes().splitlines() if line.strip()
    )
    assert master.fingerprints()  # the key file exists and loads


async def test_tampered_session_is_reported_alone_and_others_work(make_config):
    config = make_config()
    async with Engine(config) as engine:
        bad = await engine.create_session("mallory-victim")
        await engine.send(bad.session_id, bad.token, "will be tampered")
        good = await engine.create_session("bob")
        await engine.send(good.session_id, good.token, "fine")
    with sqlite3.connect(config.store.db_path) as db:
        db.execute(
            "update messages set ciphertext = ? where session_id = ?",
            (b"gAAAAA-not-a-real-token", bad.session_id),
        )
    async with Engine(config) as engine:
        assert engine.restore_report.sessions == 2  # nothing is decrypted at start-up
        with pytest.raises(errors.AuthenticationError):  # ...but on first use
            await engine.history(bad.session_id, bad.token)
        snapshot = engine.snapshot()
        assert any(a.rule == "decryption" for a in snapshot.monitor.alerts)
        assert snapshot.cache is not None and snapshot.cache.unreadable == 1
        assert bad.session_id not in snapshot.sessions_by_id
        assert len(await engine.history(good.session_id, good.token)) == 2
        await engine.send(good.session_id, good.token, "still works")


# Edits to one session's rows made directly in the file; each moves a genuine ciphertext to a
# place it was not written for. The session has seq 0 user, 1 assistant, 2 user, 3 assistant.
MOVES = {
    "swap two rows' ciphertexts": [
        "update messages set ciphertext = (select ciphertext from messages m"
        " where m.session_id = messages.session_id and m.seq = 1 - messages.seq)"
        " where session_id = :sid and seq in (0, 1)",
    ],
    "copy a ciphertext over another seq of the same role": [
        "update messages set ciphertext = (select ciphertext from messages m"
        " where m.session_id = :sid and m.seq = 0) where session_id = :sid and seq = 2",
    ],
    "renumber two rows of the same role": [
        "update messages set seq = -1 where session_id = :sid and seq = 0",
        "update messages set seq = 0 where session_id = :sid and seq = 2",
        "update messages set seq = 2 where session_id = :sid and seq = -1",
    ],
    "flip a row's role": [
        "update messages set role = 'user' where session_id = :sid and seq = 1",
    ],
}


@pytest.mark.parametrize("move", MOVES)
async def test_a_message_moved_within_its_session_makes_only_that_session_unreadable(
    make_config, move
):
    config = make_config()
    async with Engine(config) as engine:
        victim = await engine.create_session("alice")
        for text in ("first", "second"):
            await engine.send(victim.session_id, victim.token, text)
        other = await engine.create_session("bob")
        await engine.send(other.session_id, other.token, "untouched")
        other_history = await engine.history(other.session_id, other.token)
    with sqlite3.connect(config.store.db_path) as db:
        for statement in MOVES[move]:
            assert db.execute(statement, {"sid": victim.session_id}).rowcount >= 1
    async with Engine(config) as engine:
        with pytest.raises(errors.AuthenticationError):
            await engine.history(victim.session_id, victim.token)
        assert any(a.rule == "decryption" for a in engine.snapshot().monitor.alerts)
        with pytest.raises(errors.AuthenticationError):  # forgotten, not retried
            await engine.history(victim.session_id, victim.token)
        assert await engine.history(other.session_id, other.token) == other_history


async def test_messages_stored_unbound_by_earlier_versions_still_restore(make_config):
    config = make_config()
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        for text in ("first", "second"):
            await engine.send(s.session_id, s.token, text)
        before = await engine.history(s.session_id, s.token)
    (master,) = config.store.master_key_file.read_bytes().split()
    with sqlite3.connect(config.store.db_path) as db:
        (wrapped,) = db.execute("select wrapped_key from sessions").fetchone()
        data_key = Fernet(master).decrypt(wrapped)
        earlier = {  # what the two previous formats wrote for these rows
            0: Fernet(data_key).encrypt(before[0].content.encode()),
            1: unbound_ciphertext(data_key, before[1].content),
        }
        for seq, ciphertext in earlier.items():
            db.execute(
                "update messages set ciphertext = ? where session_id = ? and seq = ?",
                (ciphertext, s.session_id, seq),
            )
    async with Engine(config) as engine:
        assert engine.restore_report.sessions == 1
        assert await engine.history(s.session_id, s.token) == before


async def test_a_foreign_file_stops_start_up_and_is_not_touched(make_config):
    config = make_config()
    config.store.data_dir.mkdir(parents=True)
    config.store.db_path.write_bytes(b"this is not a database" * 100)
    before = config.store.db_path.read_bytes()
    with pytest.raises(errors.StoreError, match=str(config.store.db_path.name)):
        async with Engine(config):
            pass
    assert config.store.db_path.read_bytes() == before


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from engine import (
        Engine, EngineConfig, LimitSettings, LLMSettings, QuotaLimit, RateLimit, SessionSettings,
        SimSettings, StoreSettings,
    )

    BIG = {"big": {r: QuotaLimit(1e12, 3600.0 if r != "storage_mb" else None)
                   for r in ("api_calls", "tokens", "storage_mb", "compute_seconds")}}

    async def main():
        config = EngineConfig(
            store=StoreSettings(data_dir=Path(sys.argv[1]), durability=sys.argv[3]),
            limits=LimitSettings(
                tiers=BIG, default_tier="big",
                session_rate=RateLimit(1e6, 10**6), user_rate=RateLimit(1e6, 10**6),
                overload=None,  # eight users sending flat out would be shed on a busy machine
            ),
            llm=LLMSettings(sim=SimSettings(median_latency_s=0.001, p99_latency_s=0.005, seed=1)),
            sessions=SessionSettings(context_max_messages=10_000),
        )
        async with Engine(config) as engine:
            async def user(i):
                s = await engine.create_session(f"run{sys.argv[2]}-user{i}")
                print("S", s.session_id, s.token, flush=True)
                for k in range(100_000):
                    await engine.send(s.session_id, s.token, f"ack {i} {k}")
                    print("A", s.session_id, k, flush=True)
            await asyncio.gather(*(user(i) for i in range(8)))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("durability", ["power", "process"])
def test_every_acknowledged_message_survives_sigkill(tmp_path, durability):
    rng = random.Random(11)
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SESSION_CONSOLE_MASTER_KEY", None)
    acked: dict[str, int] = {}
    tokens: dict[str, str] = {}
    for run in range(10):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir), str(run), durability],
            stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )
        assert child.stdout is not None
        lines_wanted = rng.randint(20, 400)
        for _ in range(lines_wanted):
            line = child.stdout.readline()
            if not line:
                break
            kind, session_id, value = line.split()
            if kind == "S":
                tokens[session_id] = value
            else:
                acked[session_id] = max(acked.get(session_id, -1), int(value))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, f"run {run} ended on its own"

    async def check() -> None:
        config = EngineConfig(
            store=StoreSettings(data_dir=data_dir),
            sessions=SessionSettings(context_max_messages=10_000),
        )
        async with Engine(config) as engine:
            for session_id, last in acked.items():
                history = await engine.history(session_id, tokens[session_id])
                contents = {m.content for m in history if m.role == "user"}
                missing = [k for k in range(last + 1) if not any(
                    c.endswith(f" {k}") for c in contents
                )]
                assert not missing, f"{session_id[:8]} lost acknowledged turns {missing[:5]}"

    assert sum(v + 1 for v in acked.values()) > 100
    asyncio.run(check())
    with sqlite3.connect(data_dir / "sessions.db") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)


async def test_master_key_rotation_rewraps_keys_not_messages(tmp_path):
    # Real time: the command runs in another process, which cannot share a manual clock.
    config = EngineConfig(
        store=StoreSettings(data_dir=tmp_path / "data"), llm=LLMSettings(sim=INSTANT)
    )
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        await engine.send(s.session_id, s.token, "kept across rotation")
        old_fingerprint = engine.keyring.fingerprints()[0]
    with sqlite3.connect(config.store.db_path) as db:
        before = db.execute("select ciphertext from messages order by seq").fetchall()
        (wrapped_before,) = db.execute("select wrapped_key from sessions").fetchone()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "rotate-key", "--data-dir", str(config.store.data_dir)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 session keys re-wrapped" in done.stdout
    with sqlite3.connect(config.store.db_path) as db:
        assert db.execute("select ciphertext from messages order by seq").fetchall() == before
        (wrapped_after,) = db.execute("select wrapped_key from sessions").fetchone()
    assert wrapped_after != wrapped_before
    keys = config.store.master_key_file.read_bytes().split()
    assert len(keys) == 1 and old_fingerprint not in done.stdout.split("->")[1]
    async with Engine(config) as engine:  # only the new key is left, and it reads everything
        history = await engine.history(s.session_id, s.token)
        assert history[0].content == "kept across rotation"
