"""The calls a simulated user makes, behind one interface: in-process here, over HTTP in `http`.

A transport raises the engine's own error types (`engine.errors`), so the stats count the same
failure categories whichever way the engine is reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from engine import Engine
from loadgen.shapes import SimControl


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """A created session as its owner holds it."""

    session_id: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TurnReply:
    """What a turn's figures need: the model's share and, when the server says so, the engine's.

    `engine_s` is None in-process, where the client's own measurement is the engine's time.
    """

    model_s: float
    engine_s: float | None = None


class Transport(Protocol):
    """How simulated users reach an engine."""

    @property
    def target(self) -> str:
        """What is driven, for reports: "in-process" or the gateway's URL."""
        ...

    @property
    def agent_types(self) -> tuple[str, ...]: ...

    @property
    def tiers(self) -> tuple[str, ...] | None:
        """The tiers the engine knows; None when a client cannot see them."""
        ...

    @property
    def default_tier(self) -> str | None:
        """The tier scripted users ask for; None leaves it to the engine."""
        ...

    @property
    def sim(self) -> SimControl | None:
        """The sim model's live settings, when the engine runs in this process."""
        ...

    async def create_session(self, user_id: str, tier: str | None) -> SessionGrant: ...

    async def send(
        self, session_id: str, token: str, text: str, agent_type: str
    ) -> TurnReply: ...

    async def history(self, session_id: str, token: str) -> int:
        """The number of messages the session holds."""
        ...

    async def rotate_token(self, session_id: str, token: str) -> str: ...

    async def end_session(self, session_id: str, token: str) -> None: ...


class EngineTransport:
    """Calls an `Engine` on this event loop through its public API."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def target(self) -> str:
        return "in-process"

    @property
    def agent_types(self) -> tuple[str, ...]:
        return self.engine.agent_types

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(self.engine.config.limits.tiers)

    @property
    def default_tier(self) -> str:
        return self.engine.config.limits.default_tier

    @property
    def sim(self) -> Engine:
        return self.engine

    async def create_session(self, user_id: str, tier: str | None) -> SessionGrant:
        created = await self.engine.create_session(
            user_id, metadata={} if tier is None else {"tier": tier}
        )
        return SessionGrant(created.session_id, created.token)

    async def send(self, session_id: str, token: str, text: str, agent_type: str) -> TurnReply:
        reply = await self.engine.send(session_id, token, text, agent_type=agent_type)
        return TurnReply(reply.model_latency_s)

    async def history(self, session_id: str, token: str) -> int:
        return len(await self.engine.history(session_id, token))

    async def rotate_token(self, session_id: str, token: str) -> str:
        return await self.engine.rotate_token(session_id, token)

    async def end_session(self, session_id: str, token: str) -> None:
        await self.engine.end_session(session_id, token)
