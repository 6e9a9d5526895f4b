"""A real PostgreSQL 16 for tests, from the `pgserver` wheel, and a fresh database per test.

One server per test session (starting one takes about a second), listening only on a unix
socket in its data folder (no TCP port), removed with that folder when the session ends. Every
test that asks for `postgres_url` gets a database of its own, created empty and dropped
afterwards, so tests never see one another's rows.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """The running server: `url()` of its maintenance database or of another one."""

    socket_dir: str

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A postgresql:// URL over the unix socket (user `postgres`, trusted locally: a
        password given here is sent and ignored)."""
        user = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Its data folder is not under pytest's temporary folder: a concurrent pytest run of
    another checkout prunes old ones, and would delete a running server's files."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only sessions that use PostgreSQL pay for it

    folder = Path(tempfile.mkdtemp(prefix="session-console-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    try:
        yield PostgresServer(str(server.get_postmaster_info().socket_dir))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database for this test; dropped afterwards (its connections closed)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url(name)
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
