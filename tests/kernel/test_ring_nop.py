"""IORING_OP_NOP: the ctx round trip, op ids, batching, auto-submit on a full SQ, wait/reap."""

from __future__ import annotations

import time

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


def test_nop_returns_ctx_res_and_flags(ring):
    ctx = object()
    op = ring.prep_nop(ctx)
    assert isinstance(op, int)
    assert ring.pending == 1 and ring.inflight == 1
    (done,) = ring.wait(1, timeout=5)
    assert done == (ctx, 0, 0)
    assert done[0] is ctx
    assert ring.pending == 0 and ring.inflight == 0


def test_op_ids_are_unique_among_pending_ops(ring, collect):
    ids = [ring.prep_nop(i) for i in range(50)]
    assert len(set(ids)) == 50
    assert sorted(c[0] for c in collect(ring, 50)) == list(range(50))


def test_more_nops_than_sq_entries_auto_submit(make_ring, collect):
    ring = make_ring(4)
    for i in range(1000):
        ring.prep_nop(i)
    assert ring.pending <= 4
    got = collect(ring, 1000)
    assert [c[0] for c in got] == list(range(1000))  # NOPs complete in submission order
    assert ring.inflight == 0


def test_wait_returns_every_available_completion_in_one_batch(ring):
    for i in range(40):
        ring.prep_nop(i)
    done = ring.wait(1, timeout=5)
    assert len(done) == 40


def test_max_complete_caps_a_batch_and_keeps_the_rest(ring):
    for i in range(10):
        ring.prep_nop(i)
    first = ring.wait(1, timeout=5, max_complete=3)
    assert [c[0] for c in first] == [0, 1, 2]
    rest = ring.reap()
    assert [c[0] for c in rest] == list(range(3, 10))


def test_reap_never_blocks(ring):
    t0 = time.monotonic()
    assert ring.reap() == []
    assert time.monotonic() - t0 < 0.5
    ring.prep_nop("x")
    assert ring.reap() == [("x", 0, 0)]  # reap also submits what is pending


def test_wait_timeout_returns_what_arrived(ring):
    t0 = time.monotonic()
    assert ring.wait(1, timeout=0.1) == []
    assert 0.09 <= time.monotonic() - t0 < 2
    ring.prep_nop("a")
    t0 = time.monotonic()
    assert ring.wait(5, timeout=0.1) == [("a", 0, 0)]  # fewer than asked: timeout, not error
    assert time.monotonic() - t0 < 2


def test_wait_zero_submits_without_blocking(ring):
    ring.prep_nop("a")
    assert ring.wait(0) == [("a", 0, 0)]
    assert ring.wait(0) == []


def test_submit_counts_sqes(ring, collect):
    for i in range(5):
        ring.prep_nop(i)
    assert ring.submit() == 5
    assert ring.submit() == 0
    assert len(collect(ring, 5)) == 5


def test_ctx_may_be_any_object(ring, collect):
    ctxs = [None, 0, "s", (1, 2), [3], {"k": 4}, ring]
    for c in ctxs:
        ring.prep_nop(c)
    got = [c[0] for c in collect(ring, len(ctxs))]
    assert all(a is b for a, b in zip(got, ctxs, strict=True))


def test_linked_nops_complete_in_order(ring, collect):
    ring.prep_nop("a", link=True)
    ring.prep_nop("b", hardlink=True)
    ring.prep_nop("c")
    assert [c[0] for c in collect(ring, 3)] == ["a", "b", "c"]


def test_a_link_chain_is_never_cut_by_auto_submit(make_ring, collect):
    ring = make_ring(4)
    ring.prep_nop("x")
    ring.prep_nop("y")
    # A chain of 4 starting with 2 SQEs queued: the auto-submit must only submit x and y.
    for name in "abc":
        ring.prep_nop(name, link=True)
    ring.prep_nop("d")
    assert [c[0] for c in collect(ring, 6)] == ["x", "y", "a", "b", "c", "d"]


def test_a_chain_longer_than_the_sq_is_refused(make_ring, collect):
    ring = make_ring(2)
    ring.prep_nop("a", link=True)
    ring.prep_nop("b", link=True)
    with pytest.raises(RuntimeError, match="longer than the submission queue"):
        ring.prep_nop("c")
    assert ring.submit() == 2  # an explicit submit sends the chain as it is
    assert [c[0] for c in collect(ring, 2)] == ["a", "b"]


def test_bad_arguments_raise_without_consuming_a_slot(ring):
    with pytest.raises(TypeError):
        ring.prep_nop()
    with pytest.raises(TypeError, match="unexpected keyword"):
        ring.prep_nop(1, lnk=True)
    with pytest.raises(TypeError, match="positional"):
        ring.prep_nop(1, 2)
    with pytest.raises(TypeError, match="multiple values"):
        ring.prep_nop(1, ctx=2)
    assert ring.inflight == 0 and ring.pending == 0


def test_keywords_by_name(ring, collect):
    ring.prep_nop(ctx="k", link=False, hardlink=False)
    assert collect(ring, 1) == [("k", 0, 0)]


def test_constants_are_exported():
    assert uring.CQE_F_MORE == 2 and uring.CQE_F_BUFFER == 1 and uring.CQE_BUFFER_SHIFT == 16
    assert uring.buffer_id(uring.CQE_F_BUFFER | (7 << uring.CQE_BUFFER_SHIFT)) == 7
    assert uring.buffer_id(uring.CQE_F_MORE) is None


@pytest.mark.parametrize("poll", ["reap", "wait0"])
def test_nonblocking_polls_run_deferred_completion_work(ring, socks, poll):
    """With DEFER_TASKRUN a recv completion is parked until we enter the kernel: reap() and
    wait(0) must still find it without blocking."""
    a, b = socks.pair()
    buf = bytearray(8)
    ring.prep_recv(a.fileno(), buf, "recv")
    ring.submit()
    b.sendall(b"parked")
    got: list = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = ring.reap() if poll == "reap" else ring.wait(0)
        time.sleep(0.001)
    assert got == [("recv", 6, 0)]


def test_a_signal_interrupts_a_blocked_wait():
    import signal
    import threading

    ring = uring.Ring(8)
    fired = []
    old = signal.signal(signal.SIGUSR1, lambda *a: fired.append(1))
    try:
        main = threading.get_ident()
        threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        t0 = time.monotonic()
        assert ring.wait(1, timeout=0.5) == []  # handler ran, the wait resumed until timeout
        assert fired and 0.45 <= time.monotonic() - t0 < 3

        def boom(*a):
            raise KeyboardInterrupt

        signal.signal(signal.SIGUSR1, boom)
        threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ring.wait(1)  # no timeout: only the signal ends it
        assert time.monotonic() - t0 < 3
        ring.prep_nop("still usable")
        assert ring.wait(1, timeout=5) == [("still usable", 0, 0)]
    finally:
        signal.signal(signal.SIGUSR1, old)
        ring.close()
