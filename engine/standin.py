"""STAND-IN model call: a minimal in-process reply so the engine core runs end to end.

This is not the product's simulator and runs no praisonaiagents Agent; the agents issue replaces
it with pooled Agents on the `sim` / `openai` backends. Its reply depends only on what it was
given, so tests can check what reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from engine.sessions import Message
from engine.tokens import estimate_tokens


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class StandInResponder:
    """Echoes a summary of the prompt; counts tokens with the same estimate used for quotas."""

    async def respond(
        self, agent_type: str, history: Sequence[Message], text: str
    ) -> ModelReply:
        await asyncio.sleep(0)  # a real call yields to the loop; so does this one
        reply = f"[{agent_type} stand-in] turn {len(history) // 2 + 1}: {text[:80]}"
        prompt_tokens = sum(estimate_tokens(m.content) for m in history) + estimate_tokens(text)
        return ModelReply(reply, prompt_tokens, estimate_tokens(reply))
