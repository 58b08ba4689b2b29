"""IORING_OP_LINK_TIMEOUT and IORING_OP_TIMEOUT; IOSQE_IO_LINK chains and their failure."""

from __future__ import annotations

import errno
import time

import pytest

pytestmark = pytest.mark.timeout(30)


def test_link_timeout_cancels_a_recv_that_gets_no_data(ring, socks, collect):
    a, _ = socks.pair()
    t0 = time.monotonic()
    ring.prep_recv(a.fileno(), bytearray(8), "recv", link=True)
    ring.prep_link_timeout(0.05, "lt")
    done = {ctx: res for ctx, res, _ in collect(ring, 2)}
    elapsed = time.monotonic() - t0
    assert done == {"recv": -errno.ECANCELED, "lt": -errno.ETIME}
    assert 0.04 <= elapsed < 2
    assert ring.inflight == 0


def test_link_timeout_is_cancelled_when_the_op_completes(ring, socks, collect):
    a, b = socks.pair()
    b.sendall(b"ready")
    ring.prep_recv(a.fileno(), bytearray(8), "recv", link=True)
    ring.prep_link_timeout(5, "lt")
    done = {ctx: res for ctx, res, _ in collect(ring, 2)}
    assert done == {"recv": 5, "lt": -errno.ECANCELED}


def test_link_timeout_must_follow_a_linked_op(ring):
    with pytest.raises(ValueError, match="link=True"):
        ring.prep_link_timeout(1, None)
    ring.prep_nop("plain")
    with pytest.raises(ValueError, match="link=True"):
        ring.prep_link_timeout(1, None)
    assert ring.inflight == 1


def test_timeout_fires_with_etime(ring, collect):
    t0 = time.monotonic()
    ring.prep_timeout(0.05, "t")
    assert collect(ring, 1) == [("t", -errno.ETIME, 0)]
    assert 0.04 <= time.monotonic() - t0 < 2


def test_timeout_with_count_completes_after_that_many_completions(ring, collect):
    ring.prep_timeout(10, "t", count=2)
    ring.prep_nop("a")
    ring.prep_nop("b")
    done = {ctx: res for ctx, res, _ in collect(ring, 3)}
    assert done == {"t": 0, "a": 0, "b": 0}


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_bad_durations_are_refused(ring, seconds):
    with pytest.raises(ValueError):
        ring.prep_timeout(seconds, None)
    assert ring.inflight == 0


def test_a_failed_link_cancels_the_rest_of_the_chain(ring, socks, collect):
    a, _ = socks.pair()
    ring.prep_recv(a.fileno(), bytearray(8), "bad", 0x7FFFFFFF, link=True)  # invalid flags
    ring.prep_nop("next", link=True)
    ring.prep_nop("last")
    done = {ctx: res for ctx, res, _ in collect(ring, 3)}
    assert done["bad"] < 0
    assert done["next"] == -errno.ECANCELED and done["last"] == -errno.ECANCELED


def test_a_hardlink_survives_a_failure(ring, collect):
    ring.prep_timeout(0.01, "t", hardlink=True)  # "fails" with -ETIME
    ring.prep_nop("after")
    done = {ctx: res for ctx, res, _ in collect(ring, 2)}
    assert done == {"t": -errno.ETIME, "after": 0}
