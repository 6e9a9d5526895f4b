"""The PostgreSQL backend on a real server (tests/servers/postgres.py), what only it has:
its schema and migrations, foreign and newer databases, URLs that never show a password,
connections that break and come back, and the engine running on it by configuration alone.

Behaviour both backends share (group commit, rejected writes, restore, rotation, SIGKILL) is in
test_store.py, which runs on both.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

import asyncpg
import pytest
from cryptography.fernet import Fernet

from engine import Engine, EngineConfig
from engine.config import StoreSettings
from engine.errors import StoreError
from engine.security import KeyRing
from engine.store import (
    AlertRow,
    EndSession,
    PostgresBackend,
    Prune,
    QuotaEvent,
    Served,
    SessionRow,
    Store,
    Touch,
    open_store,
    redacted,
)
from engine.store.postgres import migrations
from tests.store.test_store import NOW, message, session_row, writer_held

LATEST = len(migrations.MIGRATIONS)
PASSWORD = "s3cret-Pa55"


async def fetch(url: str, sql: str, *args) -> list[tuple]:
    """Through a connection of its own: what any other client of the database sees."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def with_password(url: str, password: str = PASSWORD) -> str:
    """The same database, the URL carrying a password (the test server trusts local users,
    so it is sent and ignored)."""
    parts = urlsplit(url)
    return url.replace(f"//{parts.username}@", f"//{parts.username}:{password}@", 1)


# --- schema and migrations -----------------------------------------------------------------------


async def test_an_empty_database_gets_the_whole_schema_and_its_version(postgres_url):
    async with await open_store(postgres_url) as store:
        assert isinstance(store.backend, PostgresBackend)
        tables = {name for (name,) in await fetch(
            postgres_url, "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'"
        )}
        assert tables == set(migrations.OWN_TABLES)
        assert await fetch(postgres_url, "SELECT application, version FROM schema_version") == [
            (migrations.APPLICATION, LATEST)
        ]
        assert store.backend.clean_shutdown  # nothing ran before: nothing crashed
        assert store.stats().file_bytes > 0  # the database's size


async def test_reopening_migrates_nothing_and_keeps_every_row(postgres_url):
    async with await open_store(postgres_url) as store:
        await store.write(session_row(), message("s1", 1))
    schema = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    (objects,) = await fetch(postgres_url, schema)
    for opens in (2, 3):
        async with await open_store(postgres_url) as store:
            assert [m.seq for m in (await store.load_session("s1")).messages] == [1]
        assert await fetch(postgres_url, schema) == [objects]
        assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST,)]
        assert await fetch(
            postgres_url, "SELECT value FROM store_meta WHERE key = 'opens'"
        ) == [(opens,)]


async def test_an_older_database_is_migrated_forward_in_place(postgres_url, monkeypatch):
    async with await open_store(postgres_url) as store:
        await store.save_session(session_row())
    step = ("CREATE TABLE later_feature (id bigint PRIMARY KEY)",)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    async with await open_store(postgres_url) as store:
        restored = await store.load_live(NOW)
    assert [s.session_id for s in restored.sessions] == ["s1"]
    assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST + 1,)]
    assert await fetch(postgres_url, "SELECT to_regclass('later_feature')::text") == [
        ("later_feature",)
    ]


async def insert_as_before(url: str, row: SessionRow, without: tuple[str, ...]) -> None:
    """Insert `row` as code from before the columns `without` existed wrote it."""
    columns = [c for c in SessionRow.__dataclass_fields__ if c not in without]
    await fetch(
        url,
        f"INSERT INTO sessions ({', '.join(columns)})"
        f" VALUES ({', '.join(f'${n}' for n in range(1, len(columns) + 1))})",
        *[getattr(row, c) for c in columns],
    )


async def test_a_first_version_database_gains_session_origins_marked_python(
    postgres_url, monkeypatch
):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    async with await open_store(postgres_url):
        pass
    await insert_as_before(postgres_url, session_row(), without=("origin", "served_by"))
    monkeypatch.undo()
    async with await open_store(postgres_url) as store:
        record = await store.load_record("s1")
        await store.save_session(replace(session_row("s2"), origin="http"))
        assert (await store.load_record("s2")).row.origin == "http"
    assert record is not None and record.row.origin == "python"
    assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST,)]


async def test_a_third_version_database_gains_who_served_each_session_none_yet(
    postgres_url, monkeypatch
):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
    async with await open_store(postgres_url):
        pass
    for session_id in ("s1", "s2"):  # written by the code before: no served_by column
        await insert_as_before(postgres_url, session_row(session_id), without=("served_by",))
    monkeypatch.undo()
    async with await open_store(postgres_url) as store:
        assert [s.served_by for s in (await store.load_live(NOW)).sessions] == [None, None]
        await store.write(Served("s2", "w2"))
        record = await store.load_record("s2")
    assert record is not None and record.row.served_by == "w2"
    assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST,)]


def alert(alert_id: int, worker: str, at: float = NOW, **fields) -> AlertRow:
    return AlertRow(alert_id, f"k{alert_id}", "rule", "warning", f"{worker}'s alert {alert_id}",
                    None, at, at, worker=worker, **fields)


async def test_a_second_version_database_keeps_its_alerts_as_the_worker_with_no_name(
    postgres_url, monkeypatch
):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    async with await open_store(postgres_url):
        pass
    for n in (1, 2):  # written by the code before: keyed by alert_id alone
        await fetch(
            postgres_url,
            "INSERT INTO alerts (alert_id, key, rule, severity, message, first_at, last_at, count,"
            " acknowledged) VALUES ($1, 'k', 'rule', 'warning', 'before', $2, $2, 1, false)",
            n, NOW + n,
        )
    monkeypatch.undo()
    async with await open_store(postgres_url) as store:
        assert (await store.load_live(NOW)).max_alert_ids == {"": 2}
        await store.write(alert(2, "w1"), replace(alert(2, ""), acknowledged=True))
        assert (await store.load_live(NOW)).max_alert_ids == {"": 2, "w1": 2}
    assert await fetch(
        postgres_url, "SELECT worker, alert_id, message, acknowledged FROM alerts ORDER BY 1, 2"
    ) == [("", 1, "before", False), ("", 2, "'s alert 2", True), ("w1", 2, "w1's alert 2", False)]
    assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST,)]
    assert await fetch(
        postgres_url,
        "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i"
        " CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = 'alerts'::regclass AND i.indisprimary",
    ) == [(["worker", "alert_id"],)]


async def test_workers_numbering_their_own_alerts_keep_their_own_rows(postgres_url):
    """Two workers of one cluster both raise their alert 1 and update it: two rows, each
    holding its worker's last state, and each worker continues after its own highest id."""
    one, two = await asyncio.gather(open_store(postgres_url), open_store(postgres_url))
    try:
        await one.write(alert(1, "w1"), alert(2, "w1"))
        await two.write(alert(1, "w2"))
        await one.write(replace(alert(1, "w1"), count=3, acknowledged=True))
        await two.write(replace(alert(1, "w2"), message="w2's, updated"))
        rows = await fetch(
            postgres_url, "SELECT worker, alert_id, message, count, acknowledged FROM alerts"
            " ORDER BY worker, alert_id"
        )
        assert rows == [
            ("w1", 1, "w1's alert 1", 3, True),
            ("w1", 2, "w1's alert 2", 1, False),
            ("w2", 1, "w2's, updated", 1, False),
        ]
        assert (await two.load_live(NOW)).max_alert_ids == {"w1": 2, "w2": 1}
    finally:
        await asyncio.gather(one.aclose(), two.aclose())


async def test_the_prune_keeps_the_clusters_newest_alerts_whoever_numbered_them(postgres_url):
    """Ids say nothing across workers (a worker started later numbers from 1): the newest
    alerts are those raised last."""
    async with await open_store(postgres_url, StoreSettings(alert_keep=3)) as store:
        await store.write(
            alert(50, "w1", NOW), alert(51, "w1", NOW + 1),  # an old worker's high ids
            alert(1, "w2", NOW + 2), alert(2, "w2", NOW + 4),
            alert(1, "w3", NOW + 3),
        )
        await store.write(Prune(NOW))
        kept = await fetch(postgres_url, "SELECT worker, alert_id FROM alerts ORDER BY first_at")
    assert kept == [("w2", 1), ("w3", 1), ("w2", 2)]


async def test_workers_opening_an_empty_database_together_migrate_it_once(postgres_url):
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(4)))
    try:
        assert await fetch(postgres_url, "SELECT version FROM schema_version") == [(LATEST,)]
        assert await fetch(postgres_url, "SELECT value FROM store_meta WHERE key = 'opens'") == [
            (4,)
        ]
        await stores[0].save_session(session_row())
        await stores[1].write(message("s1", 1))  # another worker sees the session at once
        assert [m.seq for m in (await stores[2].load_session("s1")).messages] == [1]
    finally:
        await asyncio.gather(*(store.aclose() for store in stores))


async def test_a_newer_schema_is_refused_with_advice_and_left_untouched(postgres_url):
    async with await open_store(postgres_url) as store:
        await store.save_session(session_row())
    await fetch(postgres_url, "UPDATE schema_version SET version = $1", LATEST + 1)
    meta = "SELECT key, value FROM store_meta ORDER BY key"
    before = await fetch(postgres_url, meta)
    with pytest.raises(StoreError, match=r"newer version of the engine.*upgrade") as caught:
        await open_store(postgres_url)
    message_text = str(caught.value)
    assert f"v{LATEST + 1}" in message_text and f"up to v{LATEST}" in message_text
    assert redacted(postgres_url) in message_text and "left untouched" in message_text
    assert await fetch(postgres_url, meta) == before  # not even the open was counted
    assert await fetch(postgres_url, "SELECT count(*) FROM sessions") == [(1,)]


async def test_a_database_holding_another_applications_tables_is_refused_untouched(postgres_url):
    await fetch(postgres_url, "CREATE TABLE sessions (id int PRIMARY KEY, cart text)")
    await fetch(postgres_url, "INSERT INTO sessions VALUES (1, 'three apples')")
    with pytest.raises(StoreError, match="did not create") as caught:
        await open_store(postgres_url)
    assert "sessions" in str(caught.value) and redacted(postgres_url) in str(caught.value)
    assert await fetch(postgres_url, "SELECT * FROM sessions") == [(1, "three apples")]
    assert await fetch(postgres_url, "SELECT to_regclass('schema_version')") == [(None,)]


async def test_another_applications_schema_version_table_is_refused(postgres_url):
    await fetch(postgres_url, "CREATE TABLE schema_version (application text, version int)")
    await fetch(postgres_url, "INSERT INTO schema_version VALUES ('billing', 7)")
    with pytest.raises(StoreError, match="belongs to another application"):
        await open_store(postgres_url)
    assert await fetch(postgres_url, "SELECT to_regclass('sessions')") == [(None,)]


# --- writes ------------------------------------------------------------------------------------


async def test_rejected_writes_fail_alone_in_one_transaction_and_say_why(postgres_url):
    async with await open_store(postgres_url) as store:
        await store.write(session_row(), message("s1", 1))
        before = store.stats()
        async with writer_held(store):
            writes = [
                asyncio.ensure_future(w) for w in (
                    store.write(message("s1", 2), QuotaEvent("alice", "tokens", NOW, 5, 3600.0)),
                    store.write(message("missing", 1), message("s1", 99)),  # all or nothing
                    store.write(message("s1", 1)),  # that seq is already stored
                    store.write(Touch("s1", NOW + 9, turns=4), message("s1", 3)),
                )
            ]
        results = await asyncio.gather(*writes, return_exceptions=True)
        after = store.stats()
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], StoreError) and "not stored" in str(results[1])
    assert isinstance(results[2], StoreError) and "already stored" in str(results[2])
    assert after.batches - before.batches == 1 and after.failed_batches == before.failed_batches
    assert after.rejected_writes - before.rejected_writes == 2
    assert await fetch(postgres_url, "SELECT seq FROM messages ORDER BY id") == [(1,), (2,), (3,)]
    assert await fetch(postgres_url, "SELECT turns FROM sessions") == [(4,)]
    assert await fetch(postgres_url, "SELECT amount FROM quota_usage") == [(5.0,)]


async def test_load_live_purges_expired_sessions_with_their_messages(postgres_url):
    async with await open_store(postgres_url) as store:
        await store.write(
            session_row("live", last_active_at=NOW + 500),
            session_row("idle"),  # idle since NOW + 600
            session_row("old", created_at=NOW - 3000, last_active_at=NOW + 500),  # + 3600 - 3000
            *(message(sid, n) for sid in ("live", "idle", "old") for n in range(1, 3)),
        )
        restored = await store.load_live(NOW + 700)
        assert [s.session_id for s in restored.sessions] == ["live"]
        assert (restored.counts.purged, restored.counts.messages) == (2, 2)
        assert restored.contexts["live"].next_seq == 3
        assert await store.load_session("idle") is None
    assert await fetch(postgres_url, "SELECT DISTINCT session_id FROM messages") == [("live",)]
    assert await fetch(postgres_url, "SELECT count(*) FROM session_audit") == [(0,)]


async def test_rewrapped_keys_are_what_every_worker_reads_next(postgres_url):
    ring = KeyRing([Fernet.generate_key()])
    cipher, wrapped = ring.new_data_key()
    first, second = await open_store(postgres_url), await open_store(postgres_url)
    try:
        await first.write(session_row(wrapped_key=wrapped), message("s1", 1))
        rotated = ring.rotate(Fernet.generate_key())
        report = await first.rewrap_keys(rotated.rewrap)
        assert (report.rewrapped, report.failed) == (1, ())
        stored = await second.load_session("s1")  # the other worker, after the rotation
        assert stored is not None and stored.wrapped_key != wrapped
        # The same data key, now wrapped by the new master key alone.
        unwrapped = rotated.drop_old_keys().unwrap(stored.wrapped_key)
        sealed = cipher.encrypt("same key", session_id="s1", seq=5, role="user")
        assert unwrapped.decrypt(sealed, session_id="s1", seq=5, role="user") == "same key"
    finally:
        await first.aclose()
        await second.aclose()


# --- where the database is, and when it is not there ------------------------------------------


def test_a_url_is_shown_without_its_password():
    assert redacted("postgresql://app:pw@db.internal:5432/sessions?sslmode=require") == (
        "postgresql://app@db.internal:5432/sessions?sslmode=require"
    )
    assert redacted("postgres://app@db/sessions?password=pw&sslmode=require") == (
        "postgres://app@db/sessions?sslmode=require"
    )
    assert redacted("postgresql://:pw@db/sessions") == "postgresql://db/sessions"
    assert redacted("postgresql:///sessions?host=/run/pg") == "postgresql:///sessions?host=/run/pg"


async def test_the_store_names_its_database_without_the_password(postgres_url):
    for url in (with_password(postgres_url), f"{postgres_url}&password={PASSWORD}"):
        async with await open_store(url) as store:
            assert store.stats().path == redacted(postgres_url)
            with pytest.raises(StoreError) as caught:
                await store.write(message("missing", 1))
            assert redacted(postgres_url) in str(caught.value)
            assert PASSWORD not in str(caught.value) and PASSWORD not in str(store.stats())


async def test_a_missing_database_is_named_without_the_password(postgres_server):
    url = with_password(postgres_server.url("no_such_database"))
    with pytest.raises(StoreError, match="does not exist") as caught:
        await open_store(url)
    assert "no_such_database" in str(caught.value) and PASSWORD not in str(caught.value)


async def test_an_unreachable_server_is_a_store_error_with_advice(tmp_path):
    url = f"postgresql://postgres:{PASSWORD}@/sessions?host={tmp_path}"  # no server there
    with pytest.raises(StoreError, match="cannot be reached") as caught:
        await open_store(url)
    assert str(tmp_path) in str(caught.value) and PASSWORD not in str(caught.value)


async def test_a_url_of_another_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'mysql' is not supported"):
        await open_store(f"mysql://root:{PASSWORD}@localhost/sessions")


async def test_connections_the_server_ended_cost_at_most_a_batch_then_the_store_recovers(
    postgres_url, postgres_server
):
    async with await open_store(postgres_url) as store:
        await store.write(session_row(), message("s1", 1))
        database = urlsplit(postgres_url).path.lstrip("/")
        terminated = await fetch(
            postgres_server.url(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            database,
        )
        assert terminated and all(ok for (ok,) in terminated)
        try:  # whether the store hears of it before or at its next use is the network's call
            await store.write(message("s1", 2))
            saved = [1, 2]
        except StoreError as exc:
            assert "closed the connection" in str(exc) and redacted(postgres_url) in str(exc)
            saved = [1]
        for seq in (3, 4):  # new connections, without anyone being told
            await store.write(message("s1", seq))
        assert store.stats().failed_batches == 2 - len(saved)  # one failure at most
        assert [m.seq for m in (await store.load_session("s1")).messages] == [*saved, 3, 4]


async def test_a_clean_close_is_recorded_for_the_next_open(postgres_url):
    """(A kill is not: see test_store.py's SIGKILL test, which runs on PostgreSQL too.)"""
    store = await open_store(postgres_url)
    await store.save_session(session_row())
    assert await fetch(postgres_url, "SELECT value FROM store_meta WHERE key = 'clean_shutdown'"
                       ) == [(0,)]  # while open: a crash now would be noticed
    await store.aclose()
    assert await fetch(postgres_url, "SELECT value FROM store_meta WHERE key = 'clean_shutdown'"
                       ) == [(1,)]
    async with await open_store(postgres_url) as again:
        assert again.backend.clean_shutdown


# --- the engine on PostgreSQL ------------------------------------------------------------------


async def test_an_engine_configured_with_a_database_url_serves_and_restores(
    make_config, clock, postgres_url
):
    config = make_config(store={"database_url": with_password(postgres_url)})
    async with Engine(config) as engine:
        assert isinstance(engine.store.backend, PostgresBackend)
        s = await engine.create_session("alice", metadata={"tier": "pro"})
        reply = await engine.send(s.session_id, s.token, "remember the launch code 0000-1234")
        assert reply.text and reply.completion_tokens > 0
        before = await engine.history(s.session_id, s.token)
        assert engine.snapshot().store.path == redacted(postgres_url)
    assert not config.store.db_path.exists()  # nothing went to the SQLite file
    stored = b"".join(ct for (ct,) in await fetch(postgres_url, "SELECT ciphertext FROM messages"))
    assert stored and b"0000-1234" not in stored  # encrypted above the store
    clock.advance(10)
    async with Engine(config) as engine:
        report = engine.restore_report
        assert report is not None and report.sessions == 1 and report.messages == 2
        assert report.clean_shutdown
        assert await engine.history(s.session_id, s.token) == before
        again = await engine.send(s.session_id, s.token, "and now?")
        assert "ctx 4 msgs" in again.text  # system + 2 restored + this one reached the model


def test_the_database_url_comes_from_the_environment_and_never_shows(tmp_path):
    url = f"postgresql://app:{PASSWORD}@db/sessions"
    config = EngineConfig.from_env({"SESSION_CONSOLE_DATABASE_URL": url})
    assert config.store.database_url == url
    assert PASSWORD not in repr(config)
    assert EngineConfig.from_env({}).store.database_url is None
    assert EngineConfig.from_env({"SESSION_CONSOLE_DATABASE_URL": ""}).store.database_url is None


async def test_a_store_over_an_open_backend_is_the_same_writer(postgres_url):
    """`open_store` is `Store` over `PostgresBackend.open`: the two ways agree."""
    backend = await PostgresBackend.open(postgres_url, retention_s=60)
    async with Store(backend) as store:
        await store.write(session_row(), message("s1", 1))
        await store.write(EndSession("s1", NOW, "done"))
    assert await fetch(postgres_url, "SELECT session_id, messages FROM session_audit") == [
        ("s1", 1)
    ]
    assert await fetch(postgres_url, "SELECT count(*) FROM sessions") == [(0,)]
