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
        self.stored = 0  # sessions the store held at open
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
        return max(0, self.stored - self.restored) if self.running else 0

    def report(self, base: RestoreReport) -> RestoreReport:
        """`base` (what open() read) with the paging's progress."""
        return RestoreReport(
            sessions=self.stored, messages=self.messages, purged=base.purged,
            quota_buckets=base.quota_buckets, clean_shutdown=base.clean_shutdown,
            pending=self.pending,
        )

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

    def _on_session_event(self, event: SessionEvent, session: Session) -> None:
        if event.kind != "created" and self.running:
            self._ended.add(event.session_id)
