"""Cluster settings: the URL from the environment, validated values, a URL shown without its
password."""

from __future__ import annotations

import pytest

from engine import ClusterSettings, EngineConfig
from engine.cluster.connection import redacted
from engine.errors import ConfigurationError


def test_urls_are_shown_without_their_password():
    assert redacted("redis://:pw@h:6379/0") == "redis://h:6379/0"
    assert redacted("rediss://user:pw@host.example/2") == "rediss://user@host.example/2"
    assert redacted("redis://[::1]:7000") == "redis://[::1]:7000"
    assert redacted("redis://u:p@[::1]:7000/1") == "redis://u@[::1]:7000/1"
    assert redacted("redis://h/0?password=pw&ssl_cert_reqs=none") == "redis://h/0?ssl_cert_reqs=none"
    assert redacted("unix://:pw@/run/valkey.sock?db=1") == "unix:///run/valkey.sock?db=1"


def test_the_url_comes_from_the_environment_unless_set():
    config = EngineConfig.from_env({"SESSION_CONSOLE_REDIS_URL": "redis://:pw@10.0.0.5:6379/1"})
    assert config.cluster.redis_url == "redis://:pw@10.0.0.5:6379/1"
    assert "pw" not in repr(config.cluster)
    kept = EngineConfig.from_env(
        {"SESSION_CONSOLE_REDIS_URL": "redis://other"},
        cluster=ClusterSettings(redis_url="redis://mine"),
    )
    assert kept.cluster.redis_url == "redis://mine"
    assert EngineConfig.from_env({"SESSION_CONSOLE_REDIS_URL": ""}).cluster.redis_url is None
    assert EngineConfig().cluster.redis_url is None
    with pytest.raises(ConfigurationError, match="lease_ttl_s"):
        ClusterSettings(lease_ttl_s=0)
