"""`Gateway`: the HTTP front of one engine, in the engine's own loop (console or headless).

It loads the app keys, builds the app and serves it with uvicorn on a socket it binds itself,
so that port 0 or "the next free port" is known before the first request and can be shown.
"""

from __future__ import annotations

import logging

from engine.config import GatewaySettings
from engine.engine import Engine
from engine.errors import InvalidInput
from engine.gateway.app import GatewayApp
from engine.gateway.appkeys import AppKeys
from engine.gateway.stats import GatewayStats
from engine.gateway.uvicorn_adapter import EmbeddedServer, bind

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) -> (host, port); InvalidInput naming the value otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(
            f"listen address must be HOST:PORT, e.g. 127.0.0.1:8080 (got {listen!r})"
        )
    return host, int(port)


class Gateway:
    def __init__(self, engine: Engine, settings: GatewaySettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or engine.config.gateway
        self.address = ""  # HOST:PORT once started
        self.key_file_created = False
        self._app: GatewayApp | None = None
        self._server: EmbeddedServer | None = None

    async def start(self, listen: str | None = None, *, next_free_port: bool = False) -> str:
        """Listen (default: the settings' address) and return the HOST:PORT bound."""
        host, port = parse_listen(listen or self.settings.listen)
        keys, self.key_file_created = AppKeys.load(
            self.settings.app_keys, self.engine.config.store.app_keys_file
        )
        if self.key_file_created:
            log.warning("created app key file %s (mode 0600): give a key from it to your app",
                        self.engine.config.store.app_keys_file)
        sock = bind(host, port, next_free=next_free_port)
        server = EmbeddedServer(
            header_timeout_s=self.settings.header_timeout_s,
            keep_alive_s=self.settings.keep_alive_s,
            max_connections=self.settings.max_connections,
        )
        self._app = GatewayApp(self.engine, keys, self.settings)
        bound_host, bound_port = sock.getsockname()[:2]
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else \
            f"{bound_host}:{bound_port}"
        await server.start(self._app.asgi, sock)
        self._server = server
        log.info("gateway listening on http://%s (app keys from %s)", self.address, keys.source)
        return self.address

    def route_names(self) -> list[str]:
        """"METHOD /template" of every route served (stats and metrics use these names)."""
        return list(self._app.route_names) if self._app is not None else []

    def stats(self) -> GatewayStats | None:
        if self._app is None or self._server is None:
            return None
        return self._app.monitor.snapshot(
            self.address, self.engine.ready, self._server.connections
        )

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
