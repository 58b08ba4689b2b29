"""The registered ring fd (IORING_REGISTER_RING_FDS, Linux 5.18) and its fallback to the plain fd.

A single-issuer ring registers its fd in the creating thread's registered-ring table and enters
the kernel with IORING_ENTER_REGISTERED_RING; ``register_fd=False``, a multi-threaded ring, or a
full table (16 entries per thread) fall back to the fd. Both paths run the same ops here.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from ioladder.kernel import uring

pytestmark = pytest.mark.timeout(60)


def _registration_supported() -> bool:
    with uring.Ring(2) as probe:
        return probe.registered_fd


needs_registration = pytest.mark.skipif(
    uring.availability() is None and not _registration_supported(),
    reason="this kernel has no IORING_REGISTER_RING_FDS (Linux 5.18)",
)


def _run_ops(ring, socks):
    """Nops, a send/recv pair on loopback, a timeout, a wake: through wait() and dispatch()."""
    a, b = socks.pair()
    buf = bytearray(16)
    ring.prep_nop("nop")
    ring.prep_send(b.fileno(), b"ping", "send")
    ring.prep_recv(a.fileno(), buf, "recv")
    got = []
    while len(got) < 3:
        got += [(c, r) for c, r, _ in ring.wait(3 - len(got), timeout=5)]
    assert sorted(got) == [("nop", 0), ("recv", 4), ("send", 4)] and buf[:4] == b"ping"
    log = []
    ring.prep_timeout(0.01, lambda res, flags: log.append(res))
    assert ring.dispatch(1, 5.0) == 1 and log == [-errno.ETIME]
    ring.wake()
    assert ring.dispatch(1, 5.0) == 0
    assert ring.inflight == 0


@needs_registration
def test_single_issuer_ring_registers_and_works(make_ring, socks):
    ring = make_ring(16)
    assert ring.registered_fd
    _run_ops(ring, socks)


@pytest.mark.parametrize("kwargs", [{"register_fd": False}, {"single_issuer": False}])
def test_fallback_rings_use_the_fd_and_work(make_ring, socks, kwargs):
    ring = make_ring(16, **kwargs)
    assert not ring.registered_fd
    _run_ops(ring, socks)


def _in_thread(fn):
    """Run fn in a fresh thread (its own registered-ring table); return or raise its result."""
    box = []

    def run():
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box.append((False, exc))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert box, "thread did not finish"
    ok, value = box[0]
    if not ok:
        raise value
    return value


@needs_registration
def test_a_full_table_falls_back_to_the_fd():
    """16 registered rings per thread: the 17th and later use the fd, and work all the same."""

    def many():
        rings = [uring.Ring(4) for _ in range(20)]
        try:
            flags = [r.registered_fd for r in rings]
            for r in rings:
                r.prep_nop("x")
                assert [c for c, _, _ in r.wait(1, timeout=5)] == ["x"]
            return flags
        finally:
            for r in rings:
                r.close()

    flags = _in_thread(many)
    assert flags[0] and not flags[-1]
    assert 1 <= sum(flags) <= 16


@needs_registration
def test_close_unregisters():
    """Each close frees its table entry: far more than 16 rings in sequence all register."""

    def sequence():
        out = []
        for _ in range(40):
            with uring.Ring(4) as r:
                out.append(r.registered_fd)
                r.prep_nop(None)
                r.wait(1, timeout=5)
        return out

    assert all(_in_thread(sequence))


@needs_registration
def test_enter_goes_through_the_registered_index():
    """With the fd number pointing elsewhere, only the registered path can still reach the ring:
    the registered ring keeps working, the fallback ring fails. (Run in a thread: the orphaned
    registration is dropped by the kernel when the thread exits.)"""

    def hijacked(register_fd):
        r = uring.Ring(4, register_fd=register_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            os.dup2(null, r.fd)  # the ring's fd now names /dev/null
            r.prep_nop("through")
            try:
                return [c for c, _, _ in r.wait(1, timeout=5)]
            except OSError as exc:
                return exc.errno
        finally:
            os.close(null)
            r.close()

    assert _in_thread(lambda: hijacked(True)) == ["through"]
    assert _in_thread(lambda: hijacked(False)) == errno.EOPNOTSUPP
