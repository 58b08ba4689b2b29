"""UDP endpoints and sendfile (loop.sendfile on a transport, sock_sendfile on a socket)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

pytestmark = pytest.mark.timeout(60)


class UDPEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.got.put_nowait((data, addr))

    def error_received(self, exc):
        self.got.put_nowait((exc, None))


def test_udp_server_and_clients(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=("127.0.0.1", 0))
        addr = server.get_extra_info("sockname")
        # connected client
        client, proto = await loop.create_datagram_endpoint(UDPClient, remote_addr=addr)
        for i in range(50):
            client.sendto(b"msg %d" % i)
            data, src = await proto.got.get()
            assert data == b"MSG %d" % i and src == addr
        client.close()
        # unconnected client
        client2, proto2 = await loop.create_datagram_endpoint(UDPClient,
                                                              local_addr=("127.0.0.1", 0))
        client2.sendto(b"big" * 20000, addr)  # 60 KB datagram
        data, _ = await proto2.got.get()
        assert data == b"BIG" * 20000
        client2.close()
        server.close()

    run(main())


def test_udp_sock_methods(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with a, b:
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            recv = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not recv.done()
            await loop.sock_sendto(a, b"dgram", b.getsockname())
            assert await recv == (b"dgram", a.getsockname())
            buf = bytearray(10)
            await loop.sock_sendto(a, b"into", b.getsockname())
            assert await loop.sock_recvfrom_into(b, buf) == (4, a.getsockname())
            assert buf[:4] == b"into"

    run(main())


@pytest.fixture
def payload(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 4321)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


async def _drain(reader, n):
    h = hashlib.sha256()
    got = 0
    while got < n:
        chunk = await reader.read(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    return got, h.hexdigest()


def test_loop_sendfile_on_transport_is_native(fds, run, payload):
    path, data = payload

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await _drain(reader, len(data) - 1000))
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       server.sockets[0].getsockname()[1])
        with open(path, "rb") as f:
            calls = []
            orig = loop._proactor.sendfile

            def spy(*args):
                calls.append(args[2:])
                return orig(*args)

            loop._proactor.sendfile = spy
            sent = await loop.sendfile(writer.transport, f, offset=1000)
            assert sent == len(data) - 1000
            assert f.tell() == len(data)
            assert calls == [(1000, len(data) - 1000)]  # one splice transfer, no fallback
        writer.write(b"")  # the transport is usable again
        assert await got == (len(data) - 1000, hashlib.sha256(data[1000:]).hexdigest())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_sock_sendfile_with_small_send_buffer(fds, run, payload):
    """The socket's send buffer fills many times: splice's EAGAIN -> POLLOUT -> drain path."""
    path, data = payload

    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        client.setblocking(False)
        with listener, client:
            await loop.sock_connect(client, listener.getsockname())
            peer, _ = await loop.sock_accept(listener)
            with peer, open(path, "rb") as f:
                reader_task = asyncio.ensure_future(_read_all(loop, peer, 500_000))
                sent = await loop.sock_sendfile(client, f, 10, 500_000)
                assert sent == 500_000 and f.tell() == 500_010
                assert await reader_task == data[10:500_010]

    async def _read_all(loop, sock, n):
        out = bytearray()
        while len(out) < n:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk
            out += chunk
        return bytes(out)

    run(main())


def test_sendfile_of_a_non_file_falls_back(fds, run):
    import io

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            f = io.BytesIO(b"in memory")  # no fileno(): asyncio's read+send fallback
            assert await loop.sock_sendfile(a, f, 3, 6) == 6
            assert await loop.sock_recv(b, 10) == b"memory"

    run(main())
