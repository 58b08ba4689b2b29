"""Ring close: pending ops are cancelled and every buffer/ctx released; fds are freed."""

from __future__ import annotations

import gc
import os
import sys
import time
import weakref

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


class Buf(bytearray):
    pass


class Ctx:
    pass


def _pending_ring(socks, n=4):
    ring = uring.Ring(16)
    lst = socks.listener()
    keep = {"bufs": [], "ctxs": []}
    for _ in range(n):
        a, _ = socks.pair()
        buf, ctx = Buf(64), Ctx()
        ring.prep_recv(a.fileno(), buf, ctx)
        keep["bufs"].append(weakref.ref(buf))
        keep["ctxs"].append(weakref.ref(ctx))
    ring.prep_accept(lst.fileno(), "accept")
    ring.prep_timeout(60, "timeout")
    ring.prep_poll_add(lst.fileno(), uring.EPOLLIN, "poll")
    ring.submit()
    ring.prep_nop("never-submitted")
    return ring, keep


def test_close_with_pending_ops_releases_everything(socks):
    ring, keep = _pending_ring(socks)
    assert ring.inflight == 4 + 4
    t0 = time.monotonic()
    ring.close()
    assert time.monotonic() - t0 < 2
    assert ring.closed and ring.fd == -1 and ring.inflight == 0
    gc.collect()
    assert all(r() is None for r in keep["bufs"])
    assert all(r() is None for r in keep["ctxs"])


def test_ring_fd_is_reusable_after_close():
    ring = uring.Ring(8)
    fd = ring.fd
    ring.close()
    r, w = os.pipe()  # the lowest free numbers: the ring's fd (and its eventfd) are back
    try:
        assert fd in (r, w)
    finally:
        os.close(r)
        os.close(w)


def test_dropping_a_ring_with_pending_ops_releases_everything(socks):
    ring, keep = _pending_ring(socks)
    fd = ring.fd
    del ring
    gc.collect()
    assert all(r() is None for r in keep["bufs"])
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_ring_in_a_reference_cycle_is_collected_and_closed(socks):
    class Conn:
        pass

    ring = uring.Ring(8)
    conn = Conn()
    conn.ring = ring
    a, _ = socks.pair()
    buf = Buf(16)
    alive = weakref.ref(buf)
    ring.prep_recv(a.fileno(), buf, conn)  # ring -> slot -> conn -> ring
    ring.submit()
    ring_ref = weakref.ref(ring)
    fd = ring.fd
    del ring, conn, buf
    gc.collect()
    assert ring_ref() is None
    assert alive() is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_close_releases_buffer_rings(socks):
    ring = uring.Ring(8)
    if not (ring.has_buffer_rings and ring.has_recv_multishot):
        ring.close()
        pytest.skip("needs Linux 6.0")
    br = ring.buffer_ring(1, 4, 64)
    base = sys.getrefcount(br)
    a, _ = socks.pair()
    ring.prep_recv_multishot(a.fileno(), br, "ms")
    assert sys.getrefcount(br) == base + 1
    ring.close()
    assert sys.getrefcount(br) == base
    assert not br.registered
    br.close()  # harmless after the ring is gone


def test_close_inside_a_callback_of_its_own_completion(socks):
    """A ctx finalizer that closes the ring while wait() is delivering must not crash."""
    ring = uring.Ring(8)

    class Closer:
        def __del__(self):
            ring.close()

    ring.prep_nop(Closer())
    a, _ = socks.pair()
    ring.prep_recv(a.fileno(), bytearray(8), "pending")
    done = ring.wait(1, timeout=5)  # the Closer dies right after its tuple is dropped
    del done
    gc.collect()
    assert ring.closed
    with pytest.raises(ValueError):
        ring.wait(0)


def test_close_from_a_finalizer_running_inside_wait(socks):
    """A buffer finalizer that closes the ring runs *inside* wait() (the ring drops its last
    reference while delivering); teardown waits until wait() has left the ring."""
    ring = uring.Ring(8)

    class ClosingBuf(bytearray):
        def __del__(self):
            ring.close()

    a, b = socks.pair()
    c, _ = socks.pair()
    ring.prep_send(a.fileno(), ClosingBuf(b"bye"), "send")
    ring.prep_recv(c.fileno(), bytearray(8), "pending")
    done = ring.wait(1, timeout=5)
    assert ("send", 3, 0) in done
    assert ring.closed and ring.fd == -1
    assert b.recv(8) == b"bye"
