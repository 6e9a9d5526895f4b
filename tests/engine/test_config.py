"""Configuration: frozen parts, defaults that read nothing, one reader of the environment."""

from __future__ import annotations

import dataclasses

import pytest

from engine import Engine, EngineConfig, LLMSettings, StoreSettings
from engine.errors import ConfigurationError
from engine.store import AlertRow, MetricsRow, Prune
from tests.conftest import INSTANT

ENV = {
    "SESSION_CONSOLE_MASTER_KEY": " key-one, key-two ,",
    "SESSION_CONSOLE_APP_KEYS": "app-a,app-b",
    "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
    "OPENAI_API_KEY": "sk-from-env",
    "OPENAI_MODEL": "llama3",
}


def test_defaults_read_nothing_from_the_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = EngineConfig()
    assert config.store.master_keys == () and config.gateway.app_keys == ()
    assert (config.llm.base_url, config.llm.api_key, config.llm.model) == (None, None, None)


def test_from_env_fills_keys_and_the_openai_endpoint():
    config = EngineConfig.from_env(ENV)
    assert config.store.master_keys == ("key-one", "key-two")
    assert config.gateway.app_keys == ("app-a", "app-b")
    assert (config.llm.base_url, config.llm.api_key, config.llm.model) == (
        "http://127.0.0.1:1/v1", "sk-from-env", "llama3",
    )
    assert "key-one" not in repr(config) and "sk-from-env" not in repr(config)
    assert "app-a" not in repr(config)


def test_from_env_keeps_what_the_caller_set_and_empty_variables_count_as_unset(tmp_path):
    given = LLMSettings(backend="openai", api_key="sk-given")
    config = EngineConfig.from_env(
        {"OPENAI_API_KEY": "sk-from-env", "SESSION_CONSOLE_MASTER_KEY": " , "},
        llm=given, store=StoreSettings(data_dir=tmp_path),
    )
    assert config.llm.api_key == "sk-given" and config.llm.backend == "openai"
    assert config.store.master_keys == () and config.store.data_dir == tmp_path


def test_settings_are_frozen_and_varied_with_replace():
    config = EngineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tune_gc = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sessions.max_per_user = 1  # type: ignore[misc]
    variant = dataclasses.replace(config, sessions=dataclasses.replace(config.sessions,
                                                                       max_per_user=1))
    assert variant.sessions.max_per_user == 1 and config.sessions.max_per_user == 5


def test_store_settings_refuse_what_the_store_cannot_run_with():
    for bad in ({"batch_max": 0}, {"batch_ms": -1.0}, {"alert_keep": 0},
                {"metrics_keep_s": 0.0}, {"checkpoint_s": 0.0}, {"wal_restart_frames": 0},
                {"backlog_ops": 100, "batch_max": 200}, {"pacing_ops": 40_000}, {"pacing_ops": -1}):
        with pytest.raises(ConfigurationError, match="StoreSettings"):
            StoreSettings(**bad)


async def test_the_engine_runs_its_store_with_the_store_settings(tmp_path):
    """Every tuning field reaches the writer and the SQLite backend (none has a second default
    elsewhere): the writer's batches, the connection's synchronous mode, the checkpointer's
    period and restart threshold, and what a prune keeps."""
    settings = StoreSettings(
        data_dir=tmp_path, durability="process", batch_max=3, pacing_ops=32, backlog_ops=64,
        alert_keep=2, metrics_keep_s=60.0, checkpoint_s=3600.0, wal_restart_frames=7,
    )
    config = EngineConfig(store=settings, llm=LLMSettings(sim=INSTANT), tune_gc=False)
    async with Engine(config) as engine:
        store = engine.store
        assert store.settings is settings
        assert await store.backend.connection.run(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()
        ) == (1,)  # NORMAL: durability "process"
        checkpointer = store.backend.checkpointer
        assert (checkpointer.every_s, checkpointer.restart_frames) == (3600.0, 7)
        before = store.stats().batches
        for n in range(1, 10):  # nine one-op writes queued together: batches of batch_max
            store.write_nowait(AlertRow(n, f"k{n}", "rule", "warning", "a", None, 1.0, 1.0))
        await store.flush()
        assert store.stats().batches - before == 3
        await store.write(
            MetricsRow(900, "global", 1, 0, 1, 1, 0.1, 0.2, 0.3),
            MetricsRow(990, "global", 1, 0, 1, 1, 0.1, 0.2, 0.3),
            Prune(1_000.0),
        )
        restored = await store.load_live(1_000.0)
    assert [alert.alert_id for alert in restored.alerts] == [8, 9]  # alert_keep
    assert [row.minute for row in restored.metrics] == [990]  # metrics_keep_s
