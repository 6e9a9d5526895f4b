"""Tenant LLM clients: a small LRU of clients keyed on (api key, base URL).

Why a cache: each client owns an HTTP connection pool. One client per turn wastes sockets and TLS
handshakes; one per tenant forever leaks them. So the cache is bounded (default 8) and evicts the
least recently used client.

Why leases: closing a client while a call still uses it breaks that call (the bug class of
PraisonAI #1680 and LiteLLM #22925). A caller holds a lease for the whole call; an evicted client
leaves the cache at once (it is never handed out again) but is closed only when its last lease
ends.

Keys never leave this module: entries are indexed by the key's SHA-256 and everything shown
(repr, stats, logs, errors) carries only `security.fingerprint` of the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

from engine.clock import Clock, SystemClock
from engine.errors import ConfigurationError, EngineClosed, LLMError
from engine.security import fingerprint

if TYPE_CHECKING:
    from openai import AsyncOpenAI

C = TypeVar("C")

DEFAULT_CAPACITY = 8
DEFAULT_WAIT_S = 30.0

log = logging.getLogger(__name__)

# (SHA-256 of the api key, base_url): the raw key is not kept as a dict key.
_Key = tuple[bytes, str | None]


@dataclass(frozen=True, slots=True)
class ClientEntryView:
    """One client as the console may show it: a key fingerprint, never the key."""

    fingerprint: str
    base_url: str | None
    leases: int
    last_used: float
    draining: bool  # evicted or cache closed, waiting for its last lease to end


@dataclass(frozen=True, slots=True)
class ClientCacheStats:
    capacity: int
    size: int  # clients in the cache (can be handed out)
    open_clients: int  # cached + evicted-but-not-yet-closed
    leased: int  # leases in flight, over all clients
    hits: int
    misses: int
    evictions: int
    closed: int  # closes finished, including failed ones
    close_errors: int
    entries: tuple[ClientEntryView, ...]  # cached, most recent first; then draining


@dataclass(slots=True, eq=False)
class _Entry(Generic[C]):
    client: C = field(repr=False)
    fingerprint: str
    base_url: str | None
    last_used: float
    leases: int = 0
    cached: bool = True
    closing: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self) -> ClientEntryView:
        return ClientEntryView(
            self.fingerprint, self.base_url, self.leases, self.last_used, not self.cached
        )


async def close_client(client: Any) -> None:
    """Default closer: OpenAI-style clients (and httpx) release their pool on `close()`."""
    await client.close()


def check_api_key(api_key: object) -> str:
    if not isinstance(api_key, str) or not api_key.strip():
        # Never echo the value: it may be a real key with a typo.
        raise ConfigurationError(
            "api_key must be a non-empty string; check the tenant's credentials"
        )
    return api_key


def check_base_url(base_url: object) -> str | None:
    if base_url is None:
        return None
    if not isinstance(base_url, str):
        raise ConfigurationError(
            f"base_url must be a string or None, got {type(base_url).__name__}"
        )
    try:
        parts = urlsplit(base_url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            "base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, or None"
        )
    if parts.username is not None or parts.password is not None:
        # The URL is shown in stats; credentials belong in api_key.
        raise ConfigurationError("base_url must not contain credentials; pass the key as api_key")
    return base_url


class ClientLease(Generic[C]):
    """`async with cache.lease(key, url) as client:`; the client stays open until exit."""

    __slots__ = ("_api_key", "_base_url", "_cache", "_entry")

    def __init__(self, cache: ClientCache[C], api_key: str, base_url: str | None) -> None:
        self._cache = cache
        self._api_key = api_key
        self._base_url = base_url
        self._entry: _Entry[C] | None = None

    def __repr__(self) -> str:
        held = self._entry.fingerprint if self._entry is not None else "not entered"
        return f"ClientLease({held})"

    async def __aenter__(self) -> C:
        if self._entry is not None:
            raise RuntimeError("a ClientLease can be entered only once")
        entry, evicted = self._cache._checkout(self._api_key, self._base_url)
        self._entry = entry
        if evicted is not None:
            try:
                await self._cache._close(evicted)
            except BaseException:
                # Cancelled while closing the client this lease displaced: give the lease back.
                self._cache._release(entry)
                raise
        return entry.client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._entry is not None
        closing = self._cache._release(self._entry)
        if closing is not None:
            await asyncio.shield(closing)


class ClientCache(Generic[C]):
    """Bounded LRU of clients with leases; see the module docstring for why.

    `factory(api_key, base_url)` builds a client; `closer(client)` releases it. A closer that
    raises is logged (fingerprint and exception type only) and counted in `close_errors`: a
    failing close must not turn a finished call into a failure.
    """

    def __init__(
        self,
        factory: Callable[[str, str | None], C],
        closer: Callable[[C], Awaitable[None]] = close_client,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(
                f"client cache capacity must be an integer >= 1, got {capacity!r}"
            )
        self._factory = factory
        self._closer = closer
        self._capacity = capacity
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._entries: OrderedDict[_Key, _Entry[C]] = OrderedDict()  # least recent first
        self._draining: set[_Entry[C]] = set()  # out of the cache, not yet closed
        self._all_closed = asyncio.Event()
        self._closing = False
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._closed = 0
        self._close_errors = 0

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (
            f"ClientCache({state}, capacity={self._capacity}, size={len(self._entries)}, "
            f"draining={len(self._draining)})"
        )

    @property
    def capacity(self) -> int:
        return self._capacity

    def lease(self, api_key: str, base_url: str | None = None) -> ClientLease[C]:
        """A lease on the client for (api_key, base_url), created on first use."""
        return ClientLease(self, check_api_key(api_key), check_base_url(base_url))

    async def aclose(self, *, wait: bool = False, timeout_s: float = DEFAULT_WAIT_S) -> int:
        """Close idle clients now; leased ones close when their lease ends.

        With `wait=True`, also wait up to `timeout_s` for those leases to end. Clients are never
        closed under a running call, so on timeout they stay open until their lease ends.
        Returns how many clients are still open. Later `lease()` entries raise EngineClosed.
        """
        if not self._closing:
            self._closing = True
            idle: list[asyncio.Task[None]] = []
            for entry in self._entries.values():
                entry.cached = False
                self._draining.add(entry)
                if entry.leases == 0:
                    idle.append(self._start_close(entry))
            self._entries.clear()
            self._note_if_all_closed()
            if idle:
                await asyncio.shield(asyncio.gather(*idle))
        if wait and not self._all_closed.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning(
                    "client cache closed with %d client(s) still leased after %.1fs; "
                    "they close when their calls end",
                    len(self._draining),
                    timeout_s,
                )
        return len(self._draining)

    def stats(self) -> ClientCacheStats:
        cached = tuple(entry.view() for entry in reversed(self._entries.values()))
        draining = tuple(
            sorted((entry.view() for entry in self._draining), key=lambda v: v.last_used)
        )
        entries = cached + draining
        return ClientCacheStats(
            capacity=self._capacity,
            size=len(self._entries),
            open_clients=len(self._entries) + len(self._draining),
            leased=sum(view.leases for view in entries),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            closed=self._closed,
            close_errors=self._close_errors,
            entries=entries,
        )

    # --- lease machinery (used by ClientLease) ---------------------------------------------

    def _checkout(self, api_key: str, base_url: str | None) -> tuple[_Entry[C], _Entry[C] | None]:
        """Take a lease; also return an evicted idle entry the caller must close."""
        if self._closing:
            raise EngineClosed("the LLM client cache is closed; open a new Engine to continue")
        key: _Key = (hashlib.sha256(api_key.encode("utf-8")).digest(), base_url)
        now = self._clock.now()
        entry = self._entries.get(key)
        if entry is not None:
            self._hits += 1
            self._entries.move_to_end(key)
        else:
            self._misses += 1
            entry = _Entry(self._build(api_key, base_url), _fingerprint(api_key), base_url, now)
            self._entries[key] = entry
        entry.leases += 1
        entry.last_used = now
        if len(self._entries) <= self._capacity:
            return entry, None
        _, evicted = self._entries.popitem(last=False)
        evicted.cached = False
        self._draining.add(evicted)
        self._evictions += 1
        log.debug(
            "evicted LLM client %s (%d lease(s) in flight)", evicted.fingerprint, evicted.leases
        )
        return entry, (evicted if evicted.leases == 0 else None)

    def _build(self, api_key: str, base_url: str | None) -> C:
        try:
            return self._factory(api_key, base_url)
        except Exception as exc:
            # `from None`: the original message may quote the key.
            raise LLMError(
                f"could not create an LLM client for key {_fingerprint(api_key)} "
                f"({type(exc).__name__}); check the tenant's base_url and api_key"
            ) from None

    def _release(self, entry: _Entry[C]) -> asyncio.Task[None] | None:
        """End a lease; return the close task if it was the last lease on an evicted client."""
        entry.leases -= 1
        entry.last_used = self._clock.now()
        if entry.leases == 0 and not entry.cached:
            return self._start_close(entry)
        return None

    async def _close(self, entry: _Entry[C]) -> None:
        # Shielded: a cancelled caller must not leave a client half-closed.
        await asyncio.shield(self._start_close(entry))

    def _start_close(self, entry: _Entry[C]) -> asyncio.Task[None]:
        if entry.closing is None:
            entry.closing = asyncio.get_running_loop().create_task(self._run_closer(entry))
        return entry.closing

    async def _run_closer(self, entry: _Entry[C]) -> None:
        try:
            await self._closer(entry.client)
        except Exception as exc:
            self._close_errors += 1
            log.warning("closing LLM client %s failed: %s", entry.fingerprint, type(exc).__name__)
        finally:
            self._closed += 1
            self._draining.discard(entry)
            self._note_if_all_closed()

    def _note_if_all_closed(self) -> None:
        if self._closing and not self._entries and not self._draining:
            self._all_closed.set()


def _fingerprint(api_key: str) -> str:
    return fingerprint(api_key.encode("utf-8"))


def openai_client_cache(
    capacity: int = DEFAULT_CAPACITY, timeout_s: float = 60.0, *, clock: Clock | None = None
) -> ClientCache[AsyncOpenAI]:
    """The product's cache: `AsyncOpenAI` clients with no SDK retries and a bounded timeout.

    `max_retries=0`: the engine owns retries (bounded, counted); the SDK's own would hide 429s.
    """
    # Imported here, at engine start-up, so a sim-only engine never pays the SDK's import time.
    from openai import AsyncOpenAI

    if not timeout_s > 0:
        raise ConfigurationError(f"client timeout_s must be a positive number, got {timeout_s!r}")

    def build(api_key: str, base_url: str | None) -> AsyncOpenAI:
        return AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s)

    return ClientCache(build, close_client, capacity=capacity, clock=clock)
