"""`session-console` / `python -m console`: the console, or `serve` for the headless gateway.

    session-console [--listen HOST:PORT] [--data-dir DIR]     the console (+ gateway if --listen)
    session-console serve [--listen HOST:PORT] [--data-dir DIR]   engine + gateway, no terminal

Both take `--database-url postgresql://...` (the store in PostgreSQL) and, with it,
`--redis-url redis://...` (a worker of a cluster sharing that Valkey/Redis).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from engine import ClusterSettings, EngineConfig, StoreSettings

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        parser = argparse.ArgumentParser(
            prog="session-console serve",
            description="Serve the engine over HTTP, headless; SIGTERM or SIGINT drains it.",
        )
        parser.add_argument("--listen", default=DEFAULT_LISTEN,
                            help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})")
        _data_dir(parser)
        args = parser.parse_args(argv[1:])
        args.command = "serve"
        return args
    from console.app import DEFAULT_REFRESH_HZ  # Textual only when the console runs

    parser = argparse.ArgumentParser(
        prog="session-console",
        description="Watch and operate an in-process session engine "
                    "(`session-console serve --help` for the headless gateway).",
    )
    _data_dir(parser)
    parser.add_argument("--listen", default=None, metavar="HOST:PORT",
                        help="also serve the HTTP gateway there (the next free port if taken)")
    parser.add_argument("--refresh-hz", type=float, default=DEFAULT_REFRESH_HZ,
                        help="snapshot refresh rate (+ and - change it live)")
    parser.add_argument("--load", action="store_true",
                        help="start the simulated users (demo_load) when the console opens")
    args = parser.parse_args(argv)
    args.command = "console"
    return args


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the engine keeps its state (default ./data)")
    parser.add_argument("--database-url", default=None, metavar="URL",
                        help="keep the store in PostgreSQL (postgresql://...) instead of "
                             "SQLite under the data dir; default $SESSION_CONSOLE_DATABASE_URL")
    parser.add_argument("--redis-url", default=None, metavar="URL",
                        help="run as a worker of a cluster sharing this Valkey/Redis "
                             "(needs --database-url); default $SESSION_CONSOLE_REDIS_URL")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    store = StoreSettings(database_url=args.database_url)
    if args.data_dir is not None:
        store = replace(store, data_dir=args.data_dir)
    config = EngineConfig.from_env(
        store=store, cluster=ClusterSettings(redis_url=args.redis_url)
    )
    if args.command == "serve":
        from engine.gateway.serve import main as serve

        sys.exit(serve(config, args.listen))
    from console.app import run_console

    run_console(config, listen=args.listen, refresh_hz=args.refresh_hz, start_load=args.load)


if __name__ == "__main__":
    main()
