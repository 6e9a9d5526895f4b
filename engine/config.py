"""Engine configuration: every field has a default that works with no set-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.clock import Clock, SystemClock
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit


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
class GatewaySettings:
    """The HTTP gateway's edge: where it listens and what it bounds for every client."""

    listen: str = "127.0.0.1:8080"
    max_request_bytes: int = 1024 * 1024  # larger bodies get 413, refused from Content-Length
    max_connections: int = 2048  # open connections (and requests) beyond this get 503
    header_timeout_s: float = 10.0  # a client must send a request's headers within this
    body_timeout_s: float = 30.0  # ...and its body within this after the headers
    keep_alive_s: float = 75.0  # an idle keep-alive connection is closed after this
    drain_grace_s: float = 10.0  # on SIGTERM, turns in flight get this long to finish
    app_keys_env: str = "SESSION_CONSOLE_APP_KEYS"


@dataclass(slots=True)
class EngineConfig:
    # Where state lives. ./data is git-ignored.
    data_dir: Path = Path("data")
    master_key_env: str = "SESSION_CONSOLE_MASTER_KEY"
    db_file: str = "sessions.db"
    # True: send() returns only once its messages are committed. False acknowledges before
    # the commit (benchmarks): a crash can then lose the last few milliseconds of turns.
    durable_ack: bool = True
    # "power": every commit is fsynced, an acknowledged turn survives a power cut. "process":
    # it survives the process crashing or being killed (kill -9), not the machine losing
    # power, and an acknowledgement costs a write() instead of an fsync (lower latency).
    durability: Literal["power", "process"] = "power"
    audit_retention_s: float = 0.0  # >0 keeps ended sessions' metadata (no content) this long

    # Model backend: "sim" needs nothing; "openai" reads base_url/api_key or the environment.
    llm: Literal["sim", "openai"] = "sim"
    base_url: str | None = None
    api_key: str | None = None
    openai_model: str | None = None  # else OPENAI_MODEL, else each agent type's model
    sim: SimSettings = field(default_factory=SimSettings)
    # user_id -> credentials; users not listed use base_url/api_key (or the environment).
    tenants: Mapping[str, TenantCredentials] = field(default_factory=dict)
    max_cached_clients: int = 8
    llm_max_retries: int = 2

    # Agents: types from a TOML file (the packaged engine/agents.toml by default), a pool per
    # type on each worker lane.
    agent_types_file: Path | None = None
    workers: int = 2
    pool_timeout_s: float = 10.0
    per_user_agent_cap: int = 2
    turn_timeout_s: float = 60.0
    max_completion_tokens: int = 512

    # Sessions.
    max_sessions_per_user: int = 5
    idle_timeout_s: float = 30 * 60
    session_lifetime_s: float = 24 * 3600
    context_max_messages: int = 200
    context_max_bytes: int = 256 * 1024
    max_user_id_chars: int = 128
    max_text_bytes: int = 32 * 1024
    max_metadata_bytes: int = 4096
    # Turns that wait behind a session's running turn (multitask_strategy "enqueue").
    max_queued_turns: int = 4
    # The store is a session's home; memory caches the sessions in use (key unwrapped, context
    # decrypted). An idle one leaves the cache after hot_idle_s, or sooner, least recently used
    # first, while the cache's estimated bytes exceed hot_budget_bytes; never a busy one.
    hot_idle_s: float = 300.0
    hot_budget_bytes: int = 256 * 1024 * 1024

    # Quotas and rate limits.
    tiers: Mapping[str, Mapping[str, QuotaLimit]] = field(default_factory=lambda: DEFAULT_TIERS)
    default_tier: str = "free"
    compute_reserve_s: float = 1.0
    session_rate: RateLimit = field(default_factory=lambda: RateLimit(rate_per_s=2.0, burst=10))
    user_rate: RateLimit = field(default_factory=lambda: RateLimit(rate_per_s=5.0, burst=20))
    quota_watch_percent: float = 50.0

    # Monitoring.
    max_alerts: int = 500
    alert_cooldown_s: float = 60.0
    housekeeping_interval_s: float = 1.0

    # Freeze start-up objects out of the collector's passes (engine/runtime.py): process-wide.
    tune_gc: bool = True

    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    clock: Clock = field(default_factory=SystemClock)

    @property
    def master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def app_keys_file(self) -> Path:
        return self.data_dir / "app.keys"

    @property
    def db_path(self) -> Path:
        return self.data_dir / self.db_file
