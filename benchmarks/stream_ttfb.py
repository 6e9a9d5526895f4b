"""Time to first byte of a streamed turn: the first piece at `on_delta` versus the whole reply.

Both backends through the engine with a fixed 200 ms model latency, whose first piece the
simulators send at 30% (60 ms): the in-process simulator (`sim`) and the `openai` backend
streaming over HTTP from the simulator server on loopback (`openai_simserver`). Times are taken
from `engine.send(...)` being called, so they include the engine's whole turn path (and, for the
second, the request, the SSE decoding and the client cache). `gateway_openai_simserver` adds
the HTTP gateway in front: the openai SDK's streaming client posts to `/v1/chat/completions`
(stream, include_usage) and times the first content chunk and the end of the stream, so the
whole chain streams: client <- gateway <- engine <- openai backend <- simulator server.
Sessions are created through the engine. Sequential turns show the path alone; concurrent users
show it under load. Wall-clock figures depend on what else the machine runs (the load average
is printed with them); `cpu_ms_per_turn` (this process's CPU time, servers and client included,
divided by the turns) does not. Run: .venv/bin/python benchmarks/stream_ttfb.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from common import agent_types_file, load_average, print_json, unlimited_limits
from openai import AsyncOpenAI

from engine import Engine, EngineConfig, LLMSettings, PoolSettings, SimSettings, StoreSettings
from engine.gateway import Gateway
from engine.sim import FIRST_PIECE_SHARE
from engine.simserver import SimServer

LATENCY_S = 0.2
SIM = SimSettings(median_latency_s=LATENCY_S, p99_latency_s=LATENCY_S, seed=1)
SEQUENTIAL_TURNS = 100
CONCURRENT_USERS = 50
TURNS_PER_USER = 4


def config(folder: Path, llm: LLMSettings | None = None) -> EngineConfig:
    return EngineConfig(
        store=StoreSettings(data_dir=folder / "data"),
        limits=unlimited_limits(),
        pools=PoolSettings(
            agent_types_file=agent_types_file(folder, CONCURRENT_USERS),
            workers=1,
            per_user_agent_cap=4,
        ),
        llm=llm or LLMSettings(sim=SIM),
    )


@asynccontextmanager
async def backend(name: str, folder: Path) -> AsyncIterator[tuple[Engine, Turn]]:
    folder.mkdir()
    if name == "sim":
        async with Engine(config(folder)) as engine:
            yield engine, engine_turn(engine)
        return
    async with SimServer(SIM) as server, Engine(
        config(folder, LLMSettings(
            backend="openai", base_url=server.base_url, api_key="sk-local", sim=SIM,
        ))
    ) as engine:
        if name == "openai_simserver":
            yield engine, engine_turn(engine)
            return
        gateway = Gateway(engine)
        address = await gateway.start("127.0.0.1:0")
        try:
            yield engine, gateway_turn(f"http://{address}/v1")
        finally:
            await gateway.stop()


Turn = Callable[[str, str, int], Awaitable[tuple[float, float]]]


def engine_turn(engine: Engine) -> Turn:
    async def turn(session_id: str, token: str, k: int) -> tuple[float, float]:
        return await streamed_turn(engine, session_id, token, k)

    return turn


def gateway_turn(base_url: str) -> Turn:
    """A turn through the gateway's OpenAI-compatible route, read by the SDK's stream client
    (one client per session token: the token is the API key)."""
    clients: dict[str, AsyncOpenAI] = {}

    async def turn(session_id: str, token: str, k: int) -> tuple[float, float]:
        client = clients.get(token)
        if client is None:
            client = clients[token] = AsyncOpenAI(
                api_key=token, base_url=base_url, max_retries=0,
                default_headers={"X-Session-ID": session_id},
            )
        started = time.perf_counter()
        first = None
        stream = await client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": f"message {k}: more"}],
            stream=True, stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is None:
            raise RuntimeError("a streamed turn delivered no piece")
        return first, time.perf_counter() - started

    return turn


async def streamed_turn(engine: Engine, session_id: str, token: str, k: int) -> tuple[float, float]:
    """Seconds to the first piece and to the whole reply of one streamed turn."""
    first: list[float] = []
    started = time.perf_counter()

    def on_delta(_piece: str) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    reply = await engine.send(session_id, token, f"message {k}: tell me more", on_delta=on_delta)
    whole = time.perf_counter() - started
    if not first or not reply.text:
        raise RuntimeError("a streamed turn delivered no piece")
    return first[0], whole


def figures(samples: list[tuple[float, float]], cpu_s: float) -> dict[str, float]:
    def ms(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1] * 1e3, 1)

    firsts = [f for f, _ in samples]
    wholes = [w for _, w in samples]
    return {
        "turns": len(samples),
        "first_piece_ms_p50": ms(firsts, 50),
        "first_piece_ms_p99": ms(firsts, 99),
        "whole_reply_ms_p50": ms(wholes, 50),
        "whole_reply_ms_p99": ms(wholes, 99),
        "cpu_ms_per_turn": round(cpu_s / len(samples) * 1e3, 2),
    }


async def sequential(engine: Engine, turn: Turn) -> dict[str, float]:
    s = await engine.create_session("solo")
    await turn(s.session_id, s.token, -1)  # warm the pool and the client
    samples = []
    cpu = time.process_time()
    for k in range(SEQUENTIAL_TURNS):
        if k % 8 == 0:  # keep the context short, as in the other benchmarks
            await engine.end_session(s.session_id, s.token)
            s = await engine.create_session("solo")
        samples.append(await turn(s.session_id, s.token, k))
    return figures(samples, time.process_time() - cpu)


async def concurrent(engine: Engine, turn: Turn) -> dict[str, float]:
    sessions = [await engine.create_session(f"user{i}") for i in range(CONCURRENT_USERS)]
    samples: list[tuple[float, float]] = []

    async def user(index: int) -> None:
        s = sessions[index]
        for k in range(TURNS_PER_USER):
            samples.append(await turn(s.session_id, s.token, k))

    cpu = time.process_time()
    await asyncio.gather(*(user(i) for i in range(CONCURRENT_USERS)))
    return figures(samples, time.process_time() - cpu)


async def main() -> None:
    results: dict[str, object] = {
        "model_latency_ms": LATENCY_S * 1e3,
        "first_piece_at_ms": round(LATENCY_S * FIRST_PIECE_SHARE * 1e3, 1),
        "measured_from": (
            "engine.send() called, to the first on_delta piece / to send() returning; "
            "for the gateway: the request sent, to the first content chunk / to the end"
        ),
        "load_average_1m_at_start": load_average(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("sim", "openai_simserver", "gateway_openai_simserver"):
            async with backend(name, Path(tmp) / name) as (engine, turn):
                results[name] = {
                    "sequential": await sequential(engine, turn),
                    f"concurrent_{CONCURRENT_USERS}_users": await concurrent(engine, turn),
                }
    print_json(results)


if __name__ == "__main__":
    asyncio.run(main())
