"""Cluster tests run against a real valkey-server (tests/servers/valkey.py)."""

from tests.servers.valkey import private_valkey, redis_url, valkey

__all__ = ["private_valkey", "redis_url", "valkey"]
