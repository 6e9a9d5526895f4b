"""Session Console's engine: isolated multi-user sessions for praisonaiagents applications.

Everything a caller needs is importable from here; the modules behind it are the engine's own.
"""

from engine import errors
from engine.config import (
    ClusterSettings,
    EngineConfig,
    GatewaySettings,
    LimitSettings,
    LLMSettings,
    MonitorSettings,
    PoolSettings,
    SessionSettings,
    SimSettings,
    StoreSettings,
    TenantCredentials,
)
from engine.engine import Engine
from engine.operator import Operator
from engine.quotas import QuotaLimit, QuotaUsage
from engine.ratelimit import RateLimit
from engine.sessions import Message
from engine.views import (
    CacheView,
    ClusterView,
    CreatedSession,
    EngineSnapshot,
    QuotaView,
    Reply,
    RestoreReport,
    SessionDetail,
    SessionView,
)

__all__ = [
    "CacheView",
    "ClusterSettings",
    "ClusterView",
    "CreatedSession",
    "Engine",
    "EngineConfig",
    "EngineSnapshot",
    "GatewaySettings",
    "LLMSettings",
    "LimitSettings",
    "Message",
    "MonitorSettings",
    "Operator",
    "PoolSettings",
    "QuotaLimit",
    "QuotaUsage",
    "QuotaView",
    "RateLimit",
    "Reply",
    "RestoreReport",
    "SessionDetail",
    "SessionSettings",
    "SessionView",
    "SimSettings",
    "StoreSettings",
    "TenantCredentials",
    "errors",
]
