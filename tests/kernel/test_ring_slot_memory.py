"""Slot memory: only ops with side data (a buffer, a sockaddr, a timespec) take an ext block.

A server keeps one multishot recv pending per idle connection, so the slot is kept small and the
side data lives in separately allocated blocks, recycled through a free list. ``ring.ext_blocks``
counts the blocks allocated. The ring's guarantees must hold for buffers held in those blocks
exactly as they did for buffers held in the slot: exported until the final completion, visited
by the GC, released at close.
"""

from __future__ import annotations

import gc
import socket
import sys
import weakref

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


class Buf(bytearray):
    """A bytearray that can be weakly referenced (and carry attributes)."""


def test_ops_without_side_data_take_no_block(ring, socks):
    lst = socks.listener()
    a, b = socks.pair()
    ring.prep_nop("nop")
    ring.prep_poll_add(a.fileno(), uring.EPOLLIN, "poll", multishot=True)
    ring.prep_accept(lst.fileno(), "accept", multishot=ring.has_multishot_accept)
    if ring.has_buffer_rings and ring.has_recv_multishot:
        ring.prep_recv_multishot(b.fileno(), ring.buffer_ring(1, 4, 64), "ms")
    ring.prep_sendmsg(a.fileno(), [b"x", b"y"], "sendmsg")  # msghdr/iovec: an allocation of its own
    ring.prep_cancel(1 << 40, "cancel")
    ring.prep_cancel_fd(a.fileno(), "cancel_fd", all=False)
    ring.submit()
    assert ring.ext_blocks == 0


def test_blocks_are_reused_not_reallocated(ring, socks, collect):
    lst = socks.listener()
    a, b = socks.pair()
    buf = bytearray(64)
    data = bytearray(b"0123456789")
    base_buf, base_data = sys.getrefcount(buf), sys.getrefcount(data)
    for _ in range(200):
        # Four ops with side data in flight at once: a recv and a send (buffers), a timeout
        # (timespec) and a connect (sockaddr).
        ring.prep_recv(b.fileno(), buf, "recv")
        ring.prep_send(a.fileno(), data, "send")
        ring.prep_timeout(0, "timeout")
        with socket.socket() as c:
            ring.prep_connect(c.fileno(), lst.getsockname(), "connect")
            done = collect(ring, 4)
            assert sorted(ctx for ctx, _, _ in done) == ["connect", "recv", "send", "timeout"]
            del done
            lst.accept()[0].close()
    assert ring.ext_blocks == 4  # the peak, not one per op
    assert sys.getrefcount(buf) == base_buf
    assert sys.getrefcount(data) == base_data
    # A larger burst grows the pool once; the next burst of the same size takes nothing new.
    for _burst in range(2):
        bufs = [bytearray(8) for _ in range(16)]
        for i, x in enumerate(bufs):
            ring.prep_recv(b.fileno(), x, i)
        assert ring.ext_blocks == 16
        a.sendall(b"z" * 8 * 16)
        assert sum(res for _, res, _ in collect(ring, 16)) == 8 * 16
    assert ring.ext_blocks == 16


def test_a_pending_buffer_outlives_churn_of_other_blocks(ring, socks, collect):
    """Blocks recycled around a long-pending op never touch that op's block."""
    a, b = socks.pair()
    c, d = socks.pair()
    pending = bytearray(32)
    base = sys.getrefcount(pending)
    ring.prep_recv(b.fileno(), pending, "pending")
    ring.submit()
    churn = bytearray(b"churn")
    base_churn = sys.getrefcount(churn)
    for _ in range(100):
        ring.prep_send(c.fileno(), churn, "send")
        ring.prep_timeout(0, "timeout")
        collect(ring, 2)
        assert d.recv(16) == b"churn"
    assert sys.getrefcount(churn) == base_churn
    assert ring.ext_blocks == 3
    # Still held and exported by the pending recv's block (an export forbids resizing).
    assert sys.getrefcount(pending) == base + 1
    with pytest.raises(BufferError):
        pending.extend(b"x")
    a.sendall(b"after the churn")
    assert collect(ring, 1) == [("pending", 15, 0)]
    assert pending[:15] == b"after the churn"
    assert sys.getrefcount(pending) == base  # released with the final completion
    pending.extend(b"resizable again")


def test_gc_sees_buffers_held_in_blocks(socks):
    """ring -> block -> buffer -> ring is a cycle the collector must find."""
    ring = uring.Ring(8)
    a, _ = socks.pair()
    buf = Buf(16)
    buf.ring = ring  # type: ignore[attr-defined]
    ring.prep_recv(a.fileno(), buf, "recv")
    ring.submit()
    ring_ref, buf_ref = weakref.ref(ring), weakref.ref(buf)
    del ring, buf
    gc.collect()
    assert ring_ref() is None
    assert buf_ref() is None


def test_close_with_pending_block_holders_releases_everything(make_ring, socks):
    ring = make_ring(16)
    lst = socks.listener()
    plain = [bytearray(64) for _ in range(6)]
    base = [sys.getrefcount(x) for x in plain]
    weak = []
    for i in range(len(plain)):
        a, _ = socks.pair()
        ring.prep_recv(a.fileno(), plain[i], "recv")
        w = Buf(64)
        weak.append(weakref.ref(w))
        ring.prep_recv(a.fileno(), w, "recv")
    del w
    ring.prep_timeout(60, "timeout")
    a, _ = socks.pair()
    ring.prep_recv(a.fileno(), bytearray(8), "recv", link=True)
    ring.prep_link_timeout(60, "link_timeout")
    ring.prep_poll_add(lst.fileno(), uring.EPOLLIN, "poll")
    ring.submit()
    assert ring.ext_blocks == 12 + 1 + 2
    ring.close()
    assert ring.inflight == 0
    assert ring.ext_blocks == 0  # all freed, none leaked
    gc.collect()
    assert [sys.getrefcount(x) for x in plain] == base
    assert all(r() is None for r in weak)
    for x in plain:
        x.extend(b"resizable: no export left behind")


def test_a_failed_prep_takes_no_block(ring, socks):
    a, _ = socks.pair()
    buf = bytearray(8)
    with pytest.raises(ValueError):
        ring.prep_recv(a.fileno(), buf, None, start=9)
    with pytest.raises(ValueError):
        ring.prep_connect(a.fileno(), ("not-an-address", 80), None)
    with pytest.raises(ValueError):
        ring.prep_link_timeout(1, None)  # not after a linked op
    assert ring.ext_blocks == 0
    assert ring.inflight == 0
