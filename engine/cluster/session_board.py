"""The sessions every worker serves now, for a console attached to any one of them.

A console lists the sessions its own worker holds; a session created and served elsewhere is
not among them until this worker is asked for it. So each worker publishes its views of the
`PUBLISHED` sessions it changed last (engine/views.py `SessionViews.recent`: no pass over all
its sessions) as one JSON value that expires when the worker would be counted dead, and reads
the others', on the same period as the alerts (never on a turn's path). The console lists them
beside its own, marked with their worker, and opens one through `Operator.locate`, which reads
it from the shared store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields

from engine.cluster.connection import ClusterClient
from engine.cluster.leases import ms
from engine.cluster.published import PublishedByWorker
from engine.views import SessionView, WorkerSessions

PUBLISHED = 200  # sessions a worker publishes: about 30 KB of JSON
_FIELDS = tuple(f.name for f in fields(SessionView))


class SessionBoard:
    """Publish this worker's recent sessions, read the other workers'."""

    def __init__(self, client: ClusterClient, ttl_s: float) -> None:
        self._client = client
        self._ttl_ms = ms(ttl_s)
        self._published: list[SessionView] | None = None  # the views last published
        self._read = PublishedByWorker(  # what the other workers published, decoded
            "sessions", lambda worker_id, value: WorkerSessions(worker_id, _decode(value))
        )

    async def exchange(
        self, worker_id: str, views: list[SessionView], others: Sequence[str]
    ) -> tuple[WorkerSessions, ...]:
        """Publish `views` (only the expiry is renewed while they are unchanged) and read those
        the `others` published, in one round trip."""
        key = self._client.key("sessions", worker_id)
        others = [w for w in others if w != worker_id]
        async with self._client.redis.pipeline(transaction=False) as pipe:
            if views == self._published:
                pipe.pexpire(key, self._ttl_ms)
            else:
                pipe.set(key, _encode(views), px=self._ttl_ms)
            if others:
                pipe.mget([self._client.key("sessions", w) for w in others])
            replies = await self._client.run(pipe.execute())
        # Not renewed: gone meanwhile (a restarted server): published in full next time.
        self._published = views if replies[0] else None
        if not others:
            return ()
        return tuple(self._read.decoded(others, replies[1]))



def _encode(views: Sequence[SessionView]) -> str:
    """One array of the view's fields, in order, per session (a dict each is twice the size and
    `asdict` four times the time)."""
    return json.dumps({
        "fields": _FIELDS, "sessions": [[getattr(v, f) for f in _FIELDS] for v in views],
    }, separators=(",", ":"))


def _decode(value: str) -> tuple[SessionView, ...]:
    data = json.loads(value)
    if data["fields"] != list(_FIELDS):  # a worker running another version: not guessed at
        raise ValueError(f"session fields {data['fields']!r}, expected {list(_FIELDS)!r}")
    reasons = _FIELDS.index("health_reasons")
    views = []
    for row in data["sessions"]:
        row[reasons] = tuple(row[reasons])
        views.append(SessionView(*row))
    return tuple(views)
