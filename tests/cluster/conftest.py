"""Cluster tests run against a real valkey-server (tests/servers/valkey.py) and, for engines as
workers, a real PostgreSQL (tests/servers/postgres.py)."""

import pytest

from tests.cluster.engines import GENEROUS, MASTER_KEY
from tests.servers.valkey import private_valkey, redis_url, valkey

__all__ = ["private_valkey", "redis_url", "valkey", "worker_config"]


@pytest.fixture
def worker_config(make_config, tmp_path, postgres_url, redis_url):
    """A worker's config: the cluster's store, Valkey and master key; its own folder."""

    def make(name: str, *, master_key: str = MASTER_KEY, redis: str | None = None, **parts):
        limits = {**GENEROUS, **parts.pop("limits", {})}
        return make_config(
            store={
                "data_dir": tmp_path / name, "database_url": postgres_url,
                "master_keys": (master_key,),
            },
            cluster={"redis_url": redis or redis_url, "worker_id": name},
            limits=limits,
            **parts,
        )

    return make
