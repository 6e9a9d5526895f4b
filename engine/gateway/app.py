"""The gateway's ASGI app: DESIGN.md's HTTP contract over the Engine's public API.

Handlers only translate: they read and check the request, call the same `Engine` methods an
in-process caller uses, and shape the reply; every refusal is an engine error mapped to a status
in `errors.py`. Each request is recorded once under its route template (`stats.py`).

Streaming: the engine hands a turn's reply to `on_delta` piece by piece as the model produces
it. A streamed turn runs in its own task so that failures before the first piece (wrong token,
rate limit, quota, busy session) are still ordinary error responses with their status; after
the first piece they arrive as an SSE error event. A client that goes away mid-stream does not
cancel its turn: the reply is kept and can be read with GET .../messages.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from engine.config import GatewaySettings
from engine.engine import Engine
from engine.errors import AuthenticationError
from engine.gateway import sse
from engine.gateway.appkeys import AppKeys
from engine.gateway.body import field, read_json_object
from engine.gateway.errors import (
    APP_KEY_REQUIRED,
    GatewayError,
    HTTPFailure,
    auth_failure_response,
    error_object,
    error_response,
    failure_of,
    invalid_input,
    invalid_value,
    json_response,
)
from engine.gateway.openapi import openapi_document
from engine.gateway.prometheus import EngineCollector, TurnHistograms
from engine.gateway.routing import Routes
from engine.gateway.stats import GatewayMonitor
from engine.turns import MULTITASK_STRATEGIES
from engine.views import Reply

Handler = Callable[[Request], Awaitable[Response]]
CLOSE_AFTER = frozenset({408, 413})  # the rest of the request may be unread: do not reuse


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """A route's handler, the name its requests are recorded under, and its errors' shape."""

    route: str  # "METHOD /template"
    handler: Handler
    openai: bool


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr per field
class _Turn:
    """What a request asks of the engine for one turn."""

    session_id: str
    token: str
    content: str
    agent_type: str
    strategy: str
    client: str

    def send(
        self, engine: Engine, on_delta: Callable[[str], None] | None = None
    ) -> Awaitable[Reply]:
        return engine.send(
            self.session_id, self.token, self.content, agent_type=self.agent_type,
            multitask_strategy=self.strategy,  # type: ignore[arg-type]
            on_delta=on_delta, client=self.client,
        )


@dataclass(slots=True)
class _Stream:
    """A turn running in its own task, its reply's pieces queued, None once it is over."""

    turn: asyncio.Task[Reply]
    pieces: asyncio.Queue[str | None]
    first: str | None
    started: float  # perf_counter() when the turn started
    ended: float = 0.0  # ... and when it ended

    def elapsed(self) -> float:
        return self.ended - self.started


class GatewayApp:
    """The ASGI app (`asgi`) on Starlette's requests and responses; `monitor` and `registry`
    feed the console and /metrics."""

    def __init__(
        self,
        engine: Engine,
        app_keys: AppKeys,
        settings: GatewaySettings,
    ) -> None:
        self.engine = engine
        self.app_keys = app_keys
        self.settings = settings
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        self.monitor = GatewayMonitor(engine.clock, self.registry)
        self._turns = TurnHistograms(self.registry)
        self._openapi = json.dumps(openapi_document(engine.agent_types)).encode()
        self.route_names: list[str] = []  # "METHOD /template" of every route, as recorded
        self._routes: Routes[_Endpoint] = Routes()
        for route, template, handler, openai in (
            ("POST /v1/sessions", "/v1/sessions", self.create_session, False),
            ("GET /v1/sessions/{id}/messages", "/v1/sessions/{session_id}/messages",
             self.messages, False),
            ("POST /v1/sessions/{id}/messages", "/v1/sessions/{session_id}/messages",
             self.send, False),
            ("POST /v1/sessions/{id}/token", "/v1/sessions/{session_id}/token",
             self.rotate_token, False),
            ("DELETE /v1/sessions/{id}", "/v1/sessions/{session_id}", self.end_session, False),
            ("POST /v1/chat/completions", "/v1/chat/completions", self.chat_completions, True),
            ("GET /v1/models", "/v1/models", self.models, True),
            ("GET /metrics", "/metrics", self.metrics, False),
            ("GET /healthz", "/healthz", self.healthz, False),
            ("GET /readyz", "/readyz", self.readyz, False),
            ("GET /openapi.json", "/openapi.json", self.openapi, False),
        ):
            method = route.split(" ", 1)[0]
            self._routes.add(method, template, _Endpoint(route, handler, openai))
            self.route_names.append(route)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: the route looked up once, its handler timed, its exceptions turned into
        error responses, the request recorded once, the response sent straight to the server
        (no middleware). All here rather than in a wrapper around each handler: a refusal is
        raised through every coroutine between the engine and its catcher, and each one it
        unwinds cost about 2,000 instructions, an eighth of a refusal's own work."""
        if scope["type"] != "http":  # lifespan is off, and websockets are not served
            return
        found = self._routes.match(scope["method"], scope["path"])
        scope["path_params"] = found.params
        request = Request(scope, receive)
        endpoint = found.endpoint
        if endpoint is None:
            response = self._not_routed(request, found.status)
        else:
            started = time.perf_counter()
            try:
                response = await endpoint.handler(request)
            except AuthenticationError as exc:  # the commonest failure: prebuilt answers
                response = auth_failure_response(exc, openai=endpoint.openai)
            except Exception as exc:
                response = error_response(failure_of(exc), openai=endpoint.openai)
                if response.status_code in CLOSE_AFTER:
                    response.headers["connection"] = "close"
            self.monitor.record(endpoint.route, response.status_code,
                                time.perf_counter() - started)
        await response(scope, receive, send)

    # -- sessions ----------------------------------------------------------------------------
    async def create_session(self, request: Request) -> Response:
        if not self.app_keys.verify(_bearer(request)):
            raise GatewayError(APP_KEY_REQUIRED)
        body = await self._body(request)
        user_id = _required(body, "user_id", str)
        metadata = field(body, "metadata", dict)
        created = await self.engine.create_session(user_id, metadata, origin="http")
        return json_response(
            {
                "session_id": created.session_id,
                "user_id": created.user_id,
                "token": created.token,
                "expires_at": created.expires_at,
            },
            201,
        )

    async def messages(self, request: Request) -> Response:
        history = await self.engine.history(
            _session_id(request), _bearer(request), client=_client(request)
        )
        return json_response(
            {"messages": [{"role": m.role, "content": m.content, "created_at": m.at}
                          for m in history]}
        )

    async def send(self, request: Request) -> Response:
        body = await self._body(request)
        content = _required(body, "content", str)
        agent_type = field(body, "agent_type", str, "assistant")
        strategy = _strategy(field(body, "multitask_strategy", str, "enqueue"))
        session_id, token = _session_id(request), _bearer(request)
        if not field(body, "stream", bool, False):
            turn = _Turn(session_id, token, content, agent_type, strategy, _client(request))
            reply, engine_s = await self._turn(turn)
            return json_response(
                _reply_object(reply, engine_s), headers=_server_timing(reply, engine_s)
            )
        stream = await self._start(
            _Turn(session_id, token, content, agent_type, strategy, _client(request))
        )

        async def events() -> Any:
            async for piece in self._pieces(stream):
                yield sse.event("delta", {"content": piece})
            try:
                reply = stream.turn.result()
            except Exception as exc:
                yield sse.event("error", {"error": error_object(failure_of(exc))})
                return
            engine_s = stream.elapsed()
            self._turns.observe(reply.agent_type, engine_s, reply.model_latency_s)
            yield sse.event("done", _reply_object(reply, engine_s))

        return _event_stream(events())

    async def rotate_token(self, request: Request) -> Response:
        token = await self.engine.rotate_token(
            _session_id(request), _bearer(request), client=_client(request)
        )
        return json_response({"token": token})

    async def end_session(self, request: Request) -> Response:
        await self.engine.end_session(
            _session_id(request), _bearer(request), client=_client(request)
        )
        return Response(status_code=204)

    # -- OpenAI-compatible -------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        session_id = request.headers.get("x-session-id")
        if not session_id:
            raise invalid_input(
                "X-Session-ID header is required: the session whose history the server keeps",
                param="X-Session-ID",
            )
        body = await self._body(request)
        model = _required(body, "model", str)
        if model not in self.engine.agent_types:
            raise GatewayError(HTTPFailure(
                404, "model_not_found",
                f"model {model!r} does not exist; GET /v1/models lists the agent types",
                param="model", code="model_not_found",
            ))
        content = _last_user_text(_required(body, "messages", list))
        strategy = _strategy(
            field(body, "multitask_strategy", str)
            or request.headers.get("x-multitask-strategy", "enqueue")
        )
        token = _bearer(request)
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if not field(body, "stream", bool, False):
            turn = _Turn(session_id, token, content, model, strategy, _client(request))
            reply, engine_s = await self._turn(turn)
            return json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": "stop",
                    }],
                    "usage": _usage(reply),
                },
                headers=_server_timing(reply, engine_s),
            )
        include_usage = field(body, "stream_options", dict, {}).get("include_usage") is True
        stream = await self._start(
            _Turn(session_id, token, content, model, strategy, _client(request))
        )

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return sse.data(payload)

        async def events() -> Any:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for piece in self._pieces(stream):
                yield chunk({"content": piece}, None)
            try:
                reply = stream.turn.result()
            except Exception as exc:
                yield sse.data({"error": error_object(failure_of(exc), openai=True)})
                return
            self._turns.observe(reply.agent_type, stream.elapsed(), reply.model_latency_s)
            yield chunk({}, "stop")
            if include_usage:
                yield sse.data({
                    "id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": _usage(reply),
                })
            yield sse.DONE

        return _event_stream(events())

    async def models(self, request: Request) -> Response:
        presented = _bearer(request)
        if not self.app_keys.verify(presented):
            await self.engine.check(
                request.headers.get("x-session-id", ""), presented, client=_client(request)
            )
        return json_response({
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "session-console"}
                for name in self.engine.agent_types
            ],
        })

    # -- operations --------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.engine.ready:
            return json_response({"status": "ready"})
        return json_response({"status": "unavailable", "engine": self.engine.state}, 503)

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    # -- plumbing ----------------------------------------------------------------------------
    def _not_routed(self, request: Request, status: int) -> Response:
        kind = "not_found" if status == 404 else "method_not_allowed"
        failure = HTTPFailure(status, kind, f"{request.method} {request.url.path}: "
                              f"{HTTPStatus(status).phrase}; GET /openapi.json lists the routes")
        self.monitor.record("unrouted", status, 0.0)
        return error_response(failure)

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json_object(
            request, self.settings.max_request_bytes, self.settings.body_timeout_s
        )

    async def _turn(self, turn: _Turn) -> tuple[Reply, float]:
        """A turn, and the whole time the engine took for it (its commit wait included)."""
        started = time.perf_counter()
        reply = await turn.send(self.engine)
        engine_s = time.perf_counter() - started
        self._turns.observe(reply.agent_type, engine_s, reply.model_latency_s)
        return reply, engine_s

    async def _start(self, ask: _Turn) -> _Stream:
        """Start a streamed turn; a failure before its first piece raises here (a status)."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        turn = asyncio.create_task(ask.send(self.engine, pieces.put_nowait))
        stream = _Stream(turn, pieces, None, time.perf_counter())

        def over(_: object) -> None:
            stream.ended = time.perf_counter()
            pieces.put_nowait(None)

        turn.add_done_callback(over)
        first = await pieces.get()
        if first is None and not turn.cancelled() and turn.exception() is not None:
            raise turn.exception()  # type: ignore[misc]
        stream.first = first
        return stream

    async def _pieces(self, stream: _Stream) -> Any:
        """The reply's pieces as they come, counted as an open stream meanwhile."""
        self.monitor.streams += 1
        try:
            piece = stream.first
            while piece is not None:
                yield piece
                piece = await stream.pieces.get()
        finally:
            self.monitor.streams -= 1


def _event_stream(events: Any) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _bearer(request: Request) -> str:
    """The bearer credential, or "" (which no token or key matches)."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def _client(request: Request) -> str:
    """Who is calling, for backing off failed authentication: the peer's address."""
    return f"http:{request.client.host}" if request.client is not None else "http:unknown"


def _session_id(request: Request) -> str:
    return request.path_params["session_id"]


def _required(body: dict[str, Any], name: str, kind: type) -> Any:
    value = field(body, name, kind)
    if value is None:
        raise invalid_input(f"{name} is required", param=name)
    return value


def _strategy(value: str) -> str:
    if value not in MULTITASK_STRATEGIES:
        raise invalid_value(
            f"multitask_strategy must be one of {', '.join(MULTITASK_STRATEGIES)}, "
            f"got {value!r}",
            param="multitask_strategy",
        )
    return value


def _last_user_text(messages: list[Any]) -> str:
    """The turn: the last message, which must be the user's (the server keeps the history)."""
    if not messages:
        raise invalid_input("messages is empty; send the user's message last", param="messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise invalid_input(
            "the last message must have role 'user': it is the new turn, and the server "
            "keeps the history", param="messages",
        )
    content = last.get("content")
    if isinstance(content, list):  # content parts: the text ones are the turn
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    if isinstance(content, str):
        return content
    raise invalid_input(
        "the last message's content must be a string or text parts", param="messages"
    )


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _reply_object(reply: Reply, engine_s: float) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": reply.text,
        "agent_type": reply.agent_type,
        "usage": {"prompt_tokens": reply.prompt_tokens,
                  "completion_tokens": reply.completion_tokens},
        "timing": {"engine_ms": engine_s * 1000, "model_ms": reply.model_latency_s * 1000},
    }


def _server_timing(reply: Reply, engine_s: float) -> dict[str, str]:
    """The engine's share of the reply's latency, for clients to split theirs (Server-Timing):
    the whole `engine.send` call, its commit wait included, and the model's part of it."""
    return {
        "server-timing": f"engine;dur={engine_s * 1000:.3f}, "
                         f"model;dur={reply.model_latency_s * 1000:.3f}"
    }
