"""Opening the store where the configuration says: an SQLite file or a PostgreSQL URL.

`open_store` is what the engine calls: a `postgresql://` (or `postgres://`) URL opens a
`PostgresBackend` on that database, anything else is an SQLite file path (`Store.open`). The
writer on top is the same either way, tuned by the same `StoreSettings`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from engine.config import StoreSettings
from engine.store.postgres import PostgresBackend, is_postgres_url
from engine.store.writer import Store


async def open_store(target: Path | str, settings: StoreSettings | None = None) -> Store:
    """Open the store at `target` (a path or a PostgreSQL URL) and start its writer.

    For PostgreSQL, `durability` "power" keeps `synchronous_commit` on and "process" turns it
    off (see engine/store/postgres/backend.py); the SQLite-only settings do not apply.
    """
    settings = settings or StoreSettings()
    if not is_postgres_url(target):
        if isinstance(target, str) and "://" in target:
            scheme = urlsplit(target).scheme
            raise ValueError(
                f"store URL scheme {scheme!r} is not supported: give a postgresql:// URL or the "
                "path of an SQLite file"
            )
        return await Store.open(target, settings)
    assert isinstance(target, str)
    backend = await PostgresBackend.open(
        target,
        retention_s=settings.audit_retention_s,
        alert_keep=settings.alert_keep,
        metrics_keep_s=settings.metrics_keep_s,
        power_safe=settings.durability == "power",
    )
    try:
        return Store(backend, settings)
    except BaseException:
        await backend.aclose()
        raise
