"""Stored sessions back into memory after `open()` has returned, a page at a time.

Even cold (one compact record each, no message read) a million stored sessions take minutes to
bring back, and a service restarted under load cannot wait that long for its first turn.
`open()` adopts the first page itself, so a small store is whole when it returns, as before;
this pages through the rest in id order in the background, yielding to turns between pages.
Until it is done:

- A presented id past the pages read so far is read from the store on its own before it is
  authenticated (`ensure`), so a session late in id order is served at once. Every such
  presentation pays that one read, whether the id is stored, held already or unknown, and one
  at or before the pages read pays none: timing depends on the id's place in the order only,
  never on whether it exists.
- A session ended while paging is remembered, so a page read before its end committed does
  not bring it back; sessions created or used meanwhile are held already and are skipped.
- A user who created sessions before theirs were paged in may hold more than the per-user cap
  once they are: the least recently active idle ones are evicted, as a creation would have
  (a single process only; in a cluster the cap is kept in Valkey/Redis).

How many are stored is counted beside the first page (`count`): a count reads a whole index,
0.1 s for a million sessions in the OS's cache and seconds when not, so `open()` waits for it
only `COUNT_WAIT_S`; until it lands, `pending` is 0 and the report's `sessions` says how many
were paged in so far.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from engine.clock import Clock
from engine.sessions import Session, SessionEvent, SessionRegistry, lookable_id
from engine.store import Op, SessionRecord, Store
from engine.views import RestoreReport

log = logging.getLogger(__name__)

RETRY_S = 1.0  # after a page the store could not read
COUNT_WAIT_S = 0.25  # how long open() waits for the count (a small store's is at once)


class BackgroundRestore:
    """Pages stored sessions in cold; answers for ids asked for before their page."""

    def __init__(
        self,
        *,
        registry: SessionRegistry,
        store: Callable[[], Store],
        adopt: Callable[[SessionRecord], Op | None],
        persist_later: Callable[..., None],
        clock: Clock,
        enforce_cap: bool,
        page_sessions: int,
    ) -> None:
        self._registry = registry
        self._store = store
        self._adopt = adopt
        self._persist_later = persist_later
        self._clock = clock
        self._enforce_cap = enforce_cap
        self._page_sessions = page_sessions
        self._after = ""  # the last id paged in
        self._ended: set[str] = set()  # ended while paging: never brought back
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counting: asyncio.Task[int] | None = None
        self.stored: int | None = None  # sessions the store held at open, once counted
        self.restored = 0  # of them paged in so far (not those read on their own)
        self.messages = 0  # their stored messages
        registry.subscribe(self._on_session_event)

    @property
    def running(self) -> bool:
        """Pages remain: presented ids are read on their own first."""
        return not self._done.is_set()

    @property
    def pending(self) -> int:
        """Stored sessions not paged in yet (as counted at open)."""
        if not self.running or self.stored is None:
            return 0
        return max(0, self.stored - self.restored)

    def report(self, base: RestoreReport) -> RestoreReport:
        """`base` (what open() read) with the paging's progress."""
        return RestoreReport(
            sessions=self.restored if self.stored is None else self.stored,
            messages=self.messages, purged=base.purged,
            quota_buckets=base.quota_buckets, clean_shutdown=base.clean_shutdown,
            pending=self.pending,
        )

    async def count(self) -> None:
        """Count the stored sessions beside the first page; wait for the count COUNT_WAIT_S
        at most (it lands later on its own: `pending` says nothing until then)."""
        self._counting = asyncio.ensure_future(self._store().count_sessions())
        self._counting.add_done_callback(self._counted)
        await asyncio.wait((self._counting,), timeout=COUNT_WAIT_S)

    def _counted(self, counting: asyncio.Future[int]) -> None:
        if counting.cancelled():
            return
        if counting.exception() is not None:  # the store's trouble: only progress is lost
            log.warning("could not count the stored sessions: %s", counting.exception())
            return
        self.stored = counting.result()
        if self.running:
            self._registry.cold.reserve(max(0, self.stored - self.restored))

    async def read_page(self) -> list[SessionRecord]:
        """The next page of stored sessions (empty: none left)."""
        return await self._store().load_page(self._after, self._page_sessions)

    def adopt_page(self, page: list[SessionRecord]) -> None:
        """Hold a page's sessions cold, skipping those held or ended since paging began."""
        if not page:
            self._finish()
            return
        self._after = page[-1].row.session_id
        self.restored += len(page)
        registry, ended = self._registry, self._ended
        moved: list[Op] = []
        over_cap: set[str] = set()
        for record in page:
            row = record.row
            if record.figures is not None:
                self.messages += record.figures.messages
            if row.session_id in ended or registry.holds(row.session_id):
                continue
            move = self._adopt(record)
            if move is not None:
                moved.append(move)
            if self._enforce_cap and registry.count_of(row.user_id) > registry.max_per_user:
                over_cap.add(row.user_id)
        if moved:
            self._persist_later(*moved)
        now = self._clock.now()
        for user_id in over_cap:
            registry.trim_to_cap(user_id, now)
        if len(page) < self._page_sessions:
            self._finish()

    def start(self) -> None:
        """Page the rest in the background (after open() adopted the first page)."""
        if self.running:
            log.info(
                "serving; paging in the other %d of %d stored sessions in the background",
                self.pending, self.stored,
            )
            self._task = asyncio.create_task(self._page_forever(), name="restore sessions")

    async def wait(self) -> None:
        await self._done.wait()

    async def ensure(self, session_id: object) -> None:
        """Bring `session_id` in now if it is stored and not paged in yet. Only while pages
        remain. An id past the pages read costs one store read whatever the answer; one at or
        before them costs none, found or not (the registry already holds all of those)."""
        if not lookable_id(session_id) or session_id <= self._after:
            return
        record = await self._store().load_record(session_id)
        if record is None or not self.running or session_id <= self._after:
            return  # unknown, or its page came in meanwhile
        if session_id in self._ended or self._registry.holds(session_id):
            return
        move = self._adopt(record)
        if move is not None:
            self._persist_later(move)

    async def aclose(self) -> None:
        if self._counting is not None and not self._counting.done():
            self._counting.cancel()
            await asyncio.gather(self._counting, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _page_forever(self) -> None:
        started = time.monotonic()
        failed = False
        while self.running:
            try:
                page = await self.read_page()
            except Exception as exc:  # the store's trouble: sessions paged in keep serving
                if not failed:
                    log.warning("restoring sessions paused, retrying every %.0f s: %s",
                                RETRY_S, exc)
                failed = True
                await asyncio.sleep(RETRY_S)
                continue
            failed = False
            self.adopt_page(page)
            await asyncio.sleep(0)  # let turns waiting on the loop run between pages
        log.info(
            "paged in %d stored sessions in %.1f s", self.restored, time.monotonic() - started
        )

    def _finish(self) -> None:
        self._done.set()
        self._ended.clear()
        if self.stored is None or self.stored < self.restored:
            self.stored = self.restored  # paged in whole before the count came (or it failed)

    def _on_session_event(self, event: SessionEvent, session: Session) -> None:
        if event.kind != "created" and self.running:
            self._ended.add(event.session_id)
