"""Every worker's alerts, for a console attached to any one of them.

Alerts are raised and kept by each worker's own monitor (engine/alerts.py). Each worker
publishes its newest `PUBLISHED` alerts (open ones first) as one JSON value that expires when
the worker would be counted dead, so a killed worker's alerts leave with it; each reads the
others'. Acknowledging another worker's alert leaves a request in that worker's inbox (a set of
alert ids, expiring like the alerts), which it applies before its next publish: an alert is
acknowledged by its owner only, and the console sees it acknowledged one period later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from engine.alerts import Alert
from engine.cluster.connection import ClusterClient
from engine.cluster.leases import ms
from engine.cluster.published import PublishedByWorker
from engine.views import WorkerAlerts

PUBLISHED = 50  # alerts a worker publishes; the rest stay on its own console
INBOX_MAX = 1000  # acknowledgement requests a worker takes at a time


class AlertBoard:
    """Publish this worker's alerts, read the others', pass on acknowledgements."""

    def __init__(self, client: ClusterClient, ttl_s: float) -> None:
        self._client = client
        self._ttl_ms = ms(ttl_s)
        self._published: tuple[Alert, ...] | None = None  # the alerts last published
        self._read = PublishedByWorker("alerts", _decode)  # the other workers', decoded

    async def take_requests(self, worker_id: str) -> tuple[int, ...]:
        """The alert ids other workers' consoles asked this worker to acknowledge (emptied)."""
        inbox = self._key("alert-acks", worker_id)
        ids = await self._client.run(self._client.redis.spop(inbox, INBOX_MAX))
        return tuple(int(i) for i in ids or () if i.isdigit())

    async def exchange(
        self, worker_id: str, alerts: tuple[Alert, ...], unacknowledged: int,
        others: Sequence[str],
    ) -> tuple[WorkerAlerts, ...]:
        """Publish this worker's alerts (only the expiry is renewed while they are the same
        tuple) and read those the `others` published, in one round trip."""
        key = self._key("alerts", worker_id)
        others = [w for w in others if w != worker_id]
        renew = alerts is self._published
        async with self._client.redis.pipeline(transaction=False) as pipe:
            if renew:
                pipe.pexpire(key, self._ttl_ms)
            else:
                pipe.set(key, _encode(alerts, unacknowledged), px=self._ttl_ms)
            if others:
                pipe.mget([self._key("alerts", w) for w in others])
            replies = await self._client.run(pipe.execute())
        # Not renewed: gone meanwhile (a restarted server): published in full next time.
        self._published = alerts if replies[0] else None
        if not others:
            return ()
        return tuple(self._read.decoded(others, replies[1]))

    async def request(self, worker_id: str, alert_ids: Iterable[int]) -> None:
        """Ask `worker_id` to acknowledge these alerts (at its next publish)."""
        ids = [str(int(i)) for i in alert_ids]
        if not ids:
            return
        inbox = self._key("alert-acks", worker_id)
        async with self._client.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(inbox, *ids).pexpire(inbox, self._ttl_ms)
            await self._client.run(pipe.execute())


    def _key(self, kind: str, worker_id: str) -> str:
        return self._client.key(kind, worker_id)


def published(alerts: Sequence[Alert]) -> list[Alert]:
    """The newest PUBLISHED alerts, open ones (neither acknowledged nor resolved) first."""
    chosen = [a for a in alerts if not a.acknowledged and a.resolved_at is None][:PUBLISHED]
    if len(chosen) < PUBLISHED:
        closed = (a for a in alerts if a.acknowledged or a.resolved_at is not None)
        chosen.extend(a for a, _ in zip(closed, range(PUBLISHED - len(chosen)), strict=False))
    return chosen


def _encode(alerts: Sequence[Alert], unacknowledged: int) -> str:
    return json.dumps({
        "unacknowledged": unacknowledged,
        "alerts": [asdict(a) for a in published(alerts)],
    }, separators=(",", ":"))


def _decode(worker_id: str, value: str) -> WorkerAlerts:
    data = json.loads(value)
    alerts = tuple(Alert(**fields) for fields in data["alerts"])
    alerts = tuple(sorted(alerts, key=lambda a: a.alert_id, reverse=True))
    return WorkerAlerts(worker_id, alerts, int(data["unacknowledged"]))
