"""`GatewayTransport`: the users' five calls over HTTP to a running gateway (DESIGN "HTTP gateway").

Keep-alive connections, as many as there are users (each user has at most one request in
flight), spread over `httpx.AsyncClient`s of at most POOL_SIZE connections each, a session's
calls always through the same one: httpcore 1.x checks every connection of a pool (a readiness
syscall each) on every request, so one pool for a thousand users spent the client's whole CPU
on 50 requests a second. Error bodies `{"error": {"type": ...}}` become the engine's own
error types, so the stats count the same categories as in-process and users react the same way
(a 401 loses the session, `unavailable` stops them). A turn's reply carries the engine's share in
`Server-Timing: engine;dur=MS, model;dur=MS`, which splits the client's round trip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from engine import errors
from loadgen.transport import SessionGrant, TurnReply

E = TypeVar("E", bound=errors.EngineError)
POOL_SIZE = 32  # connections per httpx client (see the module docstring)


class UnexpectedReply(Exception):
    """A reply outside the gateway's contract: no JSON error body (a proxy, the server's
    connection limit) or a turn without its Server-Timing figures."""


class AppKeyRefused(Exception):
    """The gateway did not accept the app key this client was given."""


class ClientTimeout(Exception):
    """No reply within the client's request timeout."""


class ConnectionFailed(Exception):
    """The request could not be sent or its reply read (refused, reset, protocol error)."""


def _remote(cls: type[E], message: str, **fields: Any) -> E:
    """The engine's error type carrying the gateway's message and whatever fields its body
    gave; the engine-side constructors want details a client is never told."""
    error = cls.__new__(cls)
    errors.EngineError.__init__(error, message)
    for name, value in fields.items():
        setattr(error, name, value)
    return error


def _retry_after(body: dict[str, Any]) -> float:
    value = body.get("retry_after")
    return float(value) if isinstance(value, int | float) else math.inf


# The gateway's error types (DESIGN "HTTP gateway") as the engine's error classes.
ERROR_TYPES: dict[str, Callable[[dict[str, Any]], errors.EngineError]] = {
    "authentication_error": lambda b: errors.AuthenticationError(),
    "session_expired": lambda b: _remote(errors.SessionExpired, b["message"], reason="remote"),
    "invalid_input": lambda b: errors.InvalidInput(b["message"]),
    "invalid_value": lambda b: errors.InvalidInput(b["message"]),
    "model_not_found": lambda b: errors.InvalidInput(b["message"]),
    "payload_too_large": lambda b: errors.InvalidInput(b["message"]),
    "session_busy": lambda b: _remote(errors.SessionBusy, b["message"]),
    "interrupted": lambda b: errors.Interrupted(),
    "session_limit": lambda b: _remote(errors.SessionLimitReached, b["message"]),
    "rate_limited": lambda b: (
        errors.AuthBackoff(_retry_after(b)) if b.get("code") == "auth_backoff"
        else _remote(errors.RateLimited, b["message"], retry_after=_retry_after(b))
    ),
    "quota_exceeded": lambda b: _remote(
        errors.QuotaExceeded, b["message"], retry_after=_retry_after(b)
    ),
    "llm_error": lambda b: errors.LLMError(b["message"]),
    "pool_timeout": lambda b: _remote(errors.PoolTimeout, b["message"]),
    "unavailable": lambda b: errors.EngineClosed(b["message"]),
}


def error_from_response(response: httpx.Response) -> Exception:
    """The exception an error response stands for (the engine's type when the body names one)."""
    try:
        body = response.json()["error"]
        kind, message = body["type"], body["message"]
    except (ValueError, KeyError, TypeError):
        return UnexpectedReply(f"HTTP {response.status_code} without a JSON error body")
    make = ERROR_TYPES.get(kind)
    if make is None:  # internal_error, or a type newer than this client
        return UnexpectedReply(f"HTTP {response.status_code} {kind}: {message}")
    return make(body)


def parse_server_timing(header: str) -> dict[str, float]:
    """`engine;dur=12.5, model;dur=10` -> {"engine": 12.5, "model": 10.0} (milliseconds)."""
    timings: dict[str, float] = {}
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    timings[name] = float(value.strip().strip('"'))
                except ValueError:
                    continue
    return timings


class GatewayTransport:
    """Calls a gateway at `base_url`; `async with` opens the pool and reads the agent types."""

    def __init__(
        self, base_url: str, app_key: str, *, connections: int, timeout_s: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._app_auth = {"Authorization": f"Bearer {app_key}"}
        connections = max(1, connections)
        pools = -(-connections // POOL_SIZE)
        size = -(-connections // pools)
        self._clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                timeout=timeout_s,
                limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size, keepalive_expiry=60.0
                ),
            )
            for _ in range(pools)
        ]
        self._agent_types: tuple[str, ...] = ()

    async def __aenter__(self) -> Self:
        try:
            models = await self._request("GET", "/v1/models", self._app_auth)
            self._agent_types = tuple(m["id"] for m in models.json()["data"])
        except errors.AuthenticationError:
            await self._close()
            raise AppKeyRefused(
                f"the gateway at {self.base_url} refused the app key; give one of its keys"
            ) from None
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for client in self._clients:
            await client.aclose()

    @property
    def target(self) -> str:
        return self.base_url

    @property
    def agent_types(self) -> tuple[str, ...]:
        return self._agent_types

    @property
    def tiers(self) -> None:
        return None  # the gateway does not publish them; an unknown tier gets the default

    @property
    def default_tier(self) -> None:
        return None

    @property
    def sim(self) -> None:
        return None

    async def create_session(self, user_id: str, tier: str | None) -> SessionGrant:
        body: dict[str, Any] = {"user_id": user_id}
        if tier is not None:
            body["metadata"] = {"tier": tier}
        created = (
            await self._request("POST", "/v1/sessions", self._app_auth, body, by=user_id)
        ).json()
        return SessionGrant(created["session_id"], created["token"])

    async def send(self, session_id: str, token: str, text: str, agent_type: str) -> TurnReply:
        response = await self._request(
            "POST", f"/v1/sessions/{session_id}/messages", _bearer(token),
            {"content": text, "agent_type": agent_type}, by=session_id,
        )
        timing = parse_server_timing(response.headers.get("server-timing", ""))
        if "engine" not in timing or "model" not in timing:
            raise UnexpectedReply("turn reply without Server-Timing engine and model durations")
        return TurnReply(model_s=timing["model"] / 1000, engine_s=timing["engine"] / 1000)

    async def history(self, session_id: str, token: str) -> int:
        response = await self._request(
            "GET", f"/v1/sessions/{session_id}/messages", _bearer(token), by=session_id
        )
        return len(response.json()["messages"])

    async def rotate_token(self, session_id: str, token: str) -> str:
        response = await self._request(
            "POST", f"/v1/sessions/{session_id}/token", _bearer(token), by=session_id
        )
        return response.json()["token"]

    async def end_session(self, session_id: str, token: str) -> None:
        await self._request(
            "DELETE", f"/v1/sessions/{session_id}", _bearer(token), by=session_id
        )

    async def _request(
        self, method: str, path: str, headers: dict[str, str],
        body: dict[str, Any] | None = None, *, by: str = "",
    ) -> httpx.Response:
        """Through the pool `by` (a session id or user id) maps to."""
        client = self._clients[hash(by) % len(self._clients)]
        try:
            response = await client.request(method, path, headers=headers, json=body)
        except httpx.TimeoutException as exc:
            raise ClientTimeout(f"{method} {path}: no reply in time ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{method} {path}: {exc!r}") from exc
        if response.is_error:
            raise error_from_response(response)
        return response


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
