"""The gateway's transport sends a reply's head and body in one write, on real sockets."""

from __future__ import annotations

import asyncio
import socket

from engine.gateway.uvicorn_adapter import CoalescingTransport


class Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


async def connected() -> tuple[CoalescingTransport, socket.socket]:
    """A real transport on one end of a socket pair, wrapped; the other end read directly."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.connect_accepted_socket(Received, ours)
    assert protocol.transport is not None
    return CoalescingTransport(protocol.transport), theirs


def available(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def test_a_head_and_its_body_leave_together_at_once():
    transport, peer = await connected()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert available(peer) == b""  # held for the next write
    transport.write(b"{}")
    assert available(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    transport.close()
    peer.close()


async def test_a_write_alone_leaves_at_the_end_of_its_iteration():
    transport, peer = await connected()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    assert available(peer) == b""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert available(peer) == b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
    transport.write(b"event: delta\n\n")  # a later event: held only until its own iteration ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert available(peer) == b"event: delta\n\n"
    transport.close()
    peer.close()


async def test_close_sends_what_is_held_first():
    transport, peer = await connected()
    transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    transport.close()
    assert transport.is_closing()  # the wrapped transport's own answer
    await asyncio.sleep(0)  # the loop closes the socket
    await asyncio.sleep(0)
    peer.setblocking(True)
    peer.settimeout(5)
    received = b""
    while chunk := peer.recv(65536):
        received += chunk
    assert received == b"HTTP/1.1 408 Request Timeout\r\n\r\n"
    peer.close()


async def test_writes_after_the_connection_closed_are_dropped():
    transport, peer = await connected()
    transport.write(b"lost")
    transport.abort()  # delegated: the connection goes before the iteration ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    peer.setblocking(True)
    peer.settimeout(5)
    assert peer.recv(65536) == b""  # the peer sees the close, and nothing written after it
    peer.close()
