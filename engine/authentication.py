"""Who may act on a session: one answer and one cost for every way of not being its holder.

An unknown session, a wrong, revoked or expired token and someone else's session all raise the
same `AuthenticationError` after the same work (one token hash), so the answer tells a caller
nothing about which it was. A presenter that keeps failing is backed off (engine.admission)
before any of that work. Expiry is revealed only to the token's holder.
"""

from __future__ import annotations

from engine.admission import IN_PROCESS, AuthFailures, AuthFailureStats, presentation_key
from engine.clock import Clock
from engine.errors import AuthBackoff, AuthenticationError, SessionExpired
from engine.monitor import AUTH_LOG_BATCH, Monitor
from engine.security import check_token
from engine.sessions import Session, SessionRegistry
from engine.views import SessionViews


class Authenticator:
    """Checks a presented session id and token against the registry."""

    def __init__(
        self,
        clock: Clock,
        registry: SessionRegistry,
        failures: AuthFailures,
        monitor: Monitor,
        views: SessionViews,
    ) -> None:
        self._clock = clock
        self._registry = registry
        self._failures = failures
        self._monitor = monitor
        self._failure_log = monitor.auth_failure_log  # counted in batches (engine.monitor)
        self._views = views

    def authenticate(self, session_id: object, token: object, client: str | None) -> Session:
        """The session the token opens, touched as active; raises otherwise.

        A right token on a session past its idle or absolute limit is `SessionExpired`, which
        reveals nothing: only the token's holder can see it. A session id and token that
        already failed and are backing off are refused before anything else (AuthBackoff).
        Refusals are raised here, not in helpers: each frame a refusal unwinds costs.
        """
        now = self._clock.now()  # read once, for every step below
        presentation = self.refuse_backed_off(session_id, token, now)
        presented = session_id if isinstance(session_id, str) else None
        registry = self._registry
        # A session held as an object or as a cold row (engine.cold_records): the row's token
        # is checked before it becomes an object; the rows are probed and a row's token read
        # (or the same work done) whichever it is, or neither.
        session = registry.held(presented) if presented is not None else None
        row = registry.cold_row(presented) if presented is not None else -1
        cold_record = registry.cold_token(row)
        record = session.token if session is not None else cold_record
        if not check_token(record, token):  # _refusal, written out: the commonest refusal
            wait = self._failures.failed(presentation, client or IN_PROCESS, now)
            log = self._failure_log
            log.append(presented)
            if len(log) >= AUTH_LOG_BATCH:
                self._monitor.count_auth_failures()
            raise AuthBackoff(wait) if wait > 0 else AuthenticationError()
        if session is None:
            session = registry.promote(row)
        assert record is not None
        reason = session.expiry_reason(now)
        if reason is not None and not session.busy:
            self._registry.remove(session.session_id, "expired", now, reason)
            raise SessionExpired(reason)
        if record.expired(now):
            raise self._refusal(presented, presentation, client, now)
        self._registry.touch(session, now)
        self._views.invalidate(session)
        return session

    def refuse_backed_off(self, session_id: object, token: object, now: float | None = None) -> int:
        """AuthBackoff now if this id and token already failed and are backing off (nothing
        looked up, nothing hashed); else the presentation's key."""
        presentation = presentation_key(session_id, token)
        wait = self._failures.refuse_unchecked(presentation, now)
        if wait > 0:
            self._log_failure(session_id if isinstance(session_id, str) else None)
            raise AuthBackoff(wait)
        return presentation

    def stats(self) -> AuthFailureStats:
        return self._failures.stats()

    def _refusal(
        self, presented: str | None, presentation: int, client: str | None, now: float
    ) -> AuthenticationError:
        """The token was checked and is not right: strike its presenters; the error to raise."""
        wait = self._failures.failed(presentation, client or IN_PROCESS, now)
        log = self._failure_log  # _log_failure, written out: this runs on every failed check
        log.append(presented)
        if len(log) >= AUTH_LOG_BATCH:
            self._monitor.count_auth_failures()
        return AuthBackoff(wait) if wait > 0 else AuthenticationError()

    def _log_failure(self, presented: str | None) -> None:
        """For the monitor to count: at once, or with the next batch (engine.monitor)."""
        log = self._failure_log
        log.append(presented)
        if len(log) >= AUTH_LOG_BATCH:
            self._monitor.count_auth_failures()
