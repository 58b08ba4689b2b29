"""What the C paths (ioladder/aio/_speedups.c) add that the behaviour tests cannot see.

References (transports collected, written bytes released), a raising data_received, and the
loop's C dispatch: a KeyboardInterrupt from one completion's callback must not lose the other
completions reaped with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import socket
import sys
import weakref

import pytest

import ioladder.aio as aio
from ioladder.aio._transports import SocketTransport, TransportCore

pytestmark = pytest.mark.timeout(60)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def test_the_transport_is_an_asyncio_transport_with_its_fields_by_name(fds, run):
    async def main():
        a, b = socket.socketpair()
        with b:
            transport, _ = await asyncio.get_running_loop().create_connection(
                asyncio.Protocol, sock=a)
            assert isinstance(transport, SocketTransport)
            assert isinstance(transport, TransportCore)
            assert isinstance(transport, asyncio.Transport)
            assert transport._fd == a.fileno() and transport._buffer == []
            assert transport._sending is None and transport._send_id is None
            with pytest.raises(TypeError):
                transport._rfast = 1  # the C flags take bools only
            transport.write(b"x")
            assert transport.get_write_buffer_size() == 1
            transport.close()
            await asyncio.sleep(0.01)
            assert b.recv(10) == b"x"

    run(main())


def test_many_connections_leave_no_transport_and_no_reference_behind(fds, run):
    payload = b"p" * 64 + bytes(range(64))  # one object written many times
    refs_before = sys.getrefcount(payload)
    transports: list[weakref.ref] = []

    class Tracked(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            transports.append(weakref.ref(transport))

    async def main():
        server = await asyncio.get_running_loop().create_server(Tracked, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(5):
                writer.write(payload)
                writer.write(payload)  # two writes in one iteration: joined into one send
                assert await reader.readexactly(2 * len(payload)) == 2 * payload
            writer.close()
            await writer.wait_closed()

        for _ in range(4):
            await asyncio.gather(*(client() for _ in range(50)))
        server.close()
        await server.wait_closed()

    run(main())
    gc.collect()
    assert len(transports) == 200
    assert [r for r in transports if r() is not None] == []
    assert sys.getrefcount(payload) == refs_before


def test_a_dropped_transport_cycle_is_collected(fds):
    """A transport and its protocol referencing each other, never closed: the garbage collector
    frees both once the loop is gone (the C fields are traversed)."""
    loop = aio.new_event_loop()
    a, b = socket.socketpair()

    async def main():
        transport, protocol = await loop.create_connection(Echo, sock=a)
        transport.write(b"queued")  # a field holding bytes, a flush registered
        return weakref.ref(transport), weakref.ref(protocol)

    tref, pref = loop.run_until_complete(main())
    loop.close()
    b.close()
    with pytest.warns(ResourceWarning):  # unclosed: asyncio's warning, and the socket closed
        gc.collect()
    assert tref() is None and pref() is None


def test_data_received_raising_aborts_that_connection_only(fds, run):
    errors = []
    lost = []

    class Picky(Echo):
        def data_received(self, data):
            if data.startswith(b"bad"):
                raise ValueError("bad data")
            super().data_received(data)

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        server = await loop.create_server(Picky, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"bad!")
        assert await r1.read(100) == b""  # aborted
        w2.write(b"good")
        assert await r2.readexactly(4) == b"good"
        for w in (w1, w2):
            w.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert len(errors) == 1
    assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(errors[0]["exception"], ValueError)
    assert errors[0]["exception"].__traceback__ is not None
    assert lost and isinstance(lost[0], ValueError)


def test_keyboard_interrupt_in_a_completion_keeps_the_others(fds):
    """data_received raising KeyboardInterrupt stops the loop; every other completion reaped in
    the same batch is delivered, once, when the loop runs again."""
    loop = aio.new_event_loop()
    got: dict[int, list[bytes]] = {}
    raised = []

    class P(asyncio.Protocol):
        def __init__(self, n):
            self.n = n

        def data_received(self, data):
            if data == b"interrupt" and not raised:
                raised.append(self.n)
                raise KeyboardInterrupt
            got.setdefault(self.n, []).append(data)

    pairs = [socket.socketpair() for _ in range(6)]
    try:
        transports = []
        for n, (a, _) in enumerate(pairs):
            tr, _ = loop.run_until_complete(loop.create_connection(lambda n=n: P(n), sock=a))
            transports.append(tr)
        loop.run_until_complete(asyncio.sleep(0.01))  # every recv armed
        for n, (_, b) in enumerate(pairs):
            b.send(b"interrupt" if n == 2 else b"data%d" % n)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(1))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert raised == [2]
        assert got == {n: [b"data%d" % n] for n in range(6) if n != 2}
        for tr in transports:
            tr.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_keyboard_interrupt_in_a_ready_callback_propagates_and_keeps_the_rest(fds):
    loop = aio.new_event_loop()
    ran = []

    def interrupt():
        raise KeyboardInterrupt

    try:
        loop.call_soon(ran.append, 1)
        loop.call_soon(interrupt)
        loop.call_soon(ran.append, 2)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(0.01))
        assert ran == [1]
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ran == [1, 2]
    finally:
        loop.close()


def test_call_soon_in_c_makes_ordinary_handles(fds):
    loop = aio.new_event_loop()
    ran = []
    try:
        assert type(loop.call_soon).__name__ == "CallSoon"
        h1 = loop.call_soon(ran.append, 1)
        h2 = loop.call_soon(ran.append, 2)
        loop.call_soon(lambda: ran.append(3), context=None)
        assert type(h1) is asyncio.Handle and h1._loop is loop and not h1.cancelled()
        h2.cancel()
        assert "cancelled" in repr(h2)
        ctx = contextvars.copy_context()
        var = contextvars.ContextVar("v")
        ctx.run(var.set, "in ctx")
        loop.call_soon(lambda: ran.append(var.get("none")), context=ctx)
        loop.call_soon(lambda: ran.append(var.get("none")))
        loop.run_until_complete(asyncio.sleep(0))
        assert ran == [1, 3, "in ctx", "none"]
        with pytest.raises(TypeError):
            loop.call_soon(print, other=1)
        with pytest.raises(TypeError):
            loop.call_soon()
        loop.set_debug(True)  # debug: the Python method, which checks the callback
        with pytest.raises(TypeError):
            loop.call_soon(1)
        loop.set_debug(False)
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    ref = weakref.ref(loop)
    del loop, h1, h2
    gc.collect()
    assert ref() is None  # the loop <-> call_soon cycle is collected


def test_a_subclass_overriding_call_soon_keeps_its_method(fds):
    calls = []

    class Traced(aio.UringEventLoop):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Traced()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        assert calls  # the task's first step was scheduled through the override
        h = loop.call_soon(print)
        assert type(h) is asyncio.Handle and calls[-1] is print
        h.cancel()
    finally:
        loop.close()
