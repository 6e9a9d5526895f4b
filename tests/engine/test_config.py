"""Configuration: frozen parts, defaults that read nothing, one reader of the environment."""

from __future__ import annotations

import dataclasses

import pytest

from engine import EngineConfig, LLMSettings, StoreSettings

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
