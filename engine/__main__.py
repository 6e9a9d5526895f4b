"""Engine maintenance commands: `python -m engine rotate-key [--data-dir DIR]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine import Engine, EngineConfig, StoreSettings, errors


async def rotate_key(data_dir: Path) -> int:
    async with Engine(EngineConfig.from_env(store=StoreSettings(data_dir=data_dir))) as engine:
        before = engine.keyring.fingerprints()[0]
        report = await engine.rotate_master_key()
        after = engine.keyring.fingerprints()[0]
    print(f"master key {before} -> {after}: {report.rewrapped} session keys re-wrapped")
    if report.failed:
        print(
            f"{len(report.failed)} session keys could not be re-wrapped and still need the old "
            "key, which stays in the key file: " + ", ".join(s[:8] for s in report.failed)
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser("rotate-key", help="re-wrap every session key under a new key")
    rotate.add_argument("--data-dir", type=Path, default=StoreSettings().data_dir)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(rotate_key(args.data_dir))
    except errors.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
