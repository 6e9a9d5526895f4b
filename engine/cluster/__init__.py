"""Cluster mode's shared hot state in Valkey/Redis: quotas, rates, leases, caps on turns in
flight and on sessions, session versions, workers and the sessions' placement on them, and
its rebuild from the store after the server lost it.

Every decision that must hold across engine processes is one atomic Lua script; when the server
cannot be reached every call raises `engine.errors.ClusterUnavailable` and nothing is decided
locally instead.
"""

from engine.cluster.connection import ClusterClient
from engine.cluster.inflight import InFlightCaps
from engine.cluster.leases import Lease, LeaseHolder, SessionLeases
from engine.cluster.placement import ClusterPlacement, Moved
from engine.cluster.quotas import ClusterQuotas
from engine.cluster.rates import ClusterRates
from engine.cluster.registry import WorkerLoad, WorkerRegistry, WorkerView
from engine.cluster.state import ClusterState
from engine.cluster.turns import RunningTurn, TurnGate, TurnWaits

__all__ = [
    "ClusterClient",
    "ClusterPlacement",
    "ClusterQuotas",
    "ClusterRates",
    "ClusterState",
    "InFlightCaps",
    "Lease",
    "LeaseHolder",
    "Moved",
    "RunningTurn",
    "SessionLeases",
    "TurnGate",
    "TurnWaits",
    "WorkerLoad",
    "WorkerRegistry",
    "WorkerView",
]
