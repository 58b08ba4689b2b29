"""prep_send(quiet=True): a send the kernel finishes while we submit does not end a wait.

Its completion comes back with the next real one instead of costing a loop pass of its own;
a quiet send that finishes later (once the peer made room) still ends the wait, so nothing
can stall on it. Quiet sends must use MSG_WAITALL (the kernel finishes all of it or fails).
"""

from __future__ import annotations

import threading
import time

import pytest

from ioladder.kernel import uring

WAITALL = uring.MSG_NOSIGNAL | uring.MSG_WAITALL


def test_an_inline_quiet_send_does_not_end_the_wait(ring, socks):
    a, b = socks.pair()
    ring.prep_send(a.fileno(), b"q" * 64, "quiet", WAITALL, quiet=True)
    t0 = time.monotonic()
    got = ring.wait(1, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert got == [("quiet", 64, 0)]  # reaped, but only when the wait timed out
    assert elapsed >= 0.25, elapsed
    assert b.recv(64) == b"q" * 64


def test_a_loud_send_still_ends_the_wait_at_once(ring, socks):
    a, b = socks.pair()
    ring.prep_send(a.fileno(), b"l" * 64, "loud", WAITALL)
    t0 = time.monotonic()
    assert ring.wait(1, timeout=5) == [("loud", 64, 0)]
    assert time.monotonic() - t0 < 0.25


def test_the_quiet_completion_comes_back_with_the_next_real_one_in_order(ring, socks):
    a, b = socks.pair()
    c, d = socks.pair()
    buf = bytearray(16)
    ring.prep_recv(c.fileno(), buf, "recv")
    ring.prep_send(a.fileno(), b"x" * 32, "quiet", WAITALL, quiet=True)
    timer = threading.Timer(0.15, d.send, (b"hello",))
    timer.start()
    try:
        t0 = time.monotonic()
        got = ring.wait(1, timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        timer.join(5)
    assert got == [("quiet", 32, 0), ("recv", 5, 0)]
    assert 0.1 <= elapsed < 2.0, elapsed
    assert bytes(buf[:5]) == b"hello"


def test_a_quiet_send_that_finishes_later_ends_the_wait(ring, socks):
    a, b = socks.pair()
    a.setblocking(False)
    while True:  # fill a's send buffer and b's receive buffer
        try:
            a.send(b"f" * 65536)
        except BlockingIOError:
            break
    payload = b"z" * 100_000
    ring.prep_send(a.fileno(), payload, "quiet", WAITALL, quiet=True)

    def drain() -> None:
        time.sleep(0.15)
        b.settimeout(5)
        while True:
            data = b.recv(1 << 20)
            if not data or data.endswith(b"z" * 1000):
                return

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        t0 = time.monotonic()
        got = ring.wait(1, timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        reader.join(10)
    assert got == [("quiet", len(payload), 0)]
    assert elapsed < 5, elapsed  # woken by the send's own completion, not the timeout


def test_quiet_needs_waitall_and_queues_nothing_otherwise(ring, socks):
    a, _b = socks.pair()
    with pytest.raises(ValueError, match="MSG_WAITALL"):
        ring.prep_send(a.fileno(), b"x", "ctx", uring.MSG_NOSIGNAL, quiet=True)
    assert ring.inflight == 0
