"""A run with no UI: live tables, a final summary, reports, and an exit code for CI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, TypedDict, Unpack

from engine import Engine, EngineConfig
from loadgen.http import GatewayTransport
from loadgen.options import LoadOptions
from loadgen.report import (
    FailCondition,
    build_report,
    engine_config_section,
    engine_section,
    render_engine,
    render_progress,
    render_stats,
    write_csv,
)
from loadgen.runner import LoadGenerator
from loadgen.transport import EngineTransport

INTERRUPT_GRACE_S = 2.0  # after Ctrl-C, calls still running this long are cancelled


class Outputs(TypedDict, total=False):
    """What a run prints and writes, passed through to `drive` (its defaults apply)."""

    stats_interval_s: float
    report: Path | None
    csv_prefix: str | None
    fail_on: Sequence[FailCondition]
    out: TextIO


class TargetView(Protocol):
    """What a headless run shows and reports about the engine it drives, besides its own stats."""

    def live_line(self) -> str | None:
        """A line under each live table, or None."""
        ...

    def final(self) -> tuple[str | None, dict[str, Any]]:
        """The summary's last line and the report's sections about the target, at the end."""
        ...


class EngineView:
    """An in-process engine: its counts under every table and in the report."""

    __slots__ = ("config", "engine")

    def __init__(self, engine: Engine, config: EngineConfig) -> None:
        self.engine = engine
        self.config = config

    def live_line(self) -> str:
        return render_engine(self.engine.snapshot())

    def final(self) -> tuple[str, dict[str, Any]]:
        self.engine.housekeep()  # sessions due by now count as expired in the final snapshot
        snap = self.engine.snapshot()
        return render_engine(snap), {
            "target": "in-process",
            "engine_config": engine_config_section(self.config),
            "engine": engine_section(snap),
        }


class GatewayView:
    """A gateway over HTTP: its engine's counts are its own (its /metrics); the report names it."""

    __slots__ = ("transport",)

    def __init__(self, transport: GatewayTransport) -> None:
        self.transport = transport

    def live_line(self) -> None:
        return None

    def final(self) -> tuple[str, dict[str, Any]]:
        return f"gateway: {self.transport.target}", {"target": self.transport.target}


async def run_headless(
    config: EngineConfig,
    options: LoadOptions,
    **outputs: Unpack[Outputs],
) -> int:
    """Run the load against an in-process engine with no UI; see `drive`."""
    async with Engine(config) as engine:
        return await drive(
            LoadGenerator(EngineTransport(engine), options), EngineView(engine, config),
            end_grace_s=config.llm.turn_timeout_s + 1.0, **outputs,
        )


async def run_headless_http(
    base_url: str,
    app_key: str,
    options: LoadOptions,
    *,
    request_timeout_s: float = 30.0,
    **outputs: Unpack[Outputs],
) -> int:
    """Run the load against a running gateway at `base_url` with no UI; see `drive`."""
    async with GatewayTransport(
        base_url, app_key, connections=peak_users(options), timeout_s=request_timeout_s
    ) as transport:
        return await drive(
            LoadGenerator(transport, options), GatewayView(transport),
            end_grace_s=request_timeout_s + 1.0, **outputs,
        )


def peak_users(options: LoadOptions) -> int:
    """The most users a run has at once: each has at most one request in flight."""
    ordinary = max([options.users, *(step.users for step in options.shape)])
    return ordinary + options.hogs + options.chatty + options.attackers


async def drive(
    generator: LoadGenerator,
    view: TargetView,
    *,
    end_grace_s: float,
    stats_interval_s: float = 2.0,
    report: Path | None = None,
    csv_prefix: str | None = None,
    fail_on: Sequence[FailCondition] = (),
    out: TextIO = sys.stdout,
) -> int:
    """Run the load to its end; 0 when fine, 1 when a fail-on condition is met or an attack won.

    Ctrl-C (or SIGTERM) stops gracefully and still prints and writes everything; a second one
    cancels users mid-call. At the end of the duration calls get `end_grace_s` to finish.
    """
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if interrupted.is_set():
            generator.cancel_users()
            return
        say(f"\nstopping: users finish their current call (up to {INTERRUPT_GRACE_S:g}s; "
            "Ctrl-C again to cancel them)")
        interrupted.set()

    installed = {}  # signal -> the handler to put back
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal)
            installed[sig] = previous
    try:
        generator.start()
        waits = {asyncio.ensure_future(generator.wait()),
                 asyncio.ensure_future(interrupted.wait())}
        try:
            while not (generator.finished or interrupted.is_set()):
                await asyncio.wait(waits, timeout=stats_interval_s or None,
                                   return_when=asyncio.FIRST_COMPLETED)
                if stats_interval_s and not (generator.finished or interrupted.is_set()):
                    stats = generator.stats()
                    line = view.live_line()
                    say(f"\n{render_progress(stats)}\n{render_stats(stats)}"
                        + (f"\n{line}" if line else ""))
        finally:
            for waiter in waits:
                waiter.cancel()
        # Ctrl-C: the operator wants out, so calls still running after a moment are
        # cancelled; at the end of the duration every call may finish, for exact counts.
        stats = await generator.stop(INTERRUPT_GRACE_S if interrupted.is_set() else end_grace_s)
        last_line, sections = view.final()
    finally:
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: a handler not set from Python; leave default
                signal.signal(sig, previous)
    met = [c for c in fail_on if c.met(stats)]
    exit_code = 1 if met or stats.attacks_succeeded else 0
    say(f"\n=== summary ({'interrupted' if interrupted.is_set() else 'completed'}) ===\n"
        f"{render_progress(stats)}\n{render_stats(stats, final=True)}"
        + (f"\n{last_line}" if last_line else ""))
    for condition in fail_on:
        verdict = "MET" if condition in met else "ok"
        say(f"fail-on {condition}: {condition.value(stats):.4g} -> {verdict}")
    if stats.attacks_succeeded:
        say(f"SECURITY: {stats.attacks_succeeded} attacks succeeded")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(
            build_report(stats, generator.options, fail_on, exit_code, sections=sections),
            indent=2,
        ), encoding="utf-8")
        say(f"report written to {report}")
    if csv_prefix is not None:
        say("csv written: " + ", ".join(str(p) for p in write_csv(csv_prefix, stats)))
    return exit_code
