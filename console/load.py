"""The console's handle on the load generator: one `loadgen.LoadGenerator` on the console's engine.

`unavailable` says why load cannot run on this engine (the options name agent types or tiers
it does not know); the rest of the console works regardless.
"""

from __future__ import annotations

from engine import Engine
from loadgen import EngineTransport, LoadGenerator, LoadOptions, LoadStats

# An operator's stop (load panel) or quit cancels the calls still running after this long: a
# model call can take up to the turn timeout, and the console should not hang on it.
STOP_GRACE_S = 2.0


class LoadController:
    """Forwards the load panel's actions to a generator driving `engine` in-process."""

    def __init__(self, engine: Engine, options: LoadOptions | None = None) -> None:
        self.options = options if options is not None else LoadOptions()
        self.generator = LoadGenerator(EngineTransport(engine), self.options)
        self.unavailable: str | None = None

    def ensure(self) -> LoadGenerator | None:
        """The generator, or None with `unavailable` saying why it cannot run."""
        return self.generator if self.unavailable is None else None

    @property
    def running(self) -> bool:
        return self.generator.running

    def start(self) -> bool:
        if self.ensure() is None or self.running:
            return False
        try:
            self.generator.start()
        except ValueError as exc:  # options this engine cannot serve
            self.unavailable = f"load generator unavailable: {exc}"
            return False
        return True

    async def stop(self) -> bool:
        if not self.running:
            return False
        await self.generator.stop(STOP_GRACE_S)
        return True

    def set_users(self, users: int) -> None:
        self.generator.set_users(max(0, users))

    def set_spawn_rate(self, rate: float) -> None:
        self.generator.set_spawn_rate(max(0.0, rate))

    def stats(self) -> LoadStats:
        return self.generator.stats()
