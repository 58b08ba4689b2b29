"""``asyncio.start_server`` on the loop under hostile peers: resets with unread data, resets
before accept, a peer that never reads, a client process killed with connections open. Each
handler must end (with an error or EOF), the loop must report nothing unhandled, and no
descriptor may be left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_LINGER_RESET = struct.pack("ii", 1, 0)

HOLDER = """
import socket, sys, time
port = int(sys.argv[1])
socks = []
for i in range(100):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2:
        s.sendall(b"u" * 4096)
    socks.append(s)
print("ready", flush=True)
time.sleep(60)
"""


def _abuse(port: int) -> bytes:
    """Blocking clients, run in a worker thread while the loop serves."""
    for i in range(60):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        if i % 2 == 0:
            sock.sendall(b"r" * 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
    # A peer that never reads while the handler writes (and awaits drain), then resets.
    lazy = socket.socket()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(("127.0.0.1", port))
    lazy.sendall(b"w" * 65536)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10.0)
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    lazy.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as client:
        client.sendall(b"still served")
        return client.recv(100)


def test_streams_echo_survives_resets_a_lazy_reader_and_a_killed_client(fds, run, loop):
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: unhandled.append(ctx))
    started = ended = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal started, ended
        started += 1
        try:
            while data := await reader.read(65536):
                writer.write(data * 16)  # more than comes in: the lazy reader blocks drain
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            ended += 1

    async def main() -> bytes:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reply = await loop.run_in_executor(None, _abuse, port)
            for _ in range(500):
                if ended == started:
                    break
                await asyncio.sleep(0.01)
            return reply
        finally:
            server.close()
            await server.wait_closed()

    reply = run(main(), timeout=40.0)
    assert reply.startswith(b"still served")
    assert started >= 60 + 1 + 100 + 1 and ended == started, (started, ended)
    assert unhandled == []
