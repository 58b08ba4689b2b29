"""No leaks: many ops through the ring leave object counts, refcounts and memory where they were.

``sys.gettotalrefcount`` exists only in debug builds, so this watches what a release build can:
``sys.getrefcount`` of the ctx and buffers, ``gc`` object counts and tracemalloc totals.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest

pytestmark = pytest.mark.timeout(120)


def _cycle(ring, socks_pair, ctx, buf, rounds):
    a, b = socks_pair
    for _ in range(rounds):
        for _ in range(16):
            ring.prep_nop(ctx)
        ring.prep_recv(a.fileno(), buf, ctx)
        ring.prep_send(b.fileno(), b"0123456789abcdef", ctx)
        ring.prep_sendmsg(b.fileno(), [b"x", b"y"], ctx)
        ring.prep_timeout(0, ctx)
        got = 0
        while got < 20:
            got += len(ring.wait(20 - got, timeout=5))
        # drain what the extra sends put on the wire
        while True:
            ring.prep_recv(a.fileno(), buf, ctx, 0x40)  # MSG_DONTWAIT
            (done,) = ring.wait(1, timeout=5)
            if done[1] <= 0:
                break


def test_many_ops_leak_nothing(ring, socks):
    pair = socks.pair()
    ctx = object()
    buf = bytearray(64)
    _cycle(ring, pair, ctx, buf, 50)  # warm up free lists, caches, slot chunks
    gc.collect()
    base_ctx, base_buf = sys.getrefcount(ctx), sys.getrefcount(buf)
    base_objs = len(gc.get_objects())
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        _cycle(ring, pair, ctx, buf, 1000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, grown
    assert sys.getrefcount(ctx) == base_ctx
    assert sys.getrefcount(buf) == base_buf
    assert len(gc.get_objects()) - base_objs < 100
    assert ring.inflight == 0


def test_slots_are_reused(ring):
    ids = set()
    for _ in range(200):
        ids.add(ring.prep_nop(None) & 0xFFFFFFFF)
        ring.wait(1, timeout=5)
    assert len(ids) <= 2  # one slot, recycled (LIFO free list)
