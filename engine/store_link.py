"""The engine's handle on its store: whether it is committing, and writes that do not wait.

Readiness follows the last write a caller waited for: a failed commit makes the engine not
ready, a successful one ready again. While it fails, `probe` tries a small real write (one at a
time) so readiness comes back with the disk or the file even when no traffic is let in to find
out. `later` queues ops behind everything already written, without waiting, for events raised
outside any request; a later `flush()` covers them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from engine.errors import EngineError, StoreError
from engine.store import Op, Prune, Store


class StoreLink:
    def __init__(self) -> None:
        self.store: Store | None = None  # set once the engine has opened it
        self.ok = True  # the last write waited for committed
        self.closed = False
        self._probe: asyncio.Task[None] | None = None

    async def committed(self, write: Awaitable[None]) -> None:
        try:
            await write
        except StoreError:
            self.ok = False
            raise
        self.ok = True

    async def commit(self, *ops: Op) -> None:
        assert self.store is not None
        await self.committed(self.store.write(*ops))

    def later(self, *ops: Op) -> None:
        if self.store is not None and not self.closed:
            self.store.write_nowait(*ops)

    def probe(self, now: float) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._try(now), name="store probe")

    async def _try(self, now: float) -> None:
        with contextlib.suppress(EngineError):  # still failing, or closing meanwhile
            await self.commit(Prune(now))

    async def aclose(self) -> None:
        """Stop probing and close the store (flushing what is queued)."""
        self.closed = True
        if self._probe is not None:
            self._probe.cancel()
        if self.store is not None:
            await self.store.aclose()
