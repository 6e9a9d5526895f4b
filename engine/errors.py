"""The engine's one exception hierarchy.

Every public call fails with a subclass of `EngineError` whose message says what was wrong and
what to do about it. Structured fields (resource, retry_after, ...) let callers react without
parsing text, and the families let them branch with one `except`:

    EngineError
    ├── AuthenticationError      unknown session or wrong token: one type and message for both
    │   └── AuthBackoff          refused before checking: this presentation kept failing
    ├── Refusal                  refused by policy or for the caller's mistake; not a failure
    │   ├── RateLimited
    │   ├── QuotaExceeded
    │   ├── InvalidInput
    │   ├── SessionExpired
    │   └── SessionLimitReached
    ├── ConfigurationError       a setting, key or agent type file is unusable (also a ValueError)
    ├── PoolTimeout
    ├── SessionBusy              a turn in flight and the multitask strategy refused this one
    ├── Interrupted              cancelled by a newer turn sent with multitask_strategy interrupt
    ├── LLMError
    ├── StoreError
    ├── ClusterUnavailable       the shared state (Valkey/Redis) is down or cannot take writes
    ├── DecryptionFailed
    └── EngineClosed
"""

from __future__ import annotations

import math


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class AuthenticationError(EngineError):
    """Unknown session or wrong token: deliberately the same type and message for both.

    No `__init__`: the message is the class's, read by `__str__`. A storm raises one per failed
    call, and a Python-level `__init__` (two with AuthBackoff's) cost a failure more than its
    bookkeeping does.
    """

    MESSAGE = "session not found or token invalid; create a new session or use its current token"

    def __str__(self) -> str:
        return self.MESSAGE


class AuthBackoff(AuthenticationError):
    """Refused without checking the token: this caller, session id or token kept failing.

    An `AuthenticationError`, so a caller's one `except` still covers it, and it says no more
    than one: an unknown session and a wrong token get it alike, and `retry_after` depends only
    on the presenter's own failures. A right token is never refused this way (see
    engine/admission.py). HTTP: 429 with Retry-After.

    Built as `AuthBackoff(retry_after)`; the seconds are its only argument (`args[0]`), kept by
    the base class's C constructor, for the same reason as above.
    """

    @property
    def retry_after(self) -> float:
        return self.args[0]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        # Written when read, not when raised: most refusals in a storm are never printed.
        return f"{self.MESSAGE}; too many failed attempts, retry after {self.retry_after:.2f}s"


class Refusal(EngineError):
    """A turn or call refused by policy or for the caller's own mistake.

    Refusals count as errors but not as failures: failure rates and health are about the engine
    and its backends, not about callers over their limits.
    """


class SessionExpired(Refusal):
    """The token was right but the session passed its idle or absolute limit."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"session expired ({reason}); create a new session to continue")


class SessionLimitReached(Refusal):
    """A user is at their session cap and every one of their sessions is mid-turn."""

    def __init__(self, user_id: str, cap: int) -> None:
        self.user_id = user_id
        self.cap = cap
        super().__init__(
            f"user {user_id!r} already has {cap} sessions, all busy; "
            "end one or retry when a turn finishes"
        )


class QuotaExceeded(Refusal):
    """A per-user quota would be exceeded by this call."""

    def __init__(self, resource: str, limit: float, retry_after: float) -> None:
        self.resource = resource
        self.limit = limit
        self.retry_after = retry_after
        when = (
            "waiting will not free it: raise the limit or free some"
            if math.isinf(retry_after)
            else f"capacity frees in {retry_after:.1f}s"
        )
        super().__init__(f"quota exceeded for {resource} (limit {limit:g}); {when}")


class RateLimited(Refusal):
    """Requests arrive faster than the session's or user's rate allows."""

    def __init__(self, scope: str, retry_after: float) -> None:
        self.scope = scope
        self.retry_after = retry_after
        super().__init__(f"{scope} rate limit reached; retry after {retry_after:.2f}s")


class InvalidInput(Refusal):
    """An argument was malformed; the message names it."""


class ConfigurationError(EngineError, ValueError):
    """A setting, a master key or an agent type file cannot be used; the message names it.

    Also a `ValueError`: it is raised for a bad value, wherever that value was constructed.
    """


class PoolTimeout(EngineError):
    """No agent of the type became free in time."""

    def __init__(self, agent_type: str, waited: float) -> None:
        self.agent_type = agent_type
        self.waited = waited
        super().__init__(
            f"no {agent_type!r} agent free after {waited:.2f}s; retry later or raise the pool size"
        )


class SessionBusy(EngineError):
    """A turn arrived while the session had one in flight and its multitask strategy refused it."""

    def __init__(self, strategy: str, queued: int) -> None:
        self.strategy = strategy
        self.queued = queued
        advice = (
            "wait for the running turn's reply, or send with multitask_strategy 'enqueue'"
            if strategy == "reject"
            else f"{queued} turns already wait; retry after a reply arrives"
        )
        super().__init__(f"session has a turn in flight ({strategy}); {advice}")


class Interrupted(EngineError):
    """This turn was cancelled by a later turn sent with multitask_strategy 'interrupt'."""

    def __init__(self) -> None:
        super().__init__(
            "turn interrupted by a newer turn on the same session; nothing of it was kept"
        )


class LLMError(EngineError):
    """The model backend failed after bounded retries."""


class StoreError(EngineError):
    """The database is corrupt, foreign, newer than this code, or unwritable."""


class ClusterUnavailable(EngineError):
    """The cluster's shared state (Valkey/Redis) cannot be used; nothing was decided locally.

    A worker never falls back to enforcing quotas or leases on its own (that would let every
    worker grant the whole limit); the call fails, and the next one works once the server is back.
    `url` never carries a password.
    """

    def __init__(self, backend: str, url: str, cause: str) -> None:
        self.backend = backend
        self.url = url
        super().__init__(
            f"{backend} at {url} is unavailable ({cause}); turns are refused until it is back, "
            "nothing is enforced locally instead"
        )


class DecryptionFailed(EngineError):
    """A data key or a message could not be decrypted: tampered, wrong key, or key shredded."""

    def __init__(self, what: str, advice: str) -> None:
        self.what = what
        super().__init__(f"{what} could not be decrypted; {advice}")


class EngineClosed(EngineError):
    """The engine is not serving: not yet open, draining for shutdown, or closed."""

    def __init__(self, message: str = "engine is closed; open a new Engine to continue") -> None:
        super().__init__(message)
