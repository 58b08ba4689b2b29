"""RecvContext: Ring.dispatch() delivers a multishot receive's bytes to ``ctx.conn._on_data``
itself (no Python frame), and everything else to the ctx's method, as any completion."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bring(ring):
    if not (ring.has_buffer_rings and ring.has_recv_multishot):
        pytest.skip("buffer rings + multishot recv need Linux 6.0")
    return ring


class Conn:
    def __init__(self, raise_on=None):
        self.data: list = []
        self.raise_on = raise_on

    def _on_data(self, data):
        self.data.append(data)
        if data == self.raise_on:
            raise ValueError(data)


class Ctx(uring.RecvContext):
    __slots__ = ("ended", "__weakref__")

    def __init__(self, conn=None):
        self.conn = conn
        self.ended: list = []

    def _complete(self, res, flags):
        self.ended.append((res, flags & uring.CQE_F_MORE))


def _dispatch_until(ring, cond, on_error=None):
    for _ in range(200):
        if cond():
            return
        ring.dispatch(1, 0.05, "_complete", on_error)
    assert cond()


def _armed(ring, socks, conn=None):
    """A socket pair with a multishot receive armed on one end, its ctx holding ``conn``:
    (the other end, the buffer ring, the ctx)."""
    a, b = socks.pair()
    br = ring.buffer_ring(5, 8, 64)
    ctx = Ctx(conn)
    ring.prep_recv_multishot(a.fileno(), br, ctx)
    return b, br, ctx


def test_data_goes_to_on_data_and_the_end_to_the_method(bring, socks):
    conn = Conn()
    b, br, ctx = _armed(bring, socks, conn)
    for msg in (b"one", b"two", b"three"):
        b.sendall(msg)
        _dispatch_until(bring, lambda m=msg: conn.data[-1:] == [m])
    assert conn.data == [b"one", b"two", b"three"]
    assert ctx.ended == []  # no Python method call for the steady-state completions
    assert br.available == 8  # each buffer recycled at once
    b.shutdown(2)
    _dispatch_until(bring, lambda: ctx.ended)
    assert ctx.ended == [(0, 0)]  # EOF ends the op: the method
    assert bring.inflight == 0


def test_wait_returns_recv_context_completions_as_tuples(bring, socks):
    conn = Conn()
    b, br, ctx = _armed(bring, socks, conn)
    b.sendall(b"hello")
    ((got, res, flags),) = bring.wait(1, timeout=5)
    assert got is ctx and res == 5 and flags & uring.CQE_F_MORE and conn.data == []
    assert br.take(uring.buffer_id(flags), res) == b"hello"


def test_on_data_raising_goes_to_on_error_or_propagates(bring, socks):
    conn = Conn(raise_on=b"bad")
    errors: list = []
    b, br, ctx = _armed(bring, socks, conn)
    b.sendall(b"bad")
    _dispatch_until(bring, lambda: errors, lambda exc, c: errors.append((exc.args, c)))
    assert errors == [((b"bad",), ctx)]
    assert br.available == 8  # the buffer went back before the raise
    b.sendall(b"bad")
    with pytest.raises(ValueError):
        _dispatch_until(bring, lambda: False)
    assert br.available == 8
    b.sendall(b"good")
    _dispatch_until(bring, lambda: conn.data[-1:] == [b"good"])
    assert conn.data == [b"bad", b"bad", b"good"]


def test_unset_conn_raises_like_python_would(bring, socks):
    b, br, ctx = _armed(bring, socks)
    assert ctx.conn is None
    b.sendall(b"x")
    with pytest.raises(AttributeError, match="_on_data"):
        _dispatch_until(bring, lambda: False)
    assert br.available == 8


def test_refcounts_and_collection(bring, socks):
    conn = Conn()
    b, br, ctx = _armed(bring, socks, conn)
    base = (sys.getrefcount(conn), sys.getrefcount(ctx), sys.getrefcount(br))
    for i in range(300):
        b.sendall(b"%d" % i)
        _dispatch_until(bring, lambda i=i: conn.data[-1:] == [b"%d" % i])
        conn.data.clear()
    assert (sys.getrefcount(conn), sys.getrefcount(ctx), sys.getrefcount(br)) == base
    # A cycle through conn is collected; dropping a ctx drops its conn.
    holder = Conn()
    cyc = Ctx(holder)
    holder.ctx = cyc
    ref = weakref.ref(cyc)
    del holder, cyc
    gc.collect()
    assert ref() is None
    c2 = Conn()
    before = sys.getrefcount(c2)
    objs = [Ctx(c2) for _ in range(100)]
    assert sys.getrefcount(c2) == before + 100
    del objs
    assert sys.getrefcount(c2) == before
