"""Threads: several waiters on one ring (the iocp pattern), posting, wake(), close under waiters."""

from __future__ import annotations

import errno
import threading
import time
from collections import Counter

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


def _start(target, *args):
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_two_waiters_one_poster_each_completion_exactly_once(make_ring):
    ring = make_ring(64, single_issuer=False)
    n = 3000
    seen: list[list] = [[], []]
    stop = threading.Event()

    def worker(k):
        while not stop.is_set():
            for ctx, res, _ in ring.wait(1, timeout=0.2):
                assert res == 0
                seen[k].append(ctx)

    def poster():
        for i in range(n):
            ring.prep_nop(i)  # PostQueuedCompletionStatus
            if i % 16 == 15:
                ring.submit()
        ring.submit()

    workers = [_start(worker, 0), _start(worker, 1)]
    _start(poster).join(30)
    deadline = time.monotonic() + 20
    while len(seen[0]) + len(seen[1]) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in workers:
        t.join(10)
    counts = Counter(seen[0] + seen[1])
    assert len(counts) == n and set(counts.values()) == {1}
    assert ring.inflight == 0


def test_wake_ends_a_wait_of_the_owner_thread(make_ring):
    ring = make_ring(8)  # single issuer: only wake() may come from elsewhere
    t = _start(lambda: (time.sleep(0.1), ring.wake()))
    t0 = time.monotonic()
    assert ring.wait(1, timeout=10) == []
    assert time.monotonic() - t0 < 5
    t.join(5)
    # The ring still works, and the wake-up was consumed.
    ring.prep_nop("after")
    assert ring.wait(1, timeout=5) == [("after", 0, 0)]
    assert ring.wait(1, timeout=0.05) == []


def test_wake_before_wait_is_not_lost(make_ring):
    ring = make_ring(8)
    ring.wake()
    t0 = time.monotonic()
    assert ring.wait(1, timeout=10) == []
    assert time.monotonic() - t0 < 5


def test_wake_reaches_waiters_of_a_shared_ring(make_ring):
    ring = make_ring(8, single_issuer=False)
    returned = []

    def waiter():
        returned.append(ring.wait(1, timeout=20))

    threads = [_start(waiter), _start(waiter)]
    deadline = time.monotonic() + 10
    while len(returned) < 2 and time.monotonic() < deadline:
        ring.wake()  # wakes may coalesce: keep waking until both returned
        time.sleep(0.02)
    for t in threads:
        t.join(5)
    assert returned == [[], []]


def test_close_while_threads_wait(make_ring):
    ring = make_ring(8, single_issuer=False)
    returned = []
    entered = threading.Barrier(3)

    def waiter():
        entered.wait(5)
        returned.append(ring.wait(64, timeout=30))  # a batch wait, not cut short by wake()

    threads = [_start(waiter), _start(waiter)]
    entered.wait(5)
    time.sleep(0.1)
    t0 = time.monotonic()
    ring.close()
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5
    assert len(returned) == 2
    assert ring.closed and ring.fd == -1
    with pytest.raises(ValueError):
        ring.wait(1, timeout=0)


def test_ops_belong_to_the_thread_that_submitted_them(make_ring, socks):
    """The kernel ties a request to the task whose io_uring_enter submitted it; when that thread
    exits, its pending requests may be cancelled (-ECANCELED: seen on Linux 6.18 unless the op
    completed first). Pools must submit from threads that outlive their ops."""
    ring = make_ring(8, single_issuer=False)
    a, b = socks.pair()
    buf = bytearray(8)

    def submit_and_exit():
        ring.prep_recv(a.fileno(), buf, "recv")
        ring.submit()

    _start(submit_and_exit).join(5)
    b.sendall(b"late")
    ((ctx, res, _),) = ring.wait(1, timeout=5)
    assert ctx == "recv" and res in (4, -errno.ECANCELED)

    # Prepared by an exiting thread but submitted by a live one: the op lives.
    _start(lambda: ring.prep_recv(a.fileno(), buf, "recv2")).join(5)
    ring.submit()
    time.sleep(0.05)
    b.sendall(b"later")
    ((ctx, res, _),) = ring.wait(1, timeout=5)
    assert ctx == "recv2" and res > 0


def test_shared_ring_keeps_the_wake_alive_after_its_creator_exits(socks):
    holder = {}
    t = _start(lambda: holder.setdefault("ring", uring.Ring(8, single_issuer=False)))
    t.join(5)
    ring = holder.pop("ring")
    try:
        _start(lambda: (time.sleep(0.1), ring.wake()))
        t0 = time.monotonic()
        assert ring.wait(1, timeout=10) == []
        assert time.monotonic() - t0 < 5
    finally:
        ring.close()
