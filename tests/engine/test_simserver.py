"""The OpenAI-compatible simulator server: shape, streaming, recording, faults, loopback only."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from openai import APIConnectionError, APIError, AsyncOpenAI, InternalServerError

from engine.config import SimSettings
from engine.errors import InvalidInput
from engine.llm import estimate_prompt_tokens
from engine.security import fingerprint
from engine.sim import reply_pieces, simulated_reply
from engine.simserver import Fault, SimServer, main
from engine.tokens import estimate_tokens

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


async def read_events(http, server, body) -> tuple[int, str, list[str]]:
    """Status, content type and the `data:` payloads of a streamed answer, in order."""
    url = f"{server.base_url}/chat/completions"
    async with http.post(url, json=body) as response:
        text = await response.text()
        kind = response.headers["Content-Type"]
    events = text.split("\n\n")
    assert events[-1] == ""  # every event ends with a blank line
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    return response.status, kind, [e.removeprefix("data: ") for e in events[:-1]]


@pytest.fixture
async def sdk(server):
    client = AsyncOpenAI(api_key="sk-local", base_url=server.base_url, max_retries=0)
    yield client
    await client.close()


STREAM = {"model": "m1", "messages": MESSAGES, "stream": True}


async def test_streams_chunks_usage_and_done_in_openai_wire_format(server, http):
    body = STREAM | {"stream_options": {"include_usage": True}}
    status, kind, events = await read_events(http, server, body)
    assert status == 200 and kind.startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"m1"}
    first, *content, stop, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in content]
    reply = simulated_reply(MESSAGES)
    # The same pieces as the in-process simulator streams, joining back to the same reply.
    assert pieces == reply_pieces(reply) and "".join(pieces) == reply and len(pieces) > 1
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *content])
    assert stop["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(c["usage"] is None for c in [first, *content, stop])  # OpenAI's include_usage rule
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": estimate_prompt_tokens(MESSAGES),
        "completion_tokens": estimate_tokens(reply),
        "total_tokens": estimate_prompt_tokens(MESSAGES) + estimate_tokens(reply),
    }


async def test_stream_without_include_usage_has_no_usage(server, http):
    _, _, events = await read_events(http, server, STREAM)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks)


async def test_the_sdk_streaming_client_reads_the_stream(server, sdk):
    stream = await sdk.chat.completions.create(
        model="m1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == simulated_reply(MESSAGES)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == estimate_prompt_tokens(MESSAGES) + estimate_tokens(
        text
    )


async def test_midstream_fault_sends_an_error_event_after_its_pieces(server, http, sdk):
    server.inject(Fault.midstream(after_pieces=2, message="model crashed"))
    status, _, events = await read_events(http, server, STREAM)
    assert status == 200
    *chunks, error = (json.loads(e) for e in events)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "", *reply_pieces(simulated_reply(MESSAGES))[:2]
    ]
    assert error == {"error": {"message": "model crashed", "type": "server_error", "code": 500}}
    server.inject(Fault.midstream(after_pieces=1, message="model crashed"))
    received = []
    stream = await sdk.chat.completions.create(model="m1", messages=MESSAGES, stream=True)
    with pytest.raises(APIError, match="model crashed"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", reply_pieces(simulated_reply(MESSAGES))[0]]


async def test_midstream_drop_cuts_the_connection_after_its_pieces(server, sdk):
    server.inject(Fault.midstream(after_pieces=3, cut="drop"))
    received = []
    stream = await sdk.chat.completions.create(model="m1", messages=MESSAGES, stream=True)
    with pytest.raises(APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", *reply_pieces(simulated_reply(MESSAGES))[:3]]
    # The server is still fine for the next request.
    completion = await sdk.chat.completions.create(model="m1", messages=MESSAGES)
    assert completion.choices[0].message.content == simulated_reply(MESSAGES)


async def test_midstream_end_stops_without_finish_reason_or_done(server, http):
    server.inject(Fault.midstream(after_pieces=1, cut="end"))
    status, _, events = await read_events(http, server, STREAM)
    chunks = [json.loads(e) for e in events]  # no [DONE]
    assert status == 200 and len(chunks) == 2
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_midstream_fault_on_a_plain_request_is_http_500(server, http):
    server.inject(Fault.midstream(after_pieces=2, message="model crashed"))
    status, _, text = await post(http, server, {"messages": MESSAGES})
    assert status == 500 and "model crashed" in text
    with pytest.raises(InvalidInput, match="after_pieces"):
        Fault.midstream(after_pieces=-1)


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
        # A stream request fails the same way, before any event.
        client = AsyncOpenAI(api_key="sk-local", base_url=server.base_url, max_retries=0)
        with pytest.raises(InternalServerError, match="error_rate"):
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        await client.close()
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
