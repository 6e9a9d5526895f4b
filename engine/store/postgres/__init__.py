"""The store's PostgreSQL backend (cluster mode), one module per concern.

- `backend`: `PostgresBackend`, the `Backend` several engine processes share, and why it is so.
- `transactions`: what runs on a pooled connection, one call per transaction.
- `statements`: the SQL applying each kind of op; `migrations`: the schema and its version.
- `restore`: the bulk reads at start-up and one session's messages.
- `errors`: asyncpg's failures as advice; `dsn`: recognising a URL and hiding its password.
"""

from engine.store.postgres.backend import PostgresBackend
from engine.store.postgres.dsn import is_postgres_url, redacted

__all__ = ["PostgresBackend", "is_postgres_url", "redacted"]
