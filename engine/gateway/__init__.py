"""The HTTP gateway: DESIGN.md's HTTP contract, served by uvicorn in the engine's own loop."""

from engine.gateway.appkeys import AppKeys
from engine.gateway.server import Gateway, parse_listen
from engine.gateway.stats import GatewayStats, RouteStats

__all__ = ["AppKeys", "Gateway", "GatewayStats", "RouteStats", "parse_listen"]
