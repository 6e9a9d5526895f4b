"""Engine configuration: frozen settings in parts, every field defaulted to work with no set-up.

`EngineConfig()` is the defaults and reads nothing; `EngineConfig.from_env()` is the one place
that reads the process environment (master keys, app keys, the OpenAI endpoint). A variant is
`dataclasses.replace(config, llm=replace(config.llm, backend="openai"))`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from engine.admission import AuthBackoffPolicy
from engine.clock import Clock, SystemClock
from engine.errors import ConfigurationError
from engine.overload import OverloadPolicy
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit

MASTER_KEY_ENV = "SESSION_CONSOLE_MASTER_KEY"  # comma-separated Fernet keys, primary first
APP_KEYS_ENV = "SESSION_CONSOLE_APP_KEYS"  # comma-separated keys allowed to create sessions
DATABASE_URL_ENV = "SESSION_CONSOLE_DATABASE_URL"  # postgresql://... : the store in PostgreSQL
REDIS_URL_ENV = "SESSION_CONSOLE_REDIS_URL"  # the cluster's shared state (Valkey/Redis)
WORKER_ID_ENV = "SESSION_CONSOLE_WORKER_ID"  # a worker's name in the cluster's registry
OPENAI_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL")


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How many sessions a user may hold, how long they live, and what a call may carry."""

    max_per_user: int = 5
    idle_timeout_s: float = 30 * 60
    lifetime_s: float = 24 * 3600
    context_max_messages: int = 200
    context_max_bytes: int = 256 * 1024
    max_user_id_chars: int = 128
    max_text_bytes: int = 32 * 1024
    max_metadata_bytes: int = 4096
    # Turns that wait behind a session's running turn (multitask_strategy "enqueue"); a policy
    # of the engine's send(), so it holds for in-process callers as for the gateway.
    max_queued_turns: int = 4
    # The store is a session's home; memory caches the sessions in use (key unwrapped, context
    # decrypted). An idle one leaves the cache after hot_idle_s, or sooner, least recently used
    # first, while the cache's estimated bytes exceed hot_budget_bytes; never a busy one.
    hot_idle_s: float = 300.0
    hot_budget_bytes: int = 256 * 1024 * 1024
    # open() brings back this many stored sessions and returns; the rest are paged in, as
    # many at a time, while turns are served (engine/background_restore.py).
    restore_page_sessions: int = 1000

    def __post_init__(self) -> None:
        if self.restore_page_sessions < 1:
            raise ConfigurationError(
                f"restore_page_sessions must be at least 1, got {self.restore_page_sessions}"
            )


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where state lives (./data is git-ignored), how durable an acknowledgement is, the keys."""

    data_dir: Path = Path("data")
    db_file: str = "sessions.db"
    # True: send() returns only once its messages are committed. False acknowledges before
    # the commit (benchmarks): a crash can then lose the last few milliseconds of turns.
    durable_ack: bool = True
    # "power": every commit is fsynced, an acknowledged turn survives a power cut. "process":
    # it survives the process crashing or being killed (kill -9), not the machine losing
    # power, and an acknowledgement costs a write() instead of an fsync (lower latency).
    durability: Literal["power", "process"] = "power"
    audit_retention_s: float = 0.0  # >0 keeps ended sessions' metadata (no content) this long
    # A `postgresql://` URL (from_env: SESSION_CONSOLE_DATABASE_URL): the store lives in that
    # PostgreSQL database, shared by a cluster's workers, instead of the SQLite file db_path.
    database_url: str | None = field(default=None, repr=False)
    # The group-commit writer (engine/store/writer.py). It commits as soon as it is free and
    # writes queued meanwhile form the next batch; batch_ms > 0 also waits up to that long for
    # a fuller batch (fewer fsyncs, more latency). batch_max caps ops per transaction: large,
    # so a writer that fell behind catches up in a few big commits.
    batch_ms: float = 0.0
    batch_max: int = 4096
    # Without durable_ack, a write that finds more than pacing_ops queued waits for a share
    # of the queue ahead of it to commit, growing with the queue to all of it (its own commit)
    # at backlog_ops: admission slows smoothly, never a few turns stalled for a catch-up.
    # While writes are paced, batches hold at most paced_batch_max ops: the held writes are let
    # go as batches finish, and a batch of 4,096 ops takes a few hundred milliseconds.
    pacing_ops: int = 4096
    backlog_ops: int = 8192
    paced_batch_max: int = 512
    # What a Prune keeps: the newest alert_keep alerts, metrics roll-ups of metrics_keep_s.
    alert_keep: int = 1000
    metrics_keep_s: float = 7 * 86400.0
    # SQLite: the checkpointer copies the WAL into the file every checkpoint_s and has the
    # writer restart a log that grew to wal_restart_frames (~8 MB) (sqlite/checkpointer.py).
    checkpoint_s: float = 0.2
    wal_restart_frames: int = 2048
    # Master keys given by the deployment (from_env: SESSION_CONSOLE_MASTER_KEY), primary first;
    # empty: the key file under data_dir, created on first run.
    master_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if min(self.batch_max, self.paced_batch_max, self.alert_keep, self.wal_restart_frames) < 1:
            raise ConfigurationError(
                "StoreSettings: batch_max, paced_batch_max, alert_keep and wal_restart_frames "
                f"must be >= 1; got {self.batch_max=}, {self.paced_batch_max=}, "
                f"{self.alert_keep=}, {self.wal_restart_frames=}"
            )
        if not (self.batch_ms >= 0 and self.audit_retention_s >= 0 and self.metrics_keep_s > 0
                and self.checkpoint_s > 0):
            raise ConfigurationError(
                "StoreSettings: batch_ms and audit_retention_s must be >= 0, metrics_keep_s and "
                f"checkpoint_s > 0; got {self.batch_ms=}, {self.audit_retention_s=}, "
                f"{self.metrics_keep_s=}, {self.checkpoint_s=}"
            )
        if not 0 <= self.pacing_ops <= self.backlog_ops or self.backlog_ops < self.batch_max:
            raise ConfigurationError(
                "StoreSettings: need 0 <= pacing_ops <= backlog_ops and backlog_ops >= "
                f"batch_max; got {self.pacing_ops=}, {self.backlog_ops=}, {self.batch_max=}"
            )

    @property
    def master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def db_path(self) -> Path:
        return self.data_dir / self.db_file

    @property
    def app_keys_file(self) -> Path:
        """The gateway's app keys when none are given (one a line, mode 0600)."""
        return self.data_dir / "app.keys"


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated model: a product feature for demos, load tests and fault drills.

    Latency is log-normal with the given median and 99th percentile; errors and timeouts are
    injected at the given rates; the same seed gives the same draws.
    """

    median_latency_s: float = 0.2
    p99_latency_s: float = 1.5
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """An OpenAI-compatible endpoint and key used for one tenant's users."""

    api_key: str = field(repr=False)
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class LLMSettings:
    """The model backend: "sim" needs nothing; "openai" needs an API key (from_env reads
    OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL for what is left unset)."""

    backend: Literal["sim", "openai"] = "sim"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None  # else each agent type's model
    sim: SimSettings = field(default_factory=SimSettings)
    # user_id -> credentials; users not listed use base_url/api_key.
    tenants: Mapping[str, TenantCredentials] = field(default_factory=dict)
    max_cached_clients: int = 8
    max_retries: int = 2
    turn_timeout_s: float = 60.0
    max_completion_tokens: int = 512


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Agent types from a TOML file (the packaged engine/agents.toml by default), a pool per
    type on each worker lane."""

    agent_types_file: Path | None = None
    workers: int = 2
    timeout_s: float = 10.0
    per_user_agent_cap: int = 2


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Quotas per tier and request rates per session and per user."""

    tiers: Mapping[str, Mapping[str, QuotaLimit]] = field(default_factory=lambda: DEFAULT_TIERS)
    default_tier: str = "free"
    compute_reserve_s: float = 1.0
    session_rate: RateLimit = field(default_factory=lambda: RateLimit(rate_per_s=2.0, burst=10))
    user_rate: RateLimit = field(default_factory=lambda: RateLimit(rate_per_s=5.0, burst=20))
    # Presenters that keep failing authentication are refused with a backoff (admission.py).
    auth_backoff: AuthBackoffPolicy = field(default_factory=AuthBackoffPolicy)
    # While the loop lags or the store's queue is long, the heaviest users' turns are shed
    # (engine/overload.py). None: never shed (tests whose timing is the machine's, not theirs).
    overload: OverloadPolicy | None = field(default_factory=OverloadPolicy)


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    max_alerts: int = 500
    alert_cooldown_s: float = 60.0
    housekeeping_interval_s: float = 1.0
    quota_watch_percent: float = 50.0  # users above this are shown with their quota gauges
    # Session views one snapshot builds at most (~7 us each for a restored session): the
    # rest follow in later snapshots and refresh_views, so no snapshot holds the loop long.
    snapshot_views: int = 2000


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The HTTP gateway's edge: where it listens and what it bounds for every client."""

    listen: str = "127.0.0.1:8080"
    max_request_bytes: int = 1024 * 1024  # larger bodies get 413, refused from Content-Length
    max_connections: int = 2048  # open connections (and requests) beyond this get 503
    header_timeout_s: float = 10.0  # a client must send a request's headers within this
    body_timeout_s: float = 30.0  # ...and its body within this after the headers
    keep_alive_s: float = 75.0  # an idle keep-alive connection is closed after this
    drain_grace_s: float = 10.0  # on SIGTERM, turns in flight get this long to finish
    # App keys given by the deployment (from_env: SESSION_CONSOLE_APP_KEYS); empty: the key
    # file under the data dir, created on first run.
    app_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The shared hot state of a cluster of engine processes (engine/cluster/).

    `redis_url` None is a single process (everything in memory). Set, every worker of the
    cluster enforces quotas, rates, session leases and per-user caps through that Valkey/Redis.
    """

    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    key_prefix: str = "sc:"  # several clusters (or tests) can share one server
    worker_id: str = ""  # this worker's name in the registry; "" = host name and process id
    lease_ttl_s: float = 5.0  # a dead worker's sessions are served elsewhere within this
    heartbeat_s: float = 1.0
    worker_dead_after_s: float = 5.0  # no heartbeat for this long: the worker is gone
    # A reservation or in-flight turn left by a dead worker lapses after this; longer than any
    # turn (llm.turn_timeout_s plus the time it may wait behind its session's other turns).
    reservation_ttl_s: float = 300.0
    timeout_s: float = 1.0  # connect and reply timeout: an unreachable server fails fast
    max_connections: int = 64  # per worker; a burst of calls queues for a free one

    def __post_init__(self) -> None:
        for name in (
            "lease_ttl_s", "heartbeat_s", "worker_dead_after_s", "reservation_ttl_s", "timeout_s"
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigurationError(f"cluster {name} must be a number > 0, got {value!r}")
        if self.max_connections < 1:
            raise ConfigurationError(
                f"cluster max_connections must be >= 1, got {self.max_connections!r}"
            )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    sessions: SessionSettings = field(default_factory=SessionSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    pools: PoolSettings = field(default_factory=PoolSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # Tune the collector and the GIL's switch interval for serving (engine/runtime.py):
    # process-wide.
    tune_gc: bool = True
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, /, **parts: object
    ) -> EngineConfig:
        """`EngineConfig(**parts)` completed from the environment (`os.environ` by default).

        Reads SESSION_CONSOLE_MASTER_KEY and SESSION_CONSOLE_APP_KEYS (comma-separated; set
        values replace the key files), SESSION_CONSOLE_DATABASE_URL (a PostgreSQL store),
        SESSION_CONSOLE_REDIS_URL and SESSION_CONSOLE_WORKER_ID (cluster mode, unless `cluster`
        sets them) and OPENAI_BASE_URL,
        OPENAI_API_KEY, OPENAI_MODEL (for what `llm` leaves unset). Empty variables count as
        unset.
        """
        env = os.environ if env is None else env
        config = cls(**parts)  # type: ignore[arg-type]
        llm = config.llm
        base_url, api_key, model = (env.get(name) or None for name in OPENAI_ENV)
        return replace(
            config,
            store=replace(
                config.store,
                master_keys=config.store.master_keys or _split(env.get(MASTER_KEY_ENV, "")),
                database_url=config.store.database_url or env.get(DATABASE_URL_ENV) or None,
            ),
            llm=replace(
                llm,
                base_url=llm.base_url or base_url,
                api_key=llm.api_key or api_key,
                model=llm.model or model,
            ),
            gateway=replace(
                config.gateway,
                app_keys=config.gateway.app_keys or _split(env.get(APP_KEYS_ENV, "")),
            ),
            cluster=replace(
                config.cluster,
                redis_url=config.cluster.redis_url or env.get(REDIS_URL_ENV) or None,
                worker_id=config.cluster.worker_id or env.get(WORKER_ID_ENV, ""),
            ),
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
