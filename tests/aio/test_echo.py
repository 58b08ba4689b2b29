"""TCP and UNIX echo on the loop: Protocols, BufferedProtocols and streams, both ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

import ioladder.aio as aio
from ioladder.aio._transports import SocketTransport

pytestmark = pytest.mark.timeout(60)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(100)  # smaller than what arrives: several get_buffer() per chunk

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))


async def _stream_handler(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _roundtrips(host, port, payloads, **kw):
    reader, writer = await asyncio.open_connection(host, port, **kw)
    try:
        for payload in payloads:
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("factory", [Echo, BufferedEcho], ids=["protocol", "buffered"])
def test_protocol_echo_server_many_clients(fds, run, factory):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        payloads = [b"x", b"hello" * 100, os.urandom(200_000)]
        await asyncio.gather(*(_roundtrips("127.0.0.1", port, payloads) for _ in range(20)))
        server.close()
        await server.wait_closed()

    run(main())


def test_streams_echo_server_and_transport_type(fds, run):
    async def main():
        server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert isinstance(writer.transport, SocketTransport)
        assert writer.get_extra_info("peername") == ("127.0.0.1", port)
        for size in (1, 1000, 1 << 20):
            data = os.urandom(size)
            writer.write(data)
            assert await reader.readexactly(size) == data
        writer.write_eof()  # half close: the server finishes, then closes
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_ipv6_echo(fds, run):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    async def main():
        try:
            server = await asyncio.start_server(_stream_handler, "::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        await _roundtrips("::1", server.sockets[0].getsockname()[1], [b"six"])
        server.close()
        await server.wait_closed()

    run(main())


def test_unix_socket_echo(fds, run, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        server = await asyncio.start_unix_server(_stream_handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        payload = os.urandom(300_000)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_bulk_both_directions_keeps_every_byte(fds, run):
    """20 MiB each way at once: short sends, full socket buffers and flow control all happen."""
    size = 20 << 20
    data = os.urandom(1 << 20) * 20

    async def main():
        server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])

        async def send():
            for i in range(0, size, 1 << 18):
                writer.write(data[i:i + (1 << 18)])
                await writer.drain()
            writer.write_eof()

        async def receive():
            h = hashlib.sha256()
            n = 0
            while chunk := await reader.read(1 << 16):
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()

        _, (n, digest) = await asyncio.gather(send(), receive())
        assert n == size and digest == hashlib.sha256(data).hexdigest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main(), timeout=60)


def test_callbacks_in_asyncio_order_and_transport_api(fds, run):
    events = []
    protocols = []

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport):
            protocols.append(self)
            events.append("made")
            self.transport = transport
            assert transport.get_extra_info("socket") is not None
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
            assert transport.is_reading() and not transport.is_closing()
            assert transport.can_write_eof()

        def data_received(self, data):
            events.append(("data", data))

        def eof_received(self):
            events.append("eof")
            return True  # keep the transport open: write after the peer's EOF

        def connection_lost(self, exc):
            events.append(("lost", exc))
            done.set_result(None)

    async def main():
        nonlocal done
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        writer.write_eof()
        while len(events) < 3:
            await asyncio.sleep(0.01)
        transport = protocols[0].transport
        transport.write(b"after eof")
        transport.close()
        assert transport.is_closing()
        assert await reader.read() == b"after eof"
        await done
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    done = None
    run(main())
    assert events == ["made", ("data", b"ping"), "eof", ("lost", None)]


def test_abort_resets_and_drops_buffered_data(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def connection_lost(self, exc):
                lost.set_result(exc)

        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        transport, proto = await loop.create_connection(P, *listener.getsockname())
        peer, _ = await loop.sock_accept(listener)
        transport.write(b"x" * (8 << 20))  # more than the socket buffers hold: the rest queues
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert await lost is None
        assert transport.get_write_buffer_size() == 0
        peer.close()
        listener.close()

    run(main())


def test_new_event_loop_kwargs_and_generic_transports(fds):
    loop = aio.new_event_loop(transports="proactor", entries=64, buffers=(16, 4096))
    try:
        async def main():
            server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            await _roundtrips("127.0.0.1", port, [b"generic", os.urandom(100_000)])
            server.close()
            await server.wait_closed()
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    with pytest.raises(ValueError):
        aio.new_event_loop(transports="nope")
