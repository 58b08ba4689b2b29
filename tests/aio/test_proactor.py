"""The proactor interface itself (what BaseProactorEventLoop is written against), cancellation of
kernel ops, and close() with ops in flight: every op completes before buffers/fds are released."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

import pytest

import ioladder.aio as aio
from ioladder.aio._proactor import OpFuture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_recv_recv_into_send_are_kernel_ops(fds, run, loop, pair):
    a, b = pair
    proactor = loop._proactor

    async def main():
        fut = proactor.recv(a, 100)
        assert isinstance(fut, OpFuture) and not fut.done()
        await asyncio.sleep(0.01)
        assert not fut.done()
        b.send(b"one")
        assert await fut == b"one"
        buf = bytearray(10)
        fut = proactor.recv_into(a, buf)
        b.send(b"two")
        assert await fut == 3 and buf[:3] == b"two"
        # a send larger than the socket buffers: partly now, the rest as a kernel op
        big = os.urandom(8 << 20)
        sent = proactor.send(a, big)
        got = bytearray()
        while len(got) < len(big):
            got += await proactor.recv(b, 1 << 20)
        assert await sent == len(big) and got == big

    run(main())


def test_accept_connect_and_sendfile(fds, run, loop, tmp_path):
    proactor = loop._proactor
    path = tmp_path / "f"
    path.write_bytes(b"0123456789" * 100_000)

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.socket()
        client.setblocking(False)
        with listener, client:
            accepted = proactor.accept(listener)
            await proactor.connect(client, listener.getsockname())
            conn, addr = await accepted
            with conn:
                assert addr == client.getsockname()
                with open(path, "rb") as f:
                    sending = proactor.sendfile(conn, f, 5, 500_000)
                    got = bytearray()
                    while len(got) < 500_000:
                        got += await proactor.recv(client, 1 << 16)
                    assert await sending == 500_000
                    assert got == path.read_bytes()[5:500_005]
            refused = socket.socket()
            refused.setblocking(False)
            with refused:
                port = listener.getsockname()[1]
                listener.close()
                with pytest.raises(ConnectionRefusedError):
                    await proactor.connect(refused, ("127.0.0.1", port))

    run(main())


def test_cancelling_a_pending_recv_cancels_the_kernel_op(fds, run, loop, pair):
    a, b = pair
    proactor = loop._proactor

    async def main():
        buf = bytearray(100)
        fut = proactor.recv_into(a, buf)
        await asyncio.sleep(0.01)
        ring = proactor._ring
        assert ring.inflight >= 1
        fut.cancel()
        await asyncio.sleep(0.01)
        assert not proactor._ops  # the op completed (-ECANCELED) and was forgotten
        buf.extend(b"resizable again")  # the ring no longer holds the buffer
        b.send(b"later")
        assert await proactor.recv(a, 100) == b"later"  # nothing was consumed by the old op

    run(main())


def test_sock_recv_cancel_loses_nothing(fds, run, pair):
    a, b = pair

    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(50):
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            b.send(b"d")
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = await loop.sock_recv(a, 100)
            assert got == b"d"

    run(main())


def test_cancelled_accept_loses_no_connection(fds, run, loop):
    proactor = loop._proactor

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        with listener:
            for _ in range(20):
                fut = proactor.accept(listener)
                await asyncio.sleep(0.005)  # armed in the kernel
                client = socket.create_connection(listener.getsockname())
                if _ % 2:
                    fut.cancel()  # before the next enter: the kernel cancels the accept
                else:
                    # after the enter that reaps the accept, before its completion is
                    # dispatched: the connection is taken, and kept for the next accept
                    loop.call_soon(fut.cancel)
                    await asyncio.sleep(0)
                conn, _ = await proactor.accept(listener)  # either way, the connection is here
                assert conn.getpeername() == client.getsockname()
                conn.close()
                client.close()

    run(main())


def test_close_waits_for_every_op_and_releases_buffers(fds, pair):
    a, b = pair
    loop = aio.new_event_loop()
    proactor = loop._proactor

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        server = await loop.create_server(asyncio.Protocol, sock=listener)
        transport, _ = await loop.create_connection(asyncio.Protocol,
                                                    *listener.getsockname())
        futs = [proactor.recv(a, 100) for _ in range(3)]
        futs.append(proactor.poll(a, 1))
        await asyncio.sleep(0.05)
        return server, transport, futs

    server, transport, futs = loop.run_until_complete(main())
    bufs = [op.buf for op in proactor._ops.values() if hasattr(op, "buf")]
    with pytest.raises(BufferError):
        bufs[0].extend(b"x")  # exported to the kernel op
    ring = proactor._ring
    assert ring.inflight >= 6  # recvs, poll, accept, the transports' multishot recvs
    transport.close()
    server.close()
    loop.close()
    assert ring.closed and all(f.cancelled() for f in futs)
    for buf in bufs:
        buf.extend(b"released")  # no export left: the ring let go of every buffer
    b.send(b"still here")  # nothing was read by the cancelled recvs
    assert a.recv(100) == b"still here"


def test_closing_a_loop_with_open_transports_leaves_no_fd_behind(fds):
    loop = aio.new_event_loop()

    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for _, writer in conns:
            writer.write(b"x" * 100_000)
        await asyncio.sleep(0.05)
        server.close()
        return conns

    conns = loop.run_until_complete(main())
    loop.close()
    for _, writer in conns:
        with pytest.warns(ResourceWarning):
            writer.transport.__del__()  # unclosed: asyncio warns and closes the socket
    del conns
    gc.collect()


def test_operations_after_close_raise(fds, pair):
    loop = aio.new_event_loop()
    proactor = loop._proactor
    loop.close()
    with pytest.raises(RuntimeError):
        proactor.recv(pair[0], 10)
    with pytest.raises(RuntimeError):
        loop.call_soon(print)
    loop.close()  # idempotent


def test_wait_for_handle_on_an_fd(fds, run, loop):
    proactor = loop._proactor

    async def main():
        r, w = os.pipe()
        try:
            assert await proactor.wait_for_handle(r, 0.05) is False
            os.write(w, b"!")
            assert await proactor.wait_for_handle(r, 5) is True
        finally:
            os.close(r)
            os.close(w)

    run(main())


def test_stdlib_proactor_loop_on_our_proactor(fds):
    """asyncio's BaseProactorEventLoop, unchanged, runs on the proactor (the interface alone)."""
    from asyncio import proactor_events

    from ioladder.aio._proactor import UringProactor

    class Loop(proactor_events.BaseProactorEventLoop):
        def run_forever(self):
            self._proactor.bind()
            self.call_soon(self._loop_self_reading)
            try:
                super().run_forever()
            finally:
                if self._self_reading_future is not None:
                    self._self_reading_future.cancel()
                    self._self_reading_future = None

    loop = Loop(UringProactor())
    try:
        async def main():
            async def handler(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1])
            writer.write(b"plain proactor loop\n")
            assert await reader.readline() == b"plain proactor loop\n"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        loop.close()
