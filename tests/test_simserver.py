"""The OpenAI-compatible simulator server: shape, recording, faults, loopback only."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from openai import AsyncOpenAI

from engine.config import SimSettings
from engine.errors import InvalidInput
from engine.llm import simulated_reply
from engine.security import fingerprint
from engine.simserver import Fault, SimServer, main

MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "ping"}]


@pytest.fixture
async def server():
    async with SimServer() as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, server, body) -> tuple[int, dict, str]:
    url = f"{server.base_url}/chat/completions"
    async with http.post(url, json=body, headers={"Authorization": "Bearer sk-x"}) as response:
        return response.status, dict(response.headers), await response.text()


async def test_answers_in_the_openai_shape_the_sdk_parses(server):
    client = AsyncOpenAI(api_key="sk-local", base_url=server.base_url, max_retries=0)
    try:
        completion = await client.chat.completions.create(model="m1", messages=MESSAGES)
    finally:
        await client.close()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "m1" and completion.created > 0
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == simulated_reply(MESSAGES)
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


async def test_base_url_is_loopback_with_the_bound_port(server):
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/v1")
    assert int(server.base_url.split(":")[2].split("/")[0]) > 0


async def test_records_every_request_with_a_key_fingerprint(server, http):
    server.inject(Fault.error(500))
    for text in ("one", "two"):
        await post(http, server, {"model": "m", "messages": [{"role": "user", "content": text}]})
    assert [r.body["messages"][0]["content"] for r in server.requests] == ["one", "two"]
    assert {r.api_key_fingerprint for r in server.requests} == {fingerprint(b"sk-x")}
    assert all(r.path == "/v1/chat/completions" for r in server.requests)


async def test_recording_is_bounded():
    async with SimServer(max_recorded=3) as bounded, aiohttp.ClientSession() as http:
        for i in range(5):
            await post(http, bounded, {"messages": [{"role": "user", "content": str(i)}]})
        assert [r.body["messages"][0]["content"] for r in bounded.requests] == ["2", "3", "4"]


async def test_fault_queue_applies_in_order_then_answers_normally(server, http):
    server.inject(Fault.error(503))
    server.inject(Fault.rate_limited(retry_after_s=2.5))
    server.inject(Fault.malformed())
    body = {"messages": MESSAGES}
    status, _, _ = await post(http, server, body)
    assert status == 503
    status, headers, text = await post(http, server, body)
    assert status == 429 and headers["Retry-After"] == "3" and headers["retry-after-ms"] == "2500"
    assert '"rate_limit_error"' in text
    status, _, text = await post(http, server, body)
    assert status == 200 and text.startswith('{"id": "chatcmpl-broken"')
    status, _, text = await post(http, server, body)
    assert status == 200 and simulated_reply(MESSAGES) in text
    assert not server.faults


async def test_bad_request_bodies_get_400(server, http):
    for body in ({}, {"messages": []}, {"messages": [{"content": "no role"}]}, [1, 2]):
        status, _, text = await post(http, server, body)
        assert status == 400 and "messages" in text


async def test_stop_releases_hanging_requests(http):
    server = SimServer()
    await server.start()
    server.inject(Fault.hang())
    pending = asyncio.create_task(post(http, server, {"messages": MESSAGES}))
    while not server.requests:
        await asyncio.sleep(0.01)
    assert not pending.done()
    await server.stop()
    status, _, text = await pending
    assert status == 503 and "shutting down" in text


async def test_delay_fault_answers_after_the_delay(server, http):
    server.inject(Fault.delay(0.01))
    status, _, _ = await post(http, server, {"messages": MESSAGES})
    assert status == 200


async def test_sim_settings_inject_errors_and_hangs():
    errors = SimSettings(median_latency_s=0, p99_latency_s=0, error_rate=1.0)
    async with SimServer(errors) as server, aiohttp.ClientSession() as http:
        status, _, text = await post(http, server, {"messages": MESSAGES})
        assert status == 500 and "error_rate" in text
    hangs = SimSettings(median_latency_s=0, p99_latency_s=0, timeout_rate=1.0)
    async with SimServer(hangs) as server, aiohttp.ClientSession() as http:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.1):
                await post(http, server, {"messages": MESSAGES})


async def test_refuses_non_loopback_hosts_and_double_start(server):
    for host in ("0.0.0.0", "192.168.1.10", "::", "localhost"):
        with pytest.raises(InvalidInput, match="loopback"):
            await SimServer().start(host)
    with pytest.raises(InvalidInput, match="already running"):
        await server.start()
    await server.stop()
    await server.stop()  # idempotent


def test_cli_refuses_a_public_host(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--host", "0.0.0.0", "--port", "0"])
    assert info.value.code == 2
    assert "loopback" in capsys.readouterr().err
