"""The store's records and ops: plain data, the same whatever database holds it.

A write is a tuple of ops that commit together or not at all. The store keeps bytes and
records and knows nothing of the engine: message content arrives encrypted with the session's
data key, the data key arrives wrapped by the master key, tokens arrive hashed. Deleting a
session's row deletes its wrapped key (crypto-shredding). Records are slotted dataclasses,
frozen except `MessageRow` (see there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import get_args

QUOTA_BUCKETS_PER_WINDOW = 60  # the quota rings' own granularity: rebuilding loses nothing
METRICS_RESTORE_S = 3600.0  # roll-ups handed back on restore, enough for the console's charts


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A live session as stored (upsert). Field order is the table's column order.

    On conflict the wrapped key is kept: only `rewrap_keys` changes it, so a late upsert carrying
    a key wrapped under a retired master key cannot undo a rotation. Activity and counters only
    move forward. `served_by` is written by `Served` alone (an upsert keeps the stored one).
    """

    session_id: str
    user_id: str
    tier: str
    metadata_json: str
    created_at: float
    last_active_at: float
    idle_timeout_s: float
    lifetime_s: float
    token_hash: bytes = field(repr=False)
    token_issued_at: float
    token_expires_at: float
    wrapped_key: bytes = field(repr=False)
    worker: str | None = None
    agent_type: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    origin: str = "python"  # set at creation, never updated
    # The worker of a cluster that served its last turn (PostgreSQL; None in SQLite's one process).
    served_by: str | None = None

    @property
    def deadline(self) -> float:
        return min(self.last_active_at + self.idle_timeout_s, self.created_at + self.lifetime_s)


@dataclass(frozen=True, slots=True)
class Touch:
    """Activity after a turn. Everything only grows, so touches may arrive late or reordered.

    An empty `agent_type` keeps the stored one.
    """

    session_id: str
    last_active_at: float
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    agent_type: str = ""

    def then(self, later: Touch) -> Touch:
        """One touch with the effect of applying this one, then `later`, to a stored session."""
        return Touch(
            later.session_id,
            max(self.last_active_at, later.last_active_at),
            max(self.turns, later.turns),
            max(self.prompt_tokens, later.prompt_tokens),
            max(self.completion_tokens, later.completion_tokens),
            max(self.errors, later.errors),
            later.agent_type or self.agent_type,
        )


@dataclass(frozen=True, slots=True)
class TokenUpdate:
    """A rotated token: its hash and lifetime replace the old ones."""

    session_id: str
    token_hash: bytes = field(repr=False)
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class UserTier:
    """The user's tier changed: every stored session of theirs carries it from now on, so a
    restart (or a cluster rebuilding its shared state) gives the user the tier set last."""

    user_id: str
    tier: str


@dataclass(frozen=True, slots=True)
class Assign:
    """The session now lives on `worker` (placement or a rebalancing move)."""

    session_id: str
    worker: str | None


@dataclass(frozen=True, slots=True)
class Served:
    """A worker of a cluster served the session's turn: a rebuild of the cluster's shared state
    puts the session's affinity back on it. Written when the serving worker changes, not at
    every turn; a store with no cluster (SQLite) has nothing to record."""

    session_id: str
    worker: str


@dataclass(slots=True)
class MessageRow:
    """One encrypted message. `size` is the plaintext's bytes, so context bounds survive a
    restart without decrypting anything.

    Treat as immutable. Not frozen only because a restore builds millions of these and a
    frozen dataclass takes four times as long to construct.
    """

    session_id: str
    seq: int
    role: str
    ciphertext: bytes = field(repr=False)
    at: float
    size: int


@dataclass(frozen=True, slots=True)
class TrimMessages:
    """Context trimming: delete the session's messages with seq <= `through_seq`."""

    session_id: str
    through_seq: int


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    """Usage counted against a sliding window of `window_s` seconds.

    Stored summed per (user, resource, window, window/60 bucket) with the latest `at` of the
    bucket, so restored usage never expires before the original would have.
    """

    user_id: str
    resource: str
    at: float
    amount: float
    window_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"quota window_s must be > 0 seconds, got {self.window_s!r}")

    @property
    def bucket(self) -> int:
        """The window/60 sub-bucket this event is summed into (raises for an infinite `at`)."""
        return math.floor(self.at * QUOTA_BUCKETS_PER_WINDOW / self.window_s)


@dataclass(frozen=True, slots=True)
class EndSession:
    """Delete the session's wrapped key and messages; with retention, keep an audit row."""

    session_id: str
    ended_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert, field for field like `engine.alerts.Alert`, and the worker of a cluster that
    raised it ("" for a single process). Each worker numbers its own alerts, so a row is
    upserted by (worker, alert_id): two workers' alert 7 are two rows of a shared database."""

    alert_id: int
    key: str
    rule: str
    severity: str
    message: str
    subject: str | None
    first_at: float
    last_at: float
    count: int = 1
    acknowledged: bool = False
    resolved_at: float | None = None
    worker: str = ""


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """A one-minute roll-up; `minute` is the epoch second the minute starts (upsert)."""

    minute: int
    scope: str
    turns: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    p50_s: float
    p95_s: float
    p99_s: float


@dataclass(frozen=True, slots=True)
class Prune:
    """Housekeeping as of `now`: expired quota buckets, audit rows past retention, alerts beyond
    `alert_keep`, roll-ups older than `metrics_keep_s`. Keeps every table bounded."""

    now: float


Op = (
    SessionRow
    | Touch
    | TokenUpdate
    | UserTier
    | Assign
    | Served
    | MessageRow
    | TrimMessages
    | QuotaEvent
    | EndSession
    | AlertRow
    | MetricsRow
    | Prune
)
OP_KINDS = frozenset(get_args(Op))  # what `Store.write` accepts


@dataclass(frozen=True, slots=True)
class RestoreCounts:
    sessions: int
    purged: int
    messages: int
    quota_buckets: int
    alerts: int


@dataclass(frozen=True, slots=True)
class ContextFigures:
    """A stored conversation's size, read without its messages: enough for quotas, the
    console's table and the next message's seq while the session stays cold."""

    messages: int
    bytes: int
    next_seq: int


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One stored session's compact record, without its key or messages: what a worker that
    has not seen the session needs to authenticate it and hold it cold."""

    row: SessionRow
    figures: ContextFigures | None  # None: no message stored


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One session's wrapped key and messages, oldest first: what warming a session reads."""

    wrapped_key: bytes = field(repr=False)
    messages: list[MessageRow]


@dataclass(frozen=True, slots=True)
class Restored:
    """What `load_live` found: everything the engine needs to resume where it stopped.

    No message is read: `contexts` maps session id to its stored conversation's figures (absent
    for a session without messages); `load_session` reads one session's messages when it is
    first used. `max_alert_ids` (the highest stored alert id of each worker, "" for a single
    process) lets a worker's alert list continue numbering after its stored alerts.
    `clean_shutdown` is False when the last run ended without `aclose()` (a crash or kill).
    """

    sessions: list[SessionRow]
    contexts: dict[str, ContextFigures]
    quota: list[QuotaEvent]
    alerts: list[AlertRow]
    metrics: list[MetricsRow]
    max_alert_ids: Mapping[str, int]
    clean_shutdown: bool
    counts: RestoreCounts


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """Keys rewrapped, and sessions whose key `fn` could not rewrap (left as they were)."""

    rewrapped: int
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """For the console: the writer's queue and throughput, the last failure, the file sizes."""

    path: str
    durable_ack: bool
    queue_depth: int
    batches: int
    writes: int
    ops: int
    avg_batch_ops: float
    last_commit_ms: float
    failed_batches: int
    rejected_writes: int
    last_error: str | None
    file_bytes: int
    wal_bytes: int
    checkpoints: int = 0
    wal_frames: int = 0
    paced_writes: int = 0  # without durable_ack: writes held until part of the queue committed
    backlog_writes: int = 0  # ...and writes that found the queue full and waited for their commit

