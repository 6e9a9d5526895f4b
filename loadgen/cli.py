"""The command line shared by `demo_load.py`: flags, options from flags, the headless run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from engine import (
    EngineConfig,
    GatewaySettings,
    LLMSettings,
    SessionSettings,
    SimSettings,
    StoreSettings,
)
from engine.errors import EngineError
from loadgen.headless import run_headless, run_headless_http
from loadgen.http import AppKeyRefused, ClientTimeout, ConnectionFailed, UnexpectedReply
from loadgen.options import SCENARIOS, Distribution, LoadOptions, apply_faults, parse_mix
from loadgen.report import METRICS, FailCondition
from loadgen.shapes import Spike, parse_shape

HEADLESS_DURATION_S = 30.0  # a headless run with no --duration
APP_KEY_ENV = "SESSION_CONSOLE_APP_KEY"  # the app key for --target when --app-key is not given
SIM_FLAGS = ("spike", "error_rate", "timeout_rate", "latency_median", "latency_p99")

T = TypeVar("T")


def _typed(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type whose ValueError message reaches the user (exit code 2)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def build_parser() -> argparse.ArgumentParser:
    d = LoadOptions()
    p = argparse.ArgumentParser(
        prog="demo_load.py",
        description="Drive simulated concurrent users against an in-process engine, "
                    "in the console (default) or --headless, or against a running gateway "
                    "over HTTP (--target).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python demo_load.py                                   console with load\n"
               "  python demo_load.py --headless --users 200 --spawn-rate 20 --duration 60 \\\n"
               "      --report run.json --csv run --fail-on 'failure_ratio>0.05' "
               "--fail-on 'send:p99_ms>500'\n"
               "  python demo_load.py --headless --shape 0:10,20:100,40:20 --duration 60\n"
               "  python demo_load.py --target http://127.0.0.1:8080 --app-key KEY "
               "--users 50 --duration 60\n"
               "exit codes: 0 ok, 1 a --fail-on condition met or an attack succeeded, "
               "2 usage or configuration error",
    )
    g = p.add_argument_group("mode")
    g.add_argument("--headless", action="store_true",
                   help="no console: live stats table, final summary (default: console)")
    g.add_argument("--stats-interval", type=float, default=2.0, metavar="S",
                   help="seconds between live tables, 0 for none (default: %(default)s)")
    g.add_argument("--report", type=Path, metavar="FILE",
                   help="write the summary and per-second history as JSON (default: none)")
    g.add_argument("--csv", metavar="PREFIX",
                   help="write PREFIX_stats.csv, PREFIX_failures.csv, PREFIX_stats_history.csv "
                        "(default: none)")
    g.add_argument("--fail-on", action="append", default=[], metavar="COND",
                   type=_typed(FailCondition.parse),
                   help="exit 1 when [OPERATION:]METRIC(>|>=|<|<=)NUMBER holds at the end, e.g. "
                        f"failure_ratio>0.05 or send:p99_ms>500; metrics {', '.join(METRICS)}; "
                        "repeatable (default: none)")

    g.add_argument("--listen", default=GatewaySettings().listen, metavar="HOST:PORT",
                   help="with the console, also serve the HTTP gateway there, the next free "
                        "port if taken (default: %(default)s)")
    g.add_argument("--no-listen", dest="listen", action="store_const", const=None,
                   help="with the console, no HTTP gateway")
    g.add_argument("--target", metavar="URL",
                   help="drive a running gateway over HTTP (headless) instead of an in-process "
                        "engine, e.g. http://127.0.0.1:8080 (default: in-process)")
    g.add_argument("--app-key", metavar="KEY",
                   help=f"the gateway's app key for --target (default: ${APP_KEY_ENV})")
    g.add_argument("--cluster", type=int, metavar="N",
                   help="run a local cluster first (Valkey and PostgreSQL from the pip wheels "
                        "under DATA_DIR/cluster, N `serve` workers each with its own HTTP load) "
                        "and open the console as one more worker of it (make cluster-demo)")
    g.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="--target: a request without a reply after this fails "
                        "(default: %(default)s)")

    g = p.add_argument_group("load shape")
    g.add_argument("--users", type=int, default=d.users, metavar="N",
                   help="ordinary simulated users (default: %(default)s)")
    g.add_argument("--spawn-rate", type=float, default=d.spawn_rate, metavar="R",
                   help="users started/stopped per second (default: %(default)s)")
    g.add_argument("--duration", type=float, metavar="S",
                   help=f"run length incl. ramp-down; 0 = until Ctrl-C (default: "
                        f"{HEADLESS_DURATION_S:g} headless, until quit in the console)")
    g.add_argument("--shape", type=_typed(parse_shape), metavar="STEPS|FILE",
                   help="step load AT_S:USERS[:RATE],... or a file of such lines; replaces "
                        "--users (default: none)")
    g.add_argument("--seed", type=int, help="replay a run exactly (default: random, reported)")
    g.add_argument("--spike", type=_typed(Spike.parse), action="append", default=[],
                   metavar="AT:DURATION:FACTOR",
                   help="sim latency times FACTOR from AT s for DURATION s, e.g. 30:10:5; "
                        "repeatable (default: mixed has 60:15:4)")

    g = p.add_argument_group("user behaviour")
    g.add_argument("--think", type=_typed(Distribution.parse), default=d.think, metavar="DIST",
                   help="pause between actions: exp:MEAN, uniform:LO:HI, const:V "
                        "(default: %(default)s)")
    g.add_argument("--session-turns", type=_typed(Distribution.parse), default=d.session_turns,
                   metavar="DIST", help="turns before a session is done (default: %(default)s)")
    g.add_argument("--message-words", type=_typed(Distribution.parse), default=d.message_words,
                   metavar="DIST", help="words per message (default: %(default)s)")
    g.add_argument("--sessions-per-user", type=int, default=d.sessions_per_user, metavar="N",
                   help="each user keeps 1..N sessions open (default: %(default)s)")
    g.add_argument("--reuse", type=float, default=d.reuse_probability, metavar="P",
                   help="chance to continue the last session after a pause "
                        "(default: %(default)s)")
    g.add_argument("--abandon", type=float, default=d.abandon_probability, metavar="P",
                   help="chance to walk away from a finished session instead of ending it, "
                        "left to idle expiry (default: %(default)s)")
    g.add_argument("--history-rate", type=float, default=d.history_probability, metavar="P",
                   help="chance an action reads history (default: %(default)s)")
    g.add_argument("--rotate-rate", type=float, default=d.rotate_probability, metavar="P",
                   help="chance an action rotates the token (default: %(default)s)")
    g.add_argument("--agent-mix", type=_typed(parse_mix), default=d.agent_mix, metavar="MIX",
                   help="agent type weights (default: assistant=6,research=3,support=1)")
    g.add_argument("--tier-mix", type=_typed(parse_mix), default=d.tier_mix, metavar="MIX",
                   help="user tier weights (default: free=6,pro=3,enterprise=1)")

    g = p.add_argument_group("defences and faults (--scenario sets defaults, flags override)")
    g.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed",
                   help="mixed: hogs 2, chatty 2, attacker 1, model faults; steady: ordinary "
                        "users only (default: %(default)s)")
    g.add_argument("--hogs", type=int, metavar="N",
                   help="users that exceed their token quota (mixed: 2, steady: 0)")
    g.add_argument("--chatty", type=int, metavar="N",
                   help="users that burst past rate limits (mixed: 2, steady: 0)")
    g.add_argument("--attackers", type=int, metavar="N",
                   help="users presenting wrong tokens and others' session ids "
                        "(mixed: 1, steady: 0)")
    g.add_argument("--attack-rate", type=float, default=d.attack_rate, metavar="R",
                   help="attempts per second per attacker (default: %(default)s)")
    g.add_argument("--error-rate", type=float, metavar="P",
                   help="sim model error rate (mixed: 0.02, steady: engine default 0)")
    g.add_argument("--timeout-rate", type=float, metavar="P",
                   help="sim model timeout rate (mixed: 0.005, steady: 0)")
    g.add_argument("--latency-median", type=float, metavar="S",
                   help="sim model median latency (default: 0.2)")
    g.add_argument("--latency-p99", type=float, metavar="S",
                   help="sim model p99 latency: the spikes (mixed: 2.5, steady: 1.5)")

    g = p.add_argument_group("engine")
    g.add_argument("--llm", choices=("sim", "openai"), default="sim",
                   help="model backend; openai reads --base-url/--api-key or OPENAI_BASE_URL/"
                        "OPENAI_API_KEY (default: %(default)s)")
    g.add_argument("--base-url", help="OpenAI-compatible endpoint (default: environment)")
    g.add_argument("--api-key", help="API key (default: environment)")
    g.add_argument("--model", help="model name for --llm openai (default: OPENAI_MODEL, else "
                                   "each agent type's own)")
    g.add_argument("--data-dir", type=Path,
                   help="engine data directory (default: a temporary one, removed at exit)")
    g.add_argument("--idle-timeout", type=float, default=20.0, metavar="S",
                   help="engine idle expiry, short so abandoned sessions expire during a demo "
                        "(default: %(default)s)")
    g.add_argument("--turn-timeout", type=float, default=10.0, metavar="S",
                   help="engine bound on one model call (default: %(default)s)")
    return p


def options_from_args(args: argparse.Namespace, *, headless: bool) -> LoadOptions:
    """LoadOptions from parsed flags: scenario defaults first, explicit flags over them."""
    scenario = dict(SCENARIOS[args.scenario])
    for name in ("hogs", "chatty", "attackers"):
        if getattr(args, name) is not None:
            scenario[name] = getattr(args, name)
    sim_flags = {
        "error_rate": args.error_rate, "timeout_rate": args.timeout_rate,
        "median_latency_s": args.latency_median, "p99_latency_s": args.latency_p99,
    }
    sim_flags = {k: v for k, v in sim_flags.items() if v is not None}
    if sim_flags:
        scenario["faults"] = dataclasses.replace(scenario["faults"] or SimSettings(), **sim_flags)
    if args.spike:
        scenario["spikes"] = tuple(args.spike)
    if args.target is not None:
        given = [f"--{name.replace('_', '-')}" for name in SIM_FLAGS if getattr(args, name)]
        if given:
            raise ValueError(f"{', '.join(given)} set the in-process sim model; a gateway's "
                             "model is its own (drop them, or drop --target)")
        scenario["faults"], scenario["spikes"] = None, ()
    if args.duration is None:
        duration = HEADLESS_DURATION_S if headless else None
    else:
        duration = args.duration or None
    return LoadOptions(
        users=args.users, spawn_rate=args.spawn_rate, duration_s=duration,
        shape=args.shape or (), seed=args.seed, think=args.think,
        session_turns=args.session_turns, message_words=args.message_words,
        sessions_per_user=args.sessions_per_user, reuse_probability=args.reuse,
        abandon_probability=args.abandon, history_probability=args.history_rate,
        rotate_probability=args.rotate_rate, agent_mix=args.agent_mix, tier_mix=args.tier_mix,
        attack_rate=args.attack_rate, **scenario,
    )


def engine_config_from_args(
    args: argparse.Namespace, options: LoadOptions, data_dir: Path
) -> EngineConfig:
    config = EngineConfig.from_env(
        store=StoreSettings(data_dir=data_dir),
        llm=LLMSettings(
            backend=args.llm, base_url=args.base_url, api_key=args.api_key, model=args.model,
            turn_timeout_s=args.turn_timeout,
        ),
        sessions=SessionSettings(idle_timeout_s=args.idle_timeout),
    )
    return apply_faults(config, options)


@contextlib.contextmanager
def engine_data_dir(args: argparse.Namespace) -> Iterator[Path]:
    """--data-dir, or a temporary directory removed when the run ends."""
    if args.data_dir is not None:
        yield args.data_dir
        return
    with tempfile.TemporaryDirectory(prefix="demo-load-") as tmp:
        yield Path(tmp)


def headless_main(args: argparse.Namespace, options: LoadOptions) -> int:
    """The headless run the flags describe; its exit code (2 on a configuration error)."""
    if args.target is not None:
        return _gateway_main(args, options)
    with engine_data_dir(args) as data_dir:
        config = engine_config_from_args(args, options, data_dir)
        try:
            return asyncio.run(run_headless(
                config, options, stats_interval_s=args.stats_interval, report=args.report,
                csv_prefix=args.csv, fail_on=args.fail_on,
            ))
        except (EngineError, ValueError) as exc:
            print(f"demo_load: {exc}", file=sys.stderr)
            return 2


def _gateway_main(args: argparse.Namespace, options: LoadOptions) -> int:
    app_key = args.app_key or os.environ.get(APP_KEY_ENV)
    if not app_key:
        print(f"demo_load: --target needs the gateway's app key: --app-key KEY or "
              f"${APP_KEY_ENV}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_headless_http(
            args.target, app_key, options, request_timeout_s=args.request_timeout,
            stats_interval_s=args.stats_interval, report=args.report, csv_prefix=args.csv,
            fail_on=args.fail_on,
        ))
    except (EngineError, ValueError) as exc:
        print(f"demo_load: {exc}", file=sys.stderr)
        return 2
    except (AppKeyRefused, ConnectionFailed, ClientTimeout, UnexpectedReply) as exc:
        print(f"demo_load: cannot use the gateway at {args.target}: {exc}", file=sys.stderr)
        return 2
