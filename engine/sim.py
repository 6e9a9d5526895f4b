"""The `sim` backend: a model simulated in-process, for tests, demos and load runs.

Replies, latencies and faults are drawn from what the model received (see `SimSource`), so runs
with the same seed are reproducible however sessions interleave. `simulated_reply` and
`paced_pieces` are shared with `engine.simserver`, which serves the same replies over HTTP, so
the two are swappable by configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from engine.config import SimSettings
from engine.errors import ConfigurationError, LLMError
from engine.llm import (
    CallOutcome,
    ChatMessage,
    ModelAdapter,
    content_digest,
    digest_of_parts,
    flatten_messages,
    prompt_tokens_of_parts,
)
from engine.tokens import estimate_tokens

SIM_MODEL = "sim"
REPLY_ECHO_CHARS = 120
Z_99 = NormalDist().inv_cdf(0.99)  # the 99th percentile of a standard normal, ~2.326
# Streaming from the simulator: the first piece comes after this share of the call's latency,
# the rest spread over what remains, in at most STREAM_PIECES pieces (each a loop wake-up).
FIRST_PIECE_SHARE = 0.3
STREAM_PIECES = 16


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

    Counts are kept for the most recent `memory` contents (O(1) per call, bounded memory), keyed
    by the first 8 bytes of their digest as an int (half the memory of the digest's bytes); a
    content seen again after falling out restarts its count. `seed=None` draws a random salt:
    runs are then not reproducible.
    """

    def __init__(self, settings: SimSettings, *, memory: int = 65_536) -> None:
        self._memory = memory
        self._seen: OrderedDict[int, int] = OrderedDict()
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
        key = int.from_bytes(digest[:8], "big")
        occurrence = self._seen.pop(key, 0)
        self._seen[key] = occurrence + 1
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
        parts, joined = flatten_messages(messages)
        digest = digest_of_parts(parts, joined)
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
        outcome.prompt_tokens += prompt_tokens_of_parts(parts)
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
