"""Opening the store where the configuration says: an SQLite file or a PostgreSQL URL.

`open_store` is what the engine calls: a `postgresql://` (or `postgres://`) URL opens a
`PostgresBackend` on that database, anything else is an SQLite file path (`Store.open`). The
writer on top is the same either way.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from engine.store.postgres import PostgresBackend, is_postgres_url
from engine.store.writer import DEFAULT_PATH, Store


async def open_store(
    target: Path | str = DEFAULT_PATH,
    *,
    durable_ack: bool = True,
    batch_ms: float = 0.0,
    batch_max: int = 4096,
    retention_s: float = 0.0,
    alert_keep: int = 1000,
    metrics_keep_s: float = 7 * 86400.0,
    power_safe: bool = True,
) -> Store:
    """Open the store at `target` (a path or a PostgreSQL URL) and start its writer.

    The settings mean what they mean for `Store.open`; for PostgreSQL, `power_safe` sets
    `synchronous_commit` (see engine/store/postgres/backend.py).
    """
    if not is_postgres_url(target):
        if isinstance(target, str) and "://" in target:
            scheme = urlsplit(target).scheme
            raise ValueError(
                f"store URL scheme {scheme!r} is not supported: give a postgresql:// URL or the "
                "path of an SQLite file"
            )
        return await Store.open(
            target,
            durable_ack=durable_ack,
            batch_ms=batch_ms,
            batch_max=batch_max,
            retention_s=retention_s,
            alert_keep=alert_keep,
            metrics_keep_s=metrics_keep_s,
            power_safe=power_safe,
        )
    assert isinstance(target, str)
    backend = await PostgresBackend.open(
        target,
        retention_s=retention_s,
        alert_keep=alert_keep,
        metrics_keep_s=metrics_keep_s,
        power_safe=power_safe,
    )
    try:
        return Store(backend, durable_ack=durable_ack, batch_ms=batch_ms, batch_max=batch_max)
    except BaseException:
        await backend.aclose()
        raise
