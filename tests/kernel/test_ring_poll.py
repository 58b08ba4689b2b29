"""IORING_OP_POLL_ADD: one-shot and multishot readiness on sockets."""

from __future__ import annotations

import errno

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


def test_poll_in_fires_when_data_arrives(ring, socks, collect):
    a, b = socks.pair()
    ring.prep_poll_add(a.fileno(), uring.EPOLLIN, "in")
    assert ring.wait(1, timeout=0.05) == []
    b.sendall(b"x")
    ((ctx, mask, flags),) = collect(ring, 1)
    assert ctx == "in" and mask & uring.EPOLLIN and not flags & uring.CQE_F_MORE


def test_poll_out_is_ready_at_once(ring, socks, collect):
    a, _ = socks.pair()
    ring.prep_poll_add(a.fileno(), uring.EPOLLOUT, "out")
    ((_, mask, _),) = collect(ring, 1)
    assert mask & uring.EPOLLOUT


def test_poll_reports_peer_hangup(ring, socks, collect):
    a, b = socks.pair()
    ring.prep_poll_add(a.fileno(), uring.EPOLLRDHUP, "rdhup")
    b.shutdown(1)
    ((_, mask, _),) = collect(ring, 1)
    assert mask & uring.EPOLLRDHUP


def test_multishot_poll_stays_armed_until_cancelled(ring, socks, collect):
    a, b = socks.pair()
    op = ring.prep_poll_add(a.fileno(), uring.EPOLLIN, "ms", multishot=True)
    b.sendall(b"1")
    ((_, mask, flags),) = collect(ring, 1)
    assert mask & uring.EPOLLIN and flags & uring.CQE_F_MORE
    a.recv(1)
    b.sendall(b"2")
    ((_, mask, flags),) = collect(ring, 1)
    assert flags & uring.CQE_F_MORE
    ring.prep_cancel(op, "cancel")
    done = {ctx: (res, fl) for ctx, res, fl in collect(ring, 2)}
    assert done["ms"][0] == -errno.ECANCELED and not done["ms"][1] & uring.CQE_F_MORE
    assert ring.inflight == 0
