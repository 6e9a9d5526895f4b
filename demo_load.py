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
from dataclasses import replace
from typing import TYPE_CHECKING

from engine import EngineConfig
from loadgen.cli import (
    build_parser,
    engine_config_from_args,
    engine_data_dir,
    headless_main,
    options_from_args,
)

if TYPE_CHECKING:
    from loadgen.local_cluster import ClusterAccess


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = not args.headless and args.target is None and sys.stdout.isatty()
    if args.cluster is not None and not console:
        parser.error("--cluster opens the console as a worker: it needs a terminal, "
                     "without --headless or --target")
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
        config = engine_config_from_args(args, options, data_dir)
        if args.cluster is None:
            run_console(config, options, listen=args.listen)
            return 0
        from loadgen.local_cluster import local_cluster

        print(f"starting a local cluster of {args.cluster} workers under {data_dir / 'cluster'}"
              " (logs there)...", file=sys.stderr)
        with local_cluster(data_dir / "cluster", args.cluster) as cluster:
            run_console(as_cluster_worker(config, cluster), options, listen=args.listen)
    return 0


def as_cluster_worker(config: EngineConfig, cluster: ClusterAccess) -> EngineConfig:
    """The console's engine as one more worker of `cluster`, named "console"."""
    return replace(
        config,
        store=replace(
            config.store, database_url=cluster.database_url, master_keys=(cluster.master_key,)
        ),
        cluster=replace(config.cluster, redis_url=cluster.redis_url, worker_id="console"),
        gateway=replace(config.gateway, app_keys=(cluster.app_key,)),
    )


if __name__ == "__main__":
    sys.exit(main())
