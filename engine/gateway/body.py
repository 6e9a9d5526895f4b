"""Reading a request body within the gateway's bounds: size first, then time.

A body announced larger than the limit is refused from its Content-Length before a byte of it
is read; a chunked body is counted as it arrives and cut off at the limit. A client that sends
its body slower than the body timeout gets 408. Both close the connection, so the unread rest
of the body is never parsed as a next request.

The server marks a request whose body has all arrived by the time its handler runs (the
common case: one small body in the headers' packet) with `scope[BODY_RECEIVED]`; such a body
is read without arming the body timer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from engine.gateway.errors import GatewayError, HTTPFailure, invalid_input

BODY_RECEIVED = "session_console.body_received"


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        HTTPFailure(413, "payload_too_large", f"request body over {limit} bytes; send less")
    )


async def read_json_object(request: Request, limit: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object, or a GatewayError (400, 408, 413) saying what was wrong."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise invalid_input("Content-Length is not a number")
        if int(declared) > limit:
            raise too_large(limit)
    if request.scope.get(BODY_RECEIVED):  # all here: reading it cannot wait, so no timer
        received = await _read(request.receive, limit)
    else:
        try:
            async with asyncio.timeout(timeout_s):
                received = await _read(request.receive, limit)
        except TimeoutError:
            raise GatewayError(HTTPFailure(
                408, "request_timeout", f"request body not received within {timeout_s:g}s"
            )) from None
    try:
        value = json.loads(received)
    except ValueError as exc:  # includes malformed UTF-8
        raise invalid_input(f"request body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise invalid_input(f"request body must be a JSON object, got {type(value).__name__}")
    return value


async def _read(receive: Receive, limit: int) -> bytes:
    """The whole body, in one message when it all arrived before the handler ran."""
    received = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        received += message.get("body", b"")
        if len(received) > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            return received


JSON_TYPES = {str: "a string", bool: "true or false", dict: "an object", list: "an array"}


def field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """`body[name]` if it has the right JSON type, `default` if absent or null, else 400."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid_input(f"{name} must be {JSON_TYPES[kind]}", param=name)
    return value
