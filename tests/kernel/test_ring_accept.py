"""IORING_OP_ACCEPT: single shot, multishot (AcceptEx pre-posting), accept-reuse after cancel."""

from __future__ import annotations

import errno
import fcntl
import os
import socket

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


def test_accept_returns_a_nonblocking_cloexec_socket(ring, socks, collect):
    lst = socks.listener()
    ring.prep_accept(lst.fileno(), "acc")
    assert ring.wait(1, timeout=0.05) == []  # nobody connecting yet: stays pending
    client = socks.client(lst.getsockname())
    ((ctx, fd, flags),) = collect(ring, 1)
    assert ctx == "acc" and fd >= 0 and not flags & uring.CQE_F_MORE
    conn = socks.adopt_fd(fd)
    assert os.get_blocking(fd) is False
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert conn.getpeername() == client.getsockname()
    client.sendall(b"ping")
    conn.settimeout(5)
    assert conn.recv(4) == b"ping"


def test_accept_flags_can_be_overridden(ring, socks, collect):
    lst = socks.listener()
    ring.prep_accept(lst.fileno(), None, flags=0)
    socks.client(lst.getsockname())
    ((_, fd, _),) = collect(ring, 1)
    socks.adopt_fd(fd)
    assert os.get_blocking(fd) is True
    assert not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_multishot_accept_posts_one_completion_per_connection(ring, socks, collect):
    if not ring.has_multishot_accept:
        pytest.skip("multishot accept needs Linux 5.19")
    lst = socks.listener()
    op = ring.prep_accept(lst.fileno(), "many", multishot=True)
    clients = [socks.client(lst.getsockname()) for _ in range(5)]
    peers = set()
    for ctx, fd, flags in collect(ring, 5):
        assert ctx == "many" and fd >= 0 and flags & uring.CQE_F_MORE
        peers.add(socks.adopt_fd(fd).getpeername())
    assert peers == {c.getsockname() for c in clients}
    assert ring.inflight == 1  # still armed
    ring.prep_cancel(op, "cancel")
    done = {c[0]: c for c in collect(ring, 2)}
    assert done["cancel"][1] == 0
    assert done["many"][1] == -errno.ECANCELED and not done["many"][2] & uring.CQE_F_MORE
    assert ring.inflight == 0


def test_accept_reuse_after_cancel(ring, socks, collect):
    """Cancel a pending accept, re-arm on the same listener, and on a new listener on the same
    port after closing the first (liburing's accept-reuse)."""
    lst = socks.listener()
    port = lst.getsockname()[1]
    op = ring.prep_accept(lst.fileno(), "first")
    ring.prep_cancel(op, "cancel")
    done = {c[0]: c[1] for c in collect(ring, 2)}
    assert done == {"first": -errno.ECANCELED, "cancel": 0}

    ring.prep_accept(lst.fileno(), "second")
    socks.client(("127.0.0.1", port))
    ((ctx, fd, _),) = collect(ring, 1)
    assert ctx == "second" and fd >= 0
    socks.adopt_fd(fd)

    ring.prep_accept(lst.fileno(), "third")
    ring.prep_cancel_fd(lst.fileno(), "cancel-fd")
    done = {c[0]: c[1] for c in collect(ring, 2)}
    assert done == {"third": -errno.ECANCELED, "cancel-fd": 1}
    lst.close()

    lst2 = socks.listener(port=port)
    ring.prep_accept(lst2.fileno(), "fourth")
    socks.client(("127.0.0.1", port))
    ((ctx, fd, _),) = collect(ring, 1)
    assert ctx == "fourth" and fd >= 0
    socks.adopt_fd(fd)


def test_accept_on_a_non_listening_socket_fails_cleanly(ring, socks, collect):
    s = socks.keep(socket.socket())
    ring.prep_accept(s.fileno(), "bad")
    ((ctx, res, _),) = collect(ring, 1)
    assert ctx == "bad" and res == -errno.EINVAL


def test_accept_accepts_a_socket_object_as_fd(ring, socks, collect):
    lst = socks.listener()
    ring.prep_accept(lst, "obj")  # anything with fileno()
    socks.client(lst.getsockname())
    ((_, fd, _),) = collect(ring, 1)
    assert fd >= 0
    socks.adopt_fd(fd)
