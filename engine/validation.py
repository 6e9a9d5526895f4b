"""Argument checks for the public API: each failure is an InvalidInput that says what to fix."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidInput


def user_id(value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"user_id must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput("user_id is empty; pass a non-blank user id")
    if len(value) > max_chars:
        raise InvalidInput(f"user_id is {len(value)} characters; the limit is {max_chars}")
    if not value.isprintable():
        raise InvalidInput("user_id contains control characters; use printable text only")
    return value


def text(value: object, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"text must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput("text is empty; send a non-blank message")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(f"text is {size} bytes; the limit is {max_bytes}, split the message")
    return value


def agent_type(value: object, known: tuple[str, ...]) -> str:
    if value not in known:
        raise InvalidInput(f"unknown agent type {value!r}; choose one of {', '.join(known)}")
    return value  # type: ignore[return-value]


def metadata(value: object, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"metadata must be a mapping, got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise InvalidInput("metadata keys must be strings")
    try:
        encoded = json.dumps(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable: {exc}") from None
    if len(encoded) > max_bytes:
        raise InvalidInput(f"metadata is {len(encoded)} bytes as JSON; the limit is {max_bytes}")
    return json.loads(encoded)  # a deep copy the caller can no longer mutate
