"""The transport's C core (``ioladder/_transport.c``) keeps the Python contract on every rung.

The hot methods (``write``, ``_on_data``, ``_next_chunk``, ``_on_sent``) and their state live in
C; these cases pin what C could silently get wrong: the bytes of a mutable buffer are copied
before ``write`` returns (also on the saea rung's synchronous send), the object is still an
``asyncio.Transport`` and the garbage collector sees what it holds.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
import weakref

from .support import recv_exactly, recv_until_end


class _MutatingEcho(asyncio.Protocol):
    """Echo each message through a bytearray that is overwritten right after write()."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.scratch = bytearray()

    def data_received(self, data: bytes) -> None:
        self.scratch[:] = data
        self.transport.write(self.scratch)  # type: ignore[attr-defined]
        self.scratch[:] = b"X" * len(data)   # the peer must still get the original bytes


def test_write_copies_a_mutable_buffer_before_returning(server, connect):
    srv = server(_MutatingEcho)
    sock = connect(srv.port)
    for size in (1, 64, 4096, 300_000):
        payload = bytes((i * 7 + size) % 251 for i in range(size))
        sock.sendall(payload)
        assert recv_exactly(sock, size) == payload


class _Keeper(asyncio.Protocol):
    transports: list[asyncio.BaseTransport]
    lost: threading.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set()


def test_transport_is_an_asyncio_transport_and_collectable(server, connect):
    transports: list[asyncio.BaseTransport] = []
    lost = threading.Event()

    class Keeper(_Keeper):
        pass

    Keeper.transports = transports
    Keeper.lost = lost
    srv = server(Keeper)
    sock = connect(srv.port)
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    (transport,) = transports
    assert isinstance(transport, asyncio.Transport)
    protocol = transport.get_protocol()
    held = gc.get_referents(transport)
    assert any(obj is protocol for obj in held), "the GC does not see the transport's protocol"
    assert any(isinstance(obj, list) for obj in held), "the GC does not see the write buffer"
    sock.shutdown(socket.SHUT_WR)
    assert recv_exactly(sock, 0) == b""
    assert lost.wait(5.0)
    # The protocol keeps its transport: with the rung's references gone, both must be freed
    # (a reference the C core leaked would keep them alive).
    ref = weakref.ref(protocol)
    transports.clear()
    del transport, protocol, held
    srv.shutdown(timeout=5.0)
    for _ in range(3):
        gc.collect()
        if ref() is None:
            break
    assert ref() is None, "the transport/protocol cycle was not collected"


class _BigReply(asyncio.Protocol):
    """On the first byte, write one large reply in a single write() call."""

    SIZE = 8 * 1024 * 1024

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(bytes(i % 253 for i in range(256)) * (self.SIZE // 256))  # type: ignore[attr-defined]


def test_a_write_the_socket_takes_only_in_part_arrives_whole_and_in_order(server, connect):
    # write() may send at once (the send gate): the socket takes a part, the rest must follow
    # through the driver, in order, with nothing lost or repeated.
    srv = server(_BigReply)
    sock = connect(srv.port, rcvbuf=4096)
    sock.sendall(b"go")
    time.sleep(0.2)  # let the server's buffers fill while nothing is read
    got = recv_exactly(sock, _BigReply.SIZE)
    assert got == bytes(i % 253 for i in range(256)) * (_BigReply.SIZE // 256)


class _Faulty(asyncio.Protocol):
    """An application bug: data_received raises on b"boom", echoes anything else."""

    lost: list[BaseException | None]
    done: threading.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"boom" in data:
            raise ValueError("the application failed")
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.done.set()


def test_a_raising_data_received_aborts_that_connection_and_the_server_serves_on(
        server, connect):
    lost: list[BaseException | None] = []
    done = threading.Event()

    class Faulty(_Faulty):
        pass

    Faulty.lost, Faulty.done = lost, done
    srv = server(Faulty)
    bad = connect(srv.port)
    bad.sendall(b"ok?")
    assert recv_exactly(bad, 3) == b"ok?"
    bad.sendall(b"boom")
    data, _err = recv_until_end(bad)  # aborted: a reset (or, at worst, an EOF), never a hang
    assert data == b""
    assert done.wait(5.0)
    assert len(lost) == 1 and isinstance(lost[0], ValueError), lost
    good = connect(srv.port)
    good.sendall(b"still here")
    assert recv_exactly(good, 10) == b"still here"


class _Tagged(asyncio.Protocol):
    """Echo with a tag; no instance __dict__, so the C core may cache its data_received."""

    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"A" + data)  # type: ignore[attr-defined]


def test_data_received_is_looked_up_as_python_would(server, connect):
    """The C core calls data_received (and the rungs' receive path calls the transport's
    _on_data) through a method cache; what it calls must be what ``protocol.data_received``
    names at that moment: a class patched mid-connection, an instance attribute shadowing the
    class (a protocol with a __dict__)."""

    class Tagged(_Tagged):
        __slots__ = ()

    srv = server(Tagged)
    sock = connect(srv.port)
    for _ in range(3):  # warm: the call site has cached Tagged.data_received
        sock.sendall(b"x")
        assert recv_exactly(sock, 2) == b"Ax"
    Tagged.data_received = lambda self, data: self.transport.write(b"B" + data)  # type: ignore[method-assign]
    sock.sendall(b"y")
    assert recv_exactly(sock, 2) == b"By"

    class Shadowed(asyncio.Protocol):  # has a __dict__: an instance attribute wins
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.data_received = lambda data: transport.write(b"I" + data)  # type: ignore[attr-defined,method-assign]

        def data_received(self, data: bytes) -> None:
            raise AssertionError("the class method ran instead of the instance attribute")

    srv2 = server(Shadowed)
    sock2 = connect(srv2.port)
    for _ in range(3):
        sock2.sendall(b"z")
        assert recv_exactly(sock2, 2) == b"Iz"
    sock.sendall(b"w")  # and back on the first server: the cache follows the class again
    assert recv_exactly(sock, 2) == b"Bw"
