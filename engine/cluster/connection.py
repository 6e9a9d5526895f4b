"""The cluster's one connection pool to Valkey/Redis, and the one place its failures are typed.

Every call goes through `ClusterClient.run`, which turns a connection failure, a timeout or a
server that cannot take writes into `ClusterUnavailable` naming the server (its URL without the
password). There is no fallback:
a worker that cannot reach the shared state refuses rather than enforce limits on its own.
redis-py reconnects by itself, so the first call after the server is back succeeds; a restarted
server has lost the Lua scripts, and redis-py's `Script` loads them again on NOSCRIPT.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import ClusterUnavailable

T = TypeVar("T")

BACKEND = "Valkey/Redis"
# Down, unreachable, or up but unable to take writes (out of memory, a replica after failover,
# a cluster without quorum): to a worker all mean the same, no decision can be made now.
_UNAVAILABLE = (
    RedisConnectionError, RedisTimeoutError, TimeoutError, OSError,
    OutOfMemoryError, ReadOnlyError, ClusterDownError, TryAgainError,
)

ScriptArg = str | int | float


def redacted(url: str) -> str:
    """The URL as it may be shown: the password (in the user part or the query) removed."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(name, value) for name, value in query if name != "password"]
    if len(kept) != len(query):
        parts = parts._replace(query=urlencode(kept))
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}"


class ClusterClient:
    """A redis-py asyncio client with the key prefix, the scripts and the failure translation."""

    def __init__(
        self, url: str, prefix: str, timeout_s: float, max_connections: int = 64
    ) -> None:
        self.url = redacted(url)
        self.prefix = prefix
        # A bounded pool: a burst of turns queues for a connection instead of opening one
        # each. The queue itself has no timeout: a busy worker is not an unreachable server,
        # and every call holding a connection gives it back within the socket timeouts. One
        # retry: a connection the server dropped (a restart) is replaced once, at once; a
        # server that is down fails within two connect timeouts.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self.redis = redis.Redis.from_pool(pool)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> AsyncScript:
        """Register a Lua script once; calls use EVALSHA (and load it again after a restart)."""
        return self.redis.register_script(source)

    async def run(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except _UNAVAILABLE as exc:
            raise ClusterUnavailable(BACKEND, self.url, _cause(exc)) from exc

    async def call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> object:
        return await self.run(script(keys=list(keys), args=list(args)))

    async def queue(
        self, pipe: Pipeline, script: AsyncScript, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> None:
        """Add a script call to `pipe`; its reply comes with the pipeline's (which first loads
        the scripts again if the server lost them)."""
        await script(keys=list(keys), args=list(args), client=pipe)

    async def ping(self) -> None:
        await self.run(self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
