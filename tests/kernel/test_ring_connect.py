"""IORING_OP_CONNECT: (host, port) tuples for IPv4/IPv6, refused connections, links."""

from __future__ import annotations

import errno
import socket

import pytest

pytestmark = pytest.mark.timeout(30)


def test_connect_ipv4(ring, socks, collect):
    lst = socks.listener()
    c = socks.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    ring.prep_connect(c.fileno(), lst.getsockname(), "conn")
    assert collect(ring, 1) == [("conn", 0, 0)]
    peer, _ = lst.accept()
    socks.keep(peer)
    assert peer.getpeername() == c.getsockname()


def test_connect_refused(ring, socks, collect):
    lst = socks.listener()
    addr = lst.getsockname()
    lst.close()  # nothing listens on this port now
    c = socks.keep(socket.socket())
    ring.prep_connect(c.fileno(), addr, "refused")
    assert collect(ring, 1) == [("refused", -errno.ECONNREFUSED, 0)]


def test_connect_ipv6(ring, socks, collect):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        lst = socks.keep(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        lst.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    lst.listen(4)
    c = socks.keep(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    ring.prep_connect(c.fileno(), lst.getsockname(), "v6")  # 4-tuple with flowinfo, scope
    assert collect(ring, 1) == [("v6", 0, 0)]
    ring.prep_connect(socks.keep(socket.socket(socket.AF_INET6)).fileno(),
                      ("::1", lst.getsockname()[1]), "v6-2")
    assert collect(ring, 1) == [("v6-2", 0, 0)]


def test_connect_then_linked_send(ring, socks, collect):
    lst = socks.listener()
    c = socks.keep(socket.socket())
    ring.prep_connect(c.fileno(), lst.getsockname(), "conn", link=True)
    ring.prep_send(c.fileno(), b"after-connect", "send")
    done = dict((ctx, res) for ctx, res, _ in collect(ring, 2))
    assert done == {"conn": 0, "send": 13}
    peer, _ = lst.accept()
    socks.keep(peer).settimeout(5)
    assert peer.recv(64) == b"after-connect"


@pytest.mark.parametrize(
    "addr, exc",
    [
        (("localhost", 80), ValueError),  # names are never resolved inside a prep call
        (("127.0.0.1", 70000), OverflowError),
        (("127.0.0.1",), TypeError),
        ([b"127.0.0.1", 80], TypeError),
        ((b"127.0.0.1", 80), TypeError),
    ],
)
def test_bad_sockaddr_is_rejected_before_submission(ring, socks, addr, exc):
    c = socks.keep(socket.socket())
    with pytest.raises(exc):
        ring.prep_connect(c.fileno(), addr, None)
    assert ring.inflight == 0 and ring.pending == 0
