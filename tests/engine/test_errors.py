"""The error tree: callers branch on families with isinstance, never on class names."""

from __future__ import annotations

import pickle

import pytest

from engine import errors
from engine.quotas import QuotaLimit
from engine.ratelimit import RateLimit

REFUSALS = [
    errors.RateLimited("session", 1.0),
    errors.QuotaExceeded("tokens", 100, 2.0),
    errors.InvalidInput("text is empty"),
    errors.SessionExpired("idle"),
    errors.SessionLimitReached("alice", 5),
]
NOT_REFUSALS = [
    errors.AuthenticationError(),
    errors.PoolTimeout("assistant", 1.0),
    errors.LLMError("backend down"),
    errors.StoreError("corrupt"),
    errors.DecryptionFailed("message", "gone"),
    errors.ConfigurationError("bad setting"),
    errors.EngineClosed(),
]


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: type(e).__name__)
def test_refusals_share_one_parent(error):
    assert isinstance(error, errors.Refusal) and isinstance(error, errors.EngineError)


@pytest.mark.parametrize("error", NOT_REFUSALS, ids=lambda e: type(e).__name__)
def test_failures_are_engine_errors_but_not_refusals(error):
    assert isinstance(error, errors.EngineError) and not isinstance(error, errors.Refusal)


@pytest.mark.parametrize(
    "build",
    [lambda: QuotaLimit(-1, None), lambda: RateLimit(rate_per_s=0, burst=1)],
    ids=["quota limit", "rate limit"],
)
def test_bad_settings_raise_a_configuration_error(build):
    with pytest.raises(errors.ConfigurationError):
        build()


def test_an_unknown_session_and_a_wrong_token_read_alike_and_a_backoff_adds_only_its_wait():
    plain, backoff = errors.AuthenticationError(), errors.AuthBackoff(1.5)
    assert str(plain) == errors.AuthenticationError.MESSAGE
    assert isinstance(backoff, errors.AuthenticationError) and backoff.retry_after == 1.5
    assert str(backoff) == f"{errors.AuthenticationError.MESSAGE}; too many failed attempts, " \
        "retry after 1.50s"
    again = pickle.loads(pickle.dumps(backoff))  # crosses processes (loadgen, cluster) intact
    assert (type(again), again.retry_after, str(again)) == (errors.AuthBackoff, 1.5, str(backoff))
