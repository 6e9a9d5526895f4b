"""Fault: a 100 MB text.

What the user sees: in-process, `send` raises `InvalidInput` naming the limit
(`SessionSettings.max_text_bytes`, 32 KiB by default) before the text is encoded, hashed,
reserved against quota or encrypted: refusing it allocates almost nothing. Over HTTP the body
is refused with 413 `payload_too_large` from its Content-Length before a byte of it is read
(tests/gateway/test_gateway.py::test_bodies_over_the_limit_are_refused_before_they_are_read).
"""

from __future__ import annotations

import tracemalloc

import pytest

from engine.errors import InvalidInput

HUNDRED_MB = 100 * 1024 * 1024


def _peak_bytes_while(make_call):
    """Run the call's coroutine, returning (exception raised, peak bytes allocated meanwhile)."""

    async def run():
        tracemalloc.start()
        try:
            await make_call()
        except InvalidInput as exc:
            return exc, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        raise AssertionError("a 100 MB text was accepted")

    return run()


async def test_a_100_mb_text_is_refused_before_it_is_read_through(engine):
    s = await engine.create_session("alice")
    send = engine.send
    for text in ("x" * HUNDRED_MB, "€" * (HUNDRED_MB // 3)):  # ASCII, and 3 bytes a character
        refused, peak = await _peak_bytes_while(lambda t=text: send(s.session_id, s.token, t))
        assert "over the limit" in str(refused) and "split the message" in str(refused)
        # Not encoded, hashed or copied: a copy alone would be 33-100 MB.
        assert peak < 1024 * 1024, peak
        # A caller without the right token hears the same, before any token is hashed.
        refused, peak = await _peak_bytes_while(lambda t=text: send(s.session_id, "x", t))
        assert "over the limit" in str(refused) and peak < 1024 * 1024
    del text
    usage = {u.resource: u.used + u.reserved for u in engine.operator.inspect(s.session_id).quota}
    assert usage["api_calls"] == 0 and usage["tokens"] == 0  # nothing reserved or spent
    assert await engine.history(s.session_id, s.token) == []
    reply = await engine.send(s.session_id, s.token, "a normal message")  # the service goes on
    assert reply.text


async def test_a_text_within_the_characters_but_over_the_bytes_is_refused(engine):
    limit = engine.config.sessions.max_text_bytes
    s = await engine.create_session("alice")
    with pytest.raises(InvalidInput, match=f"{2 * limit} bytes; the limit is {limit}"):
        await engine.send(s.session_id, s.token, "é" * limit)  # 2 bytes a character
    await engine.send(s.session_id, s.token, "é" * (limit // 2))  # exactly at the limit
