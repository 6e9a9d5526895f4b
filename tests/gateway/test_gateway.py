"""The HTTP gateway over real uvicorn on 127.0.0.1: routes, error mapping, streaming, policies.

Each test runs an engine and its gateway in the test's loop (port 0) and talks to it with httpx
or the official openai SDK; time-sensitive policies use the engine's manual clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from dataclasses import dataclass, replace

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from engine import Engine, EngineConfig, errors
from engine.admission import AuthBackoffPolicy
from engine.clock import ManualClock
from engine.config import GatewaySettings, SimSettings
from engine.gateway import Gateway
from engine.gateway.errors import (
    _BACKOFF_ANSWERS,
    BACKOFF_ANSWERS_KEPT,
    auth_failure_response,
    error_response,
    failure_of,
)
from engine.gateway.stats import GatewayMonitor
from engine.quotas import DEFAULT_TIERS, QuotaLimit
from engine.ratelimit import RateLimit

APP_KEY = "test-app-key-0123456789"
SLOW = SimSettings(median_latency_s=0.3, p99_latency_s=0.3, seed=1)


@dataclass
class Served:
    engine: Engine
    gateway: Gateway
    http: httpx.AsyncClient
    base: str

    async def session(self, user: str = "alice", **metadata) -> tuple[str, str]:
        r = await self.http.post(
            "/v1/sessions", json={"user_id": user, "metadata": metadata},
            headers={"Authorization": f"Bearer {APP_KEY}"},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body["session_id"], body["token"]

    async def send(self, sid: str, token: str, content: str = "hello", **extra) -> httpx.Response:
        return await self.http.post(
            f"/v1/sessions/{sid}/messages", json={"content": content, **extra},
            headers={"Authorization": f"Bearer {token}"},
        )


@pytest.fixture
def serve(make_config):
    """`async with serve(**config) as s`: an engine and its gateway on a free port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def start(gateway: GatewaySettings | None = None, **overrides):
        config: EngineConfig = make_config(**overrides, store={"durability": "process"})
        edge = gateway or config.gateway
        config = replace(config, gateway=replace(edge, app_keys=("other-key", APP_KEY)))
        async with Engine(config) as engine:
            gw = Gateway(engine)
            address = await gw.start("127.0.0.1:0")
            try:
                async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as http:
                    yield Served(engine, gw, http, f"http://{address}")
            finally:
                await gw.stop()

    return start


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


# -- sessions -----------------------------------------------------------------------------------
async def test_a_session_over_http_from_create_to_delete(serve):
    async with serve() as s:
        sid, token = await s.session("alice", tier="pro")
        reply = await s.send(sid, token, "hello there")
        assert reply.status_code == 200
        body = reply.json()
        assert body["role"] == "assistant" and "hello there" in body["content"]
        assert body["agent_type"] == "assistant"
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
        assert re.fullmatch(r"engine;dur=[\d.]+, model;dur=[\d.]+",
                            reply.headers["server-timing"])
        history = await s.http.get(f"/v1/sessions/{sid}/messages",
                                   headers={"Authorization": f"Bearer {token}"})
        assert [m["role"] for m in history.json()["messages"]] == ["user", "assistant"]
        assert history.json()["messages"][1]["content"] == body["content"]
        rotated = await s.http.post(f"/v1/sessions/{sid}/token",
                                    headers={"Authorization": f"Bearer {token}"})
        new_token = rotated.json()["token"]
        assert new_token != token
        assert (await s.send(sid, token)).status_code == 401
        assert (await s.send(sid, new_token)).status_code == 200
        ended = await s.http.delete(f"/v1/sessions/{sid}",
                                    headers={"Authorization": f"Bearer {new_token}"})
        assert ended.status_code == 204
        assert (await s.send(sid, new_token)).status_code == 401
        view = s.engine.snapshot().sessions
        assert view == ()


async def test_sessions_created_over_http_are_marked(serve):
    async with serve() as s:
        sid, _ = await s.session()
        await s.engine.create_session("bob")
        origins = {v.user_id: v.origin for v in s.engine.snapshot().sessions}
        assert origins == {"alice": "http", "bob": "python"}
        assert s.engine.snapshot().sessions_by_id[sid].origin == "http"


async def test_creating_a_session_needs_an_app_key(serve):
    async with serve() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": APP_KEY}):
            r = await s.http.post("/v1/sessions", json={"user_id": "a"}, headers=headers)
            assert r.status_code == 401
            assert error_of(r)["type"] == "authentication_error"
        assert s.engine.snapshot().sessions == ()


async def test_unknown_session_and_wrong_token_give_identical_bodies(serve):
    async with serve(limits={"auth_backoff": AuthBackoffPolicy(free_failures=100)}) as s:
        sid, token = await s.session()
        other, _ = await s.session("bob")
        cases = [
            ("GET", f"/v1/sessions/{sid}/messages", None),
            ("POST", f"/v1/sessions/{sid}/messages", {"content": "x"}),
            ("POST", f"/v1/sessions/{sid}/token", None),
            ("DELETE", f"/v1/sessions/{sid}", None),
        ]
        for method, path, body in cases:
            wrong = await s.http.request(method, path, json=body,
                                         headers={"Authorization": "Bearer not-the-token"})
            unknown = await s.http.request(
                method, path.replace(sid, "0" * 32), json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            someone_elses = await s.http.request(method, path.replace(sid, other), json=body,
                                                 headers={"Authorization": f"Bearer {token}"})
            missing = await s.http.request(method, path, json=body)
            assert wrong.status_code == unknown.status_code == 401
            assert wrong.content == unknown.content == someone_elses.content == missing.content
        chat = [
            await s.http.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {tok}", "X-Session-ID": session},
            )
            for session, tok in ((sid, "wrong"), ("f" * 32, token))
        ]
        assert chat[0].status_code == chat[1].status_code == 401
        assert chat[0].content == chat[1].content
        assert error_of(chat[0])["type"] == "authentication_error"
        assert set(error_of(chat[0])) == {"message", "type", "param", "code"}


async def test_a_client_that_keeps_failing_gets_429_yet_a_right_token_still_works(serve):
    async with serve(limits={"auth_backoff": AuthBackoffPolicy(free_failures=3)}) as s:
        sid, token = await s.session()
        statuses = [(await s.send(sid, "wrong")).status_code for _ in range(5)]
        assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429
        backoff = await s.send("0" * 32, "also-wrong")  # an unknown session: the same answer
        assert backoff.status_code == 429 and int(backoff.headers["retry-after"]) >= 1
        assert error_of(backoff)["type"] == "rate_limited"
        assert error_of(backoff)["code"] == "auth_backoff"
        assert (await s.send(sid, token)).status_code == 200



@pytest.mark.parametrize("openai_shape", [False, True], ids=["native", "openai"])
@pytest.mark.parametrize(
    "exc",
    [
        errors.AuthenticationError(),
        *(
            errors.AuthBackoff(wait)
            for wait in (1e-09, 0.001, 0.0105, 0.1, 0.5, 0.9995, 1.0, 1.0001, 12.345, 59.987654,
                         60.0, 0.1 + 0.2, 1e6 / 3)
        ),
    ],
    ids=lambda e: f"{type(e).__name__}:{getattr(e, 'retry_after', '')}",
)
def test_failed_authentication_is_answered_from_prebuilt_bytes_identical_to_the_general_path(
    exc, openai_shape
):
    general = error_response(failure_of(exc), openai=openai_shape)
    fast = auth_failure_response(exc, openai=openai_shape)
    assert (fast.status_code, fast.body, list(fast.raw_headers)) == (
        general.status_code, general.body, general.raw_headers,
    )
    if isinstance(exc, errors.AuthBackoff):  # the wait rounded up to the millisecond
        said = json.loads(fast.body)["error"]["retry_after"]
        assert exc.retry_after <= said < exc.retry_after + 0.0011
        assert int(fast.headers["retry-after"]) == max(1, math.ceil(exc.retry_after))

def test_429_answers_are_shared_per_millisecond_of_retry_after_and_bounded():
    first = auth_failure_response(errors.AuthBackoff(1.2341))
    assert auth_failure_response(errors.AuthBackoff(1.2345)) is first  # both say 1.235
    assert auth_failure_response(errors.AuthBackoff(1.2355)) is not first
    assert auth_failure_response(errors.AuthBackoff(1.2341), openai=True).body != first.body
    for n in range(3 * BACKOFF_ANSWERS_KEPT):
        auth_failure_response(errors.AuthBackoff(n / 1000 + 0.0005))
    assert 0 < len(_BACKOFF_ANSWERS[False]) <= BACKOFF_ANSWERS_KEPT


# -- bad input ----------------------------------------------------------------------------------
async def test_malformed_requests_get_400_with_what_was_wrong(serve):
    async with serve(sessions={"max_text_bytes": 100}) as s:
        sid, token = await s.session()
        auth = {"Authorization": f"Bearer {token}"}
        path = f"/v1/sessions/{sid}/messages"
        cases = {
            "not json": await s.http.post(path, content=b"{nope", headers=auth),
            "bad utf-8": await s.http.post(path, content=b'{"content": "\xff\xfe"}',
                                           headers=auth),
            "array": await s.http.post(path, json=["content"], headers=auth),
            "wrong type": await s.send(sid, token, content=5),  # type: ignore[arg-type]
            "stream not bool": await s.send(sid, token, stream="yes"),
            "empty turn": await s.send(sid, token, "   "),
            "too long": await s.send(sid, token, "x" * 101),
            "unknown agent": await s.send(sid, token, agent_type="nobody"),
            "no content": await s.http.post(path, json={}, headers=auth),
        }
        for case, response in cases.items():
            assert response.status_code == 400, case
            assert error_of(response)["type"] == "invalid_input", case
            assert error_of(response)["message"], case
        strategy = await s.send(sid, token, multitask_strategy="shout")
        assert strategy.status_code == 422
        assert error_of(strategy)["type"] == "invalid_value"
        # Nothing of any refused request reached the session.
        history = await s.http.get(path, headers=auth)
        assert history.json()["messages"] == []


async def test_chat_completions_input_rules(serve):
    async with serve() as s:
        sid, token = await s.session()
        headers = {"Authorization": f"Bearer {token}", "X-Session-ID": sid}

        async def chat(body, hdrs=headers):
            return await s.http.post("/v1/chat/completions", json=body, headers=hdrs)

        no_sid = await chat({"model": "assistant", "messages": [{"role": "user", "content": "x"}]},
                            {"Authorization": f"Bearer {token}"})
        assert no_sid.status_code == 400 and error_of(no_sid)["param"] == "X-Session-ID"
        not_user = await chat({"model": "assistant", "messages": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
        assert not_user.status_code == 400 and error_of(not_user)["type"] == "invalid_input"
        unknown = await chat({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
        assert unknown.status_code == 404
        assert error_of(unknown)["type"] == "model_not_found"
        assert error_of(unknown)["code"] == "model_not_found"
        parts = await chat({"model": "research", "messages": [
            {"role": "system", "content": "ignored: the server keeps the history"},
            {"role": "user", "content": [{"type": "text", "text": "from "},
                                         {"type": "text", "text": "parts"}]}]})
        assert parts.status_code == 200
        assert "from parts" in parts.json()["choices"][0]["message"]["content"]
        assert parts.json()["model"] == "research"


async def test_bodies_over_the_limit_are_refused_before_they_are_read(serve):
    async with serve(gateway=GatewaySettings(max_request_bytes=1000)) as s:
        sid, token = await s.session()
        host, port = s.gateway.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/sessions/{sid}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000000\r\n\r\n".encode()
        )
        await writer.drain()
        # No body was sent at all: the answer comes from the headers alone.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 413")
        assert b"connection: close" in head.lower()
        writer.close()

        # A chunked body (no Content-Length) is counted as it arrives and cut off at the limit.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/sessions/{sid}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for _ in range(3):
            writer.write(b"190\r\n" + b"x" * 400 + b"\r\n")  # 1,200 bytes in all
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer
        writer.close()


# -- limits and failures ------------------------------------------------------------------------
async def test_rate_limit_gives_429_with_retry_after(serve, clock):
    async with serve(limits={"session_rate": RateLimit(rate_per_s=0.5, burst=1)}) as s:
        sid, token = await s.session()
        assert (await s.send(sid, token)).status_code == 200
        refused = await s.send(sid, token)
        assert refused.status_code == 429
        error = error_of(refused)
        assert error["type"] == "rate_limited"
        assert error["retry_after"] == pytest.approx(2.0)
        assert refused.headers["retry-after"] == "2"
        clock.advance(2.0)
        assert (await s.send(sid, token)).status_code == 200


async def test_quota_429_says_when_waiting_cannot_help(serve):
    tiers = {**DEFAULT_TIERS, "tiny": {**DEFAULT_TIERS["free"],
                                       "tokens": QuotaLimit(1200, 3600.0)}}
    async with serve(limits={"tiers": tiers}, llm={"max_completion_tokens": 100}) as s:
        sid, token = await s.session(tier="tiny")
        hopeless = await s.send(sid, token, "word " * 1200)  # ~1,500 tokens > the whole limit
        assert hopeless.status_code == 429
        error = error_of(hopeless)
        assert error["type"] == "quota_exceeded" and error["code"] == "insufficient_quota"
        assert error["retry_after"] is None and "retry-after" not in hopeless.headers
        statuses = [(await s.send(sid, token, "word " * 300)).status_code for _ in range(4)]
        assert statuses[0] == 200 and statuses[-1] == 429
        later = await s.send(sid, token, "word " * 300)
        assert error_of(later)["retry_after"] > 0 and int(later.headers["retry-after"]) >= 1


async def test_model_failure_is_502_and_pool_exhaustion_504(serve, tmp_path):
    failing = SimSettings(median_latency_s=0.0, p99_latency_s=0.0, error_rate=1.0, seed=1)
    async with serve(llm={"sim": failing, "max_retries": 0}) as s:
        sid, token = await s.session()
        r = await s.send(sid, token)
        assert r.status_code == 502 and error_of(r)["type"] == "llm_error"
    types = tmp_path / "one.toml"
    types.write_text('[assistant]\nrole = "r"\ngoal = "g"\nbackstory = "b"\n'
                     'instructions = "i"\nmodel = "sim"\nmin_instances = 1\nmax_instances = 1\n')
    pools = {"agent_types_file": types, "workers": 1, "timeout_s": 0.05}
    async with serve(llm={"sim": SLOW}, pools=pools) as s:
        a, ta = await s.session("a")
        b, tb = await s.session("b")
        first, second = await asyncio.gather(s.send(a, ta), s.send(b, tb))
        assert sorted([first.status_code, second.status_code]) == [200, 504]
        timed_out = first if first.status_code == 504 else second
        assert error_of(timed_out)["type"] == "pool_timeout"


async def test_session_limit_is_409_when_every_session_is_busy(serve):
    async with serve(llm={"sim": SLOW}, sessions={"max_per_user": 1}) as s:
        sid, token = await s.session()
        turn = asyncio.create_task(s.send(sid, token))
        await _until(lambda: s.engine.snapshot().sessions[0].state == "busy")
        r = await s.http.post("/v1/sessions", json={"user_id": "alice"},
                              headers={"Authorization": f"Bearer {APP_KEY}"})
        assert r.status_code == 409 and error_of(r)["type"] == "session_limit"
        assert (await turn).status_code == 200


# -- double-texting -----------------------------------------------------------------------------
async def test_reject_refuses_a_second_turn_while_one_runs(serve):
    async with serve(llm={"sim": SLOW}) as s:
        sid, token = await s.session()
        first = asyncio.create_task(s.send(sid, token, "one"))
        await _until(lambda: s.engine.snapshot().sessions[0].state == "busy")
        second = await s.send(sid, token, "two", multitask_strategy="reject")
        assert second.status_code == 409 and error_of(second)["type"] == "session_busy"
        assert (await first).status_code == 200


async def test_enqueue_runs_turns_in_order_up_to_the_bound(serve):
    async with serve(llm={"sim": SLOW}, sessions={"max_queued_turns": 2},
                     limits={"session_rate": RateLimit(rate_per_s=100, burst=100)}) as s:
        sid, token = await s.session()
        first = asyncio.create_task(s.send(sid, token, "one"))
        await _until(lambda: s.engine.snapshot().sessions[0].state == "busy")
        queued = [asyncio.create_task(s.send(sid, token, text)) for text in ("two", "three")]
        await _until(lambda: s.engine.turns_in_flight == 3)
        over = await s.send(sid, token, "four")
        assert over.status_code == 409 and error_of(over)["type"] == "session_busy"
        results = await asyncio.gather(first, *queued)
        assert [r.status_code for r in results] == [200, 200, 200]
        history = await s.http.get(f"/v1/sessions/{sid}/messages",
                                   headers={"Authorization": f"Bearer {token}"})
        users = [m["content"] for m in history.json()["messages"] if m["role"] == "user"]
        assert users == ["one", "two", "three"]


async def test_interrupt_cancels_the_running_turn_which_keeps_nothing(serve):
    async with serve(llm={"sim": SLOW}) as s:
        sid, token = await s.session()
        running = asyncio.create_task(s.send(sid, token, "slow question"))
        await _until(lambda: s.engine.snapshot().sessions[0].state == "busy")
        newer = await s.send(sid, token, "never mind", multitask_strategy="interrupt")
        cancelled = await running
        assert cancelled.status_code == 409 and error_of(cancelled)["type"] == "interrupted"
        assert newer.status_code == 200
        history = await s.http.get(f"/v1/sessions/{sid}/messages",
                                   headers={"Authorization": f"Bearer {token}"})
        assert [m["content"] for m in history.json()["messages"] if m["role"] == "user"] == [
            "never mind"]
        # The interrupted turn's reservation was released: only one call is charged.
        usage = {u.resource: u for u in s.engine.operator.quota_usage("alice")}
        assert usage["api_calls"].used == 1 and usage["api_calls"].reserved == 0


# -- streaming ----------------------------------------------------------------------------------
async def test_messages_stream_as_sse_delta_then_done(serve):
    steady = SimSettings(median_latency_s=0.05, p99_latency_s=0.05, seed=3)
    async with serve(llm={"sim": steady}) as s:
        sid, token = await s.session()
        events = []
        async with s.http.stream(
            "POST", f"/v1/sessions/{sid}/messages",
            json={"content": "tell me a longer story about streams", "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for block in _sse_blocks(response):
                events.append(block)
        names = [name for name, _ in events]
        assert names[-1] == "done" and names.count("delta") >= 2
        text = "".join(data["content"] for name, data in events if name == "delta")
        done = events[-1][1]
        assert text == done["content"] and "longer story" in text
        assert done["usage"]["completion_tokens"] > 0


async def test_a_stream_refused_before_it_starts_is_an_ordinary_error(serve):
    async with serve() as s:
        sid, _ = await s.session()
        r = await s.send(sid, "wrong", stream=True)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/json"


# -- the official openai client -----------------------------------------------------------------
async def test_openai_async_client_chat_stream_and_models(serve):
    async with serve() as s:
        sid, token = await s.session()
        client = openai.AsyncOpenAI(base_url=f"{s.base}/v1", api_key=token,
                                    default_headers={"X-Session-ID": sid}, max_retries=0)
        first = await client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "remember 42"}])
        assert "remember 42" in first.choices[0].message.content
        assert first.usage.total_tokens == (first.usage.prompt_tokens
                                            + first.usage.completion_tokens)
        stream = await client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "and now?"}], stream=True,
            stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "and now?" in "".join(pieces) and usage is not None
        # The server kept the history: the second turn's model saw 4 messages (2 + 2 new).
        assert "ctx 4 msgs" in "".join(pieces)
        models = await client.models.list()
        assert sorted(m.id for m in models.data) == sorted(s.engine.agent_types)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}])
        wrong = openai.AsyncOpenAI(base_url=f"{s.base}/v1", api_key="wrong",
                                   default_headers={"X-Session-ID": sid}, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        app = openai.AsyncOpenAI(base_url=f"{s.base}/v1", api_key=APP_KEY, max_retries=0)
        assert len((await app.models.list()).data) == len(s.engine.agent_types)


async def test_openai_sync_client_unchanged(serve):
    async with serve() as s:
        sid, token = await s.session()

        def use_sync_client() -> tuple[str, str]:
            client = openai.OpenAI(base_url=f"{s.base}/v1", api_key=token,
                                   default_headers={"X-Session-ID": sid}, max_retries=0)
            reply = client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "sync hello"}])
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model="support", messages=[{"role": "user", "content": "sync stream"}],
                    stream=True)
                if chunk.choices
            )
            return reply.choices[0].message.content, streamed

        reply, streamed = await asyncio.to_thread(use_sync_client)
        assert "sync hello" in reply and "sync stream" in streamed


async def test_openai_client_sees_rate_limits(serve):
    async with serve(limits={"session_rate": RateLimit(rate_per_s=0.1, burst=1)}) as s:
        sid, token = await s.session()
        client = openai.AsyncOpenAI(base_url=f"{s.base}/v1", api_key=token,
                                    default_headers={"X-Session-ID": sid}, max_retries=0)
        await client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "1"}])
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "2"}])
        assert raised.value.response.headers["retry-after"] == "10"


# -- operations ---------------------------------------------------------------------------------
async def test_metrics_health_readiness_and_openapi(serve):
    async with serve() as s:
        sid, token = await s.session()
        await s.send(sid, token)
        await s.send(sid, "wrong")
        metrics = (await s.http.get("/metrics")).text
        for series in (
            "session_console_turns_total 1.0",
            "session_console_auth_failures_total 1.0",
            'session_console_http_requests_total{route="POST /v1/sessions/{id}/messages",'
            'status="401"} 1.0',
            "session_console_turn_duration_seconds_bucket",
            "session_console_pool_agents{",
            "session_console_sessions 1.0",
            'session_console_refusals_total{limit="rate"} 0.0',
        ):
            assert series in metrics, series
        assert sid not in metrics and token not in metrics
        assert (await s.http.get("/healthz")).status_code == 200
        assert (await s.http.get("/readyz")).status_code == 200
        document = (await s.http.get("/openapi.json")).json()
        served = {
            (method, route.split(" ", 1)[1].replace("{id}", "{session_id}"))
            for route, method in (
                (r, r.split(" ", 1)[0].lower()) for r in _routes(s)
            )
        }
        documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
        assert served == documented
        unknown = await s.http.get("/v2/nothing")
        assert unknown.status_code == 404 and error_of(unknown)["type"] == "not_found"
        no_id = await s.http.get("/v1/sessions//messages")
        assert no_id.status_code == 404 and error_of(no_id)["type"] == "not_found"
        for wrong in (await s.http.delete("/v1/models"),
                      await s.http.put(f"/v1/sessions/{sid}/messages")):
            assert wrong.status_code == 405
            assert error_of(wrong)["type"] == "method_not_allowed"
        head = await s.http.head("/healthz")
        assert head.status_code == 200 and head.content == b""


async def test_draining_refuses_new_turns_with_503_and_readyz_turns_false(serve):
    async with serve(llm={"sim": SLOW}) as s:
        sid, token = await s.session()
        in_flight = asyncio.create_task(s.send(sid, token, "finish me"))
        await _until(lambda: s.engine.snapshot().sessions[0].state == "busy")
        drained = asyncio.create_task(s.engine.drain(30))
        await _until(lambda: s.engine.state == "draining")
        refused = await s.send(sid, token, "too late")
        assert refused.status_code == 503 and error_of(refused)["type"] == "unavailable"
        assert (await s.http.get("/readyz")).status_code == 503
        assert (await s.http.get("/healthz")).status_code == 200
        assert (await in_flight).status_code == 200
        assert await drained == 0


async def test_gateway_stats_for_the_console(serve):
    async with serve() as s:
        sid, token = await s.session()
        await s.send(sid, token)
        await s.send(sid, "wrong")
        stats = s.gateway.stats()
        assert stats is not None and stats.listen == s.gateway.address and stats.ready
        routes = {r.route: r for r in stats.routes}
        assert routes["POST /v1/sessions/{id}/messages"].requests == 2
        assert routes["POST /v1/sessions/{id}/messages"].errors == 1
        assert routes["POST /v1/sessions"].requests == 1
        assert stats.connections >= 1 and stats.streams == 0


def test_route_rates_count_the_last_ten_completed_seconds():
    clock = ManualClock(start=1000.0)
    monitor = GatewayMonitor(clock, CollectorRegistry())
    for _ in range(12):  # 12 s: 3 requests a second, the last of them an error
        for status in (200, 200, 401):
            monitor.record("GET /x", status, 0.001)
        clock.advance(1.0)
    clock.advance(5.0)  # 5 quiet seconds: half the window holds no request
    monitor.record("GET /x", 200, 0.001)  # in the second in progress: not counted yet
    (route,) = monitor.snapshot("here", True, 0).routes
    assert (route.requests, route.errors) == (37, 12)
    assert (route.requests_per_s, route.errors_per_s) == (1.5, 0.5)
    clock.advance(30.0)
    (route,) = monitor.snapshot("here", True, 0).routes
    assert (route.requests_per_s, route.errors_per_s) == (0.0, 0.0)


# -- the edge -----------------------------------------------------------------------------------
async def test_slow_headers_and_slow_bodies_are_cut_off(serve):
    edge = GatewaySettings(header_timeout_s=0.3, body_timeout_s=0.3)
    async with serve(gateway=edge) as s:
        sid, token = await s.session()
        host, port = s.gateway.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # read() ends when the server closes
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/sessions/{sid}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 50\r\n\r\n"
            '{"content": '.encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
        writer.close()
        # The server is still serving everyone else.
        assert (await s.send(sid, token)).status_code == 200


async def test_a_client_gone_mid_body_is_counted_not_logged_as_an_error(serve, caplog):
    async with serve() as s:
        sid, token = await s.session()
        host, port = s.gateway.address.rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/sessions/{sid}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 50\r\n\r\n"
            '{"content": '.encode()
        )
        await writer.drain()
        writer.close()  # gone before the rest of its body
        route = "POST /v1/sessions/{id}/messages"
        await _until(lambda: any(
            r.route == route and r.requests >= 1 for r in s.gateway.stats().routes
        ))
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert (await s.send(sid, token)).status_code == 200  # and it serves on


async def test_connections_beyond_the_bound_get_503(serve):
    async with serve(gateway=GatewaySettings(max_connections=3)) as s:
        host, port = s.gateway.address.rsplit(":", 1)
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        await _until(lambda: s.gateway.stats().connections >= 3)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 503")
        for _, w in [*idle, (reader, writer)]:
            w.close()


# -- helpers ------------------------------------------------------------------------------------
async def _until(condition, limit: float = 30.0) -> None:
    """Poll until `condition()` holds (a hang guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def _routes(s: Served) -> list[str]:
    return s.gateway.route_names()


async def _sse_blocks(response: httpx.Response):
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            yield fields.get("event", "message"), json.loads(fields["data"])
