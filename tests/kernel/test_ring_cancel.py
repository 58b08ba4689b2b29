"""IORING_OP_ASYNC_CANCEL: by op id, by fd, and stale ids that must not hit a newer op."""

from __future__ import annotations

import errno

import pytest

pytestmark = pytest.mark.timeout(30)


def test_cancel_a_pending_recv_by_id(ring, socks, collect):
    a, _ = socks.pair()
    op = ring.prep_recv(a.fileno(), bytearray(8), "recv")
    ring.submit()
    ring.prep_cancel(op, "cancel")
    done = {ctx: res for ctx, res, _ in collect(ring, 2)}
    assert done == {"recv": -errno.ECANCELED, "cancel": 0}
    assert ring.inflight == 0


def test_cancel_of_a_finished_op_is_enoent(ring, collect):
    op = ring.prep_nop("nop")
    assert collect(ring, 1) == [("nop", 0, 0)]
    ring.prep_cancel(op, "cancel")
    assert collect(ring, 1) == [("cancel", -errno.ENOENT, 0)]


def test_stale_id_does_not_cancel_the_op_reusing_its_slot(ring, socks, collect):
    a, b = socks.pair()
    stale = ring.prep_nop("old")
    assert collect(ring, 1) == [("old", 0, 0)]
    fresh = ring.prep_recv(a.fileno(), bytearray(8), "new")
    assert fresh & 0xFFFFFFFF == stale & 0xFFFFFFFF  # the same slot, reused ...
    assert fresh != stale  # ... under a new generation
    ring.prep_cancel(stale, "cancel-stale")
    assert collect(ring, 1) == [("cancel-stale", -errno.ENOENT, 0)]
    assert ring.inflight == 1  # the recv is untouched
    b.sendall(b"data")
    assert collect(ring, 1) == [("new", 4, 0)]


def test_cancel_fd_cancels_every_op_on_that_fd(ring, socks, collect):
    a, _ = socks.pair()
    c, _ = socks.pair()
    ring.prep_recv(a.fileno(), bytearray(8), "a1")
    ring.prep_poll_add(a.fileno(), 1, "a2")
    ring.prep_recv(c.fileno(), bytearray(8), "other")
    ring.submit()
    ring.prep_cancel_fd(a.fileno(), "cancel")
    done = {ctx: res for ctx, res, _ in collect(ring, 3)}
    assert done == {"a1": -errno.ECANCELED, "a2": -errno.ECANCELED, "cancel": 2}
    assert ring.inflight == 1
    ring.prep_cancel_fd(c.fileno(), "cancel-one", all=False)
    done = {ctx: res for ctx, res, _ in collect(ring, 2)}
    assert done == {"other": -errno.ECANCELED, "cancel-one": 0}


def test_cancel_fd_with_nothing_pending(ring, socks, collect):
    a, _ = socks.pair()
    ring.prep_cancel_fd(a.fileno(), "cancel")
    assert collect(ring, 1) == [("cancel", 0, 0)]  # ALL: the count, zero


def test_cancel_rejects_non_ids(ring):
    with pytest.raises(ValueError):
        ring.prep_cancel(0xFFFFFFFF, None)  # the internal slot index
    with pytest.raises(OverflowError):
        ring.prep_cancel(-1, None)
    with pytest.raises(TypeError):
        ring.prep_cancel("op", None)
