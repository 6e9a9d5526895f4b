"""Session Console's engine: isolated multi-user sessions for praisonaiagents applications."""

from engine import errors
from engine.config import EngineConfig
from engine.engine import CreatedSession, Engine, EngineSnapshot, Reply, SessionView
from engine.sessions import Message

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
