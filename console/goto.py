"""Opening a session by its id (`o`), wherever in the cluster it is served.

The operator types a whole id, or its start as the tables show it (8 characters). A whole id
is opened as it is: in a cluster, one this worker never saw is read from the shared store
(`Operator.locate`), so any live session opens, listed or not (each worker publishes only the
sessions it changed last: engine/cluster/session_board.py). A shorter start is looked for among
the sessions listed (this worker's and those the others published): one match opens, several
are named for the operator to type more.
"""

from __future__ import annotations

from collections.abc import Iterable

ID_CHARS = 32  # engine.sessions.new_session_id: 128 bits, hex
NAMED_MAX = 3  # ids named when a start matches several


def typed_id(text: str) -> str:
    """The id as typed, without spaces, the tables' ellipsis or their mark for HTTP sessions."""
    return text.strip().strip("…↗").strip().lower()


def matching(start: str, listed: Iterable[str]) -> tuple[str, ...]:
    """The listed ids that begin with `start`: the first NAMED_MAX + 1 (more than NAMED_MAX
    says there are several without counting them all)."""
    found: list[str] = []
    for session_id in listed:
        if session_id.startswith(start):
            found.append(session_id)
            if len(found) > NAMED_MAX:
                break
    return tuple(found)
