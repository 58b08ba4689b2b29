"""CQ overflow: a small CQ and many completions nobody reaps; IORING_FEAT_NODROP loses none."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


def test_small_cq_many_nops_nothing_lost_via_reap(make_ring):
    ring = make_ring(4, cq_entries=8)
    assert ring.features["nodrop"]
    n = 2000
    for i in range(n):
        ring.prep_nop(i)
    ring.submit()
    got = ring.reap()
    assert [c[0] for c in got] == list(range(n))  # all of them, in order, in one batch
    assert ring.overflow_count > 0
    assert ring.cq_dropped == 0
    assert ring.inflight == 0


def test_small_cq_many_nops_nothing_lost_via_wait(make_ring):
    ring = make_ring(4, cq_entries=8)
    n = 1000
    for i in range(n):
        ring.prep_nop(i)
    # min_complete above the CQ size: the kernel caps its own wait, the binding keeps waiting.
    got = ring.wait(n, timeout=10)
    assert [c[0] for c in got] == list(range(n))
    assert ring.overflow_count > 0 and ring.cq_dropped == 0


def test_overflow_then_normal_service(make_ring, socks, collect):
    ring = make_ring(2, cq_entries=2)
    for i in range(100):
        ring.prep_nop(i)
    ring.submit()
    a, b = socks.pair()
    buf = bytearray(4)
    ring.prep_recv(a.fileno(), buf, "recv")
    b.sendall(b"ok!!")
    got = collect(ring, 101)
    assert [c[0] for c in got[:100]] == list(range(100))
    assert got[100] == ("recv", 4, 0) and buf == b"ok!!"
