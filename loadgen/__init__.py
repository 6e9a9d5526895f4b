"""Load generator: simulated concurrent users driving the engine through its public API only.

Modules, one concept each (as Locust splits them): `options` (what load), `shapes` (user-count
steps and latency spikes over time), `stats` (request figures), `transport` (how users reach the
engine: `EngineTransport` in-process, `http.GatewayTransport` over HTTP), `environment` (what a
user sees of the run), `users` (the simulated user kinds), `runner` (`LoadGenerator`: spawn
control), `report` (table, JSON, CSV, fail-on), `headless` (a run with no UI) and `cli`
(flags). Import from here; `demo_load.py` is the script.
Dependency direction: loadgen -> engine, never console.
"""

from loadgen.environment import Environment
from loadgen.headless import run_headless, run_headless_http
from loadgen.http import GatewayTransport
from loadgen.options import SCENARIOS, Distribution, LoadOptions, apply_faults, parse_mix
from loadgen.report import FailCondition, build_report, render_stats, write_csv
from loadgen.runner import LoadGenerator
from loadgen.shapes import ShapeStep, Spike, parse_shape
from loadgen.stats import FailureCount, HistoryPoint, LoadStats, OperationStats
from loadgen.transport import EngineTransport, SessionGrant, Transport, TurnReply

__all__ = [
    "SCENARIOS",
    "Distribution",
    "EngineTransport",
    "Environment",
    "FailCondition",
    "FailureCount",
    "GatewayTransport",
    "HistoryPoint",
    "LoadGenerator",
    "LoadOptions",
    "LoadStats",
    "OperationStats",
    "SessionGrant",
    "ShapeStep",
    "Spike",
    "Transport",
    "TurnReply",
    "apply_faults",
    "build_report",
    "parse_mix",
    "parse_shape",
    "render_stats",
    "run_headless",
    "run_headless_http",
    "write_csv",
]
