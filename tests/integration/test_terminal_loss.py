"""The console on a real pseudo-terminal: losing the terminal or a signal ends it cleanly.

Each test runs the real program (`demo_load.py`, which opens the console with simulated users,
or `python -m console`) on a pty of fixed size, waits until it has drawn, then takes its terminal
away or signals it, and checks what issue 15 asks: the process exits (the bound is a hang guard,
not a timing assertion), with the status said, the data directory's lock is released, and a turn
acknowledged before is still in the store.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import httpx
import pytest
from sigterm_stream import stream_through_sigterm

from engine import Engine, EngineConfig, SessionSettings, StoreSettings

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 90.0  # start-up on a busy machine, and exit; never a measure of speed
ROWS, COLUMNS = 40, 120
IDLE_S = 3600.0  # sessions made by the test must not expire while a slow machine runs it

# Like `make` run as the terminal's session leader (`ssh -t host make demo`, a tmux window
# running `make demo`): it survives the hang-up and waits for its child, so the console gets no
# SIGHUP; its terminal just ends. The leader's exit status is the console's.
LEADER = r"""
import fcntl, signal, subprocess, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes this new session's terminal
signal.signal(signal.SIGHUP, lambda *_: None)
sys.exit(subprocess.call(sys.argv[1:]))
"""


class Pty:
    """A program on a pseudo-terminal, its output collected by a thread so it never blocks."""

    def __init__(self, argv: list[str], *, as_session_leader: bool = False) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        if as_session_leader:
            argv = [sys.executable, "-c", LEADER, *argv]
        env = {**os.environ, "TERM": "xterm-256color", "PRAISONAI_TELEMETRY_DISABLED": "true"}
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
            start_new_session=True,  # its own session: no signal from the test's terminal
        )
        os.close(slave)
        self.output = bytearray()
        self._seen = threading.Condition()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has exited
                data = b""
            with self._seen:
                self.output += data
                self._seen.notify_all()
            if not data:
                return

    def wait_for(self, text: bytes) -> None:
        with self._seen:
            found = self._seen.wait_for(lambda: text in self.output, timeout=HANG_GUARD_S)
        assert found, f"{text!r} never appeared; last output: {bytes(self.output[-400:])!r}"

    def close_terminal(self) -> None:
        """What a closed tmux window or a dropped SSH connection does: the master end goes."""
        self._stop.set()
        self._reader.join()
        os.close(self.master)
        self.master = -1

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=HANG_GUARD_S)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.master >= 0:
            self._reader.join(timeout=HANG_GUARD_S)
            self._stop.set()
            self._reader.join()
            os.close(self.master)
            self.master = -1


def lock_is_free(data_dir: Path) -> bool:
    fd = os.open(data_dir / "sessions.db.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def engine_config(data_dir: Path) -> EngineConfig:
    return EngineConfig(
        store=StoreSettings(data_dir=data_dir),
        sessions=SessionSettings(idle_timeout_s=IDLE_S),
        tune_gc=False,
    )


def acknowledged_turn(data_dir: Path) -> tuple[str, str]:
    """A session with one acknowledged turn, made before the console starts."""

    async def make() -> tuple[str, str]:
        async with Engine(engine_config(data_dir)) as engine:
            session = await engine.create_session("before-the-signal")
            await engine.send(session.session_id, session.token, "remember me")
            return session.session_id, session.token

    return asyncio.run(make())


def history(data_dir: Path, session_id: str, token: str) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        async with Engine(engine_config(data_dir)) as engine:
            return [(m.role, m.content) for m in await engine.history(session_id, token)]

    return asyncio.run(read())


def demo(data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "demo_load.py", "--data-dir", str(data_dir), "--users", "5",
            "--idle-timeout", str(IDLE_S), *extra]


def console(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "console", "--data-dir", str(data_dir)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def running():
    """Starts programs on ptys and kills any the test left running."""
    started: list[Pty] = []

    def start(argv: list[str], **kwargs: bool) -> Pty:
        program = Pty(argv, **kwargs)
        started.append(program)
        program.wait_for(b"Session Console")  # the console has drawn its first frame
        return program

    yield start
    for program in started:
        program.cleanup()


@pytest.mark.parametrize("program", [demo, console], ids=["demo_load", "python -m console"])
def test_closing_the_terminal_quits_cleanly_and_releases_the_lock(running, data_dir, program):
    session_id, token = acknowledged_turn(data_dir)
    app = running(program(data_dir))
    assert not lock_is_free(data_dir)  # the console holds the store while it runs

    app.close_terminal()

    assert app.wait_exit() == 0
    assert lock_is_free(data_dir)
    assert [role for role, _ in history(data_dir, session_id, token)] == ["user", "assistant"]


def test_hang_up_under_a_session_leader_that_outlives_it(running, data_dir):
    # The case from the issue: the console gets no SIGHUP, only a terminal that has hung up.
    app = running(demo(data_dir), as_session_leader=True)
    app.wait_for(b"load running")

    app.close_terminal()

    assert app.wait_exit() == 0  # the leader exits with the console's status
    assert lock_is_free(data_dir)


def test_sighup_quits_cleanly_and_says_why(running, data_dir):
    app = running(demo(data_dir))
    app.wait_for(b"load running")

    app.process.send_signal(signal.SIGHUP)

    assert app.wait_exit() == 0
    assert b"session-console: terminal lost (SIGHUP): load stopped, engine closed cleanly" \
        in app.output
    assert lock_is_free(data_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_keeps_acknowledged_turns_and_exits_0(running, data_dir, sig):
    session_id, token = acknowledged_turn(data_dir)
    app = running(demo(data_dir))
    app.wait_for(b"load running")

    app.process.send_signal(sig)

    assert app.wait_exit() == 0
    said = f"session-console: {sig.name}: load stopped, engine closed cleanly".encode()
    assert said in app.output
    assert b"\x1b[?1049l" in app.output  # Textual left the alternate screen: terminal restored
    assert lock_is_free(data_dir)
    messages = history(data_dir, session_id, token)
    assert messages[0] == ("user", "remember me") and messages[1][0] == "assistant"


def test_second_sigterm_exits_at_once_losing_nothing_acknowledged(running, data_dir):
    session_id, token = acknowledged_turn(data_dir)
    # Slow model calls and no think time: every user has a turn in flight, so the drain waits
    # out the load's stop grace, and the second signal arrives while it does.
    app = running(demo(data_dir, "--latency-median", "60", "--latency-p99", "120",
                       "--turn-timeout", "300", "--think", "const:0"))
    app.wait_for(b"busy")

    app.process.send_signal(signal.SIGTERM)
    app.wait_for(b"\x1b[?1049l")  # the console has left the screen and is draining
    app.process.send_signal(signal.SIGTERM)

    assert app.wait_exit() == 128 + signal.SIGTERM
    assert b"SIGTERM again: exited at once without draining" in app.output
    assert lock_is_free(data_dir)
    assert [role for role, _ in history(data_dir, session_id, token)] == ["user", "assistant"]


# The console with its HTTP gateway, on a model slow enough that a turn outlasts both the
# gateway's own second for open responses and the 2 s a `q` gives: only SIGTERM's drain grace
# (10 s by default) lets it finish.
CONSOLE_WITH_GATEWAY = r"""
import sys
from pathlib import Path
from console.app import SessionConsole
from engine import (
    EngineConfig, GatewaySettings, LLMSettings, SessionSettings, SimSettings, StoreSettings,
)
slow = SimSettings(median_latency_s=4.0, p99_latency_s=4.5, seed=1)
config = EngineConfig(
    store=StoreSettings(data_dir=Path(sys.argv[1])),
    llm=LLMSettings(sim=slow),
    sessions=SessionSettings(idle_timeout_s=3600.0),
    gateway=GatewaySettings(app_keys=(sys.argv[2],)),
)
SessionConsole(config, listen="127.0.0.1:0").run()
"""


def test_sigterm_with_the_gateway_finishes_the_http_turn_in_flight(running, data_dir):
    app_key = "terminal-test-app-key"
    app = running([sys.executable, "-c", CONSOLE_WITH_GATEWAY, str(data_dir), app_key])
    app.wait_for(b"http://127.0.0.1:")
    base = re.search(rb"http://127\.0\.0\.1:\d+", bytes(app.output)).group().decode()
    created = httpx.post(f"{base}/v1/sessions", json={"user_id": "alice"},
                         headers={"Authorization": f"Bearer {app_key}"}).json()
    sid, token = created["session_id"], created["token"]

    events = stream_through_sigterm(base, sid, token, app.process, timeout_s=HANG_GUARD_S)

    assert events[-1] == "done"
    assert app.wait_exit() == 0
    assert b"session-console: SIGTERM: load stopped, engine closed cleanly" in app.output
    assert lock_is_free(data_dir)
    assert history(data_dir, sid, token)[0] == ("user", "finish me please")
