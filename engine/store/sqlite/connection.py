"""The writer's SQLite connection on a thread the store owns outright (not aiosqlite).

sqlite3 blocks, so the connection lives on a thread of its own and only that thread touches
it. aiosqlite offers such a thread, but through its public API each `await db.execute(...)` is
a round trip, and a result reaches the caller through aiosqlite's future and then the awaiting
task: two loop iterations after the thread is done, where the writer needs one, and under a
busy event loop an iteration can take milliseconds. Committing a batch in one round trip and
hearing of it straight from the thread needed aiosqlite's private queue (`Connection._tx`) and
raw connection (`_conn`), which any release may change. Its worker is about thirty lines; this
is that worker, owned: a queue of calls that each receive the raw connection, each result
posted to the event loop by the thread itself (`call_soon_threadsafe`), straight to whoever
asked. The checkpointer and the start-up reads already use plain `sqlite3` on threads of their
own, so nothing in the store needs aiosqlite and it is not a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

Done = Callable[[Any, BaseException | None], object]
"""`done(result, None)` or `done(None, error)`, run on the event loop."""


class ConnectionThread:
    """One sqlite3 connection and the one thread that uses it.

    Open with `await ConnectionThread.open(connect, name)`; `await aclose()`. Calls run one at a
    time, in the order they were made.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        """Start the thread; it opens its connection with `connect()` before any call. Use
        `open`, which waits for that and raises what `connect` raised."""
        self.round_trips = 0  # calls handed to the thread: a batch costs one
        self._loop = asyncio.get_running_loop()
        self._calls: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Done] | None]
        self._calls = queue.SimpleQueue()
        self._closing = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, args=(connect,), name=name, daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, connect: Callable[[], sqlite3.Connection], name: str) -> ConnectionThread:
        thread = cls(connect, name)
        try:
            await thread.run(lambda _conn: None)  # raises what `connect` raised
        except BaseException:
            await thread.aclose()
            raise
        return thread

    def call(self, fn: Callable[[sqlite3.Connection], T], done: Done) -> None:
        """Run `fn(connection)` on the thread; then `done` runs on the loop, one iteration
        after `fn` returns, scheduled by the thread itself."""
        if self._closing:
            raise RuntimeError(f"{self._thread.name}: the connection is closed")
        self.round_trips += 1
        self._calls.put((fn, done))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the thread, awaited. A cancelled caller does not stop `fn`."""
        future: asyncio.Future[T] = self._loop.create_future()
        self.call(fn, partial(_settle, future))
        return await future

    async def aclose(self) -> None:
        """Close the connection once the calls already made have run. Idempotent."""
        if not self._closing:
            self._closing = True
            self._calls.put(None)
        await asyncio.shield(self._closed)
        self._thread.join()  # it has posted its last result: only its return is left

    def _serve(self, connect: Callable[[], sqlite3.Connection]) -> None:
        try:
            conn: sqlite3.Connection | None = connect()
            failure: BaseException | None = None
        except BaseException as exc:  # every call hears of it, open's first
            conn, failure = None, exc
        while (item := self._calls.get()) is not None:
            fn, done = item
            if conn is None:
                self._post(done, None, failure)
                continue
            try:
                result = fn(conn)
            except BaseException as exc:  # whatever happens, `done` must hear of it
                self._post(done, None, exc)
            else:
                self._post(done, result, None)
            # Waiting for the next call, hold nothing: a result (the rows read at start-up)
            # would stay alive until then.
            item = fn = done = result = None
        try:
            if conn is not None:
                conn.close()
        except BaseException as exc:
            self._post(partial(_settle, self._closed), None, exc)
        else:
            self._post(partial(_settle, self._closed), None, None)

    def _post(self, done: Done, result: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            self._loop.call_soon_threadsafe(done, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
