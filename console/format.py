"""Compact number, duration and rate formats that fit narrow columns, and secret redaction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Metadata keys that may hold credentials: their values are never shown or exported.
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential", "auth")


def duration(seconds: float) -> str:
    """`45s`, `12m`, `3h05`, `2d04`; `∞` for no limit."""
    if math.isinf(seconds):
        return "∞"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        if seconds < 600:
            return f"{seconds // 60:.0f}m{seconds % 60:02.0f}"
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}"


def count(value: float) -> str:
    """`999`, `12.3k`, `4.56M`."""
    value = float(value)
    if abs(value) < 1000:
        return f"{value:.0f}"
    if abs(value) < 1_000_000:
        return f"{value / 1000:.3g}k"
    return f"{value / 1_000_000:.3g}M"


def rate(value: float) -> str:
    if value < 10:
        return f"{value:.1f}"
    return count(value)


def latency(seconds: float) -> str:
    """`0.4ms`, `85ms`, `1.25s`."""
    if seconds <= 0:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s"


def amount(value: float) -> str:
    """Quota amounts: integers stay integers, small fractions keep two decimals."""
    if math.isinf(value):
        return "∞"
    if value == int(value) and abs(value) < 1000:
        return f"{value:.0f}"
    if abs(value) < 10:
        return f"{value:.2f}"
    return count(value)


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Metadata as text, with the values of credential-looking keys replaced."""
    return {
        str(key): "•••••• (hidden)" if is_secret(str(key)) else str(value)
        for key, value in metadata.items()
    }
