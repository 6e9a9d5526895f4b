"""Server-sent events in the two shapes the gateway streams.

`/v1/sessions/{id}/messages` sends named events (`delta`, `done`, `error`); the OpenAI-compatible
route sends unnamed `chat.completion.chunk` events and ends with `data: [DONE]`, as OpenAI does.
"""

from __future__ import annotations

from typing import Any

from engine.gateway.errors import encode_json

DONE = b"data: [DONE]\n\n"


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {_json(data)}\n\n".encode()


def data(payload: Any) -> bytes:
    return f"data: {_json(payload)}\n\n".encode()


def _json(value: Any) -> str:
    # One line: a newline inside `data:` would split the event; ASCII: lone surrogates stay
    # encodable.
    return encode_json(value)
