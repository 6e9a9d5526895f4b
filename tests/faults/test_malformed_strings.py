"""Fault: malformed Unicode and NUL bytes in every string field, in-process and over HTTP.

What the user sees: a typed refusal (`InvalidInput`, or `AuthenticationError` for ids and
tokens) in-process; 400, 401, 404 or 422 over HTTP, never a 500. Nothing of a refused call
reaches the session, and the service goes on serving the same session afterwards. A lone
surrogate (JSON's "\\ud800") is not text and is refused; a NUL character is text: it is stored,
encrypted and read back like any other, also after a restart.
"""

from __future__ import annotations

import json

import pytest

from engine import Engine
from engine.errors import AuthenticationError, InvalidInput
from engine.ratelimit import RateLimit

SURROGATES = ["\ud800", "a\udfffb", "\udbff\udbff", "x\ud800\x00"]
NULS = ["\x00", "a\x00b", "\x00\x00\x00 end"]
GENEROUS = {"session_rate": RateLimit(1000.0, 1000), "user_rate": RateLimit(1000.0, 1000)}


async def test_in_process_every_string_field_refuses_or_keeps_malformed_text(make_config):
    config = make_config(limits=GENEROUS)
    async with Engine(config) as engine:
        s = await engine.create_session("alice")
        for bad in SURROGATES + NULS:
            with pytest.raises(InvalidInput, match="user_id"):
                await engine.create_session(bad)
            with pytest.raises(InvalidInput, match="agent type"):
                await engine.send(s.session_id, s.token, "hi", agent_type=bad)
            with pytest.raises(InvalidInput, match="multitask_strategy"):
                await engine.send(s.session_id, s.token, "hi", multitask_strategy=bad)
            with pytest.raises(InvalidInput, match=r"tier|surrogate"):
                await engine.create_session("bob", metadata={"tier": bad})
            for call in (
                engine.send(bad, s.token, "hi"),
                engine.send(s.session_id, bad, "hi"),
                engine.send(s.session_id, bad, "hi", client=bad),
                engine.history(bad, s.token),
                engine.history(s.session_id, bad),
                engine.rotate_token(s.session_id, bad),
                engine.end_session(bad, bad),
            ):
                with pytest.raises(AuthenticationError):
                    await call
        for bad in SURROGATES:
            with pytest.raises(InvalidInput, match="surrogate"):
                await engine.send(s.session_id, s.token, bad)
            with pytest.raises(InvalidInput, match="surrogate"):
                await engine.create_session("bob", metadata={"note": bad})
            with pytest.raises(InvalidInput, match="surrogate"):
                await engine.create_session("bob", metadata={bad: "key"})
        # NUL is a character like any other in what users write.
        for text in NULS:
            await engine.send(s.session_id, s.token, text)
        noted = await engine.create_session("carol", metadata={"note": "a\x00b"})
        users = [m.content for m in await engine.history(s.session_id, s.token) if m.role == "user"]
        assert users == NULS  # and nothing of any refused call
        assert engine.ready
        assert {v.user_id for v in engine.snapshot().sessions} == {"alice", "carol"}
    async with Engine(config) as engine:  # as stored: encrypted and read back after a restart
        users = [m.content for m in await engine.history(s.session_id, s.token) if m.role == "user"]
        assert users == NULS
        assert engine.operator.inspect(noted.session_id).metadata == {"note": "a\x00b"}


async def test_over_http_malformed_strings_get_4xx_never_500(serve):
    async with serve(limits=GENEROUS) as s:
        sid, token = await s.session()
        auth = {"Authorization": f"Bearer {token}"}
        chat = {**auth, "X-Session-ID": sid}
        app = {"Authorization": f"Bearer {s.app_key}"}
        messages = f"/v1/sessions/{sid}/messages"

        def turn(content: str) -> bytes:
            return json.dumps({"content": content}).encode()

        def chat_body(content: object, model: str = "assistant", role: str = "user") -> bytes:
            return json.dumps(
                {"model": model, "messages": [{"role": role, "content": content}]}
            ).encode()

        posts = {  # name: (path, body as sent, headers, the status expected)
            "user_id surrogate": ("/v1/sessions", b'{"user_id": "\\ud800"}', app, 400),
            "user_id NUL": ("/v1/sessions", b'{"user_id": "a\\u0000"}', app, 400),
            "user_id invalid UTF-8": ("/v1/sessions", b'{"user_id": "\xff"}', app, 400),
            "metadata surrogate": (
                "/v1/sessions", b'{"user_id": "bob", "metadata": {"\\ud800": "x"}}', app, 400
            ),
            "content surrogate": (messages, turn("hi \ud800"), auth, 400),
            "content invalid UTF-8": (messages, b'{"content": "hi \xc3\x28"}', auth, 400),
            "content overlong UTF-8": (messages, b'{"content": "\xc0\xaf"}', auth, 400),
            "content encoded surrogate": (messages, b'{"content": "\xed\xa0\x80"}', auth, 400),
            "agent_type surrogate": (
                messages, b'{"content": "hi", "agent_type": "\\ud800"}', auth, 400
            ),
            "strategy NUL": (
                messages, b'{"content": "hi", "multitask_strategy": "\\u0000"}', auth, 422
            ),
            "session id NUL": (f"/v1/sessions/{sid}%00/messages", turn("hi"), auth, 401),
            "session id invalid UTF-8": ("/v1/sessions/%ff%fe/messages", turn("hi"), auth, 401),
            "session id surrogate": ("/v1/sessions/%ed%a0%80/token", b"", auth, 401),
            "token surrogate": (messages, turn("hi"), {"Authorization": "Bearer \\ud800"}, 401),
            "chat content surrogate": ("/v1/chat/completions", chat_body("\ud800"), chat, 400),
            "chat parts surrogate": (
                "/v1/chat/completions", chat_body([{"type": "text", "text": "\ud800"}]), chat, 400
            ),
            "chat model surrogate": (
                "/v1/chat/completions", chat_body("x", model="\ud800"), chat, 404
            ),
            "chat role NUL": ("/v1/chat/completions", chat_body("x", role="user\x00"), chat, 400),
        }
        for name, (path, body, headers, status) in posts.items():
            r = await s.http.post(path, content=body, headers=headers)
            assert r.status_code == status, (name, r.text)
            assert r.json()["error"]["message"], name

        # Bytes in headers and paths that httpx will not send: the HTTP parser's 400, or ours.
        token_b, sid_b = token.encode(), sid.encode()
        body = chat_body("x")
        raw_cases = {
            "NUL in Authorization": (b"Authorization: Bearer a\x00b\r\nX-Session-ID: " + sid_b,
                                     b"400"),
            "invalid UTF-8 token": (b"Authorization: Bearer \xff\xfe\r\nX-Session-ID: " + sid_b,
                                    b"401"),
            "invalid UTF-8 X-Session-ID": (b"Authorization: Bearer " + token_b
                                           + b"\r\nX-Session-ID: \xff\xc0", b"401"),
            "NUL in X-Session-ID": (b"Authorization: Bearer " + token_b
                                    + b"\r\nX-Session-ID: a\x00", b"400"),
            "invalid UTF-8 strategy header": (
                b"Authorization: Bearer " + token_b + b"\r\nX-Session-ID: " + sid_b
                + b"\r\nX-Multitask-Strategy: \xff", b"422"),
        }
        for name, (headers, status) in raw_cases.items():
            answer = await s.raw(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\n" + headers
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            assert answer.startswith(b"HTTP/1.1 " + status), (name, answer[:300])
        for path in (b"/v1/sessions/a\x00/messages", b"/v1/sessions/\xff\xfe/messages"):
            answer = await s.raw(
                b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + token_b + b"\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:300])

        # NUL is text: kept and read back. The service goes on, and nothing refused was kept.
        kept = await s.http.post(messages, content=turn("a\x00b"), headers=auth)
        assert kept.status_code == 200, kept.text
        history = (await s.http.get(messages, headers=auth)).json()["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == ["a\x00b"]
        assert (await s.http.get("/readyz")).status_code == 200
        metrics = (await s.http.get("/metrics")).text
        assert 'status="500"' not in metrics
