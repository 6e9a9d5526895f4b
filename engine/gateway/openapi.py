"""The OpenAPI 3.1 document served at /openapi.json: the contract of DESIGN.md, as data.

Written out rather than generated: the handlers read raw JSON for speed (no model classes to
generate it from), so this file is the one place the shapes are described; a test checks that
every route of the app is documented here and every documented route is served.
"""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "description": "invalid_input, authentication_error, "
                         "session_expired, model_not_found, session_busy, interrupted, "
                         "session_limit, payload_too_large, invalid_value, rate_limited, "
                         "quota_exceeded, llm_error, unavailable, pool_timeout, internal_error"},
                "message": {"type": "string"},
                "retry_after": {"type": ["number", "null"]},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
REPLY = {
    "type": "object",
    "required": ["role", "content", "agent_type", "usage"],
    "properties": {
        "role": {"const": "assistant"},
        "content": {"type": "string"},
        "agent_type": {"type": "string"},
        "usage": USAGE,
        "timing": {"type": "object", "properties": {
            "engine_ms": {"type": "number"}, "model_ms": {"type": "number"},
        }},
    },
}
SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
X_SESSION_ID = {"name": "X-Session-ID", "in": "header", "schema": {"type": "string"}}
STRATEGY = {"type": "string", "enum": ["reject", "enqueue", "interrupt"], "default": "enqueue"}
ERROR_STATUSES = {
    "400": "invalid_input", "401": "authentication_error or session_expired",
    "404": "model_not_found", "408": "request body too slow",
    "409": "session_busy, interrupted or session_limit", "413": "payload_too_large",
    "422": "invalid_value", "429": "rate_limited or quota_exceeded (Retry-After)",
    "502": "llm_error", "503": "unavailable", "504": "pool_timeout", "500": "internal_error",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: tuple[dict[str, Any], ...] = (),
    security: str | None = "sessionToken",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": ok | {
            status: {"description": text, **_json({"$ref": "#/components/schemas/Error"})}
            for status, text in ERROR_STATUSES.items()
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(body)}
    if security is not None:
        operation["security"] = [{security: []}]
    return operation


def openapi_document(agent_types: tuple[str, ...]) -> dict[str, Any]:
    message = {"type": "object", "properties": {
        "role": {"type": "string"}, "content": {"type": "string"},
        "created_at": {"type": "number"},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Session Console gateway", "version": "1",
                 "description": "Multi-user agent sessions over HTTP; OpenAI-compatible chat."},
        "components": {
            "securitySchemes": {
                "appKey": {"type": "http", "scheme": "bearer",
                           "description": "an app key: creates sessions for its users"},
                "sessionToken": {"type": "http", "scheme": "bearer",
                                 "description": "the token returned when the session was made"},
            },
            "schemas": {"Error": ERROR, "Reply": REPLY},
        },
        "paths": {
            "/v1/sessions": {"post": _op(
                "Create a session for a user",
                {"201": {"description": "created", **_json({"type": "object", "properties": {
                    "session_id": {"type": "string"}, "user_id": {"type": "string"},
                    "token": {"type": "string"}, "expires_at": {"type": "number"},
                }})}},
                body={"type": "object", "required": ["user_id"], "properties": {
                    "user_id": {"type": "string"}, "metadata": {"type": "object"},
                }},
                security="appKey",
            )},
            "/v1/sessions/{session_id}/messages": {
                "get": _op(
                    "The session's conversation, oldest first",
                    {"200": {"description": "messages", **_json({"type": "object", "properties": {
                        "messages": {"type": "array", "items": message}}})}},
                    params=(SESSION_ID,),
                ),
                "post": _op(
                    "Send a turn; the reply, or SSE events delta/done/error when stream is true",
                    {"200": {"description": "the reply", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Reply"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    }}},
                    body={"type": "object", "required": ["content"], "properties": {
                        "content": {"type": "string"},
                        "agent_type": {"type": "string", "enum": list(agent_types)},
                        "stream": {"type": "boolean", "default": False},
                        "multitask_strategy": STRATEGY,
                    }},
                    params=(SESSION_ID,),
                ),
            },
            "/v1/sessions/{session_id}/token": {"post": _op(
                "Rotate the session's token; the presented one stops working",
                {"200": {"description": "the new token", **_json({"type": "object", "properties": {
                    "token": {"type": "string"}}})}},
                params=(SESSION_ID,),
            )},
            "/v1/sessions/{session_id}": {"delete": _op(
                "End the session; its stored messages become unreadable",
                {"204": {"description": "ended"}}, params=(SESSION_ID,),
            )},
            "/v1/chat/completions": {"post": _op(
                "OpenAI Chat Completions; model names the agent type, the last user message "
                "is the turn, the server keeps the history",
                {"200": {"description": "chat.completion, or chat.completion.chunk events",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     "text/event-stream": {"schema": {"type": "string"}}}}},
                body={"type": "object", "required": ["model", "messages"], "properties": {
                    "model": {"type": "string", "enum": list(agent_types)},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "stream": {"type": "boolean"},
                    "stream_options": {"type": "object", "properties": {
                        "include_usage": {"type": "boolean"}}},
                    "multitask_strategy": STRATEGY,
                }},
                params=(X_SESSION_ID | {"required": True},),
            )},
            "/v1/models": {"get": _op(
                "The agent types, as OpenAI model objects (a session token or an app key)",
                {"200": {"description": "list", **_json({"type": "object"})}},
                params=(X_SESSION_ID,),
            )},
            "/metrics": {"get": _op(
                "Prometheus text format", {"200": {"description": "metrics"}}, security=None
            )},
            "/healthz": {"get": _op(
                "200 while the process serves", {"200": {"description": "alive"}}, security=None
            )},
            "/readyz": {"get": _op(
                "200 while turns are taken; 503 opening, draining, or the store failing",
                {"200": {"description": "ready"}}, security=None,
            )},
            "/openapi.json": {"get": _op(
                "This document", {"200": {"description": "OpenAPI 3.1"}}, security=None
            )},
        },
    }
