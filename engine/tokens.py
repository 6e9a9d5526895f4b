"""Token estimates used to reserve quota before a call (settled with real counts after)."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About four characters per token, never zero: the usual rule of thumb for English text."""
    return estimate_tokens_of_length(len(text))


def estimate_tokens_of_length(characters: int) -> int:
    """`estimate_tokens` of a text of this many characters, for callers that only add lengths."""
    return max(1, -(-characters // CHARS_PER_TOKEN))
