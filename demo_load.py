"""Load generator script: simulated concurrent users against an engine.

`python demo_load.py` opens the console with load running and the HTTP gateway listening
(what `make demo` calls); `python demo_load.py --headless` prints a live stats table, writes
JSON/CSV reports and exits non-zero when a `--fail-on` condition is met, for CI;
`--target URL --app-key KEY` drives a running gateway over HTTP the same way. The generator
itself is the `loadgen` package; this script only chooses between the console and a headless
run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from loadgen.cli import (
    build_parser,
    engine_config_from_args,
    engine_data_dir,
    headless_main,
    options_from_args,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = not args.headless and args.target is None and sys.stdout.isatty()
    if not (args.headless or args.target or console):
        print("no terminal for the console; running headless", file=sys.stderr)
    try:
        options = options_from_args(args, headless=not console)
    except ValueError as exc:
        parser.error(str(exc))
    if not console:
        return headless_main(args, options)
    # Imported here, not at the top: a headless run does not pay for loading Textual.
    from console.app import run_console

    with engine_data_dir(args) as data_dir:
        run_console(engine_config_from_args(args, options, data_dir), options, listen=args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
