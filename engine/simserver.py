"""An OpenAI-compatible model simulator served on loopback: the `http-sim` backend.

It answers `POST /v1/chat/completions` with the same reply and token counts as the in-process
`SimulatedModel` (see `engine.sim.simulated_reply`), so the `openai` backend can be exercised
end to end (client cache, HTTP, retries, timeouts, streaming) without a real model or network.
With `"stream": true` it streams in OpenAI's wire format (`text/event-stream`:
`chat.completion.chunk` events, a usage chunk when `stream_options.include_usage` is set, then
`data: [DONE]`), the pieces paced over the simulated latency as the in-process simulator paces
them (`engine.sim.paced_pieces`). Every request body is recorded for tests, and faults (HTTP
errors, 429 with Retry-After, malformed JSON, hangs, delays, streams broken off midway) can be
queued at run time. It binds loopback addresses only: it has no authentication.

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
from engine.llm import content_digest, estimate_prompt_tokens
from engine.security import fingerprint
from engine.sim import SIM_MODEL, SimSource, paced_pieces, simulated_reply
from engine.tokens import estimate_tokens

DEFAULT_MAX_RECORDED = 100_000
SHUTDOWN_GRACE_S = 1.0

FaultKind = Literal["status", "body", "malformed", "hang", "delay", "midstream"]
CutKind = Literal["error", "drop", "end"]
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request instead of answering it normally."""

    kind: FaultKind
    status: int = 500
    retry_after_s: float | None = None  # sent as Retry-After and retry-after-ms when set
    delay_s: float = 0.0
    message: str = "simulated server error"
    payload: Any = None  # the JSON body of a "body" fault
    after_pieces: int = 0  # content pieces a "midstream" fault lets through
    cut: CutKind = "error"  # how a "midstream" fault breaks off

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

    @classmethod
    def midstream(
        cls, after_pieces: int = 1, *, cut: CutKind = "error",
        message: str = "simulated stream error",
    ) -> Fault:
        """Stream `after_pieces` content pieces, then break off. `cut`: "error" sends an error
        event in OpenAI's shape (`data: {"error": {...}}`) and ends the body; "drop" drops the
        connection; "end" ends the body cleanly with neither a finish_reason nor [DONE]. A
        request that does not stream gets HTTP 500 with `message`."""
        if after_pieces < 0:
            raise InvalidInput(f"Fault.midstream needs after_pieces >= 0 (got {after_pieces})")
        return cls("midstream", status=500, message=message, after_pieces=after_pieces, cut=cut)


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
        streaming = isinstance(body, dict) and body.get("stream") is True
        fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            faulted = await self._apply(fault, streaming)
            if faulted is not None:
                return faulted
        messages = _messages(body)
        if messages is None:
            return _error(400, "body must be JSON with a 'messages' list of {role, content}")
        digest = content_digest(messages)
        latency_s = 0.0
        if self._source is not None and fault is None:
            draw = self._source.draw(digest)
            if draw.fault == "timeout":
                return await self._hang()
            if draw.fault == "error":
                await asyncio.sleep(draw.latency_s)
                return _error(500, "simulated model error (injected by error_rate)")
            latency_s = draw.latency_s
        answer = _Answer(
            f"chatcmpl-sim-{next(self._ids)}", int(time.time()),
            str(body.get("model") or self.model), simulated_reply(messages, digest),
            estimate_prompt_tokens(messages), streaming and _include_usage(body),
        )
        if not streaming:
            if latency_s > 0:
                await asyncio.sleep(latency_s)
            return web.json_response(answer.completion())
        cut = fault if fault is not None and fault.kind == "midstream" else None
        return await self._stream(request, answer, latency_s, cut)

    async def _apply(self, fault: Fault, streaming: bool) -> web.StreamResponse | None:
        """The faulty response, or None when the request should then be answered normally."""
        if fault.kind == "hang":
            return await self._hang()
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "midstream" and streaming:
            return None  # answered by `_stream`, which breaks off
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

    async def _stream(
        self,
        request: web.Request,
        answer: _Answer,
        latency_s: float,
        cut: Fault | None,
    ) -> web.StreamResponse:
        """The reply as server-sent `chat.completion.chunk` events, paced over `latency_s`;
        `cut` (a midstream fault) breaks it off after its number of pieces."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await response.write(_event(answer.chunk({"role": "assistant", "content": ""})))
            sent = 0
            async for piece in paced_pieces(answer.reply, latency_s):
                if cut is not None and sent == cut.after_pieces:
                    break
                await response.write(_event(answer.chunk({"content": piece})))
                sent += 1
            if cut is not None:
                if cut.cut == "drop":
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if cut.cut == "error":
                    error = {"message": cut.message, "type": "server_error", "code": cut.status}
                    await response.write(_event({"error": error}))
            else:
                await response.write(_event(answer.chunk({}, "stop")))
                if answer.include_usage:
                    await response.write(_event(answer.usage_chunk()))
                await response.write(DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream: nothing left to send
        return response


@dataclass(frozen=True, slots=True)
class _Answer:
    """One request's reply, as a chat.completion or as chat.completion.chunk events."""

    id: str
    created: int
    model: str
    reply: str
    prompt_tokens: int
    include_usage: bool = False  # OpenAI then sends "usage": null in every chunk but the last

    def usage(self) -> dict[str, int]:
        completion_tokens = estimate_tokens(self.reply)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk under `stream_options.include_usage`: no choices, the usage."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _event(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


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
