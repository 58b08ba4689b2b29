"""Multishot recv on a provided buffer ring: buffer ids, -ENOBUFS exhaustion and re-arm, EOF."""

from __future__ import annotations

import errno
import os

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bring(ring):
    if not (ring.has_buffer_rings and ring.has_recv_multishot):
        pytest.skip("buffer rings + multishot recv need Linux 6.0")
    return ring


def test_buffer_ring_shape_and_validation(bring):
    br = bring.buffer_ring(1, 8, 256)
    assert (br.group_id, br.count, br.size, br.available) == (1, 8, 256, 8)
    assert br.registered
    with pytest.raises(ValueError, match="power of two"):
        bring.buffer_ring(2, 6, 256)
    with pytest.raises(ValueError):
        bring.buffer_ring(2, 8, 0)
    with pytest.raises(OSError, match="already registered") as info:
        bring.buffer_ring(1, 8, 256)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(ValueError, match="owned by the kernel"):
        br.recycle(0)
    with pytest.raises(ValueError, match="out of range"):
        br.take(8, 1)
    br.close()
    assert not br.registered
    bring.buffer_ring(1, 8, 256).close()  # the group id is free again


def test_multishot_recv_delivers_buffers_until_eof(bring, socks, collect):
    a, b = socks.pair()
    br = bring.buffer_ring(7, 16, 64)
    bring.prep_recv_multishot(a.fileno(), br, "ms")
    data = b""
    for msg in (b"one", b"two", b"three"):
        b.sendall(msg)
        ((ctx, res, flags),) = collect(bring, 1)
        assert ctx == "ms" and res == len(msg)
        assert flags & uring.CQE_F_MORE and flags & uring.CQE_F_BUFFER
        bid = uring.buffer_id(flags)
        assert br.available == 15
        data += br.take(bid, res)
        assert br.available == 16
    assert data == b"onetwothree"
    b.shutdown(2)
    ((ctx, res, flags),) = collect(bring, 1)
    assert ctx == "ms" and res == 0 and not flags & uring.CQE_F_MORE  # EOF ends the op
    if flags & uring.CQE_F_BUFFER:
        br.recycle(uring.buffer_id(flags))
    assert bring.inflight == 0 and br.available == 16


@pytest.mark.parametrize("incremental", [False, True], ids=["whole", "incremental"])
def test_enobufs_exhaustion_then_recycle_and_rearm(bring, socks, collect, incremental):
    """Two 16-byte buffers, 200 bytes sent: the op ends with -ENOBUFS (no CQE_F_MORE) once both
    are held by the application; recycling and re-arming delivers the rest, nothing lost.
    Incremental: both are full by then (CQE_F_BUF_MORE tells the completions that are not)."""
    a, b = socks.pair()
    try:
        br = bring.buffer_ring(3, 2, 16, incremental=incremental)
    except OSError as exc:
        if exc.errno == errno.EINVAL and incremental:
            pytest.skip(str(exc))
        raise
    payload = os.urandom(200)
    b.sendall(payload)
    got = b""
    enobufs = 0
    held: list[tuple[int, int, int]] = []
    bring.prep_recv_multishot(a.fileno(), br, "ms")
    armed = True
    while len(got) < len(payload):
        for ctx, res, flags in collect(bring, 1):
            assert ctx == "ms"
            if flags & uring.CQE_F_BUFFER:
                held.append((uring.buffer_id(flags), res, flags & uring.CQE_F_BUF_MORE))
            if res == -errno.ENOBUFS:
                assert br.available == 0  # both buffers are held by us
                enobufs += 1
            else:
                assert res > 0
            armed = bool(flags & uring.CQE_F_MORE)
            if not armed or len(got) + sum(n for _, n, _ in held) == len(payload):
                # Hold buffers until the op ends (to exhaust the ring); then recycle, re-arm.
                for bid, n, more in held:
                    got += br.take(bid, n, more)
                held.clear()
                if not armed and len(got) < len(payload):
                    bring.prep_recv_multishot(a.fileno(), br, "ms")
                    armed = True
    assert got == payload
    assert enobufs >= 1
    assert br.available == 2
    if armed:
        bring.prep_cancel_fd(a.fileno(), "cancel")
        collect(bring, 2)
    assert bring.inflight == 0


def test_view_is_zero_copy_until_recycled(bring, socks, collect):
    a, b = socks.pair()
    br = bring.buffer_ring(4, 4, 32)
    bring.prep_recv_multishot(a.fileno(), br, "ms")
    b.sendall(b"zero-copy")
    ((_, res, flags),) = collect(bring, 1)
    bid = uring.buffer_id(flags)
    view = br.view(bid, res)
    assert view.readonly and bytes(view) == b"zero-copy"
    assert br.available == 3
    br.recycle(bid)
    with pytest.raises(ValueError, match="owned by the kernel"):
        br.recycle(bid)  # a double recycle would corrupt the ring: refused
    assert br.available == 4
    del view
    bring.prep_cancel_fd(a.fileno(), "cancel")
    collect(bring, 2)


def test_buffer_ring_in_use_cannot_be_closed_and_outlives_its_name(bring, socks, collect):
    a, b = socks.pair()
    br = bring.buffer_ring(5, 4, 32)
    bring.prep_recv_multishot(a.fileno(), br, "ms")
    with pytest.raises(RuntimeError, match="in use"):
        br.close()
    del br  # the pending op keeps it alive and registered
    b.sendall(b"still-here")
    ((_, res, flags),) = collect(bring, 1)
    assert res == 10 and flags & uring.CQE_F_BUFFER
    bring.prep_cancel_fd(a.fileno(), "cancel")
    collect(bring, 2)


def test_bufring_of_another_ring_is_refused(bring, make_ring, socks):
    other = make_ring(8)
    br = other.buffer_ring(1, 4, 32)
    a, _ = socks.pair()
    with pytest.raises(ValueError, match="not registered with this ring"):
        bring.prep_recv_multishot(a.fileno(), br, None)
    with pytest.raises(TypeError):
        bring.prep_recv_multishot(a.fileno(), bytearray(8), None)


@pytest.mark.parametrize("size, stride", [(32, 64), (100, 128), (4096, 4160), (32768, 32832),
                                          (6144, 6208), (5000, 5056)])
def test_buffers_are_spaced_off_the_cache_set_of_their_neighbour(bring, socks, collect, size,
                                                                 stride):
    """Buffer i starts at i * stride: with 32 KiB buffers spaced by exactly 32 KiB, every small
    message would land in the same cache set, so a multiple of 4 KiB gets one line more."""
    a, b = socks.pair()
    br = bring.buffer_ring(5, 4, size)
    assert br.stride == stride and len(memoryview(br)) >= 4 * stride
    bring.prep_recv_multishot(a.fileno(), br, "ms")
    for i in range(4):
        b.sendall(b"m%d" % i)
        ((_, res, flags),) = collect(bring, 1)
        bid = uring.buffer_id(flags)
        whole = memoryview(br)
        assert bytes(whole[bid * stride: bid * stride + res]) == b"m%d" % i
        assert bytes(br.view(bid, res)) == b"m%d" % i
        del whole
        assert br.take(bid, res) == b"m%d" % i
    bring.prep_cancel_fd(a.fileno(), "cancel")
    collect(bring, 2)
