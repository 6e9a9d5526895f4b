"""The one file that knows uvicorn's insides: serving in the caller's loop, header deadlines.

- Serving embedded: `uvicorn.Server.serve()` installs its own SIGINT/SIGTERM handlers and
  re-raises the signal after shutting down (exit 143), which would take the console or the
  headless server down without draining. The Server's public steps (`startup`, `main_loop`,
  `shutdown`) are run instead, and the application keeps the signals.
- Slow clients: uvicorn bounds idle keep-alive connections but not a request's headers: a
  client dripping a header byte at a time holds its connection forever (slow loris). The
  protocol subclass below gives every request `header_timeout_s` from its first byte (or from
  the connection's start) to finish its headers, then answers 408 and closes.
- A request whose body has all arrived is marked in its scope (`body.BODY_RECEIVED`), so the
  app reads it without a timer.
- One send per response: uvicorn writes a response's head and its body in two `write`s, so
  two send() calls and two segments per reply; the protocol's transport holds a write until
  the next one or the end of the loop iteration (`CoalescingTransport`).
- Open connections for the console come from the server's state.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.gateway.body import BODY_RECEIVED

_TIMEOUT_BODY = (
    b'{"error":{"type":"request_timeout","message":"request headers not received in time"}}'
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY
PORT_TRIES = 20  # "the next free port": how many ports after the asked one are tried


class CoalescingTransport:
    """A transport that holds a write until the next one, so a reply's head and body leave in
    one send.

    uvicorn writes a response's head and its body back to back, in two `write`s: sent as they
    come, each is a send() and a segment the client is woken for. A write is held until the
    next write, which sends both at once, or until the end of the loop iteration it was made
    in (a streamed reply's head, an event of its own), never longer. Everything else is the
    wrapped transport's; `close` sends what is held first.
    """

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            asyncio.get_running_loop().call_soon(self._send)
        else:
            self._held = None
            self._transport.write(held + data)

    def _send(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._send()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers.

    One timer per connection, not one per request: a request only notes when its headers
    began (`headers_since`); the timer, when it fires, closes a connection whose headers are
    overdue, or re-arms for the current request's deadline, or stops while none is awaited
    (the next request re-arms it). Creating and cancelling a timer per request cost a few
    percent of the server's CPU at a thousand turns a second.
    """

    header_timeout_s: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
        self.header_deadline: asyncio.TimerHandle | None = None
        self.headers_since: float | None = None
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.headers_since is None:
            self._await_headers()

    def on_headers_complete(self) -> None:
        self.headers_since = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        self.headers_since = None
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self.headers_since = self.loop.time()
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_at(
                self.headers_since + self.header_timeout_s, self._check_headers
            )

    def _check_headers(self) -> None:
        self.header_deadline = None
        if self.headers_since is None:
            return
        deadline = self.headers_since + self.header_timeout_s
        if self.loop.time() < deadline:  # a later request's headers: its own deadline
            self.header_deadline = self.loop.call_at(deadline, self._check_headers)
        elif not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()


def protocol_with_header_timeout(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": timeout_s}
    )


def bind(host: str, port: int, *, next_free: bool) -> socket.socket:
    """A listening socket on host:port (port 0: any); with `next_free`, the first free port
    from `port` on, up to PORT_TRIES further."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for candidate in range(port, port + (PORT_TRIES if next_free and port else 1)):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last_error = exc
            continue
        sock.listen(2048)
        sock.setblocking(False)
        return sock
    assert last_error is not None
    raise last_error


class EmbeddedServer:
    """A uvicorn server run inside the running loop, without its signal handling."""

    def __init__(self, *, header_timeout_s: float, keep_alive_s: float,
                 max_connections: int) -> None:
        self._server = uvicorn.Server(uvicorn.Config(
            None,
            http=protocol_with_header_timeout(header_timeout_s),
            interface="asgi3",
            lifespan="off",
            limit_concurrency=max_connections,
            timeout_keep_alive=max(1, round(keep_alive_s)),
            timeout_graceful_shutdown=1,
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,  # a client's address is its socket's, not a header's claim
        ))
        self._main_loop: asyncio.Task[None] | None = None

    async def start(self, app: Any, sock: socket.socket) -> None:
        self._sock = sock
        self._server.config.app = app
        config = self._server.config
        config.load()
        self._server.lifespan = config.lifespan_class(config)  # what serve() would set
        await self._server.startup(sockets=[sock])
        self._main_loop = asyncio.create_task(self._server.main_loop(), name="uvicorn")

    @property
    def connections(self) -> int:
        return len(self._server.server_state.connections)

    async def stop(self) -> None:
        """Stop listening, let open responses finish (1 s), close the connections."""
        if self._main_loop is None:
            return
        self._server.should_exit = True
        await self._main_loop
        self._main_loop = None
        await self._server.shutdown(sockets=[self._sock])
