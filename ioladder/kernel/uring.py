"""io_uring, ioladder's completion port: the ring, provided buffer rings, and why they are built so.

The ring itself is the C extension :mod:`ioladder.kernel._uring` (raw ``io_uring_setup/enter/
register`` syscalls, the kernel's uapi header, no liburing). This module re-exports it with the
availability check and a splice-based sendfile helper. Everything a rung needs:

    ring = Ring(256)                                  # single-threaded use (the default)
    op = ring.prep_recv(fd, buf, ctx)                 # -> op id; ctx comes back with the result
    for ctx, res, flags in ring.wait(1, timeout=1.0): # submits, blocks (GIL released), reaps all
        ...                                           # res: bytes, fd, or -errno

Design choices (the kernel behaviour that forced each):

Buffers live as long as the kernel may touch them.
    Every op owns a slot holding a strong reference to its ``ctx`` and a buffer export
    (``PyObject_GetBuffer``; writable for receives) of every buffer it names, plus the sockaddr,
    timespec or iovec the kernel reads. They are released only by the op's *final* completion
    (a CQE without ``CQE_F_MORE``). Dropping your own reference is therefore safe, and a pending
    ``bytearray`` cannot be resized (``BufferError``).

Op ids are ``generation << 32 | slot``, and are the kernel's ``user_data``.
    Slots are reused through a free list; a slot's generation changes on release, so a stale id
    never matches (never cancels) the newer op in the same slot: ``prep_cancel(stale_id)``
    completes with ``-ENOENT``.

Setup flags: fastest first, with fallbacks.
    ``SUBMIT_ALL | COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER | DEFER_TASKRUN``, dropping flags
    the kernel rejects with EINVAL (6.1 -> 6.0 -> 5.19 -> 5.18 -> plain). With DEFER_TASKRUN,
    completion work runs only inside our own ``io_uring_enter``, batched, never interrupting the
    interpreter; TASKRUN_FLAG makes the kernel raise a flag when such work is parked, so
    ``reap()`` enters the kernel only when there is something to do. The price is that only the
    creating thread may submit or wait. ``single_issuer=False`` (worker pools, the ``iocp``
    rung) uses ``SUBMIT_ALL`` only: with COOP_TASKRUN a completion would wait on the *submitting*
    thread, which may be busy running Python, while the other workers sleep in ``wait()``.
    ``Ring.setup_flags`` tells what the kernel accepted. Extra flags may be requested with
    ``flags=``; SQPOLL/IOPOLL/SQE128/CQE32 are refused because they change the ring layout or
    submission semantics this binding relies on.

Threads: the GIL is the ring lock.
    The SQ, CQ and slot table are only touched with the GIL held, in stretches that run no Python
    code; reaping copies CQEs out first and builds tuples / releases buffers afterwards, so even
    a finalizer that re-enters the ring is safe. The GIL is released only inside the blocking
    ``io_uring_enter`` of ``wait()``. Hence, on a ``single_issuer=False`` ring, any number of
    threads may block in ``wait()`` while others prepare, submit or post (``prep_nop(ctx)`` is
    PostQueuedCompletionStatus); each completion is returned to exactly one caller. A
    ``single_issuer=True`` ring raises ``RuntimeError`` when used from another thread, except
    ``wake()`` and the read-only properties. A ring is unusable in a forked child.
    The kernel ties each op to the thread whose ``io_uring_enter`` *submitted* it (``wait()``,
    ``reap()``, ``submit()``, or a ``prep_*`` that found the SQ full): when that thread exits, its
    pending ops may be cancelled (``-ECANCELED``, observed on Linux 6.18). Submit from threads
    that outlive their ops -- pool workers, the main thread -- never from short-lived helpers.

Waking a blocked ``wait()``: an eventfd polled by the ring.
    At creation the ring arms a multishot ``POLL_ADD`` on a private eventfd; ``wake()`` is a plain
    ``write(2)`` to it, legal from any thread under any setup flags (with SINGLE_ISSUER +
    DEFER_TASKRUN another thread may neither submit to the ring nor wait on it, which rules out a
    posted NOP; a second ring with MSG_RING would cost a ring per ring). The poll completion is
    internal: the ``wait()`` that reaps it returns, possibly with an empty list. Wakes may
    coalesce. Because the kernel only returns from ``io_uring_enter`` once ``min_complete``
    completions exist, ``wake()`` ends waits whose remaining need is one completion (the usual
    ``wait(1)``); use ``prep_nop`` for countable posts.

Completions come in batches.
    ``wait()``/``reap()`` return one list of ``(ctx, res, flags)`` tuples holding every completion
    available; ``res`` is the raw CQE result (negative errno on failure) and ``flags`` the CQE
    flags. ``wait()`` loops until ``min_complete`` (DEFER_TASKRUN may return early), retries
    EINTR (running signal handlers), and returns what it has on timeout. ``dispatch()`` is the
    same wait without the list: it calls ``ctx.<method>(res, flags)`` (or ``ctx(res, flags)``)
    for each completion from C, in order; a callback that raises stops it (unless ``on_error``
    takes the exception) and the completions not yet delivered stay in the ring's backlog,
    delivered first by the next call. A callback may prepare ops but not reap the same ring.

Registered ring fd.
    A single-issuer ring registers its fd in the creating thread's registered-ring table
    (``IORING_REGISTER_RING_FDS``, Linux 5.18) and enters with ``IORING_ENTER_REGISTERED_RING``,
    sparing the kernel an fd lookup per ``io_uring_enter``; ``Ring.registered_fd`` says whether
    it did (``register_fd=False``, older kernels, multi-threaded rings and a full table --
    16 per thread -- use the fd). close() unregisters it, on the owner thread.

CQ overflow loses nothing.
    With ``IORING_FEAT_NODROP`` the kernel queues completions that do not fit; when the SQ ring
    shows ``IORING_SQ_CQ_OVERFLOW`` the reaper flushes them with a GETEVENTS enter.
    ``Ring.overflow_count`` counts those flushes; ``Ring.cq_dropped`` is the kernel's count of
    completions it had to drop (0 unless memory ran out).

Multishot ops and provided buffers.
    Multishot accept/recv/poll post completions with ``CQE_F_MORE`` while armed; a completion
    without it ends the op (error, EOF, cancel, or ``-ENOBUFS`` when the buffer ring is empty) and
    the caller re-arms. ``ring.buffer_ring(gid, count, size)`` registers a provided buffer ring;
    whenever ``flags & CQE_F_BUFFER``, buffer ``flags >> CQE_BUFFER_SHIFT`` belongs to the
    caller until ``take()`` (copy out and recycle) or ``view()`` + ``recycle()``.

Close cancels, waits, then unmaps.
    ``close()`` (also on garbage collection) cancels every pending op, waits up to 2 s for their
    final completions, releases every buffer, unmaps and closes the fds. An op that still has not
    completed keeps its buffers pinned forever: a leak is better than the kernel writing into
    freed memory.

Accepted sockets get ``SOCK_NONBLOCK | SOCK_CLOEXEC``: io_uring does its own non-blocking
attempts and poll arming (measured: recv and read still wait on O_NONBLOCK sockets), while any
plain ``send``/``recv`` a rung does on the socket must never block its event thread, and fds must
not leak into child processes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os

from ioladder.kernel._uring import (
    CQE_BUFFER_SHIFT,
    CQE_F_BUF_MORE,
    CQE_F_BUFFER,
    CQE_F_MORE,
    CQE_F_NOTIF,
    CQE_F_SOCK_NONEMPTY,
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLPRI,
    EPOLLRDHUP,
    FEAT_EXT_ARG,
    FEAT_NODROP,
    FEAT_SINGLE_MMAP,
    MSG_DONTWAIT,
    MSG_MORE,
    MSG_NOSIGNAL,
    MSG_PEEK,
    MSG_WAITALL,
    SETUP_CLAMP,
    SETUP_COOP_TASKRUN,
    SETUP_CQSIZE,
    SETUP_DEFER_TASKRUN,
    SETUP_SINGLE_ISSUER,
    SETUP_SUBMIT_ALL,
    SETUP_TASKRUN_FLAG,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SOCK_CLOEXEC,
    SOCK_NONBLOCK,
    SPLICE_F_MORE,
    SPLICE_F_MOVE,
    SPLICE_F_NONBLOCK,
    BufferRing,
    RecvContext,
    Ring,
    SendContext,
    UringUnavailable,
    _availability,
)

__all__ = [
    "Ring",
    "BufferRing",
    "RecvContext",
    "SendContext",
    "UringUnavailable",
    "availability",
    "require",
    "buffer_id",
    "receive_buffers",
    "SpliceSendfile",
    "SpliceStep",
    "CQE_F_BUFFER",
    "CQE_F_BUF_MORE",
    "CQE_F_MORE",
    "CQE_F_SOCK_NONEMPTY",
    "CQE_F_NOTIF",
    "CQE_BUFFER_SHIFT",
    "SETUP_CLAMP",
    "SETUP_SUBMIT_ALL",
    "SETUP_COOP_TASKRUN",
    "SETUP_TASKRUN_FLAG",
    "SETUP_SINGLE_ISSUER",
    "SETUP_DEFER_TASKRUN",
    "SETUP_CQSIZE",
    "FEAT_SINGLE_MMAP",
    "FEAT_NODROP",
    "FEAT_EXT_ARG",
    "EPOLLIN",
    "EPOLLPRI",
    "EPOLLOUT",
    "EPOLLERR",
    "EPOLLHUP",
    "EPOLLRDHUP",
    "MSG_NOSIGNAL",
    "MSG_WAITALL",
    "MSG_DONTWAIT",
    "MSG_MORE",
    "MSG_PEEK",
    "SOCK_NONBLOCK",
    "SOCK_CLOEXEC",
    "SHUT_RD",
    "SHUT_WR",
    "SHUT_RDWR",
    "SPLICE_F_MOVE",
    "SPLICE_F_NONBLOCK",
    "SPLICE_F_MORE",
]

_log = logging.getLogger("ioladder")

# fcntl's names exist from Python 3.10 on; the numbers are Linux ABI.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


@functools.cache
def availability() -> str | None:
    """None if io_uring is usable here, else the exact reason it is not.

    Tries a tiny ring once per process (cached): ``io_uring_setup`` and ``io_uring_enter``, since
    a seccomp filter may allow one and not the other. The reason names the cause: the
    ``kernel.io_uring_disabled`` sysctl (1: only CAP_SYS_ADMIN / ``kernel.io_uring_group``; 2: off
    for everyone), EPERM/EACCES from a seccomp or container policy, ENOSYS from a kernel that is
    too old or built without io_uring, or a kernel older than this binding needs (5.11).
    """
    return _availability()


def require() -> None:
    """Raise :class:`UringUnavailable` (an OSError) with the reason if io_uring is unusable."""
    reason = availability()
    if reason is not None:
        raise UringUnavailable(errno.ENOTSUP, reason)


def buffer_id(flags: int) -> int | None:
    """The provided-buffer id a completion carries, or None (``CQE_F_BUFFER`` clear)."""
    return flags >> CQE_BUFFER_SHIFT if flags & CQE_F_BUFFER else None


def receive_buffers(ring: Ring, group_id: int, count: int, size: int, *,
                    incremental: bool = True,
                    whole: tuple[int, int] | None = None) -> BufferRing:
    """A provided buffer ring for receives, consumed incrementally where the kernel can.

    ``incremental`` (``IOU_PBUF_RING_INC``, Linux 6.12): a receive takes only the bytes it
    needs of the current buffer, so small messages from every connection fill the slab front
    to back (hot in the caches and the TLB) rather than each starting a buffer of its own.
    On an older kernel (``EINVAL``) the ring consumes whole buffers instead, and that is
    logged; ``whole`` is then its (count, size), or the same as the incremental one.
    ``incremental=False`` asks for whole buffers directly. Either way the caller passes
    ``flags & CQE_F_BUF_MORE`` to ``take``/``recycle``.
    """
    if incremental:
        try:
            return ring.buffer_ring(group_id, count, size, incremental=True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _log.info("%s; receives consume whole buffers", exc.strerror)
    count, size = whole or (count, size)
    return ring.buffer_ring(group_id, count, size)


_FILL = 0
_DRAIN = 1
_POLL = 2


class SpliceStep:
    """The ``ctx`` of the ops a :class:`SpliceSendfile` submits.

    Route such a completion back with ``ctx.complete(res)``; it returns True once the whole
    transfer is over (see ``ctx.transfer.sent`` / ``.error``).
    """

    __slots__ = ("transfer", "kind")

    def __init__(self, transfer: SpliceSendfile, kind: int) -> None:
        self.transfer = transfer
        self.kind = kind

    def complete(self, res: int) -> bool:
        return self.transfer._complete(self.kind, res)


class SpliceSendfile:
    """TransmitFile on io_uring: file -> pipe -> socket with ``IORING_OP_SPLICE``, zero-copy.

    Each chunk (at most the pipe's capacity) is two linked splices: file into the pipe, then pipe
    into ``out_fd``. Only one chunk is in flight, so the pipe never fills beyond one chunk. A short
    fill breaks the link (the kernel cancels the drain with ``-ECANCELED``); the bytes already in
    the pipe are then drained by a standalone splice before the next chunk, so short transfers on
    either side are resumed, never lost.

    Usage::

        t = SpliceSendfile(ring, file_fd, sock_fd, offset=0, count=None, ctx=my_ctx)
        t.start()
        ...
        for ctx, res, flags in ring.wait():
            if isinstance(ctx, SpliceStep):
                if ctx.complete(res):          # finished: ctx.transfer.sent, .error (errno or 0)
                    ...

    ``count=None`` sends up to the end of the file. The helper owns a pipe, closed when the
    transfer ends (or by :meth:`close`, which must not be called while its ops are pending).
    """

    def __init__(
        self,
        ring: Ring,
        in_fd: int,
        out_fd: int,
        offset: int = 0,
        count: int | None = None,
        *,
        chunk: int = 1 << 16,
        ctx: object = None,
    ) -> None:
        if count is None:
            count = max(0, os.fstat(in_fd).st_size - offset)
        if offset < 0 or count < 0 or chunk <= 0:
            raise ValueError("offset, count and chunk must be >= 0 (chunk > 0)")
        self.ring = ring
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.count = count
        self.ctx = ctx
        self.sent = 0
        self.error = 0
        self.done = count == 0
        self._offset = offset
        self._remaining = count
        self._in_pipe = 0
        self._outstanding = 0
        self._pipe_r, self._pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self._pipe_w, _F_SETPIPE_SZ, chunk)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: use what the pipe has
        self.chunk = min(chunk, fcntl.fcntl(self._pipe_w, _F_GETPIPE_SZ))
        self._fill = SpliceStep(self, _FILL)
        self._drain = SpliceStep(self, _DRAIN)
        self._poll = SpliceStep(self, _POLL)

    def start(self) -> bool:
        """Prepare the first chunk; returns True if there was nothing to send."""
        if self.done:
            self.close()
            return True
        self._next()
        return False

    def _next(self) -> None:
        # io_uring's splice into a non-blocking socket fails with EAGAIN instead of waiting
        # (accepted sockets are non-blocking), so every drain is linked behind a poll for
        # writability; an EAGAIN that still slips through is retried by the next round.
        ring = self.ring
        if self._in_pipe:
            ring.prep_poll_add(self.out_fd, EPOLLOUT, self._poll, link=True)
            ring.prep_splice(self._pipe_r, -1, self.out_fd, -1, self._in_pipe, self._drain,
                             SPLICE_F_MOVE)
            self._outstanding = 2
            return
        n = min(self.chunk, self._remaining)
        ring.prep_splice(self.in_fd, self._offset, self._pipe_w, -1, n, self._fill,
                         SPLICE_F_MOVE, link=True)
        ring.prep_poll_add(self.out_fd, EPOLLOUT, self._poll, link=True)
        ring.prep_splice(self._pipe_r, -1, self.out_fd, -1, n, self._drain, SPLICE_F_MOVE)
        self._outstanding = 3

    def _complete(self, kind: int, res: int) -> bool:
        self._outstanding -= 1
        if kind == _POLL:
            if res < 0 and res != -errno.ECANCELED:
                self.error = -res
        elif kind == _FILL:
            if res > 0:
                self._in_pipe += res
                self._offset += res
                self._remaining -= res
            elif res == 0:
                self._remaining = 0  # the file ended before count bytes
            elif res != -errno.ECANCELED:
                self.error = -res
        else:
            if res > 0:
                self._in_pipe -= res
                self.sent += res
            elif res == 0 and self._in_pipe:
                self.error = errno.EIO  # nothing moved out of a non-empty pipe: give up
            elif res < 0 and res not in (-errno.ECANCELED, -errno.EAGAIN):
                self.error = -res
        if self._outstanding:
            return False
        if self.error or (self._remaining == 0 and self._in_pipe == 0):
            self.done = True
            self.close()
            return True
        self._next()
        return False

    def close(self) -> None:
        """Close the helper's pipe (idempotent)."""
        for fd in (self._pipe_r, self._pipe_w):
            if fd >= 0:
                os.close(fd)
        self._pipe_r = self._pipe_w = -1
