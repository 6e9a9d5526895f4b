"""Model backends: the simulator and the OpenAI-compatible adapter, driven by real Agents."""

from __future__ import annotations

import hashlib
import os
import statistics

import pytest

os.environ.setdefault("PRAISONAI_TELEMETRY_DISABLED", "true")

from openai import AsyncOpenAI
from praisonaiagents import Agent

from engine import EngineConfig, LLMSettings, SimSettings
from engine.errors import ConfigurationError, LLMError
from engine.llm import (
    ModelAdapter,
    build_messages,
    content_digest,
    estimate_prompt_tokens,
    repaired,
)
from engine.openai_backend import OpenAICompatModel, new_client, resolve_openai_settings
from engine.security import fingerprint
from engine.sim import SimSource, SimulatedModel, paced_pieces, reply_pieces, simulated_reply
from engine.simserver import Fault, SimServer
from engine.tokens import estimate_tokens

INSTANT = SimSettings(median_latency_s=0.0, p99_latency_s=0.0, seed=7)
API_KEY = "sk-test-DO-NOT-SHOW-9f2c"
HISTORY = [
    {"role": "user", "content": "my name is Ada"},
    {"role": "assistant", "content": "hello Ada"},
]


def make_agent(model: ModelAdapter) -> Agent:
    agent = Agent(
        name="assistant", role="Assistant", goal="Help the user", backstory="A helpful aide",
        model=model, tools=[], memory=False, reflection=False, rules=False, output="silent",
    )
    agent.harness_base_prompt = ""
    return agent


class Recording(SimulatedModel):
    """Keeps what the Agent handed over, to check the call shape."""

    def __init__(self) -> None:
        super().__init__(INSTANT)
        self.seen: list[list[dict[str, str]]] = []

    async def _complete(self, messages, outcome):
        self.seen.append(messages)
        return await super()._complete(messages, outcome)


# --- the Agent contract ---------------------------------------------------------------------


async def test_agent_passes_system_prompt_history_and_prompt_once():
    model = Recording()
    agent = make_agent(model)
    agent.chat_history = [dict(m) for m in HISTORY]
    model.begin_call()
    reply = model.result(await agent.achat("what is my name?"))
    (messages,) = model.seen
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "Your Role: Assistant" in messages[0]["content"]
    assert messages[1:] == [*HISTORY, {"role": "user", "content": "what is my name?"}]
    assert reply == simulated_reply(messages)
    assert reply.startswith("[sim] what is my name? (ctx 4 msgs, sha ")
    # The agent keeps and appends to its own list: the engine must hand it a copy.
    assert agent.chat_history[-2:] == [
        {"role": "user", "content": "what is my name?"},
        {"role": "assistant", "content": reply},
    ]


async def test_reply_depends_only_on_what_the_model_received():
    a, b = make_agent(SimulatedModel(INSTANT)), make_agent(SimulatedModel(INSTANT))
    a.chat_history = [dict(m) for m in HISTORY]
    b.chat_history = []
    reply_a, reply_b = await a.achat("same text"), await b.achat("same text")
    assert reply_a.startswith("[sim] same text (ctx 4 msgs")
    assert reply_b.startswith("[sim] same text (ctx 2 msgs")
    c = make_agent(SimulatedModel(INSTANT))
    c.chat_history = [dict(m) for m in HISTORY]
    assert await c.achat("same text") == reply_a


async def test_tokens_count_everything_received_and_the_reply():
    model = Recording()
    agent = make_agent(model)
    agent.chat_history = [dict(m) for m in HISTORY]
    model.begin_call()
    reply = await agent.achat("count me")
    outcome = model.outcome
    assert outcome.calls == 1 and outcome.error is None
    assert outcome.prompt_tokens == estimate_prompt_tokens(model.seen[0])
    assert outcome.prompt_tokens > sum(estimate_tokens(m["content"]) for m in HISTORY)
    assert outcome.completion_tokens == estimate_tokens(reply)


async def test_begin_call_starts_a_fresh_outcome_and_calls_add_up():
    model = SimulatedModel(INSTANT)
    await model.get_response_async("one")
    await model.get_response_async("two")
    assert model.outcome.calls == 2
    model.begin_call()
    assert model.outcome.calls == 0 and model.outcome.prompt_tokens == 0


async def test_injected_error_reaches_the_engine_not_the_terminal(capfd):
    model = SimulatedModel(SimSettings(median_latency_s=0, p99_latency_s=0, error_rate=1.0))
    agent = make_agent(model)
    model.begin_call()
    reply = await agent.achat("hi")
    assert reply is None
    assert isinstance(model.outcome.error, LLMError)
    assert "simulated model error" in str(model.outcome.error)
    assert model.outcome.prompt_tokens == 0  # failed calls bill nothing
    with pytest.raises(LLMError, match="simulated model error"):
        model.result(reply)
    captured = capfd.readouterr()
    assert "Error" not in captured.out + captured.err


async def test_injected_timeout_is_bounded_by_timeout_s():
    settings = SimSettings(median_latency_s=0, p99_latency_s=0, timeout_rate=1.0)
    model = SimulatedModel(settings, timeout_s=0.01)
    assert await model.get_response_async("hi") is None
    assert "timed out after 0.01s" in str(model.outcome.error)


async def test_unexpected_exception_becomes_llm_error_with_its_cause():
    class Broken(ModelAdapter):
        async def _complete(self, messages, outcome):
            raise ZeroDivisionError

    model = Broken("broken")
    assert await make_agent(model).achat("hi") is None
    assert isinstance(model.outcome.error, LLMError)
    assert isinstance(model.outcome.error.__cause__, ZeroDivisionError)


def test_none_reply_without_a_recorded_error_is_still_an_llm_error():
    model = SimulatedModel(INSTANT)
    with pytest.raises(LLMError, match="without calling model 'sim'"):
        model.result(None)
    assert model.result("fine") == "fine"


def test_build_messages_adds_the_prompt_unless_history_ends_with_it():
    pending = [*HISTORY, {"role": "user", "content": "q"}]
    assert build_messages("q", "sys", pending)[1:] == pending
    assert build_messages("q", None, HISTORY) == pending
    failed = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]
    assert repaired(build_messages("b", None, failed))[1]["content"] == ""
    whole = build_messages("b", None, HISTORY)
    assert repaired(whole) is whole  # nothing to repair: the same list, not a copy


def test_digest_tells_apart_every_split_role_and_order_of_the_same_text():
    variants = [
        [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}],
        [{"role": "user", "content": "abc"}],
        [{"role": "user", "content": "c"}, {"role": "user", "content": "ab"}],
        [{"role": "assistant", "content": "ab"}, {"role": "user", "content": "c"}],
        [{"role": "user", "content": 'a", "user'}, {"role": "user", "content": "c"}],
    ]
    assert len({content_digest(v) for v in variants}) == len(variants)


def test_digest_and_tokens_read_a_failed_reply_as_empty_text():
    failed = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]
    repaired = [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]
    no_content = [{"role": "user", "content": "a"}, {"role": "assistant"}]
    assert content_digest(failed) == content_digest(repaired) == content_digest(no_content)
    assert estimate_prompt_tokens(failed) == estimate_prompt_tokens(repaired) == 1
    # Lone surrogates (possible in a str) hash without error and differ from other text.
    assert content_digest([{"role": "user", "content": "\ud800"}]) != content_digest(repaired)


def test_prompt_tokens_are_four_characters_each_over_the_whole_prompt():
    messages = [{"role": "system", "content": "x" * 10}, {"role": "user", "content": "y" * 7}]
    assert estimate_prompt_tokens(messages) == 5  # 17 characters, rounded up
    assert estimate_prompt_tokens([]) == 1  # never zero, like estimate_tokens


# --- simulator draws ------------------------------------------------------------------------


def _digest(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def test_latency_distribution_matches_median_and_p99():
    source = SimSource(SimSettings(median_latency_s=0.2, p99_latency_s=1.5, seed=1))
    draws = sorted(source.draw(_digest(i)).latency_s for i in range(5000))
    median = statistics.median(draws)
    p99 = draws[int(0.99 * len(draws))]
    assert median == pytest.approx(0.2, rel=0.15)
    assert p99 == pytest.approx(1.5, rel=0.30)


def test_rates_are_roughly_right():
    source = SimSource(SimSettings(error_rate=0.2, timeout_rate=0.1, seed=3))
    faults = [source.draw(_digest(i)).fault for i in range(5000)]
    assert faults.count("timeout") / 5000 == pytest.approx(0.1, abs=0.02)
    assert faults.count("error") / 5000 == pytest.approx(0.2 * 0.9, abs=0.03)


def test_same_seed_and_calls_give_the_same_draws_whichever_adapter_serves_them():
    settings = SimSettings(error_rate=0.3, timeout_rate=0.1, seed=42)
    calls = [_digest(i % 7) for i in range(50)]  # repeats included
    first = SimSource(settings)
    second = SimSource(settings)
    assert [first.draw(d) for d in calls] == [second.draw(d) for d in calls]
    other = SimSource(SimSettings(error_rate=0.3, timeout_rate=0.1, seed=43))
    assert [other.draw(d) for d in calls] != [SimSource(settings).draw(d) for d in calls]


def test_a_retry_of_identical_content_draws_afresh():
    source = SimSource(SimSettings(seed=5))
    assert len({source.draw(_digest(0)).latency_s for _ in range(20)}) == 20


def test_pooled_adapters_share_one_source():
    source = SimSource(SimSettings(seed=9))
    a, b = SimulatedModel(source=source), SimulatedModel(source=source)
    assert a.source is b.source
    with pytest.raises(ConfigurationError):
        SimulatedModel(SimSettings(seed=10), source=source)


def test_zero_median_means_no_latency_and_bad_settings_are_refused():
    source = SimSource(INSTANT)
    assert {source.draw(_digest(i)).latency_s for i in range(100)} == {0.0}
    with pytest.raises(ConfigurationError, match="median"):
        SimSource(SimSettings(median_latency_s=1.0, p99_latency_s=0.5))
    with pytest.raises(ConfigurationError, match="error_rate"):
        SimSource(SimSettings(error_rate=1.5))


# --- OpenAI-compatible adapter over HTTP ----------------------------------------------------


@pytest.fixture
async def server():
    async with SimServer() as running:
        yield running


@pytest.fixture
async def client(server):
    c = AsyncOpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    yield c
    await c.close()


def compat(client: AsyncOpenAI, **kwargs) -> OpenAICompatModel:
    kwargs.setdefault("backoff_s", 0.001)
    return OpenAICompatModel("sim", client, **kwargs)


async def test_openai_adapter_sends_a_failed_earlier_reply_as_empty_text(server, client):
    failed = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]
    reply = await compat(client).get_response_async("b", None, failed)
    assert reply is not None
    (request,) = server.requests
    assert request.body["messages"][1] == {"role": "assistant", "content": ""}


async def test_openai_adapter_success_reports_usage_and_matches_the_simulator(server, client):
    model = compat(client, max_completion_tokens=64)
    reply = await model.get_response_async("hello", "be brief", HISTORY)
    messages = build_messages("hello", "be brief", HISTORY)
    assert reply == simulated_reply(messages)
    assert reply == await SimulatedModel(INSTANT).get_response_async("hello", "be brief", HISTORY)
    assert model.outcome.prompt_tokens == estimate_prompt_tokens(messages)
    assert model.outcome.completion_tokens == estimate_tokens(reply)
    assert model.outcome.error is None and model.outcome.model_seconds > 0
    (request,) = server.requests
    assert request.body == {"model": "sim", "messages": messages, "max_tokens": 64}
    assert request.api_key_fingerprint == fingerprint(API_KEY.encode())


async def test_openai_adapter_under_a_real_agent(server, client):
    model = compat(client)
    agent = make_agent(model)
    agent.chat_history = [dict(m) for m in HISTORY]
    model.begin_call()
    reply = model.result(await agent.achat("and now?"))
    sent = server.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert reply == simulated_reply(sent)


async def test_missing_usage_falls_back_to_estimates(server, client):
    server.inject(Fault.body({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}))
    model = compat(client)
    assert await model.get_response_async("hello") == "hi"
    assert model.outcome.prompt_tokens == estimate_tokens("hello")
    assert model.outcome.completion_tokens == estimate_tokens("hi")


async def test_server_errors_are_retried_a_bounded_number_of_times(server, client):
    server.inject(Fault.error(500), times=10)
    model = compat(client, max_retries=2)
    assert await model.get_response_async("hi") is None
    assert len(server.requests) == 3
    message = str(model.outcome.error)
    assert "HTTP 500" in message and "after 3 attempts" in message


async def test_rate_limit_then_success(server, client):
    server.inject(Fault.rate_limited(retry_after_s=0.01))
    model = compat(client)
    reply = await model.get_response_async("hi")
    assert reply is not None and model.outcome.error is None
    assert len(server.requests) == 2


async def test_rate_limit_asking_for_more_than_the_cap_fails_at_once(server, client):
    server.inject(Fault.rate_limited(retry_after_s=30), times=3)
    model = compat(client, retry_after_cap_s=1.0)
    assert await model.get_response_async("hi") is None
    assert "asks to wait 30s" in str(model.outcome.error)
    assert len(server.requests) == 1


async def test_client_errors_are_not_retried(server, client):
    server.inject(Fault.error(404, "no such model"), times=3)
    model = compat(client)
    assert await model.get_response_async("hi") is None
    assert "HTTP 404 (no such model)" in str(model.outcome.error)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.malformed(), "not JSON"),
        (Fault.body({"id": "x", "choices": []}), "without choices"),
        (Fault.body({"choices": [{"message": {"content": None}}]}), "without choices"),
    ],
)
async def test_unusable_bodies_are_llm_errors(server, client, fault, expected):
    server.inject(fault)
    model = compat(client)
    assert await model.get_response_async("hi") is None
    assert expected in str(model.outcome.error)
    assert len(server.requests) == 1


async def test_hanging_server_times_out_without_retry(server, client):
    server.inject(Fault.hang(), times=3)
    model = compat(client, timeout_s=1.0)  # long enough for the request to arrive on a busy box
    assert await model.get_response_async("hi") is None
    assert "no response within 1s" in str(model.outcome.error)
    assert len(server.requests) == 1


async def test_connection_refused_is_an_llm_error(server, client):
    await server.stop()
    model = compat(client, max_retries=1)
    assert await model.get_response_async("hi") is None
    message = str(model.outcome.error)
    assert "cannot reach" in message and "after 2 attempts" in message
    assert server.base_url.removesuffix("/v1") in message


async def test_unbound_adapter_says_what_to_do():
    model = OpenAICompatModel("sim")
    assert await model.get_response_async("hi") is None
    assert "bind" in str(model.outcome.error)


async def test_error_messages_never_contain_the_api_key(server, client):
    echo = f"Incorrect API key provided: {API_KEY}"
    faults = [
        Fault.error(401, echo), Fault.error(500, echo), Fault.rate_limited(60),
        Fault.malformed(), Fault.body({"error": {"message": echo}}),
    ]
    messages = []
    for fault in faults:
        server.inject(fault, times=3)
        model = compat(client, max_retries=0, retry_after_cap_s=1.0)
        assert await model.get_response_async("hi") is None
        messages.append(str(model.outcome.error))
        server.faults.clear()
    assert all(API_KEY not in m for m in messages)
    assert fingerprint(API_KEY.encode()) in messages[0]


async def test_new_client_talks_to_the_server(server):
    settings = resolve_openai_settings(server.base_url, "sk-local", "sim")
    c = new_client(settings, timeout_s=5)
    try:
        assert c.max_retries == 0
        assert await OpenAICompatModel("sim", c).get_response_async("hi")
    finally:
        await c.close()


# --- streaming -----------------------------------------------------------------------------


def test_reply_pieces_are_word_aligned_bounded_and_join_back():
    for reply in ("one", "a b", " x  y ", " ".join(map(str, range(100)))):
        pieces = reply_pieces(reply)
        assert "".join(pieces) == reply and 1 <= len(pieces) <= 16
    assert reply_pieces("a b c") == ["a ", "b ", "c"]


async def test_paced_pieces_yield_the_reply_pieces():
    reply = simulated_reply(build_messages("hi", None, None))
    assert [p async for p in paced_pieces(reply, 0.0)] == reply_pieces(reply)


async def test_simulated_model_streams_the_pieces_it_returns():
    model = SimulatedModel(INSTANT)
    pieces: list[str] = []
    model.begin_call(pieces.append)
    reply = await model.get_response_async("stream me please")
    assert pieces == reply_pieces(reply) and len(pieces) > 1


def streaming(model: OpenAICompatModel) -> list[str]:
    pieces: list[str] = []
    model.begin_call(pieces.append)
    return pieces


async def test_openai_adapter_streams_pieces_and_counts_the_usage_chunk(server, client):
    model = compat(client, max_completion_tokens=64)
    pieces = streaming(model)
    reply = await model.get_response_async("hello", "be brief", HISTORY)
    messages = build_messages("hello", "be brief", HISTORY)
    assert reply == simulated_reply(messages)
    assert pieces == reply_pieces(reply) and len(pieces) > 1
    assert model.outcome.prompt_tokens == estimate_prompt_tokens(messages)
    assert model.outcome.completion_tokens == estimate_tokens(reply)
    assert model.outcome.error is None and model.outcome.model_seconds > 0
    (request,) = server.requests
    assert request.body == {
        "model": "sim", "messages": messages, "max_tokens": 64,
        "stream": True, "stream_options": {"include_usage": True},
    }


async def test_openai_adapter_streams_under_a_real_agent(server, client):
    model = compat(client)
    agent = make_agent(model)
    agent.chat_history = [dict(m) for m in HISTORY]
    pieces = streaming(model)
    reply = model.result(await agent.achat("and now?"))
    assert "".join(pieces) == reply == simulated_reply(server.requests[-1].body["messages"])
    assert len(pieces) > 1


@pytest.mark.parametrize(
    "fault",
    [Fault.midstream(0), Fault.midstream(0, cut="drop"), Fault.midstream(0, cut="end"),
     Fault.error(503), Fault.rate_limited(0.01)],
    ids=["error-event", "dropped", "ended-early", "http-503", "http-429"],
)
async def test_a_stream_failing_before_its_first_piece_is_retried(server, client, fault):
    server.inject(fault)
    model = compat(client)
    pieces = streaming(model)
    reply = await model.get_response_async("hi")
    assert model.outcome.error is None and reply is not None
    assert pieces == reply_pieces(reply)  # nothing twice
    assert len(server.requests) == 2


async def test_streams_failing_before_a_piece_are_retried_a_bounded_number_of_times(
    server, client
):
    server.inject(Fault.midstream(0, message="overloaded"), times=10)
    model = compat(client, max_retries=2)
    pieces = streaming(model)
    assert await model.get_response_async("hi") is None
    assert pieces == [] and len(server.requests) == 3
    message = str(model.outcome.error)
    assert "broke off its stream (server error: overloaded) after 3 attempts" in message


@pytest.mark.parametrize(
    ("cut", "cause"),
    [("error", "server error: model crashed"), ("drop", "connection lost"),
     ("end", "it ended without a finish_reason")],
)
async def test_a_stream_failing_after_a_piece_is_an_llm_error_never_a_retry(
    server, client, cut, cause
):
    server.inject(Fault.midstream(2, cut=cut, message="model crashed"))
    model = compat(client, max_retries=5)
    pieces = streaming(model)
    assert await model.get_response_async("hi") is None
    assert len(server.requests) == 1
    assert pieces == reply_pieces(simulated_reply(build_messages("hi", None, None)))[:2]
    message = str(model.outcome.error)
    assert "broke off the reply after 2 streamed pieces" in message and cause in message
    assert "not kept" in message
    assert model.outcome.prompt_tokens == model.outcome.completion_tokens == 0


async def test_a_plain_json_answer_to_a_stream_request_is_one_piece(server, client):
    usage = {"prompt_tokens": 111, "completion_tokens": 7}
    reply = {"choices": [{"message": {"role": "assistant", "content": "all at once"}}]}
    server.inject(Fault.body(reply | {"usage": usage}))
    model = compat(client)
    pieces = streaming(model)
    assert await model.get_response_async("hi") == "all at once"
    assert pieces == ["all at once"]
    assert (model.outcome.prompt_tokens, model.outcome.completion_tokens) == (111, 7)
    server.inject(Fault.malformed())
    pieces = streaming(model)
    assert await model.get_response_async("hi") is None
    assert "not JSON" in str(model.outcome.error) and pieces == []


async def test_stream_error_messages_never_contain_the_api_key(server, client):
    server.inject(Fault.midstream(1, message=f"bad key {API_KEY}"))
    model = compat(client)
    streaming(model)
    assert await model.get_response_async("hi") is None
    message = str(model.outcome.error)
    assert API_KEY not in message and fingerprint(API_KEY.encode()) in message


def test_openai_settings_come_from_the_environment_and_hide_the_key():
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}
    llm = EngineConfig.from_env(env).llm
    settings = resolve_openai_settings(llm.base_url, llm.api_key, llm.model)
    assert settings.api_key == API_KEY and settings.base_url == "http://127.0.0.1:1/v1"
    assert settings.model == "gpt-4o-mini"
    assert API_KEY not in repr(settings) and API_KEY not in repr(llm)
    assert settings.key_fingerprint == fingerprint(API_KEY.encode())
    given = LLMSettings(base_url="http://h/v1", api_key="sk-local", model="llama3")
    explicit = EngineConfig.from_env(env, llm=given).llm
    assert (explicit.base_url, explicit.api_key, explicit.model) == (
        "http://h/v1", "sk-local", "llama3",
    )
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        resolve_openai_settings()
