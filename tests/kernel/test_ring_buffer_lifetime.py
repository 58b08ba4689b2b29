"""Buffer lifetime: the ring holds every buffer (and ctx) until the op's final completion."""

from __future__ import annotations

import gc
import mmap
import sys
import weakref

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


class Buf(bytearray):
    """A bytearray that can be weakly referenced."""


class Ctx:
    pass


def test_recv_buffer_survives_the_callers_last_reference(ring, socks, collect):
    a, b = socks.pair()
    buf = Buf(b"\0" * 64)
    alive = weakref.ref(buf)
    ring.prep_recv(a.fileno(), buf, "recv")
    ring.submit()
    del buf
    gc.collect()
    assert alive() is not None  # the ring's export keeps it
    b.sendall(b"delivered into a buffer nobody else holds")
    ((ctx, res, _),) = collect(ring, 1)
    assert ctx == "recv" and res == 41
    # The ring released it with the final completion: nothing else holds it now.
    gc.collect()
    assert alive() is None


def test_refcounts_return_to_normal_after_completion(ring, socks, collect):
    a, b = socks.pair()
    buf = bytearray(32)
    ctx = Ctx()
    base_buf, base_ctx = sys.getrefcount(buf), sys.getrefcount(ctx)
    ring.prep_recv(a.fileno(), buf, ctx)
    assert sys.getrefcount(buf) == base_buf + 1
    assert sys.getrefcount(ctx) == base_ctx + 1
    b.sendall(b"x")
    done = collect(ring, 1)
    assert done[0][0] is ctx
    del done
    assert sys.getrefcount(buf) == base_buf
    assert sys.getrefcount(ctx) == base_ctx


def test_a_pending_bytearray_cannot_be_resized(ring, socks, collect):
    a, b = socks.pair()
    buf = bytearray(16)
    ring.prep_recv(a.fileno(), buf, "recv")
    with pytest.raises(BufferError):
        buf.extend(b"more")
    with pytest.raises(BufferError):
        del buf[:]
    b.sendall(b"abc")
    collect(ring, 1)
    buf.extend(b"now fine")


def test_a_pending_mmap_cannot_be_closed(ring, socks, collect):
    a, b = socks.pair()
    m = mmap.mmap(-1, 4096)
    ring.prep_recv(a.fileno(), m, "recv")
    with pytest.raises(BufferError):
        m.close()
    b.sendall(b"into-mmap")
    assert collect(ring, 1) == [("recv", 9, 0)]
    assert m[:9] == b"into-mmap"
    m.close()


def test_send_data_is_held_too(ring, socks, collect):
    a, b = socks.pair()
    data = Buf(b"kept alive by the ring")
    alive = weakref.ref(data)
    ring.prep_send(a.fileno(), data, "send")
    del data
    gc.collect()
    assert alive() is not None or ring.inflight == 0
    assert collect(ring, 1) == [("send", 22, 0)]
    gc.collect()
    assert alive() is None
    assert b.recv(64) == b"kept alive by the ring"


def test_sendmsg_buffers_are_held_until_completion(ring, socks, collect):
    a, b = socks.pair()
    parts = [Buf(b"one "), Buf(b"two")]
    refs = [weakref.ref(p) for p in parts]
    ring.prep_sendmsg(a.fileno(), parts, "m")
    del parts
    assert all(r() is not None for r in refs)
    assert collect(ring, 1) == [("m", 7, 0)]
    gc.collect()
    assert all(r() is None for r in refs)
    assert b.recv(16) == b"one two"


def test_multishot_ctx_is_held_until_the_final_completion(ring, socks, collect):
    if not ring.has_multishot_accept:
        pytest.skip("multishot accept needs Linux 5.19")
    lst = socks.listener()
    ctx = Ctx()
    alive = weakref.ref(ctx)
    op = ring.prep_accept(lst.fileno(), ctx, multishot=True)
    del ctx
    socks.client(lst.getsockname())
    ((got, fd, flags),) = collect(ring, 1)
    socks.adopt_fd(fd)
    assert flags & uring.CQE_F_MORE
    del got
    gc.collect()
    assert alive() is not None  # F_MORE: the op (and its ctx) lives on
    ring.prep_cancel(op, "cancel")
    done = collect(ring, 2)
    del done
    gc.collect()
    assert alive() is None


def test_failed_prep_releases_the_buffer(ring, socks):
    a, _ = socks.pair()
    buf = bytearray(8)
    base = sys.getrefcount(buf)
    with pytest.raises(ValueError):
        ring.prep_recv(a.fileno(), buf, None, start=9)
    with pytest.raises(TypeError):
        ring.prep_recv(a.fileno(), buf, None, flags="bad")
    assert sys.getrefcount(buf) == base
    buf.extend(b"resizable: no export left behind")
