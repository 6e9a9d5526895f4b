"""Streaming turns through the engine with the `openai` backend against the simulator server.

A turn's reply reaches `engine.send(..., on_delta=...)` piece by piece as the server streams it;
a stream that breaks off after a piece fails the turn with LLMError and keeps nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Engine, errors
from engine.llm import estimate_prompt_tokens
from engine.ratelimit import RateLimit
from engine.sim import reply_pieces, simulated_reply
from engine.simserver import Fault, SimServer
from engine.tokens import estimate_tokens


@pytest.fixture
async def server():
    async with SimServer() as running:
        yield running


@pytest.fixture
async def engine(make_config, tmp_path: Path, server):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        '[assistant]\nrole = "r"\ngoal = "g"\nbackstory = "b"\ninstructions = "i"\n'
        'model = "sim-assistant"\nmin_instances = 1\nmax_instances = 2\n'
    )
    config = make_config(
        llm={"backend": "openai", "base_url": server.base_url, "api_key": "sk-local",
             "turn_timeout_s": 5.0, "max_retries": 2},
        pools={"agent_types_file": agents},
        limits={"session_rate": RateLimit(1000.0, 1000), "user_rate": RateLimit(1000.0, 1000)},
    )
    async with Engine(config) as running:
        yield running


def consistent(engine: Engine, user: str) -> bool:
    """No agent left borrowed and no quota left reserved."""
    return all(p.in_use == 0 for p in engine.snapshot().pools) and all(
        u.reserved == 0 for u in engine.operator.quota_usage(user)
    )


async def test_a_turn_streams_from_the_server_to_on_delta(engine, server):
    s = await engine.create_session("alice")
    pieces: list[str] = []
    reply = await engine.send(s.session_id, s.token, "tell me a story", on_delta=pieces.append)
    body = server.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert reply.text == simulated_reply(body["messages"])
    assert len(pieces) > 1 and pieces == reply_pieces(reply.text)
    assert "".join(pieces) == reply.text
    # Tokens as the server's usage chunk reported them (it counts with the engine's rule).
    assert reply.prompt_tokens == estimate_prompt_tokens(body["messages"])
    assert reply.completion_tokens == estimate_tokens(reply.text)
    used = {u.resource: u.used for u in engine.operator.quota_usage("alice")}
    assert used["tokens"] == reply.prompt_tokens + reply.completion_tokens
    history = await engine.history(s.session_id, s.token)
    assert [(m.role, m.content) for m in history] == [
        ("user", "tell me a story"), ("assistant", reply.text),
    ]


async def test_a_turn_without_on_delta_does_not_ask_for_a_stream(engine, server):
    s = await engine.create_session("alice")
    reply = await engine.send(s.session_id, s.token, "plain")
    assert "stream" not in server.requests[-1].body
    assert reply.text == simulated_reply(server.requests[-1].body["messages"])


@pytest.mark.parametrize("cut", ["error", "drop", "end"])
async def test_a_stream_broken_after_a_piece_fails_the_turn_and_keeps_nothing(
    engine, server, cut
):
    s = await engine.create_session("alice")
    first = await engine.send(s.session_id, s.token, "first turn")
    before = len(server.requests)
    server.inject(Fault.midstream(after_pieces=2, cut=cut))
    pieces: list[str] = []
    with pytest.raises(errors.LLMError, match="broke off the reply after 2 streamed pieces"):
        await engine.send(s.session_id, s.token, "second turn", on_delta=pieces.append)
    assert len(pieces) == 2  # the caller saw them; the engine keeps none
    assert len(server.requests) == before + 1  # not retried
    history = await engine.history(s.session_id, s.token)
    assert [(m.role, m.content) for m in history] == [
        ("user", "first turn"), ("assistant", first.text),
    ]
    assert consistent(engine, "alice")
    # The session goes on: the next turn sees only the kept history.
    pieces.clear()
    reply = await engine.send(s.session_id, s.token, "second turn", on_delta=pieces.append)
    assert "ctx 4 msgs" in reply.text and "".join(pieces) == reply.text


async def test_a_stream_broken_before_its_first_piece_is_retried(engine, server):
    s = await engine.create_session("alice")
    server.inject(Fault.midstream(after_pieces=0))
    server.inject(Fault.error(503))
    pieces: list[str] = []
    reply = await engine.send(s.session_id, s.token, "retry me", on_delta=pieces.append)
    assert len(server.requests) == 3
    assert pieces == reply_pieces(reply.text)  # no piece twice
    server.inject(Fault.midstream(after_pieces=0), times=3)  # the first try and both retries
    pieces.clear()
    with pytest.raises(errors.LLMError, match=r"broke off its stream .* after 3 attempts"):
        await engine.send(s.session_id, s.token, "give up", on_delta=pieces.append)
    assert pieces == [] and consistent(engine, "alice")
    assert len(await engine.history(s.session_id, s.token)) == 2
