"""IORING_OP_SPLICE: file -> pipe -> socket (TransmitFile), raw and through SpliceSendfile."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def payload_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of any chunk size
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    yield fd, data
    os.close(fd)


def _reader(sock, nbytes, out, delay=0.0):
    time.sleep(delay)  # let the sender fill the socket buffer first
    h = hashlib.sha256()
    n = 0
    while n < nbytes:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    out["n"], out["sha"] = n, h.hexdigest()


def test_raw_linked_splices_file_to_socket(ring, socks, collect, tmp_path):
    data = b"spliced through a pipe " * 100
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        a, b = socks.pair()
        ring.prep_splice(fd, 0, w, -1, len(data), "fill", uring.SPLICE_F_MOVE, link=True)
        ring.prep_splice(r, -1, a.fileno(), -1, len(data), "drain", uring.SPLICE_F_MOVE)
        done = {ctx: res for ctx, res, _ in collect(ring, 2)}
        assert done == {"fill": len(data), "drain": len(data)}
        got = b""
        while len(got) < len(data):
            got += b.recv(len(data))
        assert got == data
    finally:
        for x in (fd, r, w):
            os.close(x)


@pytest.mark.parametrize("nonblocking", [False, True], ids=["blocking", "nonblocking"])
def test_splice_sendfile_moves_a_large_file_exactly(ring, socks, collect, payload_file,
                                                    nonblocking):
    # Accepted sockets are non-blocking; splice into one fails with EAGAIN whenever the send
    # buffer is full, so the transfer must wait for writability rather than give up.
    fd, data = payload_file
    a, b = socks.pair()
    a.setblocking(not nonblocking)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # fill up long before 3 MiB
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    out: dict = {}
    t = threading.Thread(target=_reader, args=(b, len(data), out, 0.3))
    t.start()
    try:
        xfer = uring.SpliceSendfile(ring, fd, a.fileno(), ctx="file")
        assert xfer.count == len(data)
        assert not xfer.start()
        finished = False
        while not finished:
            for ctx, res, _ in collect(ring, 1, timeout=20):
                assert isinstance(ctx, uring.SpliceStep) and ctx.transfer is xfer
                finished = ctx.complete(res) or finished
        assert xfer.done and xfer.error == 0 and xfer.sent == len(data)
    finally:
        t.join(30)
    assert out["n"] == len(data)
    assert out["sha"] == hashlib.sha256(data).hexdigest()
    assert ring.inflight == 0


def test_splice_sendfile_offset_count_and_short_file(ring, socks, collect, payload_file):
    fd, data = payload_file
    a, b = socks.pair()
    b.settimeout(5)
    start = len(data) - 1000
    xfer = uring.SpliceSendfile(ring, fd, a.fileno(), offset=start, count=5000, chunk=4096)
    xfer.start()
    while not xfer.done:
        for ctx, res, _ in collect(ring, 1):
            ctx.complete(res)
    assert xfer.error == 0 and xfer.sent == 1000  # the file ended first
    got = b""
    while len(got) < 1000:
        got += b.recv(1000)
    assert got == data[start:]


def test_splice_sendfile_of_nothing_is_done_at_once(ring, socks, payload_file):
    fd, data = payload_file
    a, _ = socks.pair()
    xfer = uring.SpliceSendfile(ring, fd, a.fileno(), offset=len(data))
    assert xfer.start() is True and xfer.done and xfer.sent == 0
    assert ring.pending == 0
