"""Overlapped I/O through the completion port on real loopback sockets: AcceptEx, ConnectEx,
WSARecv, WSASend, CancelIoEx, failed ops reported the GetQueuedCompletionStatus way, and the
kernel's rule about the thread that submits."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time

import pytest

from ioladder.iocp import CompletionError, Op, Overlapped, WaitTimeout

pytestmark = pytest.mark.timeout(30)


def test_accept_recv_send_through_the_port(make_port, socks):
    port = make_port(1)
    lst = socks.listener()
    port.associate(lst, "listener")
    accept_ov = Overlapped()
    port.accept(lst, accept_ov)
    assert accept_ov.pending and accept_ov.kind is Op.ACCEPT

    client = socks.keep(socket.create_connection(lst.getsockname(), timeout=5))
    nbytes, key, ov = port.get_queued(timeout=5)
    assert (nbytes, key, ov) == (0, "listener", accept_ov)
    server = socks.keep(ov.result)
    assert isinstance(server, socket.socket)
    assert server.getpeername() == client.getsockname()

    # WSARecv: the buffer is posted first, the data comes later.
    port.associate(server, "conn")
    buf = bytearray(64)
    recv_ov = Overlapped()
    port.recv(server, buf, recv_ov)
    with pytest.raises(WaitTimeout):
        port.get_queued(timeout=0.05)
    client.sendall(b"hello")
    assert port.get_queued(timeout=5) == (5, "conn", recv_ov)
    assert bytes(buf[:5]) == b"hello" and recv_ov.nbytes == 5

    # WSASend
    send_ov = Overlapped()
    port.send(server, b"world!", send_ov)
    assert port.get_queued(timeout=5) == (6, "conn", send_ov)
    assert client.recv(64) == b"world!"

    # The peer's FIN: a receive completing with 0 bytes.
    port.recv(server, buf, recv_ov)
    client.shutdown(socket.SHUT_WR)
    assert port.get_queued(timeout=5) == (0, "conn", recv_ov)


def test_connect_through_the_port(make_port, socks):
    port = make_port(1)
    lst = socks.listener()
    sock = socks.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    port.associate(sock, 99)
    ov = Overlapped()
    port.connect(sock, lst.getsockname(), ov)
    assert port.get_queued(timeout=5) == (0, 99, ov)
    peer, addr = lst.accept()
    socks.keep(peer)
    assert addr == sock.getsockname()


def test_failed_op_raises_completion_error_carrying_the_packet(make_port, socks):
    port = make_port(1)
    lst = socks.listener()
    port_no = lst.getsockname()[1]
    lst.close()  # nobody listens there any more: the connect is refused
    sock = socks.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    port.associate(sock, "refused")
    ov = Overlapped()
    port.connect(sock, ("127.0.0.1", port_no), ov)
    with pytest.raises(CompletionError) as info:
        port.get_queued(timeout=5)
    exc = info.value
    assert exc.errno == errno.ECONNREFUSED
    assert isinstance(exc, OSError)
    assert exc.entry == (0, "refused", ov)
    assert ov.error == errno.ECONNREFUSED and not ov.pending


def test_peer_reset_fails_a_pending_receive(make_port, socks):
    port = make_port(1)
    client, server = socks.pair()
    port.associate(server, "conn")
    ov = Overlapped()
    port.recv(server, bytearray(16), ov)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(CompletionError) as info:
        port.get_queued(timeout=5)
    assert info.value.errno == errno.ECONNRESET
    assert info.value.overlapped is ov and info.value.key == "conn"


def test_cancel_completes_pending_ops_with_ecanceled(make_port, socks):
    port = make_port(1)
    _client, server = socks.pair()
    port.associate(server, "conn")
    one, two = Overlapped(), Overlapped()
    port.recv(server, bytearray(16), one)
    port.cancel(server, one)  # CancelIoEx(handle, lpOverlapped)
    with pytest.raises(CompletionError) as info:
        port.get_queued(timeout=5)
    assert info.value.errno == errno.ECANCELED and info.value.overlapped is one
    # Everything pending on the socket (CancelIoEx(handle, NULL)), timers by overlapped.
    port.recv(server, bytearray(16), one)
    port.send(server, b"x", two)  # completes by itself (a send buffer has room)
    port.cancel(server)
    outcomes = {}
    for _ in range(2):
        try:
            nbytes, _key, ov = port.get_queued(timeout=5)
            outcomes[ov] = nbytes
        except CompletionError as exc:
            outcomes[exc.overlapped] = -exc.errno
    assert outcomes == {one: -errno.ECANCELED, two: 1}
    timer = Overlapped()
    port.post_after(10.0, "timer", timer)
    port.cancel(None, timer)
    with pytest.raises(CompletionError) as info:
        port.get_queued(timeout=5)
    assert info.value.errno == errno.ECANCELED and info.value.key == "timer"
    # Cancelling what is not pending is not an error.
    port.cancel(None, timer)
    with pytest.raises(WaitTimeout):
        port.get_queued(timeout=0.05)


def test_an_overlapped_serves_one_op_at_a_time_and_sockets_must_be_associated(make_port, socks):
    port = make_port(1)
    _client, server = socks.pair()
    ov = Overlapped()
    with pytest.raises(ValueError, match="not associated"):
        port.recv(server, bytearray(8), ov)
    assert not ov.pending
    port.associate(server, "conn")
    port.recv(server, bytearray(8), ov)
    with pytest.raises(RuntimeError, match="pending"):
        port.recv(server, bytearray(8), ov)
    port.cancel(server)
    with pytest.raises(CompletionError):
        port.get_queued(timeout=5)
    assert not ov.pending
    # Reusable once its completion is in.
    port.send(server, b"ok", ov)
    assert port.get_queued(timeout=5) == (2, "conn", ov)
    port.disassociate(server)
    with pytest.raises(ValueError):
        port.send(server, b"no", ov)


def test_echo_served_by_a_worker_pool(make_port, socks):
    """The article's whole picture: pre-posted accepts, per-op contexts, workers taking
    completions from one queue for every socket, re-posting as they go."""
    port = make_port(2)
    lst = socks.listener()
    port.associate(lst, "listener")
    accepted: list[socket.socket] = []
    lock = threading.Lock()

    class Conn:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.buf = bytearray(4096)
            self.recv_ov = Overlapped()
            self.send_ov = Overlapped()

    def handler(nbytes: int, key: object, ov: Overlapped) -> None:
        if key == "listener":
            if ov.error:
                return
            conn = Conn(ov.result)
            with lock:
                accepted.append(conn.sock)
            port.accept(lst, ov)                      # keep the accept posted
            port.associate(conn.sock, conn)
            port.recv(conn.sock, conn.buf, conn.recv_ov)
        elif ov is key.recv_ov:
            if ov.error or nbytes == 0:
                return
            port.send(key.sock, bytes(key.buf[:nbytes]), key.send_ov)
        elif ov is key.send_ov:
            if not ov.error:
                port.recv(key.sock, key.buf, key.recv_ov)

    pool = port.start_workers(4, handler)
    try:
        for _ in range(4):
            ov = Overlapped()
            port.accept(lst, ov)  # from this thread: it outlives the ops
        clients = [socks.keep(socket.create_connection(lst.getsockname(), timeout=5))
                   for _ in range(8)]
        for round_ in range(20):
            for i, c in enumerate(clients):
                c.sendall(b"msg %d/%d" % (i, round_))
            for i, c in enumerate(clients):
                want = b"msg %d/%d" % (i, round_)
                got = b""
                while len(got) < len(want):
                    got += c.recv(64)
                assert got == want
    finally:
        for c in list(accepted):
            port.disassociate(c)
        port.cancel(lst)
        assert pool.stop(5.0)
        for c in accepted:
            c.close()


def test_ops_submitted_by_an_exiting_thread_are_cancelled_unless_a_worker_submits(
        make_port, socks):
    """The kernel's rule (not Windows'): an op dies with the thread whose io_uring_enter
    submitted it. ``submit=False`` leaves the submission to the next get_queued."""
    port = make_port(1)
    client, server = socks.pair()
    port.associate(server, "conn")
    doomed, kept = Overlapped(), Overlapped()
    t = threading.Thread(target=port.recv, args=(server, bytearray(8), doomed))
    t.start()
    t.join()
    time.sleep(0.2)  # the kernel cancels in the thread's exit, a little after join() returns
    client.sendall(b"1")
    with pytest.raises(CompletionError) as info:
        port.get_queued(timeout=5)
    assert info.value.overlapped is doomed and info.value.errno == errno.ECANCELED

    def hand_over() -> None:
        port.recv(server, bytearray(8), kept, submit=False)
    t = threading.Thread(target=hand_over)
    t.start()
    t.join()
    time.sleep(0.05)
    assert port.get_queued(timeout=5) == (1, "conn", kept)  # this thread submitted it
