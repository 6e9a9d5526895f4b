"""`python -m console` / `session-console`: the console on an engine with default settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from console.app import DEFAULT_REFRESH_HZ, SessionConsole
from engine import EngineConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="session-console",
        description="Watch and operate an in-process session engine.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the engine keeps its state (default ./data)")
    parser.add_argument("--refresh-hz", type=float, default=DEFAULT_REFRESH_HZ,
                        help="snapshot refresh rate (+ and - change it live)")
    parser.add_argument("--load", action="store_true",
                        help="start the simulated users (demo_load) when the console opens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = EngineConfig() if args.data_dir is None else EngineConfig(data_dir=args.data_dir)
    SessionConsole(config, refresh_hz=args.refresh_hz, start_load=args.load).run()


if __name__ == "__main__":
    main()
