"""Engines as workers of one cluster, in the test's process: their config and their lifetime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from cryptography.fernet import Fernet

from engine import Engine, EngineConfig
from engine.ratelimit import RateLimit

MASTER_KEY = Fernet.generate_key().decode()
GENEROUS = {"session_rate": RateLimit(1000.0, 1000), "user_rate": RateLimit(1000.0, 1000)}


@contextlib.asynccontextmanager
async def workers(*configs: EngineConfig) -> AsyncIterator[list[Engine]]:
    """Open every engine, in order; close them all at the end."""
    engines = [Engine(config) for config in configs]
    async with contextlib.AsyncExitStack() as stack:
        for engine in engines:
            await stack.enter_async_context(engine)
        yield engines
