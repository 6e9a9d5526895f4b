"""Token estimates used to reserve quota before a call (settled with real counts after)."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About four characters per token, never zero: the usual rule of thumb for English text."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))
