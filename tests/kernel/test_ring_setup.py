"""Ring setup: availability, flag fallbacks, features, the opcode probe, clear errors."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from ioladder.kernel import _uring, uring

pytestmark = pytest.mark.timeout(30)


@pytest.mark.without_uring
def test_availability_is_none_or_a_reason_and_cached():
    first = uring.availability()
    assert first is None or (isinstance(first, str) and first)
    assert uring.availability() is first


@pytest.mark.without_uring
def test_unavailable_is_an_oserror():
    assert issubclass(uring.UringUnavailable, OSError)
    exc = uring.UringUnavailable(errno.EPERM, "blocked")
    assert exc.errno == errno.EPERM and "blocked" in str(exc)


@pytest.mark.without_uring
@pytest.mark.parametrize(
    "err, disabled, words",
    [
        (errno.EPERM, 2, ["io_uring_disabled = 2", "all processes"]),
        (errno.EPERM, 1, ["io_uring_disabled = 1", "CAP_SYS_ADMIN", "io_uring_group"]),
        (errno.EPERM, 0, ["EPERM", "seccomp", "container"]),
        (errno.EACCES, 0, ["EACCES", "seccomp"]),
        (errno.ENOSYS, 0, ["ENOSYS", "CONFIG_IO_URING", "5.1"]),
        (errno.ENOTSUP, 0, ["EXT_ARG", "5.11"]),
    ],
)
def test_unavailable_reason_names_the_exact_cause(err, disabled, words):
    msg = _uring._reason_for_errno(err, io_uring_disabled=disabled, io_uring_group=-1)
    for w in words:
        assert w in msg, (w, msg)


def test_require_passes_when_available():
    uring.require()


def test_default_flags_are_the_fast_set_or_a_fallback(make_ring):
    ring = make_ring()
    flags = ring.setup_flags
    assert ring.single_issuer
    # This machine's kernel (>= 6.1) takes the whole set; older ones fall back step by step.
    if ring.supports("send_zc"):
        assert flags & uring.SETUP_SUBMIT_ALL
        assert flags & uring.SETUP_COOP_TASKRUN and flags & uring.SETUP_TASKRUN_FLAG
    if flags & uring.SETUP_DEFER_TASKRUN:
        assert flags & uring.SETUP_SINGLE_ISSUER
    assert ring.sq_entries == 256 and ring.cq_entries == 512


def test_single_issuer_false_drops_thread_bound_flags(make_ring):
    ring = make_ring(single_issuer=False)
    assert not ring.single_issuer
    assert not ring.setup_flags & (uring.SETUP_SINGLE_ISSUER | uring.SETUP_DEFER_TASKRUN)
    assert not ring.setup_flags & uring.SETUP_COOP_TASKRUN


def test_entries_round_up_and_cq_size_is_honoured(make_ring):
    ring = make_ring(5, cq_entries=100)
    assert ring.sq_entries == 8
    assert ring.cq_entries == 128


def test_features_dict_matches_mask(make_ring):
    ring = make_ring(4)
    feats = ring.features
    assert feats["nodrop"] and feats["ext_arg"]
    mask = ring.features_mask
    assert feats["single_mmap"] == bool(mask & uring.FEAT_SINGLE_MMAP)
    assert feats["nodrop"] == bool(mask & uring.FEAT_NODROP)
    assert all(isinstance(v, bool) for v in feats.values())


def test_probe_and_supports(make_ring):
    ring = make_ring(4)
    ops = ring.supported_ops
    for name in ("nop", "accept", "recv", "send", "timeout", "async_cancel", "splice", "close"):
        assert name in ops
        assert ring.supports(name)
    assert ring.supports("IORING_OP_RECV") and ring.supports("Recv")
    assert ring.supports(0)  # NOP by number
    with pytest.raises(ValueError, match="unknown io_uring op"):
        ring.supports("teleport")
    for flag in (ring.has_multishot_accept, ring.has_recv_multishot, ring.has_buffer_rings):
        assert isinstance(flag, bool)
    assert ring.has_buffer_rings == ring.supports("socket")


@pytest.mark.parametrize("entries", [0, -1, 65536])
def test_bad_entries_raise_value_error(entries):
    with pytest.raises(ValueError, match="entries must be between 1 and 32768"):
        uring.Ring(entries)


def test_cq_smaller_than_sq_raises_value_error():
    with pytest.raises(ValueError, match="cq_entries"):
        uring.Ring(64, cq_entries=8)


@pytest.mark.parametrize("flags", [1 << 31, 1 << 1, 1 << 10])  # unknown, SQPOLL, SQE128
def test_unsupported_flags_raise_value_error(flags):
    with pytest.raises(ValueError, match="unsupported io_uring setup flags"):
        uring.Ring(8, flags=flags)


def test_flags_the_kernel_rejects_raise_a_clear_oserror():
    # DEFER_TASKRUN without SINGLE_ISSUER is invalid on every kernel.
    with pytest.raises(OSError, match="rejected the requested flags") as info:
        uring.Ring(8, flags=uring.SETUP_DEFER_TASKRUN, single_issuer=False)
    assert info.value.errno == errno.EINVAL
    assert not isinstance(info.value, uring.UringUnavailable)


def test_single_issuer_ring_refuses_other_threads(make_ring):
    ring = make_ring(8)
    errors = []

    def use():
        for call in (lambda: ring.prep_nop(None), ring.submit, lambda: ring.wait(0), ring.reap):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))

    t = threading.Thread(target=use)
    t.start()
    t.join(10)
    assert len(errors) == 4
    assert "single_issuer" in errors[0]
    assert ring.inflight == 0


def test_closed_ring_raises_and_close_is_idempotent():
    ring = uring.Ring(8)
    ring.close()
    ring.close()
    assert ring.closed and ring.fd == -1
    with pytest.raises(ValueError, match="closed ring"):
        ring.prep_nop(None)
    with pytest.raises(ValueError, match="closed ring"):
        ring.wait(0)
    assert "closed" in repr(ring)


def test_context_manager_closes():
    with uring.Ring(8) as ring:
        assert not ring.closed and ring.fileno() == ring.fd >= 0
        assert "sq=8" in repr(ring)
    assert ring.closed


def test_ring_is_unusable_in_a_forked_child(make_ring):
    ring = make_ring(8)
    ring.prep_nop("parent")
    pid = os.fork()
    if pid == 0:  # child: must refuse, and must not disturb the parent's ring on exit
        code = 1
        try:
            ring.prep_nop("child")
        except RuntimeError as e:
            code = 0 if "fork" in str(e) else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [c[0] for c in ring.wait(1, timeout=5)] == ["parent"]


def test_single_issuer_ring_refuses_a_thread_that_reuses_its_exited_owners_identity():
    # glibc hands a new thread the exited owner's descriptor, so pthread_self() is often equal;
    # ownership is the kernel tid (what SINGLE_ISSUER binds to): the prep itself is refused
    # with a clear RuntimeError, before anything is queued for the kernel to reject.
    holder: dict[str, object] = {}
    owner = threading.Thread(target=lambda: holder.update(ring=uring.Ring(8),
                                                          ident=threading.get_ident()))
    owner.start()
    owner.join(10)
    ring = holder["ring"]
    outcomes: list[str] = []
    reused = []

    def use() -> None:
        reused.append(threading.get_ident() == holder["ident"])
        try:
            ring.prep_nop(None)  # type: ignore[attr-defined]
            outcomes.append("prep accepted")
        except RuntimeError as exc:
            outcomes.append(str(exc))

    for _ in range(5):
        t = threading.Thread(target=use)
        t.start()
        t.join(10)
    assert len(outcomes) == 5
    assert all("single_issuer" in text for text in outcomes), (outcomes, reused)
    assert ring.inflight == 0  # type: ignore[attr-defined]
    # (the ring is dropped unclosed: its owner is gone; the finalizer releases it)
