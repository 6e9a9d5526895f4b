"""Simulated users: ordinary visitors, and scripted hogs, chatty users and attackers.

Each user draws from its own RNG seeded by (seed, kind, index), so the same seed replays every
user's choices whatever order the event loop runs them in. Users see only their `Environment`.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from engine.errors import AuthenticationError, EngineClosed, SessionExpired
from loadgen.environment import Environment, Outcome

T = TypeVar("T")

# Scripted abusers: fixed behaviour, so a scenario means the same thing on every run.
HOG_WORDS = 1500  # about 2,000 tokens a message: a free tier's hourly tokens go in ~8 turns
HOG_PAUSE_S = 0.5
CHATTY_BURST = 20  # back-to-back sends: twice the default per-session burst allowance
CHATTY_PAUSE_S = 3.0

WORDS = (
    "agent", "balance", "cache", "deploy", "error", "forecast", "graph", "help", "invoice",
    "join", "key", "latency", "model", "network", "order", "plan", "query", "refund", "schema",
    "ticket", "update", "vector", "window", "export", "yield", "zone", "please", "why", "how",
    "summarise", "compare", "explain",
)


@dataclass(slots=True, eq=False)
class HeldSession:
    """A session a user holds: its id, current token, turns still planned, and its fate."""

    session_id: str
    token: str = field(repr=False)
    turns_left: int
    abandon: bool


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class User:
    """One simulated client. Subclasses define `step`; think pauses come between steps."""

    __slots__ = ("_waker", "closed", "env", "held", "rng", "stopping", "tier", "user_id")
    kind: ClassVar[str] = "user"
    special: ClassVar[bool] = True  # scripted: started with the run, not steered by the target

    def __init__(self, env: Environment, index: int) -> None:
        self.env = env
        self.user_id = f"{self.kind}-{index:05d}"
        self.rng = random.Random(f"{env.seed}:{self.kind}:{index}")
        self.tier = env.transport.default_tier
        self.held: list[HeldSession] = []
        self.stopping = False
        self.closed = False  # the engine closed under us: nothing left to end
        self._waker: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            while not self.stopping:
                await self.step()
                if not self.stopping:
                    await self.pause(self.think())
        finally:
            await self.leave()

    async def step(self) -> None:
        raise NotImplementedError

    def think(self) -> float:
        return self.env.options.think.draw(self.rng)

    def stop(self) -> None:
        """Finish the current call, end held sessions, exit; a pause in progress is cut short."""
        self.stopping = True
        if self._waker is not None:
            _wake(self._waker)

    async def pause(self, seconds: float) -> None:
        """`asyncio.sleep` that `stop()` can wake early (a timer, not a task, per pause)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        self._waker = loop.create_future()
        timer = loop.call_later(seconds, _wake, self._waker)
        try:
            await self._waker
        finally:
            timer.cancel()
            self._waker = None

    def note(self, *decision: object) -> None:
        self.env.note(self.user_id, *decision)

    async def call(
        self, op: str, call: Awaitable[T], *, attack: bool = False
    ) -> tuple[T | None, BaseException | None]:
        value, error = await self.env.request(op, call, attack=attack)
        if isinstance(error, EngineClosed):
            self.stopping = self.closed = True
        return value, error

    # -- sessions ---------------------------------------------------------------------------------
    async def open(self, turns: int, abandon: bool) -> HeldSession | None:
        self.note("create_session", self.tier, turns, abandon)
        grant, _ = await self.call(
            "create_session", self.env.transport.create_session(self.user_id, self.tier)
        )
        if grant is None:
            return None
        held = HeldSession(grant.session_id, grant.token, turns, abandon)
        self.held.append(held)
        self.env.sessions.add(held.session_id)
        return held

    def drop(self, held: HeldSession, outcome: Outcome) -> None:
        self.held.remove(held)
        self.env.sessions.drop(held.session_id, outcome)

    async def end(self, held: HeldSession) -> None:
        if not self.stopping:  # ending on stop follows from stop(), not from this user's RNG
            self.note("end_session", self.held.index(held))
        _, error = await self.call(
            "end_session", self.env.transport.end_session(held.session_id, held.token)
        )
        self.drop(held, "lost" if error else "ended")

    async def send(
        self, held: HeldSession, op: str, agent: str, text: str
    ) -> BaseException | None:
        _, error = await self.call(
            op, self.env.transport.send(held.session_id, held.token, text, agent)
        )
        if isinstance(error, AuthenticationError | SessionExpired):
            self.drop(held, "lost")  # expired, evicted, or ended by someone else
        return error

    async def leave(self) -> None:
        """End every held session: a user who stops closes what it opened."""
        for held in list(self.held):
            if self.closed:
                self.drop(held, "lost")
            else:
                await self.end(held)

    def words(self, count: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=count))


class Visitor(User):
    """An ordinary user: a tier, a few sessions, turns with think time, ends or abandons them."""

    __slots__ = ("last", "want")
    kind = "user"
    special = False

    def __init__(self, env: Environment, index: int) -> None:
        super().__init__(env, index)
        self.tier = env.tiers.pick(self.rng)
        self.want = 1 + self.rng.randrange(env.options.sessions_per_user)
        self.last: HeldSession | None = None

    async def step(self) -> None:
        o = self.env.options
        rng = self.rng
        if len(self.held) < self.want:
            await self.open(o.session_turns.draw_count(rng), rng.random() < o.abandon_probability)
        # Draw everything every step, so outcomes shift no later draw for this user.
        reuse = rng.random() < o.reuse_probability
        slot_draw = rng.random()
        action = rng.random()
        agent = self.env.agents.pick(rng)
        words = o.message_words.draw_count(rng)
        if not self.held:
            return
        held = self.last if reuse and self.last in self.held else (
            self.held[int(slot_draw * len(self.held))]
        )
        self.last = held
        slot = self.held.index(held)
        transport = self.env.transport
        if action < o.history_probability:
            self.note("history", slot)
            await self.call("history", transport.history(held.session_id, held.token))
            return
        if action < o.history_probability + o.rotate_probability:
            self.note("rotate_token", slot)
            token, _ = await self.call(
                "rotate_token", transport.rotate_token(held.session_id, held.token)
            )
            if token is not None:
                held.token = token
            return
        self.note("send", slot, agent, words)
        error = await self.send(held, "send", agent, self.words(words))
        if error is None:
            held.turns_left -= 1
            if held.turns_left <= 0:
                await self.finish(held)

    async def finish(self, held: HeldSession) -> None:
        if held.abandon:
            self.note("abandon", self.held.index(held))
            self.drop(held, "abandoned")
        else:
            await self.end(held)


class Hog(User):
    """Sends very long messages quickly on the default tier until the token quota refuses."""

    __slots__ = ()
    kind = "hog"

    async def step(self) -> None:
        if not self.held and await self.open(turns=0, abandon=False) is None:
            return
        self.note("hog_send")
        await self.send(self.held[0], "hog_send", self.env.agents.names[0], self.words(HOG_WORDS))

    def think(self) -> float:
        return HOG_PAUSE_S


class Chatty(User):
    """Bursts of back-to-back messages on one session: past the session and user rate limits."""

    __slots__ = ()
    kind = "chatty"

    async def step(self) -> None:
        self.note("chatty_burst", CHATTY_BURST)
        for _ in range(CHATTY_BURST):
            if self.stopping:
                return
            # A session lost mid-burst (expired, evicted) is replaced: the burst goes on.
            if not self.held and await self.open(turns=0, abandon=False) is None:
                return
            await self.send(self.held[0], "chatty_send", self.env.agents.names[0], self.words(8))

    def think(self) -> float:
        return CHATTY_PAUSE_S


class Attacker(User):
    """Presents wrong tokens and other users' session ids; every attempt must be refused.

    It knows session ids as an attacker who leaked or guessed them would: the ids the other
    simulated users hold. It never sees another user's token. Its own valid token is part of
    the attack.
    """

    __slots__ = ()
    kind = "attacker"
    ATTACKS = ("forged_token", "own_token_other_session", "guessed_id")
    APIS = ("send", "history", "rotate_token", "end_session")

    async def step(self) -> None:
        if not self.held and await self.open(turns=0, abandon=False) is None:
            return
        rng = self.rng
        kind = rng.choice(self.ATTACKS)
        api = rng.choice(self.APIS)
        victim_draw = rng.random()
        forged = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()
        guessed = rng.randbytes(16).hex()
        own = self.held[0]
        victims = self.env.sessions.held_ids()
        victim = int(victim_draw * len(victims))
        if victims and victims[victim] == own.session_id:
            victim = (victim + 1) % len(victims)  # someone else's, if there is anyone
        if kind == "guessed_id" or not victims or victims[victim] == own.session_id:
            session_id, token = guessed, forged
        else:
            session_id = victims[victim]
            token = own.token if kind == "own_token_other_session" else forged
        self.note("attack", kind, api)
        transport = self.env.transport
        call: Awaitable[object]
        if api == "send":
            agent = self.env.agents.names[0]
            call = transport.send(session_id, token, "show me your history", agent)
        elif api == "history":
            call = transport.history(session_id, token)
        elif api == "rotate_token":
            call = transport.rotate_token(session_id, token)
        else:
            call = transport.end_session(session_id, token)
        await self.call("attack", call, attack=True)

    def think(self) -> float:
        return 1.0 / self.env.options.attack_rate
