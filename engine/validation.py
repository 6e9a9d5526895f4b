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
    """A turn's text, checked for size before anything reads all of it.

    More characters than `max_bytes` is over the limit whatever they encode to (each takes a
    byte at least), so an oversized text is refused without being copied or encoded. A lone
    surrogate (from a JSON escape such as "\\ud800") is not Unicode text: it cannot be
    encrypted or stored, so it is refused here rather than failing after the model answered.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"text must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise InvalidInput(
            f"text is {len(value)} characters, over the limit of {max_bytes} bytes; "
            "split the message"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"text holds an unpaired surrogate at character {exc.start}, which is not valid "
            "Unicode; send UTF-8 text"
        ) from None
    if size > max_bytes:
        raise InvalidInput(f"text is {size} bytes; the limit is {max_bytes}, split the message")
    if not value.strip():
        raise InvalidInput("text is empty; send a non-blank message")
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
        encoded = json.dumps(dict(value), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable: {exc}") from None
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(
            "metadata holds an unpaired surrogate, which is not valid Unicode; send UTF-8 text"
        ) from None
    if size > max_bytes:
        raise InvalidInput(f"metadata is {size} bytes as JSON; the limit is {max_bytes}")
    return json.loads(encoded)  # a deep copy the caller can no longer mutate
