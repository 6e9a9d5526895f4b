"""Placement of sessions on workers: weighted least-loaded, sticky, minimal-move rebalancing.

A worker keeps a session's warm state (today a lane with its own agent pools in this process; the
same interface later maps to processes). So a session stays where it was placed, and when the
cluster changes shape a rebalance moves as few sessions as possible: every move is a real
migration, reported to `on_move`, counted and shown. A busy session (mid-turn) is never moved.

Cost: `assign` scans the active workers, O(W). W is small (typically <= 16), where a scan beats
keeping a heap consistent across releases and capacity changes. `rebalance` is O(W log W) plus a
walk over the over-loaded workers' sessions to pick idle ones.

Removing a worker drains it instead of refusing: its idle sessions move now, it takes no new
sessions, each busy one moves when its turn ends (`mark_busy(..., False)`), and the worker
disappears when empty. Refusing would make removal fail almost always under load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from engine.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Move:
    session_id: str
    from_worker: str
    to_worker: str


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    capacity: float
    sessions: int  # counts, not ids: a snapshot at 100k sessions must stay cheap
    busy: int
    load: float  # sessions / capacity
    moves_in: int
    moves_out: int
    draining: bool  # removed; waits for its busy sessions to finish their turns


@dataclass(slots=True)
class Worker:
    """A worker as the balancer tracks it.

    `sessions` is a dict used as an insertion-ordered set: which sessions a rebalance picks must
    not depend on string hashing, which varies between processes.
    """

    worker_id: str
    capacity: float
    sessions: dict[str, None] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    draining: bool = False
    moves_in: int = 0
    moves_out: int = 0

    @property
    def load(self) -> float:
        return len(self.sessions) / self.capacity

    def view(self) -> WorkerView:
        return WorkerView(
            worker_id=self.worker_id,
            capacity=self.capacity,
            sessions=len(self.sessions),
            busy=len(self.busy),
            load=self.load,
            moves_in=self.moves_in,
            moves_out=self.moves_out,
            draining=self.draining,
        )


class Balancer:
    """Sessions across workers; see the module docstring for the rules and their reasons.

    `on_move` is called once per move, after the balancer's own state already reflects it, so
    the engine can migrate the session's state for real. It must not raise.
    """

    def __init__(
        self,
        workers: Sequence[tuple[str, float]] | int = 2,
        *,
        on_move: Callable[[Move], None] | None = None,
    ) -> None:
        if isinstance(workers, int) and not isinstance(workers, bool):
            if workers < 1:
                raise InvalidInput(f"a balancer needs at least one worker, got {workers}")
            specs: Sequence[tuple[str, float]] = [(f"w{i}", 1.0) for i in range(workers)]
        else:
            specs = workers
            if not specs:
                raise InvalidInput("a balancer needs at least one worker, got none")
        self._workers: dict[str, Worker] = {}
        self._where: dict[str, Worker] = {}  # session_id -> its worker
        self._on_move = on_move
        self._moves_total = 0
        self._rebalance_runs = 0
        for worker_id, capacity in specs:
            self.add_worker(worker_id, capacity)

    def __repr__(self) -> str:
        return (
            f"Balancer(workers={len(self._workers)}, sessions={len(self._where)}, "
            f"moves_total={self._moves_total})"
        )

    @property
    def moves_total(self) -> int:
        return self._moves_total

    @property
    def rebalance_runs(self) -> int:
        return self._rebalance_runs

    def sessions_on(self, worker_id: str) -> tuple[str, ...]:
        """The ids placed on a worker, oldest placement first."""
        return tuple(self._workers[worker_id].sessions)

    # --- sessions ------------------------------------------------------------------------

    def assign(self, session_id: str) -> str:
        """The session's worker: sticky if already placed, else the least loaded one."""
        worker = self._where.get(session_id)
        if worker is None:
            if not isinstance(session_id, str) or not session_id:
                raise InvalidInput("session_id must be a non-empty string")
            worker = self._least_loaded()
            worker.sessions[session_id] = None
            self._where[session_id] = worker
        return worker.worker_id

    def worker_of(self, session_id: str) -> str | None:
        worker = self._where.get(session_id)
        return worker.worker_id if worker is not None else None

    def release(self, session_id: str) -> None:
        """The session ended; unknown ids are ignored so ending twice is harmless."""
        worker = self._where.pop(session_id, None)
        if worker is None:
            return
        del worker.sessions[session_id]
        worker.busy.discard(session_id)
        self._drop_if_drained(worker)

    def mark_busy(self, session_id: str, busy: bool) -> Move | None:
        """Pin a session while it is mid-turn; on a draining worker, leaving busy moves it."""
        worker = self._where.get(session_id)
        if worker is None:
            raise InvalidInput(f"session {session_id!r} is not assigned; call assign() first")
        if busy:
            worker.busy.add(session_id)
            return None
        worker.busy.discard(session_id)
        if not worker.draining:
            return None
        move = self._move(session_id, worker, self._least_loaded())
        self._drop_if_drained(worker)
        self._notify((move,))
        return move

    # --- workers -------------------------------------------------------------------------

    def add_worker(self, worker_id: str, capacity: float = 1.0) -> None:
        """New sessions go to it first while it is least loaded; call rebalance() to fill it."""
        if not isinstance(worker_id, str) or not worker_id:
            raise InvalidInput("worker_id must be a non-empty string")
        if worker_id in self._workers:
            raise InvalidInput(f"worker {worker_id!r} already exists; pick another id")
        self._workers[worker_id] = Worker(worker_id, _check_capacity(capacity))

    def remove_worker(self, worker_id: str) -> tuple[Move, ...]:
        """Drain a worker: move its idle sessions now, busy ones when their turns end."""
        worker = self._get(worker_id)
        if not worker.draining:
            if sum(not w.draining for w in self._workers.values()) == 1:
                raise InvalidInput(
                    f"worker {worker_id!r} is the last active worker; "
                    "add another before removing it"
                )
            worker.draining = True
        idle = [sid for sid in worker.sessions if sid not in worker.busy]
        moves = tuple(self._move(sid, worker, self._least_loaded()) for sid in idle)
        self._drop_if_drained(worker)
        self._notify(moves)
        return moves

    def set_capacity(self, worker_id: str, capacity: float) -> None:
        """Changes placement of new sessions only; call rebalance() to move existing ones."""
        worker = self._get(worker_id)
        if worker.draining:
            raise InvalidInput(f"worker {worker_id!r} is being removed; its capacity is fixed")
        worker.capacity = _check_capacity(capacity)

    # --- rebalancing ---------------------------------------------------------------------

    def rebalance(self) -> tuple[Move, ...]:
        """Move the fewest idle sessions that bring every worker to its share.

        A worker's share is total * capacity / sum of capacities; any count between its floor
        and ceiling is on target, and the targets are chosen, among those, closest to the
        current counts, so the moves are exactly the surplus over them. Sources and
        destinations are paired greedily, most over-loaded with most under-loaded (ties by id),
        and each source gives its most recently placed idle sessions. Busy sessions stay put, so
        a worker whose surplus is busy keeps it until a later rebalance.
        """
        self._rebalance_runs += 1
        targets = self._targets()
        over: list[tuple[int, Worker]] = []
        under: list[tuple[int, Worker]] = []
        for worker in self._workers.values():
            delta = len(worker.sessions) - targets[worker.worker_id]
            if delta > 0:
                over.append((delta, worker))
            elif delta < 0:
                under.append((-delta, worker))
        over.sort(key=lambda pair: (-pair[0], pair[1].worker_id))
        under.sort(key=lambda pair: (-pair[0], pair[1].worker_id))

        plan: list[tuple[str, Worker, Worker]] = []
        slots = iter(dst for need, dst in under for _ in range(need))
        for surplus, src in over:
            idle = (sid for sid in reversed(src.sessions) if sid not in src.busy)
            # Targets sum to the total, so surpluses and deficits match: `slots` never runs dry.
            plan.extend(
                (sid, src, next(slots)) for sid, _ in zip(idle, range(surplus), strict=False)
            )
        moves = tuple(self._move(sid, src, dst) for sid, src, dst in plan)
        for worker in list(self._workers.values()):
            self._drop_if_drained(worker)
        self._notify(moves)
        return moves

    def snapshot(self) -> tuple[WorkerView, ...]:
        """Workers in the order they were added."""
        return tuple(worker.view() for worker in self._workers.values())

    # --- internals -----------------------------------------------------------------------

    def _targets(self) -> dict[str, int]:
        """Per worker, the on-target count nearest its current count; they sum to the total.

        Exact fractions: a share that is a whole number must not become x.999... and its floor.
        """
        active = [w for w in self._workers.values() if not w.draining]
        total = len(self._where)
        cap_sum = sum(Fraction(w.capacity) for w in active)
        targets = {w.worker_id: 0 for w in self._workers.values() if w.draining}
        shares: list[tuple[Fraction, int, int, Worker]] = []
        for worker in active:
            share = total * Fraction(worker.capacity) / cap_sum
            low, high = math.floor(share), math.ceil(share)
            targets[worker.worker_id] = min(max(len(worker.sessions), low), high)
            shares.append((share - low, low, high, worker))
        excess = sum(targets.values()) - total
        if excess > 0:
            # Lower the targets of those least entitled to their ceiling.
            at_high = [s for s in shares if s[2] > s[1] and targets[s[3].worker_id] == s[2]]
            at_high.sort(key=lambda s: (s[0], s[3].worker_id))
            for _, low, _, worker in at_high[:excess]:
                targets[worker.worker_id] = low
        elif excess < 0:
            at_low = [s for s in shares if s[2] > s[1] and targets[s[3].worker_id] == s[1]]
            at_low.sort(key=lambda s: (-s[0], s[3].worker_id))
            for _, _, high, worker in at_low[:-excess]:
                targets[worker.worker_id] = high
        return targets

    def _least_loaded(self) -> Worker:
        return min(
            (w for w in self._workers.values() if not w.draining),
            key=lambda w: (w.load, w.worker_id),
        )

    def _get(self, worker_id: str) -> Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            known = ", ".join(self._workers)
            raise InvalidInput(f"unknown worker {worker_id!r}; known workers: {known}")
        return worker

    def _move(self, session_id: str, src: Worker, dst: Worker) -> Move:
        del src.sessions[session_id]
        dst.sessions[session_id] = None
        self._where[session_id] = dst
        src.moves_out += 1
        dst.moves_in += 1
        self._moves_total += 1
        return Move(session_id, src.worker_id, dst.worker_id)

    def _drop_if_drained(self, worker: Worker) -> None:
        if worker.draining and not worker.sessions:
            del self._workers[worker.worker_id]

    def _notify(self, moves: tuple[Move, ...]) -> None:
        if self._on_move is not None:
            for move in moves:
                self._on_move(move)


def _check_capacity(capacity: object) -> float:
    if (
        isinstance(capacity, bool)
        or not isinstance(capacity, int | float)
        or not math.isfinite(capacity)
        or capacity <= 0
    ):
        raise InvalidInput(f"worker capacity must be a finite number > 0, got {capacity!r}")
    return float(capacity)
