"""The console's handle on the load generator in `demo_load.py`, imported only when needed.

The generator is optional: without it (or before it exists) the load panel says so and the
rest of the console works.
"""

from __future__ import annotations

import importlib
from typing import Any

# An operator's stop (load panel) or quit cancels the calls still running after this long: a
# model call can take up to the turn timeout, and the console should not hang on it.
STOP_GRACE_S = 2.0


class LoadController:
    """Creates `demo_load.LoadGenerator(engine, options)` on first use and forwards to it."""

    def __init__(self, engine: Any, options: Any | None = None) -> None:
        self.engine = engine
        self.options = options
        self.generator: Any | None = None
        self.unavailable: str | None = None

    def ensure(self) -> Any | None:
        """The generator, or None with `unavailable` saying why."""
        if self.generator is not None or self.unavailable is not None:
            return self.generator
        try:
            module = importlib.import_module("demo_load")
        except ImportError as exc:
            self.unavailable = f"load generator unavailable ({exc})"
            return None
        factory = getattr(module, "LoadGenerator", None)
        if factory is None:
            self.unavailable = "load generator unavailable (demo_load has no LoadGenerator)"
            return None
        options = self.options
        if options is None:
            options = self.options = module.LoadOptions()
        self.generator = factory(self.engine, options)
        return self.generator

    @property
    def running(self) -> bool:
        return self.generator is not None and bool(self.generator.running)

    def start(self) -> bool:
        generator = self.ensure()
        if generator is None or self.running:
            return False
        generator.start()
        return True

    async def stop(self) -> bool:
        if not self.running:
            return False
        await self.generator.stop(STOP_GRACE_S)
        return True

    def set_users(self, users: int) -> None:
        generator = self.ensure()
        if generator is not None:
            generator.set_users(max(0, users))

    def set_spawn_rate(self, rate: float) -> None:
        generator = self.ensure()
        if generator is not None:
            generator.set_spawn_rate(max(0.0, rate))

    def stats(self) -> Any | None:
        """The generator's `LoadStats`, or None before it exists."""
        return None if self.generator is None else self.generator.stats()
