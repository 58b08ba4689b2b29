"""Incrementally consumed provided buffers (``IOU_PBUF_RING_INC``, Linux 6.12): a receive uses
only the bytes it needs of the current buffer; the buffer's next completion continues after them
(``CQE_F_BUF_MORE``), and it goes back to the ring only once the kernel has filled it."""

from __future__ import annotations

import errno

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(30)

MORE = uring.CQE_F_BUF_MORE


@pytest.fixture
def inc_ring(ring):
    if not (ring.has_buffer_rings and ring.has_recv_multishot):
        pytest.skip("buffer rings + multishot recv need Linux 6.0")

    def make(gid: int, count: int, size: int) -> uring.BufferRing:
        try:
            return ring.buffer_ring(gid, count, size, incremental=True)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                pytest.skip(str(exc))
            raise

    return make


def _drain(ring, br, collect, nbytes: int) -> tuple[bytes, list[tuple[int, int, bool]]]:
    """Take completions until nbytes arrived: the bytes, and (bid, res, BUF_MORE) of each."""
    got = b""
    seen = []
    while len(got) < nbytes:
        for _, res, flags in collect(ring, 1):
            seen.append((uring.buffer_id(flags), res, bool(flags & MORE)))
            got += br.take(uring.buffer_id(flags), res, flags & MORE)
    return got, seen


def _slab(br: uring.BufferRing, bid: int, start: int, n: int) -> bytes:
    with memoryview(br) as whole:
        at = bid * br.stride + start
        return bytes(whole[at:at + n])


def test_small_receives_fill_one_buffer_front_to_back(ring, inc_ring, socks, collect):
    a, b = socks.pair()
    br = inc_ring(5, 2, 100)
    assert br.incremental and br.available == 2
    ring.prep_recv_multishot(a.fileno(), br, "ms")
    offset = 0
    for fill in (b"A", b"B"):
        b.sendall(fill * 40)
        ((_, res, flags),) = collect(ring, 1)
        # the same buffer, still the kernel's: it goes on filling it after these bytes
        assert res == 40 and uring.buffer_id(flags) == 0 and flags & MORE
        assert br.available == 1
        assert br.take(0, res, flags & MORE) == fill * 40
        assert _slab(br, 0, offset, 40) == fill * 40  # landed right after the last one
        offset += 40
        assert br.available == 2  # the kernel holds it again: nothing is ours
    # 40 more bytes: the 20 left of buffer 0 end it (no CQE_F_BUF_MORE), the rest starts
    # buffer 1 at its front
    b.sendall(b"C" * 40)
    got, seen = _drain(ring, br, collect, 40)
    assert got == b"C" * 40
    assert seen == [(0, 20, False), (1, 20, True)]
    # buffer 0 went back whole: once buffer 1 is full, the next bytes start at its front
    b.sendall(b"D" * 100)
    got, seen = _drain(ring, br, collect, 100)
    assert got == b"D" * 100
    assert seen == [(1, 80, False), (0, 20, True)]
    assert _slab(br, 0, 0, 20) == b"D" * 20
    assert br.available == 2
    ring.prep_cancel_fd(a.fileno(), "cancel")
    collect(ring, 2)
    assert ring.inflight == 0


def test_a_shared_buffer_stays_out_until_each_completion_is_taken(ring, inc_ring, socks,
                                                                   collect):
    # Two connections' receives land in the same buffer: it is the application's until both
    # completions are released, in the order they came.
    a1, b1 = socks.pair()
    a2, b2 = socks.pair()
    br = inc_ring(6, 4, 4096)
    ring.prep_recv_multishot(a1.fileno(), br, "one")
    ring.prep_recv_multishot(a2.fileno(), br, "two")
    b1.sendall(b"1" * 10)
    b2.sendall(b"2" * 10)
    done = []
    while len(done) < 2:
        done += collect(ring, 1)
    assert {uring.buffer_id(f) for _, _, f in done} == {0}
    assert br.available == 3
    (ctx1, res1, fl1), (ctx2, res2, fl2) = done
    assert br.take(0, res1, fl1 & MORE) == {"one": b"1", "two": b"2"}[ctx1] * 10
    assert br.available == 3  # the second completion still holds it
    assert br.take(0, res2, fl2 & MORE) == {"one": b"1", "two": b"2"}[ctx2] * 10
    assert br.available == 4
    for a in (a1, a2):
        ring.prep_cancel_fd(a.fileno(), "cancel")
    collect(ring, 4)
    assert ring.inflight == 0


def test_incremental_arguments_are_checked(ring, inc_ring, socks, collect):
    whole = ring.buffer_ring(7, 2, 64)
    assert not whole.incremental
    a, b = socks.pair()
    ring.prep_recv_multishot(a.fileno(), whole, "ms")
    b.sendall(b"x" * 8)
    ((_, res, flags),) = collect(ring, 1)
    assert not flags & MORE  # a whole-buffer ring never reports it
    with pytest.raises(ValueError, match="incremental"):
        whole.take(uring.buffer_id(flags), res, True)
    assert whole.take(uring.buffer_id(flags), res) == b"x" * 8
    ring.prep_cancel_fd(a.fileno(), "cancel")
    collect(ring, 2)

    br = inc_ring(8, 2, 64)
    ring.prep_recv_multishot(a.fileno(), br, "ms")
    b.sendall(b"y" * 48)
    ((_, res, flags),) = collect(ring, 1)
    bid = uring.buffer_id(flags)
    assert res == 48 and flags & MORE
    with pytest.raises(ValueError, match="between 0 and 64"):
        br.take(bid, 65, True)
    br.take(bid, res, True)
    b.sendall(b"z" * 8)
    ((_, res, flags),) = collect(ring, 1)
    assert res == 8 and uring.buffer_id(flags) == bid
    with pytest.raises(ValueError, match="between 0 and 16"):  # 48 of 64 are used
        br.take(bid, 17, True)
    assert br.take(bid, res, flags & MORE) == b"z" * 8
    ring.prep_cancel_fd(a.fileno(), "cancel")
    collect(ring, 2)
    assert ring.inflight == 0


def test_receive_buffers_picks_the_geometry_of_the_kind_it_got(ring, inc_ring):
    inc_ring(10, 1, 64).close()  # skips where the kernel has no incremental rings
    br = uring.receive_buffers(ring, 11, 4, 1024, whole=(8, 512))
    assert (br.incremental, br.count, br.size) == (True, 4, 1024)
    whole = uring.receive_buffers(ring, 12, 4, 1024, incremental=False, whole=(8, 512))
    assert (whole.incremental, whole.count, whole.size) == (False, 8, 512)
    same = uring.receive_buffers(ring, 13, 4, 1024, incremental=False)
    assert (same.incremental, same.count, same.size) == (False, 4, 1024)
