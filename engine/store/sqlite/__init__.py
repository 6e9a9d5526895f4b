"""The store's SQLite backend, one module per concern.

- `backend`: `SqliteBackend`, the `Backend` the engine runs on by default, and why it is so.
- `connection`: the writer's connection on a thread the store owns (and why not aiosqlite).
- `transactions`: what runs on that thread, one call per transaction.
- `statements`: the SQL applying each kind of op; `migrations`: the schema.
- `restore`: the bulk reads at start-up.
- `checkpointer`: WAL checkpoints on a thread of their own.
- `filelock` and `checks`: one store per file; a foreign or broken file is refused untouched.
"""

from engine.store.sqlite.backend import SqliteBackend

__all__ = ["SqliteBackend"]
