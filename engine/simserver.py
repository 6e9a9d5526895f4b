"""An OpenAI-compatible model simulator served on loopback: the `http-sim` backend.

It answers `POST /v1/chat/completions` with the same reply and token counts as the in-process
`SimulatedModel` (see `engine.llm.simulated_reply`), so the `openai` backend can be exercised
end to end (client cache, HTTP, retries, timeouts) without a real model or network. Every request
body is recorded for tests, and faults (HTTP errors, 429 with Retry-After, malformed JSON, hangs,
delays) can be queued at run time. It binds loopback addresses only: it has no authentication.

Standalone: `python -m engine.simserver --port 8099` prints its base URL; point the engine at it
with `llm="openai"`, `base_url=<that URL>` and any API key, e.g. "sk-local".
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from engine.config import SimSettings
from engine.errors import InvalidInput
from engine.llm import (
    SIM_MODEL,
    SimSource,
    content_digest,
    estimate_prompt_tokens,
    simulated_reply,
)
from engine.security import fingerprint
from engine.tokens import estimate_tokens

DEFAULT_MAX_RECORDED = 100_000
SHUTDOWN_GRACE_S = 1.0

FaultKind = Literal["status", "body", "malformed", "hang", "delay"]


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request instead of answering it normally."""

    kind: FaultKind
    status: int = 500
    retry_after_s: float | None = None  # sent as Retry-After and retry-after-ms when set
    delay_s: float = 0.0
    message: str = "simulated server error"
    payload: Any = None  # the JSON body of a "body" fault

    @classmethod
    def error(cls, status: int = 500, message: str = "simulated server error") -> Fault:
        return cls("status", status=status, message=message)

    @classmethod
    def rate_limited(cls, retry_after_s: float = 0.01) -> Fault:
        return cls("status", status=429, retry_after_s=retry_after_s, message="rate limited")

    @classmethod
    def body(cls, payload: Any, status: int = 200) -> Fault:
        """Answer with this JSON instead of a completion (e.g. one without choices or usage)."""
        return cls("body", status=status, payload=payload)

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200 with a JSON content type and a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def hang(cls) -> Fault:
        """Never answer (until the server stops): exercises client timeouts."""
        return cls("hang")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally after `seconds`."""
        return cls("delay", delay_s=seconds)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received: the parsed JSON body (or the raw text if it was not JSON)."""

    path: str
    body: Any
    api_key_fingerprint: str | None  # which key sent it, never the key
    received_at: float


class SimServer:
    """The simulator server. Faults: `inject(...)` queues faults for the next requests (first
    in, first out); `sim` settings add log-normal latency and error/timeout rates to the rest,
    drawn like the in-process simulator (a timeout is a hang).
    """

    def __init__(
        self,
        sim: SimSettings | None = None,
        *,
        max_recorded: int = DEFAULT_MAX_RECORDED,
        model: str = SIM_MODEL,
    ) -> None:
        self.requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.faults: deque[Fault] = deque()
        self.model = model
        self._source = SimSource(sim) if sim is not None else None
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url: str | None = None

    def inject(self, fault: Fault, times: int = 1) -> None:
        """The next `times` requests (after already queued faults) get `fault`."""
        self.faults.extend([fault] * times)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on a loopback `host` (port 0: an ephemeral port); return the base URL."""
        if self._runner is not None:
            raise InvalidInput("SimServer is already running; stop it before starting again")
        if not _is_loopback(host):
            raise InvalidInput(
                f"SimServer binds loopback only and has no authentication; got host {host!r}, "
                "use 127.0.0.1 or ::1"
            )
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise InvalidInput(
                f"SimServer cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        self._runner = runner
        self._stopping.clear()
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening; hanging requests are released so shutdown does not wait on them."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- request handling ----------------------------------------------------------------------
    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        self.requests.append(
            RecordedRequest(request.path, body, _key_fingerprint(request), time.time())
        )
        fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            faulted = await self._apply(fault)
            if faulted is not None:
                return faulted
        messages = _messages(body)
        if messages is None:
            return _error(400, "body must be JSON with a 'messages' list of {role, content}")
        digest = content_digest(messages)
        if self._source is not None and fault is None:
            draw = self._source.draw(digest)
            if draw.fault == "timeout":
                return await self._hang()
            if draw.latency_s > 0:
                await asyncio.sleep(draw.latency_s)
            if draw.fault == "error":
                return _error(500, "simulated model error (injected by error_rate)")
        return web.json_response(self._completion(body, messages, digest))

    async def _apply(self, fault: Fault) -> web.StreamResponse | None:
        """The faulty response, or None when the request should then be answered normally."""
        if fault.kind == "hang":
            return await self._hang()
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "body":
            return web.json_response(fault.payload, status=fault.status)
        if fault.kind == "malformed":
            truncated = '{"id": "chatcmpl-broken", "choices": ['
            return web.Response(status=200, text=truncated, content_type="application/json")
        headers = {}
        if fault.retry_after_s is not None:
            headers = {
                "Retry-After": str(max(1, math.ceil(fault.retry_after_s))),
                "retry-after-ms": f"{fault.retry_after_s * 1000:g}",
            }
        return _error(fault.status, fault.message, headers)

    async def _hang(self) -> web.StreamResponse:
        await self._stopping.wait()
        return _error(503, "simulator shutting down")

    def _completion(
        self, body: dict[str, Any], messages: list[dict[str, str]], digest: bytes
    ) -> dict[str, Any]:
        reply = simulated_reply(messages, digest)
        prompt_tokens = estimate_prompt_tokens(messages)
        completion_tokens = estimate_tokens(reply)
        return {
            "id": f"chatcmpl-sim-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _messages(body: Any) -> list[dict[str, str]] | None:
    """The request's messages as {role, content} strings, or None if the shape is wrong."""
    raw = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not raw:
        return None
    messages = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None
        content = m.get("content")
        if not isinstance(content, str | None):
            return None
        messages.append({"role": m["role"], "content": content or ""})
    return messages


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}},
        status=status,
        headers=headers,
    )


def _key_fingerprint(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return fingerprint(key.encode("utf-8")) if scheme.lower() == "bearer" and key else None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- standalone -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.simserver",
        description="OpenAI-compatible model simulator on loopback (no authentication).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--median-latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--p99-latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    sim = SimSettings(
        median_latency_s=args.median_latency,
        p99_latency_s=max(args.p99_latency, args.median_latency),
        error_rate=args.error_rate,
        timeout_rate=args.timeout_rate,
        seed=args.seed,
    )

    async def serve() -> None:
        server = SimServer(sim)
        print(await server.start(args.host, args.port), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except InvalidInput as exc:
        parser.exit(2, f"error: {exc}\n")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
