"""`session-console serve`: engine and gateway without a terminal, until SIGTERM or SIGINT.

The first signal drains: new turns get 503 and /readyz turns 503, turns in flight get the
grace to finish, the store flushes, the process exits 0. A second signal exits at once (128 +
the signal): every acknowledged turn is already committed, and the OS drops the lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from engine.config import APP_KEYS_ENV, EngineConfig
from engine.engine import Engine
from engine.gateway.server import Gateway
from engine.runtime import serving_runner

log = logging.getLogger("session_console.serve")


async def serve(config: EngineConfig, listen: str | None = None) -> int:
    engine = Engine(config)
    await engine.open()
    gateway = Gateway(engine)
    try:
        address = await gateway.start(listen)
    except BaseException:
        await engine.aclose()
        raise
    print(f"session-console: serving http://{address} (data in {config.store.data_dir}; "
          f"app keys: ${APP_KEYS_ENV} or {config.store.app_keys_file})",
          file=sys.stderr, flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)  # as the console does: 143 for SIGTERM, 130 for SIGINT
        log.warning("%s: draining (grace %gs)", signal.Signals(signum).name,
                    config.gateway.drain_grace_s)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stopping.wait()
        cancelled = await engine.drain(config.gateway.drain_grace_s)
        await gateway.stop()
        await engine.aclose()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print(f"session-console: drained ({cancelled} turns cancelled after the grace), store "
          "flushed, exiting", file=sys.stderr, flush=True)
    return 0


def main(config: EngineConfig, listen: str | None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with serving_runner() as runner:
        return runner.run(serve(config, listen))
