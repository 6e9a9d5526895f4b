"""Sessions: per-user index, bounded context, idle and absolute expiry by a deadline heap.

The registry never scans all sessions. Each live session has at most one entry in a min-heap of
deadlines; activity only moves a session's true deadline later, so a popped entry that is early
is simply pushed back at the true deadline (lazy re-arm). Expiry with nothing due is one peek.
"""

from __future__ import annotations

import asyncio
import heapq
import secrets
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from operator import rshift
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

from engine.cold_records import ColdRecords
from engine.errors import SessionLimitReached

if TYPE_CHECKING:
    from engine.security import SessionCipher, TokenRecord
    from engine.store.ops import ContextFigures, SessionRow

EventKind = Literal["created", "ended", "expired", "evicted"]
# A hot session's memory beyond its text: the cipher, wrapped key and the context's buffers,
# and per message its size, role and time (measured with tracemalloc, rounded up).
HOT_BASE_BYTES = 1024
HOT_MESSAGE_BYTES = 16


def utf8_size(text: str) -> int:
    """Bytes of `text` as stored: what the context's byte bound counts."""
    return len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of conversation, as the caller sees it in `history()`."""

    role: Literal["user", "assistant"]
    content: str
    at: float

    @property
    def size(self) -> int:
        return utf8_size(self.content)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    kind: EventKind
    session_id: str
    user_id: str
    at: float
    reason: str = ""


ROLES: tuple[Literal["user"], Literal["assistant"]] = ("user", "assistant")
_ROLE_CODES = {role: code for code, role in enumerate(ROLES)}


class Context:
    """A conversation bounded by message count and bytes; the oldest are dropped first.

    Kept as its messages' UTF-8 in one buffer, with each message's size and role in one 32-bit
    word (size times two, plus the role's index in ROLES) and its time in a typed array. A str
    per message costs a 49-byte header and a list slot, and a chat dict per message 184 bytes:
    together more than a typical message's text, and a hot session's memory is mostly its
    context. `chat_history` decodes and builds the dicts at each turn instead (CPU a turn within
    2-4% of plain strings, at 60 messages and at the 200-message bound, in paired runs).
    """

    __slots__ = ("_entries", "_text", "_times", "dropped", "max_bytes", "max_messages")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._text = bytearray()
        self._entries = array("I")  # per message: size << 1 | role index
        self._times = array("d")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dropped = 0

    @property
    def bytes(self) -> int:
        """The UTF-8 bytes of the texts held: what the byte bound counts."""
        return len(self._text)

    def append(self, message: Message) -> int:
        """Add a message and return the bytes dropped to stay within bounds (the newest stays)."""
        encoded = message.content.encode("utf-8")
        self._text += encoded
        self._entries.append(len(encoded) << 1 | _ROLE_CODES[message.role])
        self._times.append(message.at)
        return self._trim()

    def extend(self, messages: Sequence[Message]) -> int:
        """`append` each message, each column grown once: a context read from the store takes
        its size, not a buffer grown a message at a time (an eighth more, each step)."""
        encoded = [message.content.encode("utf-8") for message in messages]
        self._text += b"".join(encoded)
        self._entries.extend(
            len(text) << 1 | _ROLE_CODES[message.role]
            for text, message in zip(encoded, messages, strict=True)
        )
        self._times.extend(message.at for message in messages)
        return self._trim()

    def _trim(self) -> int:
        """Drop the oldest messages past either bound (never the newest); the bytes freed."""
        entries = self._entries
        total = len(self._text)
        freed = drop = 0
        while len(entries) - drop > 1 and (
            len(entries) - drop > self.max_messages or total - freed > self.max_bytes
        ):
            freed += entries[drop] >> 1
            drop += 1
        if drop:
            del self._text[:freed]  # a bytearray drops its front without copying the rest
            del entries[:drop]
            del self._times[:drop]
            self.dropped += drop
        return freed

    def chat_history(self) -> list[dict[str, str]]:
        """The messages as chat dicts, oldest first: a fresh list of fresh dicts for the agent
        to append to and change as it likes."""
        return [
            {"role": ROLES[entry & 1], "content": text}
            for entry, text in zip(self._entries, self._texts(), strict=True)
        ]

    def messages(self) -> tuple[Message, ...]:
        return tuple(
            Message(ROLES[entry & 1], text, at)
            for entry, text, at in zip(self._entries, self._texts(), self._times, strict=True)
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages())

    def _texts(self) -> list[str]:
        """Every message's text, decoded at once: the buffer may change as soon as the caller
        has them. The cuts are made by C-level iterators, not a Python loop per message, and
        ASCII (most text) is decoded whole and sliced: its byte offsets are its character
        offsets."""
        ends = list(accumulate(map(rshift, self._entries, repeat(1))))
        cuts = list(map(slice, chain((0,), ends), ends))
        if self._text.isascii():
            return list(map(self._text.decode("ascii").__getitem__, cuts))
        raw = bytes(self._text)
        return [raw[cut].decode("utf-8") for cut in cuts]


@dataclass(slots=True, eq=False)
class Session:
    """A live session. Mutated only on the engine's loop."""

    session_id: str
    user_id: str
    metadata: Mapping[str, Any]
    created_at: float
    last_active_at: float
    idle_timeout_s: float
    lifetime_s: float
    context: Context | None  # None while cold: the messages are in the store only
    in_flight: int = 0
    turns: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    agent_type: str = ""
    worker: str = ""
    next_seq: int = 0  # sequence number of the next stored message
    tier: str = ""
    origin: str = "python"  # who created it: "python" (in-process caller) or "http" (gateway)
    token: TokenRecord | None = None
    wrapped_key: bytes | None = field(default=None, repr=False)  # until its creation is written
    cipher: SessionCipher | None = field(default=None, repr=False)
    _turn_lock: asyncio.Lock | None = None
    running_turn: asyncio.Task[Any] | None = None  # the task whose turn holds turn_lock
    loading: asyncio.Future[None] | None = None  # warming in progress: later users await it
    cold_messages: int = 0  # the stored conversation's size while cold (context is None)
    cold_bytes: int = 0
    stale: bool = False  # memory holds a turn the store refused: reload before the next use
    version: int = 0  # in a cluster: the session's version this copy was read or written at
    served_by: str | None = None  # in a cluster: the worker the store says served it last
    cached_bytes: int = 0  # hot_bytes as the hot cache last counted it (HotCache)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    @property
    def hot(self) -> bool:
        """Its key is unwrapped and its context decrypted in memory."""
        return self.context is not None

    @property
    def context_bytes(self) -> int:
        return self.context.bytes if self.context is not None else self.cold_bytes

    @property
    def message_count(self) -> int:
        return len(self.context) if self.context is not None else self.cold_messages

    @property
    def hot_bytes(self) -> int:
        """Estimated memory held by the hot state (context, cipher, key)."""
        if self.context is None:
            return 0
        return HOT_BASE_BYTES + HOT_MESSAGE_BYTES * len(self.context) + self.context.bytes

    def demote(self) -> None:
        """Drop the hot state, keeping the compact record: the store has the rest."""
        assert not self.busy
        self.drop_context()
        self._turn_lock = None

    def drop_context(self) -> None:
        """Drop the decrypted context and key (the turn lock stays: a turn may hold it)."""
        assert self.context is not None and self.loading is None
        self.cold_messages, self.cold_bytes = len(self.context), self.context.bytes
        self.context = None
        self.cipher = None
        self.wrapped_key = None

    @property
    def deadline(self) -> float:
        """When the session expires: idle limit or absolute limit, whichever comes first."""
        return min(self.last_active_at + self.idle_timeout_s, self.created_at + self.lifetime_s)

    def expiry_reason(self, now: float) -> str | None:
        if now >= self.created_at + self.lifetime_s:
            return "absolute lifetime reached"
        if now >= self.last_active_at + self.idle_timeout_s:
            return "idle timeout"
        return None

    @property
    def turn_lock(self) -> asyncio.Lock:
        """Serialises this session's turns; created on first use to keep idle sessions small."""
        if self._turn_lock is None:
            self._turn_lock = asyncio.Lock()
        return self._turn_lock


MAX_SESSION_ID_CHARS = 64  # ids are 32 hex characters: longer ones are never looked up


def lookable_id(session_id: object) -> TypeGuard[str]:
    """Whether a presented session id is worth a store read: a str of plausible length."""
    return isinstance(session_id, str) and len(session_id) <= MAX_SESSION_ID_CHARS


def new_session_id() -> str:
    """128 random bits, hex: unguessable, though possession of an id alone grants nothing."""
    return secrets.token_hex(16)


class SessionRegistry:
    """Owns live sessions, the per-user index and the deadline heap.

    A live session is a `Session` object, or, read from the store and not used since, a packed
    row of `cold` (engine.cold_records). `get` turns a row into an object on first use and tells
    `on_promote`; counts, iteration and expiry cover both.
    """

    def __init__(
        self,
        *,
        max_per_user: int,
        idle_timeout_s: float,
        lifetime_s: float,
        context_max_messages: int,
        context_max_bytes: int,
        recent_events: int = 1000,
    ) -> None:
        self.max_per_user = max_per_user
        self.idle_timeout_s = idle_timeout_s
        self.lifetime_s = lifetime_s
        self.context_max_messages = context_max_messages
        self.context_max_bytes = context_max_bytes
        self._sessions: dict[str, Session] = {}
        # A user's sessions: the session itself while it is their only one (a dict of one is
        # 184 bytes), else a dict, insertion-ordered so the first idle one is the oldest idle.
        self._by_user: dict[str, Session | dict[str, Session]] = {}
        self._heap: list[tuple[float, str]] = []
        self.cold = ColdRecords(Session)
        self._users_in_both = 0  # users holding objects and cold rows: counted once by users()
        self.on_promote: Callable[[Session], None] | None = None
        self.hot = HotCache()
        self._listeners: list[Callable[[SessionEvent, Session], None]] = []
        self.recent_events: deque[SessionEvent] = deque(maxlen=recent_events)
        self.event_counts: dict[EventKind, int] = {
            "created": 0, "ended": 0, "expired": 0, "evicted": 0,
        }

    # -- queries -------------------------------------------------------------------------------
    def get(self, session_id: str) -> Session | None:
        """The live session, a cold row turned into an object first."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        row = self.cold_row(session_id)
        return self.promote(row) if row >= 0 else None

    def peek(self, session_id: str) -> Session | None:
        """The live session to look at: the object, or one built from its cold row and left a
        row (a look is not a use)."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        row = self.cold_row(session_id)
        return self.cold.session(row) if row >= 0 else None

    def held(self, session_id: str) -> Session | None:
        """The session if held as an object; a cold row is not looked at (see `cold_row`)."""
        return self._sessions.get(session_id)

    def cold_row(self, session_id: str) -> int:
        """The cold row of `session_id`, or -1: one probe while any row is held, whether or
        not the session is held as an object, so either costs the same."""
        return self.cold.find(session_id) if self.cold.rows else -1

    def cold_token(self, row: int) -> TokenRecord | None:
        """The token record of cold row `row` (-1: None), at one cost either way while any
        row is held (engine.cold_records.ColdRecords.token)."""
        return self.cold.token(row) if self.cold.rows else None

    def holds(self, session_id: str) -> bool:
        """Whether the session is live, as an object or a row (a row stays a row)."""
        return session_id in self._sessions or self.cold_row(session_id) >= 0

    def of_user(self, user_id: str) -> tuple[Session, ...]:
        """The user's sessions, their cold rows turned into objects first."""
        for row in self.cold.rows_of(user_id):
            self.promote(row)
        return tuple(self._owned(user_id))

    def count_of(self, user_id: str) -> int:
        owned = self._by_user.get(user_id)
        held = 0 if owned is None else 1 if isinstance(owned, Session) else len(owned)
        return held + self.cold.count_of(user_id)

    def users(self) -> int:
        return len(self._by_user) + self.cold.users - self._users_in_both

    def __len__(self) -> int:
        return len(self._sessions) + self.cold.rows

    def objects(self) -> Iterator[Session]:
        """The sessions held as objects: every one with a key or context in memory (a cold
        row holds neither)."""
        return iter(self._sessions.values())

    def __iter__(self) -> Iterator[Session]:
        """Every live session; a cold row as a `Session` built for the look, left a row."""
        yield from self._sessions.values()
        yield from self.cold.sessions()

    @property
    def heap_size(self) -> int:
        return len(self._heap)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def subscribe(self, listener: Callable[[SessionEvent, Session], None]) -> None:
        """Call `listener(event, session)` on every created / ended / expired / evicted."""
        self._listeners.append(listener)

    # -- changes -------------------------------------------------------------------------------
    def create(
        self, user_id: str, metadata: Mapping[str, Any], now: float, session_id: str | None = None
    ) -> Session:
        """Register a new session, first evicting the user's oldest idle one if at the cap.

        `session_id` is given when the id was needed first (a cluster claims its place)."""
        if self.count_of(user_id) >= self.max_per_user:
            rows = self.cold.rows_of(user_id)  # restored ones come first, as when objects
            victim = (
                self.promote(rows[-1]) if rows
                else next((s for s in self._owned(user_id) if not s.busy), None)
            )
            if victim is None:
                raise SessionLimitReached(user_id, self.max_per_user)
            self.remove(victim.session_id, "evicted", now, "user session cap reached")
        session = Session(
            session_id=session_id or new_session_id(),
            user_id=user_id,
            metadata=MappingProxyType(dict(metadata)),
            created_at=now,
            last_active_at=now,
            idle_timeout_s=self.idle_timeout_s,
            lifetime_s=self.lifetime_s,
            context=Context(self.context_max_messages, self.context_max_bytes),
        )
        self.adopt(session)
        self._compact_heap()
        self._emit(SessionEvent("created", session.session_id, user_id, now), session)
        return session

    def adopt(self, session: Session) -> None:
        """Register a session without a 'created' event: new ones via create(), or restored."""
        session_id, user_id = session.session_id, session.user_id
        self._sessions[session_id] = session
        owned = self._by_user.get(user_id)
        if owned is None:
            self._by_user[user_id] = session
            if self.cold.count_of(user_id):
                self._users_in_both += 1
        elif isinstance(owned, Session):
            self._by_user[user_id] = (
                session if owned.session_id == session_id
                else {owned.session_id: owned, session_id: session}
            )
        else:
            owned[session_id] = session
        heapq.heappush(self._heap, (session.deadline, session.session_id))

    def adopt_row(self, row: SessionRow, figures: ContextFigures | None) -> bool:
        """Hold a stored session as a cold row; False if it does not pack (engine.cold_records:
        then adopt it as an object). The caller checks it is not live already."""
        if not self.cold.add(row, figures):
            return False
        if self.cold.count_of(row.user_id) == 1 and row.user_id in self._by_user:
            self._users_in_both += 1
        return True

    def repack(self, session: Session) -> bool:
        """Hold a cold, idle session as a packed row again (engine.cold_records); False if it
        stays an object: busy, loading, hot, stale, not held, or not packable."""
        session_id, user_id = session.session_id, session.user_id
        if (
            session.busy or session.loading is not None or session.hot or session.stale
            or self._sessions.get(session_id) is not session
            or not self.cold.add_session(session)
        ):
            return False
        if self.cold.count_of(user_id) == 1 and user_id in self._by_user:
            self._users_in_both += 1
        del self._sessions[session_id]
        self._unindex(session)  # its heap entry is skipped when it comes due
        return True

    def promote(self, row: int) -> Session:
        """A cold row as an object from now on; `on_promote` places it."""
        user_id = self.cold.user_of(row)
        session = self.cold.take(row)
        if not self.cold.count_of(user_id) and user_id in self._by_user:
            self._users_in_both -= 1
        self.adopt(session)
        if self.on_promote is not None:
            self.on_promote(session)
        return session

    def trim_to_cap(self, user_id: str, now: float) -> None:
        """Evict the user's least recently active idle sessions until they hold no more than
        the cap (sessions brought back from the store after the user created new ones)."""
        owned = self.of_user(user_id)
        excess = len(owned) - self.max_per_user
        for victim in sorted(owned, key=lambda s: s.last_active_at):
            if excess <= 0:
                return
            if not victim.busy:
                self.remove(victim.session_id, "evicted", now, "user session cap reached")
                excess -= 1

    def begin_turn(self, session: Session) -> None:
        session.in_flight += 1

    def end_turn(self, session: Session, now: float) -> None:
        """A turn ended; a session that went past its deadline while busy becomes due now."""
        session.in_flight -= 1
        if not session.busy and session.expiry_reason(now) is not None:
            heapq.heappush(self._heap, (now, session.session_id))

    def touch(self, session: Session, now: float) -> None:
        """Record activity; the heap entry is re-armed lazily when it comes due."""
        session.last_active_at = max(session.last_active_at, now)

    def remove(
        self, session_id: str, kind: EventKind, now: float, reason: str = ""
    ) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        self._unindex(session)
        self._emit(SessionEvent(kind, session_id, session.user_id, now, reason), session)
        return session

    def discard(self, session_id: str) -> Session | None:
        """Forget a session without an event: it stays in the store, untouched (unreadable)."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._unindex(session)
        return session

    def _unindex(self, session: Session) -> None:
        self.hot.discard(session)
        user_id = session.user_id
        owned = self._by_user[user_id]
        if isinstance(owned, Session):
            del self._by_user[user_id]
            if self.cold.count_of(user_id):
                self._users_in_both -= 1
            return
        del owned[session.session_id]
        if len(owned) == 1:
            self._by_user[user_id] = next(iter(owned.values()))

    def _owned(self, user_id: str) -> Iterable[Session]:
        """The user's sessions held as objects, oldest first."""
        owned = self._by_user.get(user_id)
        if owned is None:
            return ()
        return (owned,) if isinstance(owned, Session) else owned.values()

    def expire_due(self, now: float) -> list[Session]:
        """Remove every session whose deadline has passed; cost is O(due x log n)."""
        expired = self.due(now)
        for session in expired:
            self.remove(session.session_id, "expired", now, session.expiry_reason(now) or "")
        return expired

    def due(self, now: float) -> list[Session]:
        """Take the idle sessions past their deadline off the heap without ending them: a
        worker of a cluster asks the store first (another worker may have kept one alive),
        then ends each or puts it back with `rearm`."""
        for row in self.cold.due(now):
            self.promote(row)  # its heap entry is due at once
        due: dict[str, Session] = {}
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, session_id = heapq.heappop(heap)
            session = self._sessions.get(session_id)
            if session is None or session_id in due:
                continue  # ended earlier, or a second entry: left behind
            reason = session.expiry_reason(now)
            if reason is None or session.busy:
                # Early entry (activity moved the deadline) or mid-turn: re-arm, never evict a turn.
                rearm = session.deadline if reason is None else now + session.idle_timeout_s
                heapq.heappush(heap, (rearm, session_id))
                continue
            due[session_id] = session
        return list(due.values())

    def rearm(self, session: Session, at: float | None = None) -> None:
        """Come due again at `at` (default: its deadline)."""
        heapq.heappush(self._heap, (session.deadline if at is None else at, session.session_id))

    def _compact_heap(self) -> None:
        """Drop entries of ended sessions once they outnumber live ones (amortised O(1))."""
        if len(self._heap) > 2 * len(self._sessions) + 1024:
            self._heap = [(s.deadline, s.session_id) for s in self._sessions.values()]
            heapq.heapify(self._heap)

    def _emit(self, event: SessionEvent, session: Session) -> None:
        self.event_counts[event.kind] += 1
        self.recent_events.append(event)
        for listener in self._listeners:
            listener(event, session)


class HotCache:
    """The hot sessions, least recently used first, with their estimated bytes.

    The engine decides when to demote (idle or over budget, never a busy or loading one); this
    keeps the order, the running total and the counts behind the console's hit ratio. The order
    is a plain dict's (a use moves a session to the end by taking it out and putting it back):
    an OrderedDict's linked node is another 50 bytes a hot session.
    """

    __slots__ = ("_order", "bytes", "hits", "loads")

    def __init__(self) -> None:
        self._order: dict[str, Session] = {}
        self.bytes = 0
        self.hits = 0  # uses that found the session hot
        self.loads = 0  # uses that had to load it (misses)

    def __len__(self) -> int:
        return len(self._order)

    def add(self, session: Session) -> None:
        """A session just warmed, or used while hot: most recent now, its size re-estimated."""
        previous = self._order.pop(session.session_id, None)
        if previous is not None:
            self.bytes -= previous.cached_bytes
        session.cached_bytes = session.hot_bytes
        self._order[session.session_id] = session
        self.bytes += session.cached_bytes

    def discard(self, session: Session) -> None:
        previous = self._order.pop(session.session_id, None)
        if previous is not None:
            self.bytes -= previous.cached_bytes

    def oldest_first(self) -> Iterator[Session]:
        """Least recently used first; do not add or discard while iterating."""
        return iter(self._order.values())
