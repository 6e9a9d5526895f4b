"""The store's schema, as forward-only migrations.

`MIGRATIONS[n]` takes a database from schema version n to n + 1; the version lives in
`PRAGMA user_version` and the code's version is `len(MIGRATIONS)`. A migration is never edited
once released: a change is a new entry, so every older file can be brought forward step by step
in one transaction, and a file newer than the code is refused rather than guessed at.

`APPLICATION_ID` goes in `PRAGMA application_id` so a SQLite file written by some other
program is recognised as foreign and left alone.
"""

from __future__ import annotations

APPLICATION_ID = int.from_bytes(b"SCon", "big")  # 0x53436F6E, "Session Console"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        # Small facts about the file itself: opens, and whether the last run closed cleanly.
        """CREATE TABLE store_meta (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        # Live sessions. wrapped_key is the session's data key encrypted by the master key:
        # deleting the row is what crypto-shreds the session's messages.
        """CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            metadata_json TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_active_at REAL NOT NULL,
            idle_timeout_s REAL NOT NULL,
            lifetime_s REAL NOT NULL,
            token_hash BLOB NOT NULL,
            token_issued_at REAL NOT NULL,
            token_expires_at REAL NOT NULL,
            wrapped_key BLOB NOT NULL,
            worker TEXT,
            agent_type TEXT NOT NULL DEFAULT '',
            turns INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        # Rows are kept in arrival order, so a commit of concurrent turns appends to a few
        # pages instead of rewriting one page per session (half the cost of clustering by
        # session); the unique index finds one session's messages for trims and deletes.
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            ciphertext BLOB NOT NULL,
            at REAL NOT NULL,
            size INTEGER NOT NULL
        )""",
        "CREATE UNIQUE INDEX messages_session_seq ON messages (session_id, seq)",
        # Windowed quota usage summed per sub-bucket (window / 60, the quota rings' own
        # granularity), so rows stay bounded per user and windows rebuild exactly on restart.
        """CREATE TABLE quota_usage (
            user_id TEXT NOT NULL,
            resource TEXT NOT NULL,
            window_s REAL NOT NULL,
            bucket INTEGER NOT NULL,
            at REAL NOT NULL,
            amount REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (user_id, resource, window_s, bucket)
        ) WITHOUT ROWID""",
        "CREATE INDEX quota_usage_expires ON quota_usage (expires_at)",
        # Ended sessions kept for audit (retention_s > 0): who, when, why; never content or keys.
        """CREATE TABLE session_audit (
            session_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            metadata_json TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_active_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            reason TEXT NOT NULL,
            turns INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            messages INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX session_audit_ended ON session_audit (ended_at)",
        """CREATE TABLE alerts (
            alert_id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL,
            message TEXT NOT NULL,
            subject TEXT,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            count INTEGER NOT NULL,
            acknowledged INTEGER NOT NULL,
            resolved_at REAL
        )""",
        # One row per minute and scope ("global", an agent type, ...).
        """CREATE TABLE metrics_minute (
            minute INTEGER NOT NULL,
            scope TEXT NOT NULL,
            turns INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            p50_s REAL NOT NULL,
            p95_s REAL NOT NULL,
            p99_s REAL NOT NULL,
            PRIMARY KEY (minute, scope)
        ) WITHOUT ROWID""",
    ),
    # 1 -> 2: who created each session ("python": an in-process caller, "http": the gateway),
    # so the console still marks gateway sessions after a restart or on another worker.
    ("ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT 'python'",),
)
