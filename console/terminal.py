"""The console's hold on its terminal: losing it, or a signal, ends the console the way `q` does.

Why this module exists (issue 15). When the terminal goes away (an SSH drop, a closed tmux
window), Textual's Linux driver does not notice: its output thread dies on the first failed
write (EIO) and the app's loop then blocks for ever putting the next frame into that thread's
full queue, while its input thread spins on the tty's end of file. The process stays, at full
CPU, holding the store's lock. And SIGHUP or SIGTERM kill the process outright (SIGINT raises
KeyboardInterrupt wherever the loop happens to be), without stopping the load or closing the
store.

`TerminalGuard` fixes both at the root, with no Textual private attribute except one adapter
(`_guard_driver_output`):
- the driver's output stream reports a failed write instead of dying with it, and a watchdog
  thread wakes when the tty hangs up (poll's POLLHUP, no CPU while waiting); either marks the
  terminal lost, points the dead tty's output descriptors at /dev/null (so nothing later fails
  on EIO, not even Python's flush at exit), and asks the app to quit;
- SIGHUP, SIGTERM and SIGINT, handled on the app's loop, ask the app to quit too. The app's quit
  is its normal one: load stops within its grace, turns still running after it are cancelled,
  the engine closes (the store flushes, the lock is released). After SIGTERM or SIGINT
  (`asked_to_drain`) the app gives turns from the gateway the configured drain grace;
- a second SIGTERM or SIGINT exits at once (128 + signal number): turns already acknowledged
  were committed when they were acknowledged, so nothing acknowledged is lost;
- a backstop exits (status 1) if the quit has not finished `BACKSTOP_S` after it began, so a
  stuck shutdown can never again hold the lock for ever;
- once Textual has restored the terminal, one line on stderr says what happened.

Under `run_test()` (Textual's headless driver) nothing is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import signal
import termios
import threading
from collections.abc import Callable
from typing import IO, Any

from textual.app import App
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver

# A quit takes about 2.5 s (the load's 2 s grace, then the engine's close), a SIGTERM drain up to
# the gateway's grace (10 s by default) more; past this the shutdown is stuck: exit anyway.
BACKSTOP_S = 30.0

# What Textual's driver writes when it leaves application mode: mouse, bracketed paste and focus
# reports off, line wrap on, Kitty keyboard protocol off, main screen, cursor shown. Written
# directly only when exiting at once, while the driver still holds the terminal.
_RESTORE = (
    b"\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l\x1b[?7h"
    b"\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1004l"
)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TerminalOutput:
    """The driver's output stream, which reports a failed write instead of dying with it.

    Textual's writer thread calls `write` and `flush`; an OSError there (EIO, EPIPE once the
    terminal is gone) would end the thread and leave the app blocked on its full queue.
    """

    def __init__(self, stream: IO[str], on_lost: Callable[[str], None]) -> None:
        self._stream = stream
        self._on_lost = on_lost
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self._stream.write(text)
            except (OSError, ValueError) as exc:
                self._fail(exc)
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._fail(exc)

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        self._on_lost(f"{_error_name(exc)} writing to it")


class TerminalGuard:
    """Turns terminal loss and SIGHUP/SIGTERM/SIGINT into the app's clean quit; see the module."""

    def __init__(self, app: App[Any]) -> None:
        self.app = app
        self.cause: str | None = None  # why the console is stopping, once it is
        self.asked_to_drain = False  # the stop is a SIGTERM or SIGINT's drain, not a lost terminal
        self._driver: LinuxDriver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_fds: tuple[int, ...] = ()
        self._previous_handlers: dict[int, Any] = {}
        self._watchdog: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # the pipe that wakes the watchdog to end
        self._backstop: threading.Timer | None = None
        self._gone = False

    @classmethod
    def attach(cls, app: App[Any]) -> TerminalGuard:
        """Make `app` run on a guarded copy of its terminal driver; returns the guard."""
        guard = cls(app)
        app.driver_class = guard.driver_class(app.driver_class)
        return guard

    def driver_class(self, base: type[Driver]) -> type[Driver]:
        """`base` with this guard attached; other drivers (Windows, web) are returned as is."""
        if not issubclass(base, LinuxDriver):
            return base
        guard = self

        class GuardedDriver(base):  # type: ignore[valid-type,misc]
            """The Linux driver, reporting terminal loss to the guard instead of hanging."""

            def __init__(self, app: App[Any], **kwargs: Any) -> None:
                super().__init__(app, **kwargs)
                _guard_driver_output(self, guard.terminal_lost)

            def start_application_mode(self) -> None:
                super().start_application_mode()
                guard.start(self)

            def stop_application_mode(self) -> None:
                guard.leave_application_mode()
                super().stop_application_mode()

            def run_input_thread(self) -> None:
                # EIO on read means the terminal is gone; Textual would report it as a crash.
                try:
                    super().run_input_thread()
                except OSError as exc:
                    guard.terminal_lost(f"{_error_name(exc)} reading from it")

            def close(self) -> None:
                super().close()  # the writer thread has written everything, terminal restored
                guard.stop()

        return GuardedDriver

    # -- start and stop, with the driver -----------------------------------------------------------
    def start(self, driver: LinuxDriver) -> None:
        """Install the signal handlers and the hang-up watchdog (on the app's loop)."""
        if self._loop is not None:
            return
        self._driver = driver
        self._loop = asyncio.get_running_loop()
        self._output_fds = tuple(fd for fd in (1, 2) if os.isatty(fd))
        tty_fds = tuple({driver.fileno, *self._output_fds} if os.isatty(driver.fileno)
                        else self._output_fds)
        for sig in (signal.SIGHUP, *_DRAIN_SIGNALS):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                previous = signal.getsignal(sig)
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                self._previous_handlers[sig] = previous
        if tty_fds:
            self._wake = os.pipe()
            self._watchdog = threading.Thread(
                target=self._watch, args=(tty_fds, self._wake[0]),
                name="terminal-watchdog", daemon=True,
            )
            self._watchdog.start()

    def leave_application_mode(self) -> None:
        """Textual is restoring the terminal: an exit at once need not do it again."""
        self._driver = None

    def stop(self) -> None:
        """Undo `start` (the driver closed: the app exited or was suspended); report a stop."""
        self._driver = None
        loop, self._loop = self._loop, None
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        for sig, previous in self._previous_handlers.items():
            if loop is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            if previous is not None:  # None: not set from Python; leave the default
                signal.signal(sig, previous)
        self._previous_handlers.clear()
        if self._watchdog is not None and self._wake is not None:
            os.write(self._wake[1], b"x")
            self._watchdog.join()
            for fd in self._wake:
                os.close(fd)
            self._watchdog = self._wake = None
        if self.cause is not None:
            code = self.app.return_code
            if code:
                _say(f"session-console: {self.cause}: the shutdown failed (exit status {code})")
            else:
                _say(f"session-console: {self.cause}: load stopped, engine closed cleanly")

    # -- the causes --------------------------------------------------------------------------------
    def terminal_lost(self, how: str) -> None:
        """The terminal is gone (any thread): stop writing to it, and quit."""
        if not self._gone:
            self._gone = True
            _silence(self._output_fds)
        cause = f"terminal lost ({how})"
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the app has exited
            loop.call_soon_threadsafe(self._begin_stop, cause)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig == signal.SIGHUP:
            self._begin_stop(f"terminal lost ({name})")
        elif self.cause is not None:
            self._exit_now(sig)  # second signal before the handler swap below took effect
        else:
            self.asked_to_drain = True
            self._begin_stop(name)

    def _begin_stop(self, cause: str) -> None:
        """The first cause quits the app; later SIGTERM/SIGINT exit at once (on the loop)."""
        if self.cause is not None:
            return
        self.cause = cause
        # A plain handler runs even if the loop is stuck, which is when a second signal matters.
        for sig in _DRAIN_SIGNALS:
            if sig in self._previous_handlers and self._loop is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    self._loop.remove_signal_handler(sig)
                    signal.signal(sig, lambda signum, _frame: self._exit_now(signum))
        self._backstop = threading.Timer(BACKSTOP_S, self._backstop_fired)
        self._backstop.daemon = True
        self._backstop.start()
        self.app.exit()

    def _exit_now(self, sig: int) -> None:
        driver = self._driver
        if driver is not None and not self._gone:
            if 2 in self._output_fds:  # Textual writes to stderr
                with contextlib.suppress(OSError):
                    os.write(2, _RESTORE)
            if driver.attrs_before is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(driver.fileno, termios.TCSANOW, driver.attrs_before)
        name = signal.Signals(sig).name
        _say(f"session-console: {self.cause}; {name} again: exited at once without draining")
        os._exit(128 + sig)

    def _backstop_fired(self) -> None:
        _say(f"session-console: {self.cause}: the shutdown did not finish in {BACKSTOP_S:g} s; "
             "exited without it")
        os._exit(1)

    def _watch(self, fds: tuple[int, ...], wake_read: int) -> None:
        """Wait (without CPU) for the tty to hang up, or to be woken by `stop`."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, 0)  # only POLLHUP, POLLERR and POLLNVAL wake us
        poller.register(wake_read, select.POLLIN)
        if any(fd != wake_read for fd, _mask in poller.poll()):
            self.terminal_lost("hang-up on the tty")


def _guard_driver_output(driver: LinuxDriver, on_lost: Callable[[str], None]) -> None:
    """Wrap the stream Textual's writer thread writes to in a `TerminalOutput`.

    Textual 8 has no public way to give the Linux driver its output stream: it takes
    `sys.__stderr__` into the private `_file` in `__init__` and hands it to the writer thread
    when application mode starts. Wrapping it there is the one change that keeps that thread
    alive when the terminal is gone (see the module docstring).
    """
    driver._file = TerminalOutput(driver._file, on_lost)


def _silence(fds: tuple[int, ...]) -> None:
    """Point the dead terminal's output descriptors at /dev/null: later writes succeed unseen."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(null, fd)
    finally:
        os.close(null)


def _say(text: str) -> None:
    """One line on stderr, unbuffered: nothing is left in a buffer to fail at exit."""
    with contextlib.suppress(OSError):
        os.write(2, f"{text}\n".encode())


def _error_name(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    return errno.errorcode.get(number, type(exc).__name__) if number else type(exc).__name__
