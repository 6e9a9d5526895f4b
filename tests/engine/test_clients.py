"""Tenant client cache: LRU bounds, leases that keep evicted clients open, and no key ever shown."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from engine.clients import ClientCache, ClientCacheStats, openai_client_cache
from engine.clock import ManualClock
from engine.errors import ConfigurationError, EngineClosed, LLMError
from engine.security import fingerprint

SECRET = "sk-test-SECRET-0123456789abcdef"


class FakeClient:
    """Records its calls in flight so a close under a running call is caught."""

    def __init__(self, api_key: str, base_url: str | None) -> None:
        self.key_fp = fingerprint(api_key.encode())
        self.base_url = base_url
        self.in_flight = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"FakeClient({self.key_fp})"


class Recorder:
    """Factory and closer pair that remembers what it built and closed."""

    def __init__(self) -> None:
        self.built: list[FakeClient] = []
        self.closed: list[FakeClient] = []
        self.closed_under_call = 0

    def factory(self, api_key: str, base_url: str | None) -> FakeClient:
        client = FakeClient(api_key, base_url)
        self.built.append(client)
        return client

    async def closer(self, client: FakeClient) -> None:
        if client.in_flight:
            self.closed_under_call += 1
        assert not client.closed, "closed twice"
        client.closed = True
        self.closed.append(client)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def cache(rec: Recorder, clock: ManualClock) -> ClientCache[FakeClient]:
    return ClientCache(rec.factory, rec.closer, capacity=2, clock=clock)


async def use(cache: ClientCache[FakeClient], key: str, url: str | None = None) -> FakeClient:
    async with cache.lease(key, url) as client:
        return client


async def test_same_key_and_url_share_one_client(cache, rec):
    first = await use(cache, "k1")
    again = await use(cache, "k1")
    other_url = await use(cache, "k1", "http://127.0.0.1:9000/v1")
    assert first is again
    assert other_url is not first
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size, stats.leased) == (1, 2, 2, 0)


async def test_least_recently_used_idle_client_is_evicted_and_closed(cache, rec):
    a = await use(cache, "ka")
    b = await use(cache, "kb")
    await use(cache, "ka")  # a becomes most recent, so b is the eviction victim
    c = await use(cache, "kc")
    assert rec.closed == [b]
    assert not a.closed and not c.closed
    stats = cache.stats()
    assert (stats.size, stats.open_clients, stats.evictions, stats.closed) == (2, 2, 1, 1)
    assert [e.fingerprint for e in stats.entries] == [
        fingerprint(b"kc"),
        fingerprint(b"ka"),
    ]


async def test_evicted_client_stays_open_until_its_last_lease_ends(cache, rec):
    first_lease = cache.lease("ka")
    second_lease = cache.lease("ka")
    a = await first_lease.__aenter__()
    assert await second_lease.__aenter__() is a
    await use(cache, "kb")
    await use(cache, "kc")  # evicts ka while two calls use it

    stats = cache.stats()
    assert stats.evictions == 1 and stats.closed == 0
    assert stats.open_clients == 3 and stats.size == 2 and stats.leased == 2
    draining = [e for e in stats.entries if e.draining]
    assert [(e.fingerprint, e.leases) for e in draining] == [(fingerprint(b"ka"), 2)]

    await first_lease.__aexit__(None, None, None)
    assert not a.closed
    await second_lease.__aexit__(None, None, None)
    assert a.closed
    stats = cache.stats()
    assert (stats.closed, stats.open_clients, stats.leased) == (1, 2, 0)


async def test_a_draining_client_is_never_handed_out_again(cache, rec):
    held = cache.lease("ka")
    a = await held.__aenter__()
    await use(cache, "kb")
    await use(cache, "kc")  # ka evicted, still leased
    fresh = await use(cache, "ka")
    assert fresh is not a
    assert not a.closed
    await held.__aexit__(None, None, None)
    assert a.closed and not fresh.closed


async def test_cancelled_call_still_releases_and_closes_a_draining_client(cache, rec):
    started = asyncio.Event()
    clients: list[FakeClient] = []

    async def call() -> None:
        async with cache.lease("ka") as client:
            clients.append(client)
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    await use(cache, "kb")
    await use(cache, "kc")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clients[0].closed
    assert cache.stats().leased == 0


async def test_cancel_while_closing_the_displaced_client_returns_the_lease(rec, clock):
    gate = asyncio.Event()

    async def slow_closer(client: FakeClient) -> None:
        await gate.wait()
        await rec.closer(client)

    cache = ClientCache(rec.factory, slow_closer, capacity=1, clock=clock)
    old = await use(cache, "ka")
    entering = asyncio.create_task(use(cache, "kb"))
    await asyncio.sleep(0)
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert cache.stats().leased == 0
    gate.set()
    await cache.aclose(wait=True)
    assert old.closed  # the shielded close finished despite the cancellation


async def test_a_failing_closer_is_counted_and_does_not_break_the_lease_exit(rec, clock, caplog):
    async def broken_closer(client: FakeClient) -> None:
        raise OSError(f"socket already gone for {SECRET}")

    cache = ClientCache(rec.factory, broken_closer, capacity=1, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="engine.clients"):
        held = cache.lease(SECRET)
        await held.__aenter__()
        await use(cache, "other")
        await held.__aexit__(None, None, None)  # closes the evicted client: must not raise
    stats = cache.stats()
    assert (stats.closed, stats.close_errors) == (1, 1)
    assert "OSError" in caplog.text
    assert SECRET not in caplog.text


async def test_last_used_follows_the_injected_clock(cache, clock):
    start = clock.now()
    async with cache.lease("ka"):
        clock.advance(5)
    assert cache.stats().entries[0].last_used == start + 5


async def test_aclose_closes_idle_now_and_leased_when_their_call_ends(cache, rec):
    idle = await use(cache, "ka")
    held = cache.lease("kb")
    busy = await held.__aenter__()
    assert await cache.aclose() == 1
    assert idle.closed and not busy.closed
    with pytest.raises(EngineClosed):
        await use(cache, "ka")
    await held.__aexit__(None, None, None)
    assert busy.closed
    stats = cache.stats()
    assert (stats.open_clients, stats.size, stats.closed) == (0, 0, 2)
    assert await cache.aclose() == 0  # idempotent


async def test_aclose_wait_waits_for_leases_to_end(cache, rec):
    release = asyncio.Event()
    entered = asyncio.Event()

    async def call() -> None:
        async with cache.lease("ka"):
            entered.set()
            await release.wait()

    task = asyncio.create_task(call())
    await entered.wait()
    closing = asyncio.create_task(cache.aclose(wait=True))
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    assert await closing == 0
    await task
    assert rec.built[0].closed


async def test_aclose_wait_gives_up_after_its_timeout_without_closing_under_a_call(cache, rec):
    held = cache.lease("ka")
    client = await held.__aenter__()
    assert await cache.aclose(wait=True, timeout_s=0.01) == 1
    assert not client.closed
    await held.__aexit__(None, None, None)
    assert client.closed


async def test_no_client_is_ever_closed_under_a_running_call(rec):
    """Random interleavings of many tenants on a small cache: closes only ever hit idle clients."""
    cache = ClientCache(rec.factory, rec.closer, capacity=3)
    rng = random.Random(7)

    async def call(key: str, hops: int) -> None:
        async with cache.lease(key) as client:
            assert not client.closed
            client.in_flight += 1
            for _ in range(hops):
                await asyncio.sleep(0)
            client.in_flight -= 1

    await asyncio.gather(
        *(call(f"key-{rng.randrange(8)}", rng.randrange(6)) for _ in range(400)),
    )
    await cache.aclose(wait=True)
    assert rec.closed_under_call == 0
    assert len(rec.closed) == len(rec.built)
    stats = cache.stats()
    assert stats.open_clients == 0 and stats.leased == 0
    assert stats.closed == len(rec.built) == stats.misses


@pytest.mark.parametrize("bad", ["", "   ", None, 42, b"sk-bytes"])
async def test_api_key_must_be_a_non_empty_string(cache, bad):
    with pytest.raises(ConfigurationError, match="api_key"):
        cache.lease(bad)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com", "example.com/v1", "http://", 7, f"https://user:{SECRET}@host/v1"],
)
async def test_base_url_must_be_an_http_url_without_credentials(cache, url):
    with pytest.raises(ConfigurationError, match="base_url") as info:
        cache.lease("k", url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_capacity_must_be_a_positive_integer(rec, capacity):
    with pytest.raises(ConfigurationError, match="capacity"):
        ClientCache(rec.factory, rec.closer, capacity=capacity)


async def test_a_failing_factory_raises_llm_error_naming_only_the_fingerprint(clock):
    def factory(api_key: str, base_url: str | None) -> FakeClient:
        raise ValueError(f"bad key {api_key}")

    cache = ClientCache(factory, capacity=1, clock=clock)
    with pytest.raises(LLMError) as info:
        await use(cache, SECRET)
    assert SECRET not in str(info.value)
    assert fingerprint(SECRET.encode()) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_api_key_never_appears_in_repr_stats_logs_or_errors(caplog):
    cache = openai_client_cache(capacity=1, timeout_s=5.0)
    with caplog.at_level(logging.DEBUG, logger="engine.clients"):
        async with cache.lease(SECRET, "http://127.0.0.1:9/v1") as client:
            assert client.max_retries == 0
            lease = cache.lease("sk-other")
            shown = [repr(cache), str(cache.stats()), repr(cache.stats()), repr(lease)]
            async with lease:  # evicts the SECRET client while it is leased
                shown += [repr(cache), str(cache.stats()), repr(lease)]
        shown.append(str(cache.stats()))
        await cache.aclose(wait=True)
        with pytest.raises(EngineClosed) as info:
            await use(cache, SECRET)
    shown += [str(info.value), caplog.text, repr(cache)]
    for text in shown:
        assert SECRET not in text
    assert fingerprint(SECRET.encode()) in "".join(shown)


async def test_stats_is_a_frozen_snapshot(cache):
    await use(cache, "ka")
    stats = cache.stats()
    assert isinstance(stats, ClientCacheStats)
    with pytest.raises(AttributeError):
        stats.hits = 5  # type: ignore[misc]
    await use(cache, "ka")
    assert stats.hits == 0 and cache.stats().hits == 1


async def test_openai_cache_validates_its_timeout():
    with pytest.raises(ConfigurationError, match="timeout_s"):
        openai_client_cache(timeout_s=0)
