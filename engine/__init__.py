"""Session Console's engine: isolated multi-user sessions for praisonaiagents applications."""

from engine import errors
from engine.config import EngineConfig
from engine.engine import Engine
from engine.sessions import Message
from engine.views import CreatedSession, EngineSnapshot, Reply, SessionView

__all__ = [
    "CreatedSession",
    "Engine",
    "EngineConfig",
    "EngineSnapshot",
    "Message",
    "Reply",
    "SessionView",
    "errors",
]
