"""``AsyncSocket.xxx_async(e) -> bool`` on real loopback sockets: when an op completes
synchronously (False, no event) and when it is pending (True, the event fires later on the
engine thread), and the .NET rules around them."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from ioladder.saea import (
    AsyncSocket,
    InvalidOperationError,
    ObjectDisposedError,
    SocketAsyncEventArgs,
    SocketAsyncOperation,
    SocketError,
)

from .conftest import HOST, accept_pair, wait_until

pytestmark = pytest.mark.timeout(30)

Op = SocketAsyncOperation


def test_accept_pending_then_synchronous(engine, listener, clients, completions):
    e = SocketAsyncEventArgs(completions)
    assert listener.accept_async(e) is True  # nobody is connecting yet
    client = clients(listener.local_endpoint[1])
    ((sender, op, error, nbytes, thread),) = completions.wait(1)
    assert (sender, op, error) == (listener, Op.Accept, SocketError.Success)
    assert thread == engine.thread.name
    assert e.accept_socket.remote_endpoint == client.getsockname()
    assert e.remote_endpoint == client.getsockname()
    e.accept_socket.close()
    # A connection already waiting in the backlog: AcceptEx completes at once, no event.
    client2 = clients(listener.local_endpoint[1])
    assert wait_until(lambda: _backlog_ready(listener), 2.0)
    e.accept_socket = None  # reuse the args, as .NET servers do
    assert listener.accept_async(e) is False
    assert e.socket_error is SocketError.Success
    assert e.accept_socket.remote_endpoint == client2.getsockname()
    time.sleep(0.05)
    assert len(completions.seen) == 1  # no event for the synchronous completion
    e.accept_socket.close()


def _backlog_ready(listener: AsyncSocket) -> bool:
    import select
    return bool(select.select([listener.socket], [], [], 0)[0])


def test_accept_rules(listener):
    e = SocketAsyncEventArgs()
    e.accept_socket = AsyncSocket(engine=listener.engine)
    with pytest.raises(ValueError, match="accept_socket"):
        listener.accept_async(e)
    e.accept_socket.close()
    e.accept_socket = None
    assert listener.accept_async(e) is True
    with pytest.raises(InvalidOperationError):
        listener.accept_async(e)  # one op per args at a time


def test_receive_pending_completes_on_the_engine_thread(engine, listener, clients,
                                                         completions):
    server, client = accept_pair(listener, clients)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(bytearray(64), 8, 32)
    assert server.receive_async(e) is True
    assert e.pending
    with pytest.raises(InvalidOperationError):
        server.receive_async(e)
    with pytest.raises(InvalidOperationError):
        e.set_buffer(0, 8)  # .NET: no buffer changes while an op is pending
    client.sendall(b"hello")
    ((sender, op, error, nbytes, thread),) = completions.wait(1)
    assert (sender, op, error, nbytes) == (server, Op.Receive, SocketError.Success, 5)
    assert thread == engine.thread.name != threading.current_thread().name
    assert e.received() == b"hello"
    assert bytes(e.buffer[8:13]) == b"hello"  # into the window, at the offset
    assert not e.pending
    server.close()


def test_receive_completes_synchronously_when_bytes_are_queued(listener, clients, completions):
    server, client = accept_pair(listener, clients)
    client.sendall(b"already here")
    time.sleep(0.05)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(bytearray(100))
    assert server.receive_async(e) is False
    assert (e.socket_error, e.bytes_transferred, e.received()) == (
        SocketError.Success, 12, b"already here")
    # The peer's orderly shutdown: 0 bytes with Success (synchronously, it is queued too).
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    assert server.receive_async(e) is False
    assert (e.socket_error, e.bytes_transferred) == (SocketError.Success, 0)
    time.sleep(0.05)
    assert completions.seen == []
    server.close()


def test_receive_reports_a_reset_as_connection_reset(listener, clients, completions):
    server, client = accept_pair(listener, clients)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(bytearray(16))
    assert server.receive_async(e) is True
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    (seen,) = completions.wait(1)
    assert seen[1:3] == (Op.Receive, SocketError.ConnectionReset)
    server.close()


def test_send_small_completes_synchronously(listener, clients, completions):
    server, client = accept_pair(listener, clients)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(b"0123456789", 2, 5)  # bytes are fine for sends
    assert server.send_async(e) is False
    assert (e.last_operation, e.socket_error, e.bytes_transferred) == (
        Op.Send, SocketError.Success, 5)
    assert client.recv(100) == b"23456"
    time.sleep(0.05)
    assert completions.seen == []
    server.close()


def test_large_send_is_pending_and_resubmitted_until_every_byte_is_sent(listener, clients,
                                                                       completions):
    server, client = accept_pair(listener, clients)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    payload = os.urandom(8 * 1024 * 1024)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(payload)
    assert server.send_async(e) is True  # far more than the socket buffers hold
    received = bytearray()
    while len(received) < len(payload):
        time.sleep(0.0002)  # a slow reader: the kernel takes the bytes in many short sends
        received += client.recv(65536)
    ((_, op, error, nbytes, _),) = completions.wait(1)
    assert (op, error, nbytes) == (Op.Send, SocketError.Success, len(payload))
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    server.close()


def test_send_to_a_reset_peer_fails_synchronously_or_later(listener, clients, completions):
    server, client = accept_pair(listener, clients)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    time.sleep(0.05)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(b"x" * 100)
    errors = set()
    for _ in range(3):  # the first send may still be accepted by the kernel
        if server.send_async(e):
            completions.wait(len(completions.seen) + 1)
        errors.add(e.socket_error)
    assert errors & {SocketError.ConnectionReset, SocketError.Shutdown}, errors
    server.close()


def test_connect_is_always_pending(engine, listener, completions):
    client = AsyncSocket(engine=engine)
    e = SocketAsyncEventArgs(completions)
    with pytest.raises(ValueError):
        client.connect_async(e)  # needs e.remote_endpoint
    e.remote_endpoint = listener.local_endpoint
    assert client.connect_async(e) is True
    ((sender, op, error, _, _),) = completions.wait(1)
    assert (sender, op, error) == (client, Op.Connect, SocketError.Success)
    assert client.connected and client.remote_endpoint == listener.local_endpoint
    client.close()


def test_connect_refused(engine, completions):
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    client = AsyncSocket(engine=engine)
    e = SocketAsyncEventArgs(completions)
    e.remote_endpoint = (HOST, port)
    assert client.connect_async(e) is True
    (seen,) = completions.wait(1)
    assert seen[1:3] == (Op.Connect, SocketError.ConnectionRefused)
    assert not client.connected
    client.close()


def test_disconnect_is_pending_and_the_peer_sees_eof(listener, clients, completions):
    server, client = accept_pair(listener, clients)
    receive = SocketAsyncEventArgs(completions)
    receive.set_buffer(bytearray(16))
    assert server.receive_async(receive) is True
    e = SocketAsyncEventArgs(completions)
    e.disconnect_reuse_socket = True
    with pytest.raises(NotImplementedError):
        server.disconnect_async(e)
    e.disconnect_reuse_socket = False
    assert server.disconnect_async(e) is True
    seen = completions.wait(2)
    by_op = {op: (error, nbytes) for _, op, error, nbytes, _ in seen}
    assert by_op[Op.Disconnect] == (SocketError.Success, 0)
    assert by_op[Op.Receive] == (SocketError.Success, 0)  # our own shutdown ends the receive
    client.settimeout(5.0)
    assert client.recv(16) == b""  # our FIN
    assert not server.connected
    server.close()


def test_close_aborts_pending_ops_then_closes_the_descriptor(engine, listener, clients,
                                                             completions):
    server, client = accept_pair(listener, clients)
    e = SocketAsyncEventArgs(completions)
    e.set_buffer(bytearray(16))
    assert server.receive_async(e) is True
    fd = server.socket.fileno()
    server.close()
    ((_, op, error, _, _),) = completions.wait(1)
    assert (op, error) == (Op.Receive, SocketError.OperationAborted)
    assert wait_until(lambda: server.socket.fileno() == -1, 2.0)
    assert not os.path.exists(f"/proc/self/fd/{fd}") or _not_that_socket(fd, client)
    with pytest.raises(ObjectDisposedError):
        server.receive_async(e)
    server.close()  # idempotent
    client.settimeout(5.0)
    assert client.recv(16) == b""


def _not_that_socket(fd: int, client: socket.socket) -> bool:
    # The number may have been reused by now; it must not be our old connection.
    try:
        peer = socket.socket(fileno=os.dup(fd))
    except OSError:
        return True
    try:
        return peer.getpeername() != client.getsockname()
    except OSError:
        return True
    finally:
        peer.close()


def test_ops_started_from_other_threads_complete_once_each(listener, clients):
    server, client = accept_pair(listener, clients)
    n = 200
    done = threading.Semaphore(0)
    args = [SocketAsyncEventArgs(lambda s, e: done.release()) for _ in range(n)]
    for e in args:
        e.set_buffer(b"x")
    pending = 0

    def start(chunk: list[SocketAsyncEventArgs]) -> None:
        nonlocal pending
        for e in chunk:
            if server.send_async(e):
                pending += 1

    threads = [threading.Thread(target=start, args=(args[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    for _ in range(pending):
        assert done.acquire(timeout=5.0)
    got = b""
    client.settimeout(5.0)
    while len(got) < n:
        got += client.recv(4096)
    assert got == b"x" * n
    assert all(e.socket_error is SocketError.Success and e.bytes_transferred == 1
               for e in args)
    server.close()


def test_a_handler_may_restart_the_same_args(listener, clients):
    """The usual receive loop: the args is free before its handler runs."""
    server, client = accept_pair(listener, clients)
    chunks: list[bytes] = []
    finished = threading.Event()

    def on_receive(sender: AsyncSocket, e: SocketAsyncEventArgs) -> None:
        while True:
            if e.socket_error is not SocketError.Success or e.bytes_transferred == 0:
                finished.set()
                return
            chunks.append(e.received())
            if sender.receive_async(e):
                return

    e = SocketAsyncEventArgs(on_receive)
    e.set_buffer(bytearray(7))
    if not server.receive_async(e):
        on_receive(server, e)
    payload = os.urandom(100_000)
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    assert finished.wait(5.0)
    assert b"".join(chunks) == payload
    server.close()


def test_connect_resolves_a_host_name_first(engine, listener, completions):
    client = AsyncSocket(engine=engine)
    e = SocketAsyncEventArgs(completions)
    e.remote_endpoint = ("localhost", listener.local_endpoint[1])
    assert client.connect_async(e) is True
    (seen,) = completions.wait(1)
    assert seen[1:3] == (Op.Connect, SocketError.Success)
    assert e.remote_endpoint == (HOST, listener.local_endpoint[1])
    client.close()
