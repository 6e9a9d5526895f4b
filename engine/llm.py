"""The adapter base that a praisonaiagents `Agent(llm=adapter)` adopts as its model.

`Agent` duck-types on `get_response_async(prompt, system_prompt, chat_history, **kw)` and calls
it in-process, so one adapter class serves every backend: the in-process simulator
(`engine.sim`) and any OpenAI-compatible endpoint (`engine.openai_backend`, including
`engine.simserver` on loopback). This module holds what they share: the messages a model
receives, their digest and token estimate, and the outcome record.

praisonaiagents swallows exceptions raised by the model into a `None` reply (and prints an error
panel even with `output="silent"`), so adapters never raise: they record each call's tokens,
time and failure on `adapter.outcome`, return `None` on failure, and the engine turns the outcome
into a typed `LLMError` with `adapter.result(reply)`. One adapter per Agent and one call in
flight per Agent, so an outcome is never shared between turns.
"""

from __future__ import annotations

import hashlib
import operator
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from engine.errors import EngineError, LLMError
from engine.tokens import estimate_tokens_of_length

ChatMessage = dict[str, str]


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


# --- what a model receives ------------------------------------------------------------------


def build_messages(
    prompt: str, system_prompt: str | None, chat_history: Sequence[Mapping[str, Any]] | None
) -> list[ChatMessage]:
    """OpenAI-style messages: system prompt, history, then the user prompt.

    praisonaiagents appends the pending user message to the history *before* calling the model
    and passes its own live list, so the prompt is added only when the history does not already
    end with it, and the list is copied (the agent keeps appending to its list). The history's
    dicts are passed on as they are: a backend that sends them on calls `repaired` first (the
    digest and the token estimate read a missing or None content as empty text already).
    """
    messages: list[Any] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend(chat_history or ())
    user = {"role": "user", "content": prompt}
    if not messages or messages[-1] != user:
        messages.append(user)
    return messages


def repaired(messages: list[ChatMessage]) -> list[ChatMessage]:
    """`messages` with every role and content a str: praisonaiagents stores a failed earlier
    reply as content None, which a model's API refuses."""
    try:
        "".join(chain.from_iterable(map(_ROLE_AND_CONTENT, messages)))
        return messages
    except (KeyError, TypeError):
        return [
            {"role": _text(m.get("role")), "content": _text(m.get("content"))} for m in messages
        ]


_ROLE_AND_CONTENT = operator.itemgetter("role", "content")


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
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


def digest_of_parts(parts: list[str], joined: str) -> bytes:
    """`content_digest` from `flatten_messages`' result, for callers that also need the parts."""
    # Every part's length, then the text: different splits of the same text never collide.
    digest = hashlib.sha256(array("Q", map(len, parts)).tobytes())
    digest.update(joined.encode("utf-8", errors="surrogatepass"))
    return digest.digest()


def prompt_tokens_of_parts(parts: list[str]) -> int:
    """`estimate_prompt_tokens` from `flatten_messages`' parts (contents are every second one)."""
    return estimate_tokens_of_length(sum(map(len, parts[1::2])))


def content_digest(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """SHA-256 of exactly what the model received (roles and contents, in order)."""
    return digest_of_parts(*flatten_messages(messages))


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Token estimate of everything sent: the quotas' four-characters rule over all of it."""
    return prompt_tokens_of_parts(flatten_messages(messages)[0])


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
