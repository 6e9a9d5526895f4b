"""The `openai` backend: any OpenAI-compatible chat completions endpoint.

Its settings (endpoint, key, model), the SDK client it is given by the tenant client cache, and
the adapter itself with its bounded retries, streaming and error messages that never show a key.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from openai import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
    AsyncStream,
)

from engine.errors import ConfigurationError, LLMError
from engine.llm import CallOutcome, ChatMessage, ModelAdapter, estimate_prompt_tokens, repaired
from engine.security import fingerprint
from engine.tokens import estimate_tokens

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
SERVER_MESSAGE_CHARS = 200

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """Where the `openai` backend sends requests. The key never appears in repr."""

    base_url: str
    api_key: str = field(repr=False)
    model: str

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.api_key.encode("utf-8"))


def resolve_openai_settings(
    base_url: str | None = None, api_key: str | None = None, model: str | None = None
) -> OpenAISettings:
    """The `openai` backend's endpoint, key and model, with defaults for what is left unset.

    Local servers (Ollama, vLLM, `python -m engine.simserver`) accept any key, so a placeholder
    such as "sk-local" is fine there; what is required is that some key is set, so that a
    forgotten key fails at start-up rather than on the first user's turn.
    """
    if not api_key:
        raise ConfigurationError(
            "llm backend 'openai' needs an API key: set LLMSettings.api_key, or OPENAI_API_KEY "
            "with EngineConfig.from_env() (local OpenAI-compatible servers accept any "
            "placeholder, e.g. 'sk-local')"
        )
    return OpenAISettings(
        base_url=base_url or DEFAULT_OPENAI_BASE_URL,
        api_key=api_key,
        model=model or DEFAULT_OPENAI_MODEL,
    )


def new_client(settings: OpenAISettings, *, timeout_s: float = 30.0) -> AsyncOpenAI:
    """An SDK client with its own retries off: the adapter's bounded retries replace them."""
    return AsyncOpenAI(
        api_key=settings.api_key, base_url=settings.base_url, max_retries=0, timeout=timeout_s
    )


@dataclass(slots=True)
class _Delivered:
    """The pieces of a streamed reply that reached the caller; while there are none, a failed
    attempt can be retried without the caller seeing any text twice."""

    on_delta: Callable[[str], None]
    parts: list[str] = field(default_factory=list)

    def __call__(self, piece: str) -> None:
        self.parts.append(piece)
        self.on_delta(piece)


class _StreamCut(Exception):
    """A stream that ended without a finish_reason: the server stopped before the reply did."""


class OpenAICompatModel(ModelAdapter):
    """The `openai` backend: one POST /chat/completions per attempt, bounded retries.

    It uses the SDK's raw `client.post(...)` rather than `chat.completions.create`: request
    building then stays flat as history grows, and every failure reaches this code instead of
    the SDK's retry loop (which is disabled per request, whatever the client's setting).

    Streaming: when the turn has an `on_delta` (see `begin_call`), the request asks for
    `"stream": true` with `stream_options.include_usage`, the SDK's `AsyncStream` decodes the
    server-sent events (as plain dicts, `cast_to=object`: no model objects built per chunk), and
    each content piece goes to `on_delta` as it arrives; tokens come from the usage chunk. A
    server that answers with plain JSON instead is read as one piece. A stream that breaks off
    (an error event, a dropped connection, an end without finish_reason) fails the call.

    Retries: 408/409/429/5xx, connection failures and broken-off streams, at most `max_retries`
    more attempts, waiting the server's Retry-After (retry-after-ms or seconds) when it asks for
    no more than `retry_after_cap_s`, else a jittered exponential backoff. A timeout is not
    retried: a hung server tends to stay hung and the turn's time is better spent failing
    clearly. Once a piece of the reply has reached `on_delta`, nothing is retried (the caller
    would get that text twice): the failure is an LLMError at once. Every attempt, stream
    included, is bounded by `timeout_s`.

    The client comes from the tenant client cache: `bind(client)` before each call.
    """

    def __init__(
        self,
        model: str,
        client: AsyncOpenAI | None = None,
        *,
        max_retries: int = 2,
        timeout_s: float = 30.0,
        max_completion_tokens: int | None = None,
        backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
        retry_after_cap_s: float = 10.0,
    ) -> None:
        super().__init__(model)
        if max_retries < 0 or timeout_s <= 0:
            raise ConfigurationError("OpenAICompatModel needs max_retries >= 0 and timeout_s > 0")
        self.client = client
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_completion_tokens = max_completion_tokens
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_after_cap_s = retry_after_cap_s

    def bind(self, client: AsyncOpenAI | None) -> None:
        """Use `client` for the next calls (None unbinds, so a released agent holds no client)."""
        self.client = client

    async def _complete(self, messages: list[ChatMessage], outcome: CallOutcome) -> str:
        client = self.client
        if client is None:
            raise LLMError(
                f"no OpenAI client bound to the adapter for model {self.model!r}; "
                "bind one with adapter.bind(client) before the call"
            )
        messages = repaired(messages)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.max_completion_tokens is not None:
            body["max_tokens"] = self.max_completion_tokens
        on_delta = self.on_delta
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if on_delta is None:
                answer = await self._with_retries(client, lambda: self._post(client, body))
            else:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
                delivered = _Delivered(on_delta)
                answer = await self._with_retries(
                    client, lambda: self._stream(client, body, delivered), delivered
                )
        finally:
            outcome.model_seconds += loop.time() - started
        reply, prompt_tokens, completion_tokens = answer
        outcome.prompt_tokens += prompt_tokens or estimate_prompt_tokens(messages)
        outcome.completion_tokens += completion_tokens or estimate_tokens(reply)
        return reply

    def _options(self) -> dict[str, Any]:
        return {"max_retries": 0, "timeout": self.timeout_s}

    async def _post(self, client: AsyncOpenAI, body: dict[str, Any]) -> tuple[str, int, int]:
        """One plain request: the whole reply and its usage."""
        response = await client.post(
            "/chat/completions", body=body, cast_to=httpx2.Response, options=self._options()
        )
        return self._parse(client, self._decode(response, self._where(client)))

    async def _stream(
        self, client: AsyncOpenAI, body: dict[str, Any], delivered: _Delivered
    ) -> tuple[str, int, int]:
        """One streamed request: content pieces to `delivered` as they arrive, then the reply
        and the usage chunk's counts (0 when the server sent none)."""
        stream = await client.post(
            "/chat/completions", body=body, cast_to=object, stream=True,
            stream_cls=AsyncStream[object], options=self._options(),
        )
        async with stream:
            response = stream.response
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                await response.aread()  # a server that does not stream: one piece
                reply, prompt_tokens, completion_tokens = self._parse(
                    client, self._decode(response, self._where(client))
                )
                if reply:
                    delivered(reply)
                return reply, prompt_tokens, completion_tokens
            usage: Mapping[str, Any] = {}
            finished = False
            chunks = aiter(stream)
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except ValueError:
                    raise LLMError(
                        f"{self._where(client)} sent a stream event that is not JSON; check "
                        "that the endpoint is OpenAI-compatible"
                    ) from None
                content, finish, chunk_usage = self._chunk_parts(client, chunk)
                if content:
                    delivered(content)
                finished = finished or finish
                usage = chunk_usage or usage
        if not finished:
            raise _StreamCut("it ended without a finish_reason")
        return (
            "".join(delivered.parts),
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
        )

    def _chunk_parts(
        self, client: AsyncOpenAI, chunk: object
    ) -> tuple[str | None, bool, Mapping[str, Any] | None]:
        """A chat.completion.chunk's content piece, whether it finishes the reply, its usage."""
        if not isinstance(chunk, dict):
            raise LLMError(
                f"{self._where(client)} streamed an event that is not a chat.completion.chunk; "
                "check that the endpoint is OpenAI-compatible"
            )
        usage = chunk.get("usage")
        usage = usage if isinstance(usage, dict) else None
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return None, False, usage  # the usage chunk has no choices
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return (
            content if isinstance(content, str) else None,
            bool(choice.get("finish_reason")),
            usage,
        )

    async def _with_retries(
        self,
        client: AsyncOpenAI,
        attempt: Callable[[], Awaitable[_T]],
        delivered: _Delivered | None = None,
    ) -> _T:
        """Run `attempt` under `timeout_s`, again after retryable failures (see the class)."""
        where = self._where(client)
        attempts = 0
        while True:
            attempts += 1
            tried = f"{attempts} attempt{'s' if attempts > 1 else ''}"
            delay: float | None
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await attempt()
            except (TimeoutError, APITimeoutError):
                what = f"no end within {self.timeout_s:g}s"
                failure = LLMError(
                    f"{where} gave no response within {self.timeout_s:g}s; check that the "
                    "server is up and not overloaded, or raise the timeout"
                )
                delay = None
            except APIConnectionError as exc:
                cause = type(exc.__cause__ or exc).__name__
                what = f"connection lost: {cause}"
                failure = LLMError(
                    f"cannot reach {where} ({cause}) after {tried}; check that the server "
                    "is running and base_url is right"
                )
                delay = self._backoff(attempts)
            except APIStatusError as exc:
                # Raised before a stream starts (the status comes first): nothing delivered yet.
                status = exc.response.status_code
                what = f"HTTP {status}"
                failure = LLMError(self._status_message(client, exc, where, tried))
                if status not in RETRY_STATUSES:
                    raise failure from None
                retry_after = _retry_after_s(exc.response.headers)
                if retry_after is not None and retry_after > self.retry_after_cap_s:
                    raise LLMError(
                        f"{where} answered HTTP {status} and asks to wait {retry_after:g}s, more "
                        f"than the {self.retry_after_cap_s:g}s this backend waits; retry later"
                    ) from None
                delay = self._backoff(attempts) if retry_after is None else retry_after
            except (APIError, _StreamCut) as exc:  # an error event, or an early end
                what = (
                    str(exc) if isinstance(exc, _StreamCut)
                    else f"server error: {_redacted(client, exc.message)[:SERVER_MESSAGE_CHARS]}"
                )
                failure = LLMError(
                    f"{where} broke off its stream ({what}) after {tried}; "
                    "retry, and check the server if it persists"
                )
                delay = self._backoff(attempts)
            if delivered is not None and delivered.parts:
                pieces = len(delivered.parts)
                raise LLMError(
                    f"{where} broke off the reply after {pieces} streamed "
                    f"piece{'s' if pieces > 1 else ''} ({what}); the partial reply is not "
                    "kept: send again"
                )
            if delay is None or attempts > self.max_retries:
                raise failure
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter, so many sessions rate-limited together do not retry together."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(
            0.5, 1.0
        )

    def _status_message(
        self, client: AsyncOpenAI, exc: APIStatusError, where: str, tried: str
    ) -> str:
        status = exc.response.status_code
        server_says = self._server_message(client, exc.response)
        if status in (401, 403):
            advice = (f"check the API key (fingerprint {_key_fingerprint(client)}) "
                      "for this endpoint")
        elif status == 404:
            advice = "check the model name and that base_url ends with the API root, e.g. /v1"
        elif status == 429:
            advice = f"rate limited after {tried}; retry later or lower the request rate"
        elif status >= 500:
            advice = f"server error after {tried}; check the server, then retry"
        else:
            advice = "the server rejected the request"
        return f"{where} answered HTTP {status}{server_says}; {advice}"

    @staticmethod
    def _server_message(client: AsyncOpenAI, response: httpx2.Response) -> str:
        """The server's own error text, short and with the API key removed (some echo it)."""
        try:
            error = response.json().get("error")
            text = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            return ""
        if not isinstance(text, str) or not text:
            return ""
        return f" ({_redacted(client, text)[:SERVER_MESSAGE_CHARS]})"

    @staticmethod
    def _decode(response: httpx2.Response, where: str) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            raise LLMError(
                f"{where} answered HTTP {response.status_code} with a body that is not JSON "
                f"({len(response.content)} bytes); check that base_url points at an "
                "OpenAI-compatible API root such as http://host:port/v1"
            ) from None

    def _parse(self, client: AsyncOpenAI, data: Any) -> tuple[str, int, int]:
        """Reply text and (prompt, completion) tokens; 0 tokens when the server sent no usage."""
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise LLMError(
                f"{self._where(client)} answered without choices[0].message.content text; "
                "check that the endpoint is OpenAI-compatible and the model returns text"
            )
        usage = data.get("usage") if isinstance(data, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))

    def _where(self, client: AsyncOpenAI) -> str:
        return f"model {self.model!r} at {_safe_url(str(client.base_url))}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _key_fingerprint(client: AsyncOpenAI) -> str:
    return fingerprint((client.api_key or "").encode("utf-8"))


def _redacted(client: AsyncOpenAI, text: str) -> str:
    """A server's text with the client's API key replaced by its fingerprint (some echo it)."""
    api_key = client.api_key
    return text.replace(api_key, f"<key {_key_fingerprint(client)}>") if api_key else text


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment, where credentials could hide."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, else Retry-After in seconds.

    The HTTP-date form of Retry-After is not used by model servers and falls back to backoff.
    """
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None
