"""The gateway's transport sends what one loop iteration wrote as one write, on real sockets."""

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


async def test_writes_of_one_iteration_leave_together_at_its_end():
    transport, peer = await connected()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert available(peer) == b""  # nothing sent while the iteration runs
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert available(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    transport.write(b"next")  # a later iteration's writes leave at its own end
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert available(peer) == b"next"
    transport.close()
    peer.close()


async def test_close_sends_what_was_gathered_first():
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
