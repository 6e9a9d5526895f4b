"""What a PostgreSQL failure means to the person who must fix it.

Every `StoreError` names the database by its redacted URL (never a password) and says what to
do; asyncpg's exception classes (SQLSTATE families) map to that advice.
"""

from __future__ import annotations

import asyncpg

from engine.errors import StoreError

UNREACHABLE = (
    "the database server cannot be reached: check that it runs and the URL's host and port; "
    "writes resume once it is back"
)
_ADVICE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (
        asyncpg.ForeignKeyViolationError,
        "a write was rejected: the session it refers to is not stored (ended or never saved)",
    ),
    (
        asyncpg.UniqueViolationError,
        "a write was rejected: a message with that session and seq is already stored",
    ),
    (
        # asyncpg's own DataError (a value it cannot encode) is a ValueError, not exported.
        (asyncpg.DataError, ValueError),
        "a write was rejected: a value does not fit its column",
    ),
    (
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError),
        "the server refused the credentials: check the user and password given in the URL",
    ),
    (
        asyncpg.InvalidCatalogNameError,
        "the database does not exist: create it (CREATE DATABASE) or fix the URL's database",
    ),
    (
        asyncpg.InsufficientPrivilegeError,
        "the user lacks a privilege: grant it the right to create and write tables in the "
        "database, or use its owner",
    ),
    (
        asyncpg.ReadOnlySQLTransactionError,
        "the server is read-only (a standby?): point the URL at the primary",
    ),
    (
        asyncpg.DiskFullError,
        "the database server's disk is full: free space on it, then retry",
    ),
    (
        asyncpg.TooManyConnectionsError,
        "the server has no connection slot left: raise max_connections or stop idle clients",
    ),
    (
        asyncpg.QueryCanceledError,
        "a statement was cancelled (a statement timeout, or an operator cancelled it); retry",
    ),
    (
        (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            TimeoutError,
        ),
        UNREACHABLE,
    ),
    (
        # A connection the server ended (restart, pg_terminate_backend) fails its next use,
        # in asyncpg as one of these; the pool replaces it at the next acquire.
        (
            asyncpg.OperatorInterventionError,
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.InternalClientError,
            asyncpg.InterfaceError,
        ),
        "the database server closed the connection (it restarted, or an operator ended it); "
        "the next write reconnects",
    ),
)


def store_error(location: str, exc: BaseException, doing: str) -> StoreError:
    """`exc`, raised while `doing`, as a StoreError naming `location` (a redacted URL)."""
    if isinstance(exc, StoreError):
        return exc
    advice = next(
        (advice for kinds, advice in _ADVICE if isinstance(exc, kinds)),
        "check the database server and its log",
    )
    detail = str(exc) or "no detail"
    return StoreError(
        f"store {location}: {doing} failed ({type(exc).__name__}: {detail}); {advice}"
    )
