"""Durable storage for the engine: one public face, `Store`, and the records it keeps.

Callers import from here only. Inside, one module per concern:

- `ops`: the records and ops a write is made of, and what `load_live` brings back.
- `writer`: `Store`, the group-commit writer and durable acknowledgement, over any backend.
- `backend`: `Backend`, what the writer needs of a database: the interface a PostgreSQL
  backend for the cluster implements.
- `sqlite/`: `SqliteBackend`, the default: one SQLite file in WAL mode, its schema and
  migrations, the connection thread the store owns (the store does not use aiosqlite: see
  `sqlite/connection.py` for why), the checkpointer, the file lock and the checks at open.
- `postgres/`: `PostgresBackend`, the store in a PostgreSQL database shared by a cluster's
  workers, through asyncpg.
- `opening`: `open_store`, an SQLite path or a `postgresql://` URL, whichever is configured.
"""

from engine.store.backend import Backend, CommitDone, StorageFigures
from engine.store.opening import open_store
from engine.store.ops import (
    AlertRow,
    Assign,
    ContextFigures,
    EndSession,
    MessageRow,
    MetricsRow,
    Op,
    Prune,
    QuotaEvent,
    RestoreCounts,
    Restored,
    RewrapReport,
    Served,
    SessionRecord,
    SessionRow,
    StoredSession,
    StoreStats,
    TokenUpdate,
    Touch,
    TrimMessages,
    UserTier,
)
from engine.store.postgres import PostgresBackend, is_postgres_url, redacted
from engine.store.sqlite import SqliteBackend
from engine.store.writer import Store

__all__ = [
    "AlertRow",
    "Assign",
    "Backend",
    "CommitDone",
    "ContextFigures",
    "EndSession",
    "MessageRow",
    "MetricsRow",
    "Op",
    "PostgresBackend",
    "Prune",
    "QuotaEvent",
    "RestoreCounts",
    "Restored",
    "RewrapReport",
    "Served",
    "SessionRecord",
    "SessionRow",
    "SqliteBackend",
    "StorageFigures",
    "Store",
    "StoreStats",
    "StoredSession",
    "TokenUpdate",
    "Touch",
    "TrimMessages",
    "UserTier",
    "is_postgres_url",
    "open_store",
    "redacted",
]
