"""Engine errors as HTTP responses: one status, type and body per failure (DESIGN "HTTP gateway").

Bodies are `{"error": {"type", "message", ...}}`; the OpenAI-compatible route gets OpenAI's
shape (`message`, `type`, `param`, `code`) with the same `type` names, so its client raises
the right exception class. An unknown session and a wrong token map to the same constant body,
byte for byte. A failure that is not an engine error is logged and answered 500 with no detail.

A failed authentication, the commonest failure under abuse, is answered from bytes built once
(`auth_failure_response`): building each answer from an HTTPFailure (a frozen dataclass, a
dict, the JSON encoder) cost more than a successful call's whole response (issue 15). For the
same reason a 429 auth_backoff says its wait only in `retry_after`, rounded up to the
millisecond, not in its message too: writing a float's shortest digits (twice) was a twentieth
of all the work a refused request cost the server, and milliseconds are digits of integers.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from engine import errors

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HTTPFailure:
    status: int
    type: str
    message: str
    retry_after: float | None = None
    code: str | None = None
    param: str | None = None
    has_retry_after: bool = False  # a 429 whose retry_after is known (else clients must not retry)


class GatewayError(Exception):
    """Raised by the gateway's own checks (body, headers, routing) with its HTTP failure."""

    def __init__(self, failure: HTTPFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def invalid_input(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(HTTPFailure(400, "invalid_input", message, param=param))


def invalid_value(message: str, param: str) -> GatewayError:
    """422: a well-formed field whose value is not one the route accepts."""
    return GatewayError(HTTPFailure(422, "invalid_value", message, param=param))


# Compact and ASCII-only; one encoder made once (json.dumps with options builds one per call).
encode_json = json.JSONEncoder(separators=(",", ":")).encode

# nginx's 499: recorded in the gateway's figures, never sent (the client is gone).
CLIENT_CLOSED = HTTPFailure(
    499, "client_closed_request", "the client closed the connection before sending its body"
)
AUTHENTICATION = HTTPFailure(401, "authentication_error", errors.AuthenticationError.MESSAGE)
AUTH_BACKOFF_MESSAGE = (
    f"{errors.AuthenticationError.MESSAGE}; too many failed attempts, retry after retry_after "
    "seconds"
)
APP_KEY_REQUIRED = HTTPFailure(
    401, "authentication_error",
    "a valid app key is required: send 'Authorization: Bearer <app key>'",
)


def failure_of(exc: BaseException) -> HTTPFailure:
    """The HTTP failure for an exception raised while serving a request."""
    match exc:
        case GatewayError():
            return exc.failure
        case errors.AuthBackoff():  # the same for an unknown session and a wrong token
            return HTTPFailure(
                429, "rate_limited", AUTH_BACKOFF_MESSAGE, backoff_ms(exc.retry_after) / 1000,
                code="auth_backoff", has_retry_after=True,
            )
        case errors.AuthenticationError():
            return AUTHENTICATION
        case errors.SessionExpired():
            return HTTPFailure(401, "session_expired", str(exc))
        case errors.InvalidInput():
            return HTTPFailure(400, "invalid_input", str(exc))
        case errors.SessionBusy():
            return HTTPFailure(409, "session_busy", str(exc))
        case errors.Interrupted():
            return HTTPFailure(409, "interrupted", str(exc))
        case errors.SessionLimitReached():
            return HTTPFailure(409, "session_limit", str(exc))
        case errors.RateLimited():
            return HTTPFailure(429, "rate_limited", str(exc), exc.retry_after, has_retry_after=True)
        case errors.QuotaExceeded() if math.isinf(exc.retry_after):
            return HTTPFailure(429, "quota_exceeded", str(exc), code="insufficient_quota")
        case errors.QuotaExceeded():
            return HTTPFailure(
                429, "quota_exceeded", str(exc), exc.retry_after, has_retry_after=True
            )
        case errors.LLMError():
            return HTTPFailure(502, "llm_error", str(exc))
        case errors.EngineClosed() | errors.StoreError() | errors.ClusterUnavailable():
            return HTTPFailure(503, "unavailable", str(exc))
        case errors.PoolTimeout():
            return HTTPFailure(504, "pool_timeout", str(exc))
        case ClientDisconnect():  # gone mid-body: nothing to answer, nothing went wrong here
            return CLIENT_CLOSED
    log.error("internal error serving a request", exc_info=exc)
    return HTTPFailure(500, "internal_error", "internal error; the server logged its cause")


def error_object(failure: HTTPFailure, *, openai: bool = False) -> dict[str, object]:
    body: dict[str, object] = {"type": failure.type, "message": failure.message}
    if openai or failure.status == 429:
        body["code"] = failure.code
    if openai or failure.param is not None:
        body["param"] = failure.param
    if failure.status == 429:
        body["retry_after"] = failure.retry_after
    return body


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Compact JSON with non-ASCII escaped: content holding lone surrogates still encodes."""
    body = encode_json(content).encode()
    return Response(body, status_code, headers, media_type="application/json")


def error_response(failure: HTTPFailure, *, openai: bool = False) -> Response:
    headers = {}
    if failure.has_retry_after and failure.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(failure.retry_after)))
    return json_response({"error": error_object(failure, openai=openai)}, failure.status, headers)


def backoff_ms(wait: float) -> int:
    """An AuthBackoff's wait in whole milliseconds, rounded up: never sooner than it ends."""
    return math.ceil(wait * 1000)


def _auth_answers(openai: bool) -> tuple[Response, bytes]:
    """The 401 answer, whole, and the 429 auth_backoff body as a %-template of its retry_after's
    whole seconds (`%d`) and fraction (`%s`): cut from `error_response`'s own bytes, so both
    stay what it would send (the tests compare them for many waits)."""
    unauthorized = error_response(AUTHENTICATION, openai=openai)
    probe = 1234.5  # whole milliseconds, and its digits occur nowhere else in the body
    backoff = error_response(failure_of(errors.AuthBackoff(probe)), openai=openai).body
    template = bytes(backoff).replace(b"%", b"%%").replace(repr(probe).encode(), b"%d%s", 1)
    headers = ((b"content-length", b"%d" % len(unauthorized.body)), _JSON_TYPE)
    return _Prebuilt(401, headers, bytes(unauthorized.body)), template


class _Prebuilt(Response):
    """A Response given its status, header lines and body whole: Starlette's constructor
    renders the header lines at every call, most of what a refusal cost beyond a success.
    Header lines as a tuple: the one 401 answer is shared, and cannot be changed in place."""

    def __init__(
        self, status_code: int, raw_headers: tuple[tuple[bytes, bytes], ...], body: bytes
    ) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers  # type: ignore[assignment]
        self.body = body
        self.background = None


_JSON_TYPE = (b"content-type", b"application/json")
_AUTH_ANSWERS = {openai: _auth_answers(openai) for openai in (False, True)}
# A number of milliseconds n as JSON writes n / 1000 (a float's shortest repr): the whole
# seconds, then _FRACTIONS[n % 1000]: ".5" for 500, ".001" for 1, ".0" for none.
_FRACTIONS = tuple((f".{n:03d}".rstrip("0") if n else ".0").encode() for n in range(1000))
# 429 answers kept per shape, by retry_after in milliseconds (all forgotten when full): in a
# storm a client in backoff is refused many times a millisecond, and each answer is the same.
BACKOFF_ANSWERS_KEPT = 1024
_BACKOFF_ANSWERS: dict[bool, dict[int, Response]] = {False: {}, True: {}}


def auth_failure_response(exc: errors.AuthenticationError, *, openai: bool = False) -> Response:
    """`error_response(failure_of(exc), openai=openai)` for an unknown session or a wrong token
    (401) or an AuthBackoff (429 with Retry-After), byte for byte, at a fraction of its cost:
    the 401 is one answer for all, a 429 one per millisecond of retry_after, made at its first
    use from integers' digits in a template. Answers are shared: never change one."""
    if not isinstance(exc, errors.AuthBackoff):
        return _AUTH_ANSWERS[openai][0]
    ms = math.ceil(exc.args[0] * 1000)  # backoff_ms(exc.retry_after), written out
    answers = _BACKOFF_ANSWERS[openai]
    answer = answers.get(ms)
    if answer is None:
        if len(answers) >= BACKOFF_ANSWERS_KEPT:
            answers.clear()
        body = _AUTH_ANSWERS[openai][1] % (ms // 1000, _FRACTIONS[ms % 1000])
        headers = (
            (b"retry-after", b"%d" % max(1, -(-ms // 1000))),  # whole seconds, rounded up
            (b"content-length", b"%d" % len(body)),
            _JSON_TYPE,
        )
        answer = answers[ms] = _Prebuilt(429, headers, body)
    return answer
