"""The sessions table's rows in a cluster: this worker's sessions, and those the other workers
published that this one does not hold (engine/cluster/session_board.py: each worker's most
recently changed, a bounded share), their worker column marked "@<worker>".

Opening such a row reads the session from the shared store (`Operator.locate`); from then on
this worker holds it and lists it as its own.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import EngineSnapshot
    from engine.views import SessionView

ELSEWHERE = "@"  # the worker column's mark for a session listed from another worker


def listed_sessions(
    snapshot: EngineSnapshot,
) -> tuple[Sequence[SessionView], Mapping[str, SessionView]]:
    """The rows and their index by id: the snapshot's own, then the other workers' sessions
    not held here (one view each: the most recently active of those published)."""
    cluster = snapshot.cluster
    held = snapshot.sessions_by_id
    if cluster is None or not cluster.sessions:
        return snapshot.sessions, held
    elsewhere: dict[str, SessionView] = {}
    for published in cluster.sessions:
        for view in published.sessions:
            if view.session_id in held:
                continue
            seen = elsewhere.get(view.session_id)
            if seen is None or view.last_active_at > seen.last_active_at:
                elsewhere[view.session_id] = replace(
                    view, worker=ELSEWHERE + published.worker_id
                )
    if not elsewhere:
        return snapshot.sessions, held
    return (*snapshot.sessions, *elsewhere.values()), ChainMap(held, elsewhere)
