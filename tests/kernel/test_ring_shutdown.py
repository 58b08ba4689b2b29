"""IORING_OP_SHUTDOWN and IORING_OP_CLOSE on sockets."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


def test_shutdown_wr_gives_the_peer_eof_after_the_data(ring, socks, collect):
    a, b = socks.pair()
    ring.prep_send(a.fileno(), b"last words", "send", link=True)
    ring.prep_shutdown(a.fileno(), uring.SHUT_WR, "shut")
    assert dict((c, r) for c, r, _ in collect(ring, 2)) == {"send": 10, "shut": 0}
    got = b""
    while True:
        chunk = b.recv(64)
        if not chunk:
            break
        got += chunk
    assert got == b"last words"


def test_close_op_closes_the_fd(ring, socks, collect):
    a, _ = socks.pair()
    fd = a.detach()  # the ring closes it now, not the socket object
    ring.prep_close(fd, "close")
    assert collect(ring, 1) == [("close", 0, 0)]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_close_of_a_bad_fd(ring, collect):
    s = socket.socket()
    fd = s.detach()
    os.close(fd)
    ring.prep_close(fd, "close")
    assert collect(ring, 1) == [("close", -errno.EBADF, 0)]


def test_bad_how_is_refused(ring, socks):
    a, _ = socks.pair()
    with pytest.raises(ValueError):
        ring.prep_shutdown(a.fileno(), 3, None)
