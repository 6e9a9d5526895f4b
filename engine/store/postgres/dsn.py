"""PostgreSQL URLs: recognising one, and the form of it that may be shown.

A DSN may carry a password, in its user info (`postgresql://user:secret@host/db`) or as a query
parameter (`?password=secret`). The store names its database in stats, logs and every error
message, so it names it by `redacted(dsn)`: the same URL with any password removed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

SCHEMES = ("postgresql", "postgres")


def is_postgres_url(target: object) -> bool:
    """True for a `postgresql://` or `postgres://` URL (anything else is an SQLite path)."""
    return isinstance(target, str) and urlsplit(target).scheme in SCHEMES


def redacted(dsn: str) -> str:
    """`dsn` without its password, wherever it was given."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = urlencode(
        [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"],
        safe="/",
    )
    # Not urlunsplit: it drops the empty authority of a socket URL (postgresql:///db?host=...).
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def without_password(text: str, dsn: str) -> str:
    """`text` (an error message from connecting) with the DSN's password, if any, masked."""
    parts = urlsplit(dsn)
    passwords = [parts.password or ""]
    passwords += [v for k, v in parse_qsl(parts.query) if k == "password"]
    for password in filter(None, passwords):
        text = text.replace(password, "***")
    return text
