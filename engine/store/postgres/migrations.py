"""The PostgreSQL schema, as forward-only migrations, and the table recording its version.

`MIGRATIONS[n]` takes a database from schema version n to n + 1; the code's version is
`len(MIGRATIONS)`. A migration is never edited once released: a change is a new entry, so an
older database is brought forward step by step in one transaction, and a database newer than the
code is refused rather than guessed at.

The version lives in `schema_version`, one row that also names the application, so a database
whose tables some other program made is recognised as foreign and left alone. The tables hold
what SQLite's hold (engine/store/sqlite/migrations.py), with PostgreSQL's types: bytes as
`bytea` (ciphertext, wrapped keys and token hashes arrive encrypted or hashed from above the
store), times as `double precision` epoch seconds, counters as `bigint`.
"""

from __future__ import annotations

APPLICATION = "session-console"
MIGRATION_LOCK = int.from_bytes(b"SConMigr", "big") >> 1  # pg_advisory_xact_lock key (bigint)

CREATE_SCHEMA_VERSION = """CREATE TABLE schema_version (
    application text NOT NULL,
    version integer NOT NULL
)"""
OWN_TABLES = (
    "schema_version", "store_meta", "sessions", "messages", "quota_usage", "session_audit",
    "alerts", "metrics_minute",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        # Small facts about the database: opens, and whether the last run closed cleanly.
        """CREATE TABLE store_meta (
            key text PRIMARY KEY,
            value bigint NOT NULL
        )""",
        # Live sessions. wrapped_key is the session's data key encrypted by the master key:
        # deleting the row is what crypto-shreds the session's messages.
        """CREATE TABLE sessions (
            session_id text PRIMARY KEY,
            user_id text NOT NULL,
            tier text NOT NULL,
            metadata_json text NOT NULL,
            created_at double precision NOT NULL,
            last_active_at double precision NOT NULL,
            idle_timeout_s double precision NOT NULL,
            lifetime_s double precision NOT NULL,
            token_hash bytea NOT NULL,
            token_issued_at double precision NOT NULL,
            token_expires_at double precision NOT NULL,
            wrapped_key bytea NOT NULL,
            worker text,
            agent_type text NOT NULL DEFAULT '',
            turns bigint NOT NULL DEFAULT 0,
            prompt_tokens bigint NOT NULL DEFAULT 0,
            completion_tokens bigint NOT NULL DEFAULT 0,
            errors bigint NOT NULL DEFAULT 0
        )""",
        # `id` keeps arrival order; the unique index finds one session's messages.
        """CREATE TABLE messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id text NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq bigint NOT NULL,
            role text NOT NULL,
            ciphertext bytea NOT NULL,
            at double precision NOT NULL,
            size bigint NOT NULL
        )""",
        "CREATE UNIQUE INDEX messages_session_seq ON messages (session_id, seq)",
        # Windowed quota usage summed per sub-bucket (window / 60), as in SQLite.
        """CREATE TABLE quota_usage (
            user_id text NOT NULL,
            resource text NOT NULL,
            window_s double precision NOT NULL,
            bucket bigint NOT NULL,
            at double precision NOT NULL,
            amount double precision NOT NULL,
            expires_at double precision NOT NULL,
            PRIMARY KEY (user_id, resource, window_s, bucket)
        )""",
        "CREATE INDEX quota_usage_expires ON quota_usage (expires_at)",
        # Ended sessions kept for audit (retention_s > 0): who, when, why; never content or keys.
        """CREATE TABLE session_audit (
            session_id text PRIMARY KEY,
            user_id text NOT NULL,
            tier text NOT NULL,
            metadata_json text NOT NULL,
            created_at double precision NOT NULL,
            last_active_at double precision NOT NULL,
            ended_at double precision NOT NULL,
            reason text NOT NULL,
            turns bigint NOT NULL,
            prompt_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            messages bigint NOT NULL
        )""",
        "CREATE INDEX session_audit_ended ON session_audit (ended_at)",
        """CREATE TABLE alerts (
            alert_id bigint PRIMARY KEY,
            key text NOT NULL,
            rule text NOT NULL,
            severity text NOT NULL,
            message text NOT NULL,
            subject text,
            first_at double precision NOT NULL,
            last_at double precision NOT NULL,
            count bigint NOT NULL,
            acknowledged boolean NOT NULL,
            resolved_at double precision
        )""",
        # One row per minute and scope ("global", an agent type, ...).
        """CREATE TABLE metrics_minute (
            minute bigint NOT NULL,
            scope text NOT NULL,
            turns bigint NOT NULL,
            errors bigint NOT NULL,
            prompt_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            p50_s double precision NOT NULL,
            p95_s double precision NOT NULL,
            p99_s double precision NOT NULL,
            PRIMARY KEY (minute, scope)
        )""",
    ),
    # 1 -> 2: who created each session ("python": an in-process caller, "http": the gateway),
    # so the console still marks gateway sessions after a restart or on another worker.
    ("ALTER TABLE sessions ADD COLUMN origin text NOT NULL DEFAULT 'python'",),
    # 2 -> 3: each worker of a cluster numbers its own alerts, so two workers' alert 7 are two
    # rows: the key becomes (worker, alert_id). Rows stored before are the worker "" (a single
    # process's numbering). The index serves the prune, which keeps the cluster's newest alerts
    # by when they were first raised (alert ids of different workers do not say which is newer).
    (
        "ALTER TABLE alerts ADD COLUMN worker text NOT NULL DEFAULT ''",
        "ALTER TABLE alerts DROP CONSTRAINT alerts_pkey",
        "ALTER TABLE alerts ADD PRIMARY KEY (worker, alert_id)",
        "CREATE INDEX alerts_first ON alerts (first_at, worker, alert_id)",
    ),
    # 3 -> 4: the worker that served each session's last turn, so a rebuild of the cluster's
    # shared state puts the session's affinity back where it was. Null: not served since.
    ("ALTER TABLE sessions ADD COLUMN served_by text",),
)
