"""Ring.dispatch(): completions delivered by calling their ctx from C, in completion order.

What is checked, on real rings and loopback sockets: order and values (nops, a multishot recv on
a buffer ring), a raising callback (the exception propagates, the completions not yet delivered
stay in the backlog and come first next time: nothing lost, nothing twice), ``on_error``,
reference counts (ctx and buffers released exactly once, buffers before the callback), what a
callback may do with the ring (prepare, submit, close: yes; wait/reap/dispatch: RuntimeError),
and the batch / send-gate attributes.
"""

from __future__ import annotations

import errno
import gc
import sys
import threading
import time

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


class Ctx:
    """A ctx recording its completions into a shared log; raises when told to."""

    def __init__(self, name, log, raise_exc=None):
        self.name = name
        self.log = log
        self.raise_exc = raise_exc

    def _complete(self, res, flags):
        self.log.append((self.name, res, flags))
        if self.raise_exc is not None:
            exc, self.raise_exc = self.raise_exc, None
            raise exc

    __call__ = _complete


def _dispatch_all(ring, n, method="_complete", timeout=5.0):
    """Dispatch until n completions were delivered (bounded)."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {n} completions delivered within {timeout}s"
        got += ring.dispatch(n - got, left, method)
    return got


@pytest.mark.parametrize("method", ["_complete", None])
def test_dispatch_delivers_in_completion_order(ring, method):
    log: list = []
    for i in range(10):
        ring.prep_nop(Ctx(i, log))
    assert ring.dispatch(10, 5.0, method) == 10
    assert log == [(i, 0, 0) for i in range(10)]
    assert ring.inflight == 0


def test_dispatch_results_match_wait(ring, socks):
    """The same ops give the same (res, flags) through dispatch() as through wait()."""
    a, b = socks.pair()
    log: list = []
    buf = bytearray(16)
    b.sendall(b"hello")
    ring.prep_recv(a.fileno(), buf, Ctx("recv", log))
    ring.prep_send(a.fileno(), b"world!", Ctx("send", log))
    ring.prep_timeout(0.01, Ctx("timeout", log))
    _dispatch_all(ring, 3)
    assert sorted(log) == [("recv", 5, 0), ("send", 6, 0), ("timeout", -errno.ETIME, 0)]
    assert bytes(buf[:5]) == b"hello"
    assert b.recv(16) == b"world!"


def test_dispatch_multishot_recv_hands_over_buffers(ring, socks):
    if not (ring.has_buffer_rings and ring.has_recv_multishot):
        pytest.skip("buffer rings + multishot recv need Linux 6.0")
    a, b = socks.pair()
    br = ring.buffer_ring(3, 8, 64)
    data: list = []

    class Recv:
        def _complete(self, res, flags):
            assert flags & uring.CQE_F_MORE and flags & uring.CQE_F_BUFFER
            data.append(br.take(uring.buffer_id(flags), res))

    ring.prep_recv_multishot(a.fileno(), br, Recv())
    for msg in (b"one", b"two", b"three"):
        b.sendall(msg)
        assert ring.dispatch(1, 5.0, "_complete") == 1
    assert data == [b"one", b"two", b"three"]
    assert br.available == 8


def test_raising_callback_propagates_and_loses_nothing(ring):
    log: list = []
    boom = ValueError("boom")
    ctxs = [Ctx(i, log, boom if i == 2 else None) for i in range(6)]
    for c in ctxs:
        ring.prep_nop(c)
    with pytest.raises(ValueError) as info:
        ring.dispatch(6, 5.0, "_complete")
    assert info.value is boom
    assert log == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert ring.inflight == 0  # reaped: the rest is in the backlog, not in the kernel
    # The next call delivers the rest first and does not block for more.
    t0 = time.monotonic()
    assert ring.dispatch(1, 5.0, "_complete") == 3
    assert time.monotonic() - t0 < 1.0
    assert log == [(i, 0, 0) for i in range(6)]
    assert ring.dispatch(0) == 0  # nothing twice


def test_raise_while_delivering_the_backlog_keeps_the_rest(ring):
    log: list = []
    ctxs = [Ctx(i, log) for i in range(6)]
    ctxs[1].raise_exc = KeyError("first")
    ctxs[3].raise_exc = KeyError("second")
    for c in ctxs:
        ring.prep_nop(c)
    with pytest.raises(KeyError, match="first"):
        ring.dispatch(6, 5.0, "_complete")
    with pytest.raises(KeyError, match="second"):  # raised from the backlog
        ring.dispatch(0, None, "_complete")
    ring.prep_nop(Ctx("late", log))
    _dispatch_all(ring, 3)
    # The undelivered ones come before a completion reaped later.
    assert [name for name, _, _ in log] == [0, 1, 2, 3, 4, 5, "late"]


def test_undelivered_completions_go_to_wait_too(ring):
    """The backlog is shared: after a raise, wait() returns the rest, as tuples."""
    log: list = []
    ctxs = [Ctx(i, log, RuntimeError("x") if i == 0 else None) for i in range(3)]
    for c in ctxs:
        ring.prep_nop(c)
    with pytest.raises(RuntimeError):
        ring.dispatch(3, 5.0, "_complete")
    rest = ring.wait(0)
    assert [(c.name, res, fl) for c, res, fl in rest] == [(1, 0, 0), (2, 0, 0)]


def test_on_error_reports_and_carries_on(ring):
    log: list = []
    errors: list = []
    ctxs = [Ctx(i, log, ValueError(i) if i in (1, 3) else None) for i in range(5)]
    for c in ctxs:
        ring.prep_nop(c)

    def on_error(exc, ctx):
        assert exc.__traceback__ is not None
        errors.append((type(exc), exc.args, ctx))

    assert ring.dispatch(5, 5.0, "_complete", on_error) == 5
    assert [name for name, _, _ in log] == [0, 1, 2, 3, 4]
    assert errors == [(ValueError, (1,), ctxs[1]), (ValueError, (3,), ctxs[3])]


def test_on_error_does_not_swallow_keyboard_interrupt(ring):
    log: list = []
    ctxs = [Ctx(i, log, KeyboardInterrupt() if i == 1 else None) for i in range(4)]
    for c in ctxs:
        ring.prep_nop(c)
    with pytest.raises(KeyboardInterrupt):
        ring.dispatch(4, 5.0, "_complete", lambda exc, ctx: log.append("on_error"))
    assert "on_error" not in log
    assert ring.dispatch(0, None, "_complete") == 2
    assert [name for name, _, _ in log] == [0, 1, 2, 3]


def test_on_error_that_raises_stops_the_delivery(ring):
    log: list = []
    ctxs = [Ctx(i, log, ValueError("cb") if i == 0 else None) for i in range(3)]
    for c in ctxs:
        ring.prep_nop(c)

    def on_error(exc, ctx):
        raise LookupError("handler") from exc

    with pytest.raises(LookupError, match="handler"):
        ring.dispatch(3, 5.0, "_complete", on_error)
    assert ring.dispatch(0, None, "_complete") == 2
    assert [name for name, _, _ in log] == [0, 1, 2]


def test_refcounts_ctx_and_buffers_released_exactly_once(ring, socks):
    a, b = socks.pair()
    log: list = []
    ctx = Ctx("c", log)
    raiser = Ctx("r", log)
    buf = bytearray(64)

    def cycle(rounds):
        for _ in range(rounds):
            for _ in range(8):
                ring.prep_nop(ctx)
            raiser.raise_exc = OSError("x")
            ring.prep_nop(raiser)
            for _ in range(4):
                ring.prep_nop(ctx)
            b.sendall(b"0123456789")
            ring.prep_recv(a.fileno(), buf, ctx)
            ring.prep_send(b.fileno(), b"abc", ctx)
            while len(log) < 15:  # every delivery is logged, the raising one too
                try:
                    ring.dispatch(1, 5.0, "_complete")
                except OSError:
                    pass
            assert a.recv(64) == b"abc"
            log.clear()

    cycle(20)  # warm up free lists and caches
    gc.collect()
    base = (sys.getrefcount(ctx), sys.getrefcount(raiser), sys.getrefcount(buf))
    cycle(300)
    gc.collect()
    assert (sys.getrefcount(ctx), sys.getrefcount(raiser), sys.getrefcount(buf)) == base
    assert ring.inflight == 0


def test_buffer_is_released_before_the_callback(ring, socks):
    """A final completion's buffer export is gone when its callback runs: the bytearray may be
    resized there (it could not be while the ring held it)."""
    a, b = socks.pair()
    buf = bytearray(8)
    seen: list = []

    def on_recv(res, flags):
        buf.extend(b"more")  # BufferError while exported
        seen.append(res)

    b.sendall(b"12345678")
    ring.prep_recv(a.fileno(), buf, on_recv)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    assert ring.dispatch(1, 5.0) == 1
    assert seen == [8] and bytes(buf) == b"12345678more"


def test_callback_may_prepare_and_submit(ring):
    log: list = []

    def first(res, flags):
        log.append("first")
        ring.prep_nop(lambda res, flags: log.append("second"))
        ring.submit()

    ring.prep_nop(first)
    assert ring.dispatch(1, 5.0) == 1
    assert log == ["first"]
    assert ring.dispatch(1, 5.0) == 1  # the op prepared in the callback
    assert log == ["first", "second"]


@pytest.mark.parametrize("call", ["dispatch", "wait", "reap"])
def test_callback_reentering_the_ring_raises(ring, call):
    errors: list = []
    log: list = []

    def cb(res, flags):
        try:
            getattr(ring, call)(0)
        except RuntimeError as exc:
            errors.append(str(exc))

    ring.prep_nop(cb)
    ring.prep_nop(Ctx("after", log))
    assert ring.dispatch(2, 5.0) == 2
    assert len(errors) == 1 and "dispatch() callback" in errors[0]
    assert log == [("after", 0, 0)]
    assert ring.wait(0) == []  # and the ring is usable again outside the callback


def test_callback_may_dispatch_another_ring(make_ring):
    outer, inner = make_ring(8), make_ring(8)
    log: list = []

    def cb(res, flags):
        inner.prep_nop(lambda res, flags: log.append("inner"))
        log.append(("n", inner.dispatch(1, 5.0)))

    outer.prep_nop(cb)
    assert outer.dispatch(1, 5.0) == 1
    assert log == ["inner", ("n", 1)]


def test_callback_may_close_the_ring(make_ring):
    ring = make_ring(8)
    log: list = []

    def closer(res, flags):
        log.append("closer")
        ring.close()

    ring.prep_nop(closer)
    ring.prep_nop(Ctx("next", log))
    ring.dispatch(2, 5.0)
    assert log[0] == "closer"
    assert ring.closed
    with pytest.raises(ValueError, match="closed ring"):
        ring.dispatch(0)


def test_timeout_and_wake(ring):
    t0 = time.monotonic()
    assert ring.dispatch(1, 0.05) == 0
    assert 0.04 <= time.monotonic() - t0 < 2.0
    threading.Timer(0.05, ring.wake).start()
    t0 = time.monotonic()
    assert ring.dispatch(1, 5.0) == 0
    assert time.monotonic() - t0 < 2.0


def test_dispatch_from_another_thread_is_refused(ring):
    errors: list = []

    def other():
        try:
            ring.dispatch(0)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert len(errors) == 1


def test_argument_checks(ring):
    with pytest.raises(TypeError):
        ring.dispatch(0, None, 42)
    with pytest.raises(TypeError):
        ring.dispatch(0, None, None, "not callable")
    with pytest.raises(ValueError):
        ring.dispatch(0, -1.0)
    ring.prep_nop(object())
    with pytest.raises(TypeError):  # not callable: propagates like any callback error
        ring.dispatch(1, 5.0)
    assert ring.inflight == 0


def test_batch_and_send_gate(ring):
    seen: list = []

    def cb(res, flags):
        seen.append((ring.batch, ring.sync_send))

    assert ring.batch == 0 and ring.sync_send is False and ring.sync_send_batch == 0
    ring.sync_send_batch = 2
    for _ in range(2):
        ring.prep_nop(cb)
    assert ring.dispatch(2, 5.0) == 2
    assert seen == [(2, True), (2, True)]
    seen.clear()
    for _ in range(3):
        ring.prep_nop(cb)
    assert ring.dispatch(3, 5.0) == 3
    assert seen == [(3, False)] * 3
    assert ring.batch == 3  # the last batch, until the next one
    with pytest.raises(ValueError):
        ring.sync_send_batch = -1


# ------------------------------------------------------------------ until: passes in C


def test_until_runs_pass_after_pass_until_a_container_fills(ring):
    """Each callback posts the next nop (a new pass each time); the fifth fills the queue."""
    queue: list = []
    seen: list = []

    def step(res, flags):
        seen.append(res)
        if len(seen) < 5:
            ring.prep_nop(step)
        else:
            queue.append("call me")

    ring.prep_nop(step)
    assert ring.dispatch(1, None, None, None, (queue, [])) == 5
    assert seen == [0] * 5 and queue == ["call me"]


def test_until_returns_on_wake_from_another_thread(ring):
    waker = threading.Timer(0.2, ring.wake)
    waker.start()
    try:
        t0 = time.monotonic()
        assert ring.dispatch(1, None, None, None, ([],)) == 0  # the wake is not delivered
        assert 0.1 < time.monotonic() - t0 < 5.0
    finally:
        waker.cancel()
        waker.join()


def test_until_returns_on_wake_from_a_callback(ring):
    """A callback that must end the run from the dispatching thread itself calls wake()."""
    seen: list = []

    def step(res, flags):
        seen.append(res)
        if len(seen) == 3:
            ring.wake()
        ring.prep_nop(step)  # more work would always be there: only the wake ends the run

    ring.prep_nop(step)
    assert ring.dispatch(1, 5.0, None, None, ([],)) >= 3
    assert len(seen) >= 3  # the nop still prepared is cancelled when the fixture closes the ring


def test_until_returns_at_the_timeout(ring):
    t0 = time.monotonic()
    assert ring.dispatch(1, 0.2, None, None, ([],)) == 0
    assert 0.15 < time.monotonic() - t0 < 5.0


def test_until_a_raising_callback_ends_the_run_and_loses_nothing(ring):
    log: list = []
    ring.prep_nop(Ctx("a", log, raise_exc=ValueError("boom")))
    ring.prep_nop(Ctx("b", log))
    with pytest.raises(ValueError, match="boom"):
        ring.dispatch(2, None, "_complete", None, ([],))
    assert ring.dispatch(0, 0.0, "_complete") == 1  # b, from the backlog
    assert [name for name, _, _ in log] == ["a", "b"]


def test_until_argument_checks(ring):
    with pytest.raises(TypeError, match="tuple"):
        ring.dispatch(1, None, None, None, [[]])
    with pytest.raises(ValueError, match="min_complete >= 1"):
        ring.dispatch(0, None, None, None, ([],))
    assert ring.inflight == 0
