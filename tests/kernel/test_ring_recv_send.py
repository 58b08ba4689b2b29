"""IORING_OP_RECV / SEND / SENDMSG on loopback TCP: data, short sends, EOF, errors."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


def test_recv_into_a_bytearray(ring, socks, collect):
    a, b = socks.pair()
    buf = bytearray(16)
    ring.prep_recv(a.fileno(), buf, "r")
    assert ring.wait(1, timeout=0.05) == []
    b.sendall(b"hello")
    assert collect(ring, 1) == [("r", 5, 0)]
    assert buf[:5] == b"hello"


def test_recv_start_and_nbytes_select_a_window(ring, socks, collect):
    a, b = socks.pair()
    buf = bytearray(b"." * 10)
    b.sendall(b"abcdefgh")
    ring.prep_recv(a.fileno(), buf, "r", start=3, nbytes=4)
    ((ctx, res, flags),) = collect(ring, 1)
    assert (ctx, res) == ("r", 4)
    assert flags & uring.CQE_F_SOCK_NONEMPTY  # 4 more bytes wait in the socket
    assert buf == bytearray(b"...abcd...")
    with pytest.raises(ValueError):
        ring.prep_recv(a.fileno(), buf, "r", start=8, nbytes=4)
    with pytest.raises(ValueError):
        ring.prep_recv(a.fileno(), buf, "r", start=11)


def test_recv_needs_a_writable_buffer(ring, socks):
    a, _ = socks.pair()
    with pytest.raises(BufferError):
        ring.prep_recv(a.fileno(), b"immutable", None)
    with pytest.raises(TypeError):
        ring.prep_recv(a.fileno(), "str", None)
    assert ring.inflight == 0


def test_recv_eof_and_reset(ring, socks, collect):
    a, b = socks.pair()
    ring.prep_recv(a.fileno(), bytearray(8), "eof")
    b.shutdown(socket.SHUT_WR)
    assert [c[:2] for c in collect(ring, 1)] == [("eof", 0)]

    c, d = socks.pair()
    ring.prep_recv(c.fileno(), bytearray(8), "rst")
    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    d.close()  # linger 0: RST
    assert [c[:2] for c in collect(ring, 1)] == [("rst", -errno.ECONNRESET)]


def test_send_and_peer_receives(ring, socks, collect):
    a, b = socks.pair()
    ring.prep_send(a.fileno(), b"payload", "s")
    assert collect(ring, 1) == [("s", 7, 0)]
    assert b.recv(16) == b"payload"
    ring.prep_send(a.fileno(), memoryview(b"0123456789"), "s2", start=2, nbytes=3)
    assert collect(ring, 1) == [("s2", 3, 0)]
    assert b.recv(16) == b"234"


def test_send_to_a_closed_peer_is_epipe_not_sigpipe(ring, socks, collect):
    a, b = socks.pair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    b.close()
    results = []
    for _ in range(3):  # the first send may still succeed into the dead connection
        ring.prep_send(a.fileno(), b"x" * 1000, "s")
        results += [res for _, res, _ in collect(ring, 1)]
    assert results[-1] in (-errno.EPIPE, -errno.ECONNRESET)  # default MSG_NOSIGNAL


def test_large_payload_with_short_sends_resubmitted(ring, socks, collect):
    """The caller resubmits the rest of a short send; every byte arrives, in order."""
    a, b = socks.pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    payload = os.urandom(8 * 1024 * 1024)
    want = hashlib.sha256(payload).hexdigest()
    got = hashlib.sha256()
    received = [0]
    reader_go = threading.Event()

    def reader():
        reader_go.wait(10)
        while received[0] < len(payload):
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            got.update(chunk)
            received[0] += len(chunk)

    t = threading.Thread(target=reader)
    t.start()
    try:
        sent, sends, short = 0, 0, 0
        view = memoryview(payload)
        while sent < len(payload):
            ring.prep_send(a.fileno(), view, "s", start=sent)
            ((_, res, _),) = collect(ring, 1, timeout=20)
            assert res > 0, res
            if sent + res < len(payload):
                short += 1
            sent += res
            sends += 1
            reader_go.set()  # start reading only after the first send came back short
    finally:
        reader_go.set()
        t.join(30)
    assert short >= 1 and sends >= 2
    assert received[0] == len(payload)
    assert got.hexdigest() == want


def test_sendmsg_gathers_buffers(ring, socks, collect):
    a, b = socks.pair()
    parts = [b"head:", bytearray(b"body"), memoryview(b"-tail")]
    ring.prep_sendmsg(a.fileno(), parts, "m")
    assert collect(ring, 1) == [("m", 14, 0)]
    assert b.recv(64) == b"head:body-tail"
    with pytest.raises(ValueError):
        ring.prep_sendmsg(a.fileno(), [], None)
    with pytest.raises(TypeError):
        ring.prep_sendmsg(a.fileno(), [b"ok", "not bytes"], None)
    assert ring.inflight == 0


def test_many_connections_interleaved(ring, socks, collect):
    pairs = [socks.pair() for _ in range(20)]
    bufs = [bytearray(32) for _ in pairs]
    for i, ((a, _), buf) in enumerate(zip(pairs, bufs, strict=True)):
        ring.prep_recv(a.fileno(), buf, i)
    for i, (_, b) in enumerate(reversed(pairs)):
        b.sendall(f"msg-{len(pairs) - 1 - i}".encode())
    done = collect(ring, len(pairs))
    for i, res, _ in done:
        assert bytes(bufs[i][:res]) == f"msg-{i}".encode()
