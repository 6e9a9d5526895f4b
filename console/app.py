"""The Session Console: a Textual app that runs the engine in-process and shows it live.

The app reads `engine.snapshot()` on a one-shot timer re-armed after each refresh (so a slow
refresh never overlaps the next), hands the plain snapshot to the visible view, and skips the
refresh while paused or while a modal (help, confirm, export, command palette) is open. The
engine and the gateway share this loop, so a tick never repaints the whole view in one slice:
the view shows the snapshot in steps, one per frame (`LiveScreen.show_in_steps`).
Screens read through `engine.operator` and post `console.messages` for every act, which the app
handles below in one place: the console is trusted and in-process, and never sees or shows a
session token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen, Screen
from textual.timer import Timer

from console.alert_lines import alert_lines, open_elsewhere
from console.cluster_sessions import listed_sessions
from console.export import write_export
from console.goto import ID_CHARS, NAMED_MAX, matching, typed_id
from console.load import STOP_GRACE_S, LoadController
from console.logs import NotifyHandler
from console.messages import (
    AcknowledgeAlerts,
    AcknowledgeAllAlerts,
    EndSession,
    OpenSession,
    RotateToken,
)
from console.screens.alerts import AlertsScreen, not_a_session
from console.screens.base import LiveScreen
from console.screens.dashboard import DashboardScreen
from console.screens.detail import SessionDetailScreen
from console.screens.load import LoadScreen
from console.screens.modals import (
    ConfirmScreen,
    ExportScreen,
    GotoScreen,
    HelpScreen,
    key_label,
)
from console.screens.users import UsersScreen
from console.terminal import TerminalGuard
from engine import Engine, EngineConfig, EngineSnapshot
from engine.errors import EngineError
from engine.gateway import Gateway, GatewayStats
from engine.operator import Operator
from engine.runtime import serving_runner
from widgets import VirtualTable

log = logging.getLogger(__name__)

REFRESH_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # Hz, stepped by + and -
DEFAULT_REFRESH_HZ = 2.0
STEPS_RETRY_S = 0.05  # a tick due while the last one is still being shown waits this long
# Between ticks the session views that turns made out of date are rebuilt a few at a time, so
# a tick's snapshot has few left to build in the one slice it takes (~50 us a view). While the
# last snapshot left live sessions unlisted (a big store, restored), each step lists more: about
# 7 us a restored session, so ~14 ms a step and 20,000 sessions a second besides the ticks'.
VIEWS_EVERY_S = 0.1
VIEWS_PER_STEP = 25
LIST_PER_STEP = 2_000


class SessionConsole(App[None]):
    """The console. Give it a config (it opens and closes the engine) or an open engine."""

    TITLE = "Session Console"
    CSS_PATH = Path(__file__).with_name("console.tcss")  # absolute: subclasses elsewhere share it
    MODES: ClassVar[dict[str, Any]] = {
        "dashboard": DashboardScreen,
        "alerts": AlertsScreen,
        "users": UsersScreen,
        "load": LoadScreen,
    }
    DEFAULT_MODE = "dashboard"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (40, "-tall")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("plus,equals_sign", "faster", "Faster", show=False),
        Binding("minus", "slower", "Slower", show=False),
        Binding("r", "refresh_now", "Refresh now", show=False),
        Binding("e", "export", "Export"),
        Binding("d", "switch_mode('dashboard')", "Dashboard", show=False),
        Binding("a", "switch_mode('alerts')", "Alerts"),
        Binding("u", "switch_mode('users')", "Users"),
        Binding("l", "switch_mode('load')", "Load"),
        Binding("o", "goto_session", "Open session by id", show=False),
        Binding("escape", "home", "Back to dashboard", show=False),
        Binding("colon", "command_palette", "Commands", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        engine: Engine | None = None,
        load_options: Any | None = None,
        refresh_hz: float = DEFAULT_REFRESH_HZ,
        export_dir: Path | None = None,
        start_load: bool | None = None,
        listen: str | None = None,
    ) -> None:
        super().__init__()
        self.terminal_guard = TerminalGuard.attach(self)  # terminal loss and signals quit cleanly
        self.owns_engine = engine is None  # then the app opens it on mount and closes it after
        self.engine = engine if engine is not None else Engine(config or EngineConfig())
        self.export_dir = export_dir or self.engine.config.store.data_dir / "exports"
        self.load = LoadController(self.engine, load_options)
        self.start_load = load_options is not None if start_load is None else start_load  # on mount
        self.refresh_hz = refresh_hz
        self.paused = False
        self.snapshot: EngineSnapshot | None = None
        self.refreshes = 0
        self._engine_ready = False
        self._refreshing = False
        self._steps: tuple[LiveScreen, Iterator[None]] | None = None  # a tick being shown
        self._generation = 0  # of refreshes: a replaced tick's steps stop
        self._timer: Timer | None = None
        self._refresh_failed = False
        self.last_export: Path | None = None
        # The HTTP gateway, when asked to listen: served from this app's loop, next to the engine.
        self._listen = listen
        self.gateway: Gateway | None = None
        self.gateway_stats: GatewayStats | None = None
        self._log_handler = NotifyHandler(self)  # logged warnings as notifications

    # -- lifecycle -------------------------------------------------------------------------------
    async def on_mount(self) -> None:
        self._log_handler.install()
        if self.owns_engine:
            await self.engine.open()
        self._engine_ready = True
        if self._listen is not None:
            await self._start_gateway(self._listen)
        if self.start_load and self.load.ensure() is not None:
            self.load.start()
        self.refresh_data(force=True)
        self._arm()
        self.set_interval(VIEWS_EVERY_S, self._refresh_views, name="views")

    async def _start_gateway(self, listen: str) -> None:
        gateway = Gateway(self.engine)
        try:
            address = await gateway.start(listen, next_free_port=True)
        except (OSError, EngineError) as exc:
            self.notify(f"gateway not started on {listen}: {exc}", severity="error", timeout=10)
            return
        self.gateway = gateway
        where = self.engine.config.store.app_keys_file
        created = "created " if gateway.key_file_created else ""
        self.notify(f"gateway on http://{address} · app keys: {created}{where}", timeout=8)

    async def on_unmount(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        await self.load.stop()
        if self.gateway is not None:
            if self.owns_engine:  # HTTP turns in flight finish, new ones get 503
                # SIGTERM/SIGINT give them the configured drain grace; q or a lost terminal 2 s
                grace = self.engine.config.gateway.drain_grace_s
                await self.engine.drain(
                    grace if self.terminal_guard.asked_to_drain else STOP_GRACE_S
                )
            await self.gateway.stop()
        if self.owns_engine:
            await self.engine.aclose()
        self._log_handler.remove()

    # -- the refresh loop ------------------------------------------------------------------------
    def _arm(self, delay: float | None = None) -> None:
        delay = 1 / self.refresh_hz if delay is None else delay
        self._timer = self.set_timer(delay, self._on_timer, name="refresh")

    async def _on_timer(self) -> None:
        if not self.screen_stack:  # shutting down: the screens are gone
            return
        retry = None
        try:
            if not self.refresh_data() and self.showing:
                retry = STEPS_RETRY_S  # the last tick is still being shown: soon, not a period
        except Exception as exc:  # keep the console alive; say once what went wrong
            self._failed(exc)
        finally:
            self._arm(retry)

    def _failed(self, exc: Exception) -> None:
        log.exception("console refresh failed")
        if not self._refresh_failed:
            self._refresh_failed = True
            self.notify(f"refresh failed: {type(exc).__name__}: {exc}", severity="error")

    def _refresh_views(self) -> None:
        """Rebuild a few out-of-date session views, unless no snapshot is coming."""
        if self._engine_ready and self.screen_stack and not (self.paused or self.modal_open):
            listing = self.snapshot is not None and self.snapshot.unlisted
            self.engine.refresh_views(LIST_PER_STEP if listing else VIEWS_PER_STEP)

    @property
    def showing(self) -> bool:
        """A tick's snapshot is still being shown, a step per frame."""
        return self._steps is not None

    @property
    def modal_open(self) -> bool:
        return isinstance(self.screen, ModalScreen)

    def refresh_data(self, force: bool = False) -> bool:
        """Take one snapshot and show it; False when skipped (paused, modal, busy, not ready).

        The console shares its loop with the engine (and the gateway), so a tick shows its
        snapshot in the view's steps, one per frame (`LiveScreen.show_in_steps`), and a tick
        that comes while the last one is still being shown is skipped. `force` refreshes even
        while paused and shows everything at once (`r`, and after the operator's own actions).
        """
        if self._refreshing or not self._engine_ready or not self.screen_stack:
            return False
        if not force and (self.paused or self.modal_open or self.showing):
            return False
        self._refreshing = True
        try:
            snapshot = self.snapshot = self.engine.snapshot()
            if self.gateway is not None:
                self.gateway_stats = self.gateway.stats()
            self.refreshes += 1
            self._steps = None
            self._generation += 1
            screen = self.screen
            if isinstance(screen, LiveScreen):
                screen.update_status()
                if force:
                    with self.batch_update():
                        screen.show(snapshot)
                else:  # the snapshot was this slice's work: the first step after a repaint
                    self._steps = (screen, screen.show_in_steps(snapshot))
                    self.call_after_refresh(self._next_step, self._generation)
        finally:
            self._refreshing = False
        return True

    def _next_step(self, generation: int) -> None:
        """Run the shown refresh's next step; the one after it waits for the repaint."""
        if self._steps is None or generation != self._generation:
            return  # finished, or replaced by a forced refresh
        screen, steps = self._steps
        if screen is not self.screen:  # another view came up: it shows the data itself
            self._steps = None
            return
        if any(table.painting for table in screen.tables):
            # A table still repaints its changed lines, a few a frame: one region per frame.
            self.call_after_refresh(self._next_step, generation)
            return
        try:
            next(steps)
        except StopIteration:
            self._steps = None
            return
        except Exception as exc:
            self._steps = None
            self._failed(exc)
            return
        self.call_after_refresh(self._next_step, generation)

    def status_text(self, view: str) -> str:
        state = "PAUSED (p resumes)" if self.paused else f"{self.refresh_hz:g} Hz"
        load = " · load running" if self.load.running else ""
        http = f" · http://{self.gateway.address}" if self.gateway is not None else ""
        return f"Session Console · {view} · {state}{load}{http} · ? help"

    def _update_status(self) -> None:
        self.sub_title = "paused" if self.paused else f"{self.refresh_hz:g} Hz"
        if isinstance(self.screen, LiveScreen):
            self.screen.update_status()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._update_status()
        self.notify("Paused: numbers are frozen." if self.paused else "Resumed.", timeout=2)

    def action_faster(self) -> None:
        self._set_rate(+1)

    def action_slower(self) -> None:
        self._set_rate(-1)

    def _set_rate(self, step: int) -> None:
        below = [i for i, hz in enumerate(REFRESH_RATES) if hz <= self.refresh_hz]
        index = below[-1] if below else 0
        index = max(0, min(len(REFRESH_RATES) - 1, index + step))
        self.refresh_hz = REFRESH_RATES[index]
        if self._timer is not None:
            self._timer.stop()
            self._arm()
        self._update_status()

    def action_refresh_now(self) -> None:
        self.refresh_data(force=True)

    # -- navigation ------------------------------------------------------------------------------
    def action_home(self) -> None:
        if self.current_mode != "dashboard":
            self.switch_mode("dashboard")

    def action_goto_session(self) -> None:
        if not isinstance(self.screen, ModalScreen):
            self.push_screen(GotoScreen(), self._goto)

    def _goto(self, text: str | None) -> None:
        """Open the session typed (see console/goto.py), or say why none opens."""
        typed = typed_id(text or "")
        if not typed:
            return
        if len(typed) >= ID_CHARS:  # a whole id: looked for on every worker
            self.run_worker(self._open_by_id(typed), group="operator")
            return
        listed = listed_sessions(self.snapshot)[1] if self.snapshot is not None else {}
        found = matching(typed, listed)
        if len(found) == 1:
            self.post_message(OpenSession(found[0]))
        elif not found:
            self.notify(f"No listed session starts with {typed!r}: type its whole id to look "
                        "for it on every worker.", severity="warning")
        else:
            more = "…" if len(found) > NAMED_MAX else ""
            self.notify(f"Several sessions start with {typed!r}: "
                        f"{', '.join(found[:NAMED_MAX])}{more}", severity="warning")

    async def _open_by_id(self, session_id: str) -> None:
        try:  # in a cluster, from the shared store if this worker never saw it
            found = await self.operator.locate(session_id)
        except EngineError as exc:
            self.notify(f"Could not look for session {session_id[:8]}…: {exc}", severity="error")
            return
        if found:
            self.post_message(OpenSession(session_id))
        else:
            self.notify(f"No live session {session_id!r}: it ended, or never was.",
                        severity="warning")

    async def on_open_session(self, message: OpenSession) -> None:
        session_id = message.session_id
        if not self.operator.session_exists(session_id):
            try:  # in a cluster, one served only by another worker yet
                found = await self.operator.locate(session_id)
            except EngineError as exc:
                self.notify(f"Could not look for session {session_id[:8]}…: {exc}",
                            severity="error")
                return
            if not found and message.only_if_live:
                self.notify(not_a_session(session_id), severity="warning")
                return
        self.push_screen(SessionDetailScreen(session_id))

    # -- operator actions: every screen's acts arrive here as messages ---------------------------
    @property
    def operator(self) -> Operator:
        return self.engine.operator

    def on_end_session(self, message: EndSession) -> None:
        session_id = message.session_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._end_session(session_id), group="operator")

        self.push_screen(
            ConfirmScreen(
                f"End session {session_id[:8]}…?\n"
                "Its token stops working and its conversation is destroyed."
            ),
            answered,
        )

    async def _end_session(self, session_id: str) -> None:
        try:
            if not self.operator.session_exists(session_id):  # listed from another worker
                await self.operator.locate(session_id)
        except EngineError as exc:
            self.notify(f"Could not look for session {session_id[:8]}…: {exc}", severity="error")
            return
        if await self.operator.end_session(session_id):
            self.notify(f"Session {session_id[:8]}… ended.")
        else:
            self.notify(f"Session {session_id[:8]}… had already ended.", severity="warning")
        self.refresh_data(force=True)

    async def on_rotate_token(self, message: RotateToken) -> None:
        if await self.operator.rotate_token(message.session_id):
            self.notify("Token rotated; the old one no longer works.", title="Session")
        else:
            self.notify("Session is gone; nothing to rotate.", severity="warning")
        self.refresh_data(force=True)

    def on_acknowledge_alerts(self, message: AcknowledgeAlerts) -> None:
        if message.worker is not None and message.worker != self.operator.worker_id:
            self.run_worker(
                self._acknowledge_on({message.worker: list(message.alert_ids)}), group="operator"
            )
            return
        done = [a for a in message.alert_ids if self.operator.acknowledge(a)]
        if len(done) == 1:
            self.notify(f"Alert {done[0]} acknowledged.")
        else:
            self.notify(f"Acknowledged {len(done)} alerts." if done else "No alert to acknowledge.")
        self.refresh_data(force=True)

    def on_acknowledge_all_alerts(self, message: AcknowledgeAllAlerts) -> None:
        """This engine's alerts at once; in a cluster, the other workers' open alerts listed
        here are asked of their workers."""
        done = self.operator.acknowledge_all(message.severity)  # type: ignore[arg-type]
        which = f"{message.severity} " if message.severity else ""
        elsewhere = {}
        if self.snapshot is not None:
            elsewhere = open_elsewhere(alert_lines(self.snapshot), message.severity)
        here = " here" if elsewhere else ""
        self.notify(f"Acknowledged {done} {which}alert(s){here}.")
        if elsewhere:
            self.run_worker(self._acknowledge_on(elsewhere), group="operator")
        self.refresh_data(force=True)

    async def _acknowledge_on(self, requests: dict[str, list[int]]) -> None:
        """Other workers acknowledge their own alerts: ask them (through Valkey/Redis)."""
        for worker, alert_ids in requests.items():
            try:
                await self.operator.acknowledge_on(worker, alert_ids)
            except EngineError as exc:
                self.notify(f"Could not ask {worker} to acknowledge: {exc}", severity="error")
                continue
            what = f"alert {alert_ids[0]}" if len(alert_ids) == 1 else f"{len(alert_ids)} alerts"
            self.notify(f"Asked {worker} to acknowledge {what}: it does within a heartbeat.")

    def action_export(self) -> None:
        screen = self.screen
        if not isinstance(screen, LiveScreen):
            return

        def chosen(fmt: str | None) -> None:
            if fmt:
                self.run_worker(self._export(screen, fmt), group="export")

        self.push_screen(ExportScreen(screen.EXPORT_NAME), chosen)

    async def _export(self, screen: LiveScreen, fmt: str) -> None:
        rows = screen.export_rows()
        at = self.snapshot.taken_at if self.snapshot is not None else self.engine.clock.now()
        try:
            path = await asyncio.to_thread(
                write_export, self.export_dir, screen.EXPORT_NAME, rows, fmt, at
            )
        except OSError as exc:
            self.notify(f"Export failed: {exc}", severity="error")
            return
        self.last_export = path
        self.notify(f"Exported {len(rows):,} {screen.EXPORT_NAME} rows to {path}", title="Export")

    # -- help and command palette: both from the Binding lists -----------------------------------
    def binding_sections(self, screen: Screen[Any]) -> list[tuple[str, list[tuple[str, str]]]]:
        def rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
            """One row per binding; the column sorts (`sort(...)`) folded into one row."""
            out: list[tuple[str, str]] = []
            sort_keys, sort_columns = [], []
            for b in bindings:
                if not isinstance(b, Binding) or not b.description:
                    continue
                if b.action.startswith("sort("):
                    sort_keys.append(key_label(b.key))
                    sort_columns.append(b.description.removeprefix("Sort by "))
                else:
                    out.append((key_label(b.key), b.description))
            if sort_keys:
                out.append((" ".join(sort_keys), "Sort by column, in key order: "
                            f"{', '.join(sort_columns)}; the same key again reverses; "
                            "or click a header"))
            return out

        sections = [(getattr(screen, "VIEW_NAME", "View"), rows(screen.BINDINGS))]
        if screen.query(VirtualTable):
            sections.append(("Table", rows(VirtualTable.BINDINGS)))
        sections.append(("Everywhere", rows(self.BINDINGS)))
        return sections

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        self.push_screen(
            HelpScreen(
                getattr(screen, "VIEW_NAME", "Console"),
                self.binding_sections(screen),
                filter_help=getattr(screen, "FILTER_HELP", ""),
            )
        )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        seen = set()
        for target, bindings in ((screen, screen.BINDINGS), (self, self.BINDINGS)):
            for binding in bindings:
                if not isinstance(binding, Binding) or not binding.description:
                    continue
                if binding.action in seen or binding.action in ("command_palette", "dismiss"):
                    continue
                seen.add(binding.action)
                yield SystemCommand(
                    binding.description,
                    f"key: {key_label(binding.key)}",
                    partial(self._run_command, target, binding.action),
                )

    def _run_command(self, target: Any, action: str) -> None:
        self.call_later(self.run_action, action, target)


def run_console(
    engine_config: EngineConfig | None = None,
    load_options: Any | None = None,
    listen: str | None = None,
    refresh_hz: float = DEFAULT_REFRESH_HZ,
    start_load: bool | None = None,
) -> None:
    """Open the console on a new engine (blocking); with `load_options`, load starts at once;
    with `listen` (HOST:PORT, the next free port if taken), the HTTP gateway serves it too.
    On the serving loop (uvloop), as `session-console serve`: the engine the console shows
    runs on the same loop as a headless one."""
    app = SessionConsole(engine_config, refresh_hz=refresh_hz, start_load=start_load,
                         load_options=load_options, listen=listen)
    with serving_runner() as runner:
        app.run(loop=runner.get_loop())
