"""Model backends that a praisonaiagents `Agent(llm=adapter)` adopts as its model.

`Agent` duck-types on `get_response_async(prompt, system_prompt, chat_history, **kw)` and calls
it in-process, so one adapter class serves every backend: the in-process simulator (`sim`) and
any OpenAI-compatible endpoint (`openai`, including `engine.simserver` on loopback).

praisonaiagents swallows exceptions raised by the model into a `None` reply (and prints an error
panel even with `output="silent"`), so adapters never raise: they record each call's tokens,
time and failure on `adapter.outcome`, return `None` on failure, and the engine turns the outcome
into a typed `LLMError` with `adapter.result(reply)`. One adapter per Agent and one call in
flight per Agent, so an outcome is never shared between turns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import operator
import random
import secrets
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from statistics import NormalDist
from typing import Any, Literal, TypeVar
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

from engine.config import SimSettings
from engine.errors import ConfigurationError, EngineError, LLMError
from engine.security import fingerprint
from engine.tokens import estimate_tokens, estimate_tokens_of_length

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
SIM_MODEL = "sim"
REPLY_ECHO_CHARS = 120
Z_99 = NormalDist().inv_cdf(0.99)  # the 99th percentile of a standard normal, ~2.326
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
SERVER_MESSAGE_CHARS = 200
# Streaming from the simulator: the first piece comes after this share of the call's latency,
# the rest spread over what remains, in at most STREAM_PIECES pieces (each a loop wake-up).
FIRST_PIECE_SHARE = 0.3
STREAM_PIECES = 16

ChatMessage = dict[str, str]
_T = TypeVar("_T")


@dataclass(slots=True)
class CallOutcome:
    """What the model calls of one turn cost and whether they failed.

    Tokens and seconds add up over every model call since `begin_call()`; `calls` lets the engine
    tell "the model failed" (`error` set) from "praisonaiagents never reached the model".
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_seconds: float = 0.0
    calls: int = 0
    error: EngineError | None = None


# --- what a model receives and what the simulators answer -----------------------------------


def build_messages(
    prompt: str, system_prompt: str | None, chat_history: Sequence[Mapping[str, Any]] | None
) -> list[ChatMessage]:
    """OpenAI-style messages: system prompt, history, then the user prompt.

    praisonaiagents appends the pending user message to the history *before* calling the model
    and passes its own live list, so the prompt is added only when the history does not already
    end with it, and the list is copied (the agent keeps appending to its list). The history's
    dicts are reused, not rebuilt, unless one needs fixing: they are only read from here on.
    """
    messages: list[Any] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend(chat_history or ())
    try:
        "".join(chain.from_iterable(map(_ROLE_AND_CONTENT, messages)))
    except (KeyError, TypeError):
        # A failed earlier reply is stored by praisonaiagents as content None.
        messages = [
            {"role": _text(m.get("role")), "content": _text(m.get("content"))} for m in messages
        ]
    user = {"role": "user", "content": prompt}
    if not messages or messages[-1] != user:
        messages.append(user)
    return messages


_ROLE_AND_CONTENT = operator.itemgetter("role", "content")


def _flatten(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    """Roles and contents interleaved as text (missing or None is ""), and all of them joined.

    The digest and the token estimate read the whole context at every turn, so the usual case
    runs in C (`map`, `chain`, `join`; the join also proves every part is a str): done message
    by message in Python it was a third of a turn's CPU at 200 messages.
    """
    try:
        parts = list(chain.from_iterable(map(_ROLE_AND_CONTENT, messages)))
        return parts, "".join(parts)
    except (KeyError, TypeError):
        parts = [_text(m.get(key)) for m in messages for key in ("role", "content")]
        return parts, "".join(parts)


def _text(part: object) -> str:
    return part if type(part) is str else str(part or "")


def _digest_of(parts: list[str], joined: str) -> bytes:
    # Every part's length, then the text: different splits of the same text never collide.
    digest = hashlib.sha256(array("Q", map(len, parts)).tobytes())
    digest.update(joined.encode("utf-8", errors="surrogatepass"))
    return digest.digest()


def _prompt_tokens_of(parts: list[str]) -> int:
    return estimate_tokens_of_length(sum(map(len, parts[1::2])))


def content_digest(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """SHA-256 of exactly what the model received (roles and contents, in order)."""
    return _digest_of(*_flatten(messages))


def simulated_reply(messages: Sequence[Mapping[str, Any]], digest: bytes | None = None) -> str:
    """The simulators' reply: an echo of the last user message plus a digest of everything.

    It depends only on what the model received, so tests can tell from a reply what its prompt
    contained; `SimulatedModel` and `engine.simserver` give the same text for the same messages,
    which makes the two swappable by configuration. Pass `digest` if already computed.
    """
    last_user = next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
    )
    sha = (digest or content_digest(messages)).hex()[:8]
    return f"[sim] {last_user[:REPLY_ECHO_CHARS]} (ctx {len(messages)} msgs, sha {sha})"


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Token estimate of everything sent: the quotas' four-characters rule over all of it."""
    return _prompt_tokens_of(_flatten(messages)[0])


# --- adapters -----------------------------------------------------------------------------


class ModelAdapter:
    """Base of the backends: builds messages, keeps the outcome, never raises into the Agent.

    `model` is read by `Agent` as its model name. praisonaiagents picks a model-family prompt
    fragment from that name (e.g. names containing "gpt" add an editing hint to the system
    prompt); set `agent.harness_base_prompt = ""` before the first call to prevent it.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.outcome = CallOutcome()
        self.on_delta: Callable[[str], None] | None = None

    def begin_call(self, on_delta: Callable[[str], None] | None = None) -> None:
        """Start a fresh outcome; the engine calls this before each `agent.achat(...)`.

        `on_delta` receives the reply in pieces as they are produced (streaming): the adapter
        is the one place that sees them, since praisonaiagents hands back only the whole reply.
        """
        self.outcome = CallOutcome()
        self.on_delta = on_delta

    def result(self, reply: str | None) -> str:
        """The turn's reply, or the `LLMError` that praisonaiagents hid behind a `None` reply."""
        if self.outcome.error is not None:
            raise self.outcome.error
        if reply is None:
            reached = "after calling" if self.outcome.calls else "without calling"
            raise LLMError(
                f"the agent returned no reply {reached} model {self.model!r}; "
                "retry, and check the log if it persists"
            )
        return reply

    async def get_response_async(
        self,
        prompt: str,
        system_prompt: str | None = None,
        chat_history: Sequence[Mapping[str, Any]] | None = None,
        **_praisonai_kwargs: Any,
    ) -> str | None:
        """Agent's model hook. Extra kwargs (tools, temperature, console, ...) are ignored."""
        messages = build_messages(prompt, system_prompt, chat_history)
        outcome = self.outcome
        outcome.calls += 1
        try:
            return await self._complete(messages, outcome)
        except LLMError as exc:
            outcome.error = exc
        except Exception as exc:
            # Raised into the Agent it would become a None reply and an error panel on the
            # terminal; recorded here it reaches the engine as an LLMError with its cause.
            outcome.error = LLMError(
                f"model {self.model!r} failed unexpectedly ({type(exc).__name__}); "
                "retry, and check the log if it persists"
            )
            outcome.error.__cause__ = exc
        return None

    async def _complete(self, messages: list[ChatMessage], outcome: CallOutcome) -> str:
        """Answer `messages`, adding tokens and seconds to `outcome`; raise LLMError on failure."""
        raise NotImplementedError


# --- the in-process simulator ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimDraw:
    latency_s: float
    fault: Literal["error", "timeout"] | None


class SimSource:
    """The simulator's random draws, keyed on what the model received.

    A draw is a hash of (seed, digest of the received messages, how many times that exact
    content was drawn before), so it does not depend on which pooled adapter serves a call or
    on how concurrent sessions interleave: a session's n-th turn gets the same latency and fault
    in every run with the same seed. The occurrence count makes a retry of identical content
    draw afresh (otherwise a failed turn would fail forever) and spreads identical first turns
    of many users over the distribution. Share one source between all adapters of an engine.

    Counts are kept for the most recent `memory` contents (O(1) per call, bounded memory); a
    content seen again after falling out restarts its count. `seed=None` draws a random salt:
    runs are then not reproducible.
    """

    def __init__(self, settings: SimSettings, *, memory: int = 65_536) -> None:
        self._memory = memory
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self.reconfigure(settings)

    def reconfigure(self, settings: SimSettings) -> None:
        """Change latency and fault rates while running (a load test's latency spike); every
        adapter sharing this source follows from its next call. A new seed restarts the draws."""
        _check_sim_settings(settings)
        if not hasattr(self, "settings") or settings.seed != self.settings.seed:
            seed = settings.seed
            self._key = (
                secrets.token_bytes(32) if seed is None
                else hashlib.sha256(f"sim-seed:{seed}".encode()).digest()
            )
        self.settings = settings
        self._sigma = (
            math.log(settings.p99_latency_s / settings.median_latency_s) / Z_99
            if settings.median_latency_s > 0 else 0.0
        )

    def latency(self, u: float) -> float:
        """The log-normal latency at quantile `u` in (0, 1): median * exp(sigma * z(u))."""
        median = self.settings.median_latency_s
        if median <= 0:
            return 0.0
        return median * math.exp(self._sigma * NormalDist().inv_cdf(u))

    def draw(self, digest: bytes) -> SimDraw:
        occurrence = self._seen.pop(digest, 0)
        self._seen[digest] = occurrence + 1
        if len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        h = hashlib.blake2b(
            digest + occurrence.to_bytes(8, "big"), key=self._key, digest_size=24
        ).digest()
        u_latency, u_timeout, u_error = (
            (int.from_bytes(h[i:i + 8], "big") + 0.5) / 2**64 for i in (0, 8, 16)
        )
        fault: Literal["error", "timeout"] | None = None
        if u_timeout < self.settings.timeout_rate:
            fault = "timeout"
        elif u_error < self.settings.error_rate:
            fault = "error"
        return SimDraw(self.latency(u_latency), fault)


def _check_sim_settings(s: SimSettings) -> None:
    if not (s.median_latency_s >= 0 and s.p99_latency_s >= s.median_latency_s):
        raise ConfigurationError(
            "sim latency needs 0 <= median_latency_s <= p99_latency_s "
            f"(got median {s.median_latency_s:g}, p99 {s.p99_latency_s:g})"
        )
    for name in ("error_rate", "timeout_rate"):
        rate = getattr(s, name)
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"sim {name} must be between 0 and 1 (got {rate:g})")


class SimulatedModel(ModelAdapter):
    """The `sim` backend: log-normal latency, estimated tokens, injected errors and timeouts.

    Latency is real time (`asyncio.sleep`): the model is outside the engine, whose clock it does
    not share. An injected timeout sleeps `timeout_s` (set it to the engine's turn timeout) and
    then fails with LLMError, so the adapter is bounded on its own; under the engine, whose
    `asyncio.timeout` started first, the engine's timeout fires first. Failed calls count no
    tokens, as a real endpoint bills none.
    """

    def __init__(
        self,
        settings: SimSettings | None = None,
        *,
        source: SimSource | None = None,
        timeout_s: float = 60.0,
        model: str = SIM_MODEL,
    ) -> None:
        super().__init__(model)
        if source is None:
            source = SimSource(settings or SimSettings())
        elif settings is not None and settings != source.settings:
            raise ConfigurationError("SimulatedModel got settings that differ from its source's")
        self.source = source
        self.timeout_s = timeout_s

    async def _complete(self, messages: list[ChatMessage], outcome: CallOutcome) -> str:
        settings = self.source.settings
        parts, joined = _flatten(messages)
        digest = _digest_of(parts, joined)
        draw = self.source.draw(digest)
        if draw.fault == "timeout":
            outcome.model_seconds += self.timeout_s
            await asyncio.sleep(self.timeout_s)
            raise LLMError(
                f"simulated model timed out after {self.timeout_s:g}s (injected, timeout_rate "
                f"{settings.timeout_rate:g}); send again, or lower the simulator's timeout_rate"
            )
        outcome.model_seconds += draw.latency_s
        on_delta = self.on_delta
        if draw.latency_s > 0 and (on_delta is None or draw.fault == "error"):
            await asyncio.sleep(draw.latency_s)
        if draw.fault == "error":
            raise LLMError(
                f"simulated model error (injected, error_rate {settings.error_rate:g}); "
                "send again, or lower the simulator's error_rate"
            )
        reply = simulated_reply(messages, digest)
        if on_delta is not None:
            async for piece in paced_pieces(reply, draw.latency_s):
                on_delta(piece)
        outcome.prompt_tokens += _prompt_tokens_of(parts)
        outcome.completion_tokens += estimate_tokens(reply)
        return reply


def reply_pieces(reply: str) -> list[str]:
    """`reply` cut into at most STREAM_PIECES word-aligned pieces that join back to it."""
    words = reply.split(" ")
    per_piece = max(1, math.ceil(len(words) / STREAM_PIECES))
    return [
        " ".join(words[i:i + per_piece]) + (" " if i + per_piece < len(words) else "")
        for i in range(0, len(words), per_piece)
    ]


async def paced_pieces(reply: str, latency_s: float) -> AsyncIterator[str]:
    """The simulators' stream: `reply_pieces(reply)`, the first after FIRST_PIECE_SHARE of
    `latency_s`, the rest spread evenly over what remains. Shared by `SimulatedModel` and
    `engine.simserver`, so both backends stream the same pieces at the same pace."""
    pieces = reply_pieces(reply)
    first_wait = latency_s * FIRST_PIECE_SHARE
    gap = (latency_s - first_wait) / max(1, len(pieces) - 1)
    for index, piece in enumerate(pieces):
        wait = first_wait if index == 0 else gap
        if wait > 0:
            await asyncio.sleep(wait)
        yield piece


# --- OpenAI-compatible endpoints ------------------------------------------------------------


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
