"""The io_uring proactor: asyncio's proactor interface on :class:`ioladder.kernel.uring.Ring`.

``asyncio.proactor_events.BaseProactorEventLoop`` is written against a small object that starts
an operation and returns a future resolved when the operation completes (``recv``,
``recv_into``, ``send``, ``accept``, ``connect``, ``sendfile``, ``select`` ...); on Windows that
object is ``IocpProactor``. :class:`UringProactor` is the same object on io_uring:

* every kernel op is one SQE whose ``ctx`` is a callable ``ctx(res, flags)``; the loop reaps
  completions in batches (:meth:`UringProactor.select`) and calls each ``ctx``;
* the future an op returns is an :class:`OpFuture`: cancelling it submits ``IORING_OP_ASYNC_CANCEL``
  for the op (``CancelIoEx``). A completion that wins the race against the cancel is cleaned up
  (an accepted socket is kept for the next ``accept`` on that listener, never leaked);
* :meth:`UringProactor.close` cancels every pending op and keeps reaping until each has
  delivered its final completion, and only then closes the ring (``IocpProactor.close`` waits for
  cancelled overlapped ops the same way): no buffer or fd is released while the kernel may still
  use it.

Two Windows-only methods change meaning: ``accept_pipe``/``connect_pipe`` (named pipes) do not
exist, and ``wait_for_handle(fd)`` waits for a pollable fd (a pidfd, an eventfd) to become
readable, the Linux counterpart of waiting on a process or event handle.

The ring has no ``recvmsg``/``sendmsg`` with an address, so ``recvfrom``, ``recvfrom_into`` and
``sendto`` to an address are *readiness* operations: try the syscall, else wait for a one-shot
``POLL_ADD`` on the ring and retry. The same mechanism, level-triggered, backs the loop's
``add_reader``/``add_writer`` (see :class:`FdWatch`).

Threads: the ring is created with ``single_issuer=True`` (SINGLE_ISSUER + DEFER_TASKRUN: the
kernel runs completion work only inside our own ``io_uring_enter``), so only the thread that
created it may submit. The ring is made lazily by the first thread that needs it (normally the
one running the loop). If the loop later runs in another thread, :meth:`UringProactor.bind`
moves every re-armable op (multishot recvs and accepts, polls) to a new ring made there; it
refuses, with a clear error, while a one-shot op (a send in flight, a pending future) would be
lost by the move.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
import selectors
import socket
import threading
import time
import weakref
from asyncio import futures
from typing import Any

from ioladder.kernel import uring

from ._speedups import dispatch as _dispatch

logger = logging.getLogger("ioladder.aio")

POLLIN = uring.EPOLLIN
POLLOUT = uring.EPOLLOUT
POLLERR = uring.EPOLLERR
POLLHUP = uring.EPOLLHUP
CQE_F_MORE = uring.CQE_F_MORE
CQE_F_BUFFER = uring.CQE_F_BUFFER

DEFAULT_ENTRIES = 1024
#: provided receive buffers shared by every socket transport of one loop: count, size
DEFAULT_BUFFERS = (256, 16384)
BUFFER_GROUP = 1

#: how long close() waits for cancelled ops before giving up (and leaving them pinned)
CLOSE_TIMEOUT = 10.0

_ECANCELED = -errno.ECANCELED
_AGAIN = object()
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)  # an op's _result(): "resubmitted, not finished yet"


def _ignore(res: int, flags: int) -> None:
    """ctx of ops whose completion needs no action (cancels, best-effort shutdowns)."""


def _error(res: int) -> OSError:
    err = -res
    return OSError(err, os.strerror(err))


class OpFuture(futures.Future):
    """A future for one ring op. Cancelling it cancels the kernel op (``prep_cancel``)."""

    __slots__ = ("_op",)

    def __init__(self, op: Op | None, *, loop: Any) -> None:
        super().__init__(loop=loop)
        if self._source_traceback:
            del self._source_traceback[-1]
        self._op = op

    def _repr_info(self) -> list[str]:
        info = super()._repr_info()
        if self._op is not None:
            info.insert(1, f"op={type(self._op).__name__}")
        return info

    def cancel(self, msg: Any = None) -> bool:
        op = self._op
        if op is not None:
            self._op = None
            op.cancel()
        return super().cancel(msg=msg)


class Op:
    """One pending operation (possibly several SQEs in sequence) behind an :class:`OpFuture`.

    ``complete(res, flags)`` is the ring ctx. Subclasses implement ``_result(res, flags)``,
    which returns the future's value, raises its exception, or returns ``_AGAIN`` after
    submitting the next SQE of the same operation.
    """

    __slots__ = ("proactor", "fut", "id", "__weakref__")

    def __init__(self, proactor: UringProactor) -> None:
        self.proactor = proactor
        self.fut = OpFuture(self, loop=proactor._loop)
        self.id: int | None = None

    def _submitted(self, op_id: int) -> None:
        self.id = op_id
        self.proactor._ops[op_id] = self

    def complete(self, res: int, flags: int) -> None:
        self.proactor._ops.pop(self.id, None)
        self.id = None
        fut = self.fut
        if fut.done():  # cancelled, or the loop is closing
            self._orphaned(res, flags)
            return
        try:
            value = self._result(res, flags)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut._op = None
            fut.set_exception(exc)
        else:
            if value is not _AGAIN:
                fut._op = None
                fut.set_result(value)

    def cancel(self) -> None:
        if self.id is not None:
            self.proactor._cancel_op(self.id)

    def _result(self, res: int, flags: int) -> Any:
        raise NotImplementedError

    def _orphaned(self, res: int, flags: int) -> None:
        """The op completed after its future was cancelled: release what it produced."""


class _Recv(Op):
    __slots__ = ("buf",)

    def _result(self, res: int, flags: int) -> bytes:
        if res < 0:
            raise _error(res)
        return bytes(memoryview(self.buf)[:res])


class _RecvInto(Op):
    __slots__ = ()

    def _result(self, res: int, flags: int) -> int:
        if res < 0:
            raise _error(res)
        return res


class _Send(Op):
    """Sends the whole buffer: a short send resubmits the rest (WSASend's all-or-error)."""

    __slots__ = ("fd", "view", "sent", "flags")

    def _result(self, res: int, flags: int) -> Any:
        if res < 0:
            raise _error(res)
        self.sent += res
        if res and self.sent < len(self.view):
            ring = self.proactor.ring_for_prep()
            self._submitted(ring.prep_send(self.fd, self.view, self.complete, self.flags,
                                           start=self.sent))
            return _AGAIN
        return self.sent


class _Accept(Op):
    __slots__ = ("listener",)

    def _result(self, res: int, flags: int) -> tuple[socket.socket, Any]:
        if res < 0:
            raise _error(res)
        conn = _adopt(res, self.listener)
        return conn, _peername(conn)

    def _orphaned(self, res: int, flags: int) -> None:
        if res < 0:
            return
        # The kernel accepted a connection for a future already cancelled: hand it to an accept
        # already waiting on this listener (cancelling that one's kernel op instead), or keep it
        # for the next accept() call. A connection is never dropped.
        conn = _adopt(res, self.listener)
        item = (conn, _peername(conn))
        proactor = self.proactor
        for op in list(proactor._ops.values()):
            if isinstance(op, _Accept) and op.listener is self.listener and not op.fut.done():
                fut = op.fut
                fut._op = None
                op.cancel()  # if it wins a connection too, that one comes back here
                fut.set_result(item)
                return
        proactor._accepted[self.listener.fileno()].append(item)


class _Connect(Op):
    __slots__ = ()

    def _result(self, res: int, flags: int) -> None:
        if res < 0:
            raise _error(res)


class _Poll(Op):
    """One-shot readiness; with ``attempt``, retried until ``attempt()`` stops raising EAGAIN."""

    __slots__ = ("fd", "mask", "attempt")

    def _result(self, res: int, flags: int) -> Any:
        if res < 0:
            raise _error(res)
        if self.attempt is None:
            return res
        try:
            return self.attempt()
        except (BlockingIOError, InterruptedError):
            ring = self.proactor.ring_for_prep()
            self._submitted(ring.prep_poll_add(self.fd, self.mask, self.complete))
            return _AGAIN


class _Sendfile(Op):
    """TransmitFile: file -> pipe -> socket with ``IORING_OP_SPLICE``, zero-copy.

    A chunk is a fill (file -> pipe) linked to a drain (pipe -> socket). asyncio's sockets are
    non-blocking, so a drain may move part of the pipe or fail with EAGAIN once the socket's send
    buffer is full; what is left in the pipe is then drained again behind a ``POLLOUT`` linked
    ahead of it. Result: the bytes sent; an error after some bytes carries them as ``.sent``.
    """

    __slots__ = ("sock_fd", "file_fd", "offset", "remaining", "in_pipe", "pipe_r", "pipe_w",
                 "chunk", "sent", "ids", "error")

    def start(self, ring: uring.Ring) -> bool:
        if self.remaining <= 0:
            return True
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self.chunk = fcntl.fcntl(self.pipe_w, _F_GETPIPE_SZ)
        self.proactor._sendfiles.add(self)
        self._next(ring, False)
        return False

    def _next(self, ring: uring.Ring, wait_writable: bool) -> None:
        ids = self.ids = []
        if self.in_pipe:
            if wait_writable:
                ids.append(ring.prep_poll_add(self.sock_fd, POLLOUT, _ignore, link=True))
            ids.append(ring.prep_splice(self.pipe_r, -1, self.sock_fd, -1, self.in_pipe,
                                        self.drained, uring.SPLICE_F_MOVE))
            return
        n = min(self.chunk, self.remaining)
        ids.append(ring.prep_splice(self.file_fd, self.offset, self.pipe_w, -1, n, self.filled,
                                    uring.SPLICE_F_MOVE, link=True))
        ids.append(ring.prep_splice(self.pipe_r, -1, self.sock_fd, -1, n, self.drained,
                                    uring.SPLICE_F_MOVE))

    def filled(self, res: int, flags: int) -> None:
        if res > 0:
            self.in_pipe += res
            self.offset += res
            self.remaining -= res
        elif res == 0:
            self.remaining = 0  # the file ended early
        elif res != _ECANCELED:
            self.error = -res

    def drained(self, res: int, flags: int) -> None:
        wait = False
        if res > 0:
            self.in_pipe -= res
            self.sent += res
            wait = self.in_pipe > 0  # a short drain: the send buffer is full
        elif res == -errno.EAGAIN:
            wait = True
        elif res == _ECANCELED:
            pass  # a short or failed fill broke the link (its own completion said which)
        elif res == 0:
            if self.in_pipe and not self.error:
                self.error = errno.EPIPE
        elif not self.error:
            self.error = -res
        fut = self.fut
        if fut.done():
            self._close_pipe()
            return
        if not self.error and (self.in_pipe or self.remaining > 0):
            self._next(self.proactor.ring_for_prep(), wait)
            return
        self._close_pipe()
        fut._op = None
        if self.error:
            exc = OSError(self.error, os.strerror(self.error))
            exc.sent = self.sent  # type: ignore[attr-defined]
            fut.set_exception(exc)
        else:
            fut.set_result(self.sent)

    def cancel(self) -> None:
        for op_id in self.ids:
            self.proactor._cancel_op(op_id)

    def _close_pipe(self) -> None:
        self.proactor._sendfiles.discard(self)
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


def _adopt(fd: int, listener: socket.socket) -> socket.socket:
    """A socket object for an fd the ring accepted (SOCK_NONBLOCK | SOCK_CLOEXEC)."""
    conn = socket.socket(listener.family, listener.type, listener.proto, fileno=fd)
    conn.setblocking(False)
    return conn


def _peername(conn: socket.socket) -> Any:
    try:
        return conn.getpeername()
    except OSError:
        return None


class FdWatch:
    """Level-triggered readiness of one fd (``add_reader``/``add_writer``) on the ring.

    Each direction is a one-shot ``POLL_ADD``. When it completes the callback's handle joins the
    loop's ready queue and the poll is re-armed at once; the new SQE only reaches the kernel at
    the next ``io_uring_enter``, after the callback ran, so it fires again only if the fd is
    *still* ready: the selector loop's level-triggered contract, without a syscall per change.
    """

    __slots__ = ("proactor", "fd", "fileobj", "reader", "writer", "rarm", "warm", "__weakref__")

    def __init__(self, proactor: UringProactor, fd: int, fileobj: Any) -> None:
        self.proactor = proactor
        self.fd = fd
        self.fileobj = fileobj
        self.reader: Any = None  # events.Handle or None
        self.writer: Any = None
        self.rarm: _PollArm | None = None
        self.warm: _PollArm | None = None

    def events(self) -> int:
        return ((selectors.EVENT_READ if self.reader is not None else 0)
                | (selectors.EVENT_WRITE if self.writer is not None else 0))

    def arm(self, write: bool) -> None:
        if (self.writer if write else self.reader) is None:
            return
        if (self.warm if write else self.rarm) is not None:
            return
        arm = _PollArm(self, write)
        ring = self.proactor.ring_for_prep()
        arm.id = ring.prep_poll_add(self.fd, POLLOUT if write else POLLIN, arm.done)
        if write:
            self.warm = arm
        else:
            self.rarm = arm

    def disarm(self, write: bool) -> None:
        arm = self.warm if write else self.rarm
        if arm is None:
            return
        if write:
            self.warm = None
        else:
            self.rarm = None
        arm.watch = None
        self.proactor._cancel_op(arm.id)

    def fired(self, arm: _PollArm, res: int) -> None:
        write = arm.write
        if write:
            self.warm = None
            handle = self.writer
        else:
            self.rarm = None
            handle = self.reader
        if handle is None or handle._cancelled:
            return
        if res < 0:
            if res == _ECANCELED and not self.proactor._closing:
                self.arm(write)  # not our cancel (a thread exit): keep watching
            # -EBADF and friends: the fd was closed under the watch; epoll forgets such fds
            # silently, and so do we
            return
        self.proactor._loop._ready.append(handle)
        self.arm(write)

    # users protocol (see UringProactor.users)
    def can_migrate(self) -> bool:
        return True

    def rearm(self) -> None:
        self.rarm = self.warm = None
        self.arm(False)
        self.arm(True)

    def proactor_closing(self) -> None:
        self.disarm(False)
        self.disarm(True)


class _PollArm:
    __slots__ = ("watch", "write", "id")

    def __init__(self, watch: FdWatch, write: bool) -> None:
        self.watch: FdWatch | None = watch
        self.write = write
        self.id = 0

    def done(self, res: int, flags: int) -> None:
        watch = self.watch
        if watch is not None and (watch.warm if self.write else watch.rarm) is self:
            watch.fired(self, res)


class UringProactor:
    """asyncio's proactor interface on one io_uring ring (see the module docstring)."""

    def __init__(self, entries: int = DEFAULT_ENTRIES,
                 buffers: tuple[int, int] = DEFAULT_BUFFERS) -> None:
        uring.require()
        self._loop: Any = None
        self._entries = entries
        self._buffers = buffers
        self._ring: uring.Ring | None = None
        self._owner: int | None = None
        self._bufring: uring.BufferRing | None = None
        self._ops: dict[int, Op] = {}
        self._sendfiles: set[_Sendfile] = set()
        #: long-lived op owners (socket transports, acceptors, fd watches): can_migrate(),
        #: rearm(), proactor_closing()
        self._users: weakref.WeakSet[Any] = weakref.WeakSet()
        self._accepted: collections.defaultdict[int, collections.deque[Any]] = \
            collections.defaultdict(collections.deque)
        self._watches: dict[int, FdWatch] = {}
        self._backlog: list[tuple[Any, int, int]] = []
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        ring = self._ring
        state = "closed" if self._closed else ("no ring yet" if ring is None else
                                                f"inflight={ring.inflight}")
        return f"<{type(self).__name__} {state} ops={len(self._ops)}>"

    def set_loop(self, loop: Any) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ ring ownership

    def _new_ring(self) -> None:
        # register_fd=False: a loop may move to another thread (bind()), which drops the old
        # ring from there; a registered ring fd can only be unregistered by the thread that
        # registered it, so the old ring would stay open, its armed accepts still queued on
        # the listeners and taking wake-ups meant for the new ring's.
        self._ring = uring.Ring(self._entries, register_fd=False)
        self._owner = threading.get_native_id()
        self._bufring = None

    def _owned(self) -> bool:
        return self._owner == threading.get_native_id()

    def ring_for_prep(self) -> uring.Ring:
        """The ring, made by this thread if there is none yet; RuntimeError from a foreign thread."""
        ring = self._ring
        if ring is None:
            if self._closed:
                raise RuntimeError("the io_uring proactor is closed")
            self._new_ring()
            return self._ring  # type: ignore[return-value]
        if self._owner != threading.get_native_id():
            self.bind()
            return self._ring  # type: ignore[return-value]
        return ring

    def bufring(self) -> uring.BufferRing:
        br = self._bufring
        if br is None:
            ring = self.ring_for_prep()
            count, size = self._buffers
            br = self._bufring = uring.receive_buffers(ring, BUFFER_GROUP, count, size)
        return br

    def bind(self) -> None:
        """Make the ring usable from the calling thread (called when the loop starts running).

        A ring made by another thread is replaced: re-armable ops (multishot recv and accept,
        polls) move to the new ring; the old ring, idle, is dropped (closing its fd cancels what
        it still holds). With DEFER_TASKRUN the kernel copies no data and accepts no connection
        for a ring until its owner enters it, so nothing is lost on the way.
        """
        if self._closed:
            raise RuntimeError("the io_uring proactor is closed")
        me = threading.get_native_id()
        if self._ring is None:
            self._new_ring()
            return
        if self._owner == me:
            return
        users = list(self._users)
        blocked = [u for u in users if not u.can_migrate()]
        if self._ops or self._sendfiles or blocked or self._backlog:
            what = [repr(op) for op in list(self._ops.values())[:3]] + \
                   [repr(u) for u in blocked[:3]]
            raise RuntimeError(
                "this ioladder.aio event loop's io_uring ring belongs to another thread and "
                "still has one-shot operations in flight there (" + ", ".join(what) + "); a "
                "single-issuer ring cannot move between threads while they are pending: run "
                "the loop in one thread, or let them finish first")
        old, old_br = self._ring, self._bufring
        self._new_ring()
        for user in users:
            user.rearm()
        # dropped from a foreign thread: the ring's finalizer closes it without entering it
        del old, old_br

    # ------------------------------------------------------------------ completions

    def select(self, timeout: float | None = None) -> list[Any]:
        """Wait up to ``timeout`` for completions and dispatch them; returns [] (events are
        delivered by resolving futures and calling ctx callbacks, as IocpProactor does)."""
        ring = self.ring_for_prep()
        if self._backlog:
            cqes, self._backlog = self._backlog, []
            cqes += ring.reap()
        elif timeout is not None and timeout <= 0:
            cqes = ring.reap()
        else:
            cqes = ring.wait(1, timeout)
        self.dispatch(cqes)
        return []

    def dispatch(self, cqes: list[tuple[Any, int, int]]) -> None:
        """``ctx(res, flags)`` for each completion (the loop's own ``_speedups.dispatch``): an
        exception goes to :meth:`_handler_error`; SystemExit and KeyboardInterrupt put the
        completions not yet dispatched back in front of ``_backlog`` and propagate."""
        _dispatch(cqes, self)

    def _handler_error(self, exc: BaseException, ctx: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            logger.error("exception in io_uring completion handler %r", ctx, exc_info=exc)
            return
        loop.call_exception_handler({
            "message": "Exception in io_uring completion handler",
            "exception": exc,
            "handler": ctx,
        })

    def _cancel_op(self, op_id: int | None) -> None:
        ring = self._ring
        if op_id is None or ring is None or ring.closed or not self._owned():
            return
        ring.prep_cancel(op_id, _ignore)

    def flush(self) -> None:
        """Submit queued SQEs now: call before closing an fd that one of them names."""
        ring = self._ring
        if ring is not None and ring.pending and self._owned():
            ring.submit()

    def settle(self) -> None:
        """Submit queued SQEs and let the kernel finish what they start, now.

        With DEFER_TASKRUN a cancelled op completes only when we next enter the ring, and until
        then it pins its file: a listener closed with its accept still cancelling would keep
        accepting connections. One GETEVENTS enter settles that; the completions it reaps are
        kept for the loop's next dispatch, in order.
        """
        ring = self._ring
        if ring is not None and not ring.closed and self._owned():
            cqes = ring.reap()
            if cqes:
                self._backlog.extend(cqes)

    # ------------------------------------------------------------------ the interface

    def _check_closed(self) -> None:
        if self._closed or self._closing:
            raise RuntimeError("UringProactor is closed")

    def _result(self, value: Any) -> futures.Future:
        fut = self._loop.create_future()
        fut.set_result(value)
        return fut

    # Like IocpProactor, whose ops may complete synchronously (the future is born done), send on
    # a socket first tries the non-blocking syscall and only what would block becomes a kernel
    # op: a send that fits in the socket buffer is in the kernel before send() returns, as on
    # every other asyncio loop. (Receives stay kernel ops: asyncio's proactor transport reads
    # again before delivering what it read, and a read that completed synchronously with EOF
    # would then reach the protocol after the transport had already failed.)

    def recv(self, conn: Any, nbytes: int, flags: int = 0) -> futures.Future:
        self._check_closed()
        op = _Recv(self)
        op.buf = bytearray(nbytes)
        ring = self.ring_for_prep()
        if isinstance(conn, socket.socket):
            op._submitted(ring.prep_recv(conn.fileno(), op.buf, op.complete, flags))
        else:  # a pipe or other file: read(2) at the current position
            op._submitted(ring.prep_read(_fileno(conn), op.buf, op.complete))
        return op.fut

    def recv_into(self, conn: Any, buf: Any, flags: int = 0) -> futures.Future:
        self._check_closed()
        op = _RecvInto(self)
        ring = self.ring_for_prep()
        if isinstance(conn, socket.socket):
            op._submitted(ring.prep_recv(conn.fileno(), buf, op.complete, flags))
        else:
            op._submitted(ring.prep_read(_fileno(conn), buf, op.complete))
        return op.fut

    def send(self, conn: Any, buf: Any, flags: int = 0) -> futures.Future:
        self._check_closed()
        view = memoryview(buf).cast("B")
        total = len(view)
        sent = 0
        if isinstance(conn, socket.socket):
            try:
                sent = conn.send(view, flags)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return self._failed(exc)
        if sent >= total:
            return self._result(sent)
        op = _Send(self)
        op.view = view
        op.sent = sent
        op.fd = _fileno(conn)
        op.flags = flags | uring.MSG_NOSIGNAL
        ring = self.ring_for_prep()
        if isinstance(conn, socket.socket):
            op._submitted(ring.prep_send(op.fd, view, op.complete, op.flags, start=sent))
        else:
            op._submitted(ring.prep_write(op.fd, view, op.complete))
        return op.fut

    def _failed(self, exc: BaseException) -> futures.Future:
        fut = self._loop.create_future()
        fut.set_exception(exc)
        return fut

    def _readiness(self, conn: Any, mask: int, attempt: Any) -> futures.Future:
        """Try ``attempt()`` now; if it would block, retry it each time ``mask`` is ready."""
        self._check_closed()
        try:
            return self._result(attempt())
        except (BlockingIOError, InterruptedError):
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut = self._loop.create_future()
            fut.set_exception(exc)
            return fut
        return self.poll(conn, mask, attempt)

    def poll(self, conn: Any, mask: int, attempt: Any = None) -> futures.Future:
        """Future resolved when ``conn`` is ready for ``mask`` (POLLIN/POLLOUT): the revents, or,
        with ``attempt``, attempt()'s result once it stops raising BlockingIOError."""
        self._check_closed()
        op = _Poll(self)
        op.fd = _fileno(conn)
        op.mask = mask
        op.attempt = attempt
        op._submitted(self.ring_for_prep().prep_poll_add(op.fd, mask, op.complete))
        return op.fut

    def recvfrom(self, conn: socket.socket, nbytes: int, flags: int = 0) -> futures.Future:
        return self._readiness(conn, POLLIN, lambda: conn.recvfrom(nbytes, flags))

    def recvfrom_into(self, conn: socket.socket, buf: Any, nbytes: int = 0,
                      flags: int = 0) -> futures.Future:
        return self._readiness(conn, POLLIN, lambda: conn.recvfrom_into(buf, nbytes, flags))

    def sendto(self, conn: socket.socket, buf: Any, flags: int = 0,
               addr: Any = None) -> futures.Future:
        if addr is None:
            return self.send(conn, buf, flags)
        return self._readiness(conn, POLLOUT, lambda: conn.sendto(buf, flags, addr))

    def accept(self, listener: socket.socket) -> futures.Future:
        self._check_closed()
        stash = self._accepted.get(listener.fileno())
        if stash:
            return self._result(stash.popleft())
        op = _Accept(self)
        op.listener = listener
        op._submitted(self.ring_for_prep().prep_accept(listener.fileno(), op.complete))
        return op.fut

    def connect(self, conn: socket.socket, address: Any) -> futures.Future:
        self._check_closed()
        if conn.family in (socket.AF_INET, socket.AF_INET6) and conn.type == socket.SOCK_STREAM:
            op = _Connect(self)
            ring = self.ring_for_prep()
            op._submitted(ring.prep_connect(conn.fileno(), tuple(address), op.complete))
            ring.submit()  # the SYN leaves now, as with connect(2), not at the next enter
            return op.fut

        # UDP connects at once; AF_UNIX and others: connect(2), then wait for writability
        def finish() -> None:
            err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))

        try:
            conn.connect(address)
        except (BlockingIOError, InterruptedError):
            return self.poll(conn, POLLOUT, finish)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut = self._loop.create_future()
            fut.set_exception(exc)
            return fut
        return self._result(None)

    def sendfile(self, sock: socket.socket, file: Any, offset: int, count: int) -> futures.Future:
        """Send ``count`` bytes of ``file`` from ``offset`` (0: to its end) with splice."""
        self._check_closed()
        op = _Sendfile(self)
        op.sock_fd = sock.fileno()
        op.file_fd = file.fileno()
        op.offset = offset
        op.remaining = count if count else max(0, os.fstat(op.file_fd).st_size - offset)
        op.in_pipe = op.sent = op.error = 0
        op.pipe_r = op.pipe_w = -1
        op.ids = []
        if op.start(self.ring_for_prep()):
            return self._result(0)
        return op.fut

    def wait_for_handle(self, handle: Any, timeout: float | None = None) -> futures.Future:
        """Future: True once the pollable fd ``handle`` is readable, False after ``timeout``."""
        self._check_closed()
        inner = self.poll(handle, POLLIN)
        outer = self._loop.create_future()
        timer = None

        def done(f: futures.Future) -> None:
            if timer is not None:
                timer.cancel()
            if outer.done():
                return
            if f.cancelled():
                outer.set_result(False) if timed_out else outer.cancel()
            elif f.exception() is not None:
                outer.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                outer.set_result(True)

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            inner.cancel()

        def outer_done(f: futures.Future) -> None:
            if f.cancelled():
                inner.cancel()

        timed_out = False
        inner.add_done_callback(done)
        outer.add_done_callback(outer_done)
        if timeout is not None:
            timer = self._loop.call_later(timeout, expire)
        return outer

    def accept_pipe(self, pipe: Any) -> futures.Future:
        raise NotImplementedError("named pipes are a Windows concept; use UNIX sockets")

    async def connect_pipe(self, address: Any) -> Any:
        raise NotImplementedError("named pipes are a Windows concept; use UNIX sockets")

    def _unregister(self, ov: Any) -> None:
        """IocpProactor compatibility: a cancelled op here needs no unregistration."""

    def _stop_serving(self, obj: Any) -> None:
        fd = obj.fileno() if hasattr(obj, "fileno") else obj
        for conn, _ in self._accepted.pop(fd, ()):
            conn.close()
        for op in list(self._ops.values()):
            if isinstance(op, _Accept) and op.listener is obj:
                op.fut.cancel()
        self.settle()

    # ------------------------------------------------------------------ readiness watches

    def get_key(self, fd: Any) -> selectors.SelectorKey:
        """selectors-style view of add_reader/add_writer registrations (for transport reprs)."""
        fileno = _fileno(fd)
        watch = self._watches.get(fileno)
        if watch is None or not watch.events():
            raise KeyError(f"{fd!r} is not registered")
        return selectors.SelectorKey(watch.fileobj, fileno, watch.events(),
                                     (watch.reader, watch.writer))

    def watch(self, fd: int, fileobj: Any) -> FdWatch:
        watch = self._watches.get(fd)
        if watch is None:
            watch = self._watches[fd] = FdWatch(self, fd, fileobj)
            self._users.add(watch)
        return watch

    def unwatch(self, watch: FdWatch) -> None:
        if watch.reader is None and watch.writer is None:
            if self._watches.get(watch.fd) is watch:
                del self._watches[watch.fd]
            self._users.discard(watch)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Cancel every pending op, wait until each has completed, then close the ring."""
        if self._closed:
            return
        self._closing = True
        try:
            ring = self._ring
            if ring is not None and not self._owned():
                self._abandon()
                return
            for op in list(self._ops.values()):
                op.fut.cancel()
            for op in list(self._sendfiles):
                op.fut.cancel()
            for user in list(self._users):
                user.proactor_closing()
            if ring is not None:
                self._drain(ring)
        finally:
            for stash in self._accepted.values():
                for conn, _ in stash:
                    conn.close()
            self._accepted.clear()
            self._watches.clear()
            self._finish()

    def _drain(self, ring: uring.Ring) -> None:
        start = time.monotonic()
        next_msg = start + 1.0
        while ring.inflight or self._backlog:
            now = time.monotonic()
            if now - start > CLOSE_TIMEOUT:
                logger.warning("%r: %d op(s) still in flight %.0f s after close(); their buffers "
                               "stay pinned", self, ring.inflight, now - start)
                return
            if now >= next_msg:
                logger.debug("%r is still running after closing for %.1f seconds", self,
                             now - start)
                next_msg = now + 1.0
            if self._backlog:
                cqes, self._backlog = self._backlog, []
            else:
                cqes = ring.wait(1, 0.1)
            self.dispatch(cqes)

    def _abandon(self) -> None:
        """close() from a thread that cannot use the ring: cancel the futures (their ops are
        cancelled by the kernel when the ring's fd closes); buffers of ops still in flight stay
        pinned by the ring, never freed under the kernel."""
        for op in list(self._ops.values()):
            fut = op.fut
            fut._op = None
            fut.cancel()
        self._ops.clear()
        for op in list(self._sendfiles):
            op.fut._op = None
            op.fut.cancel()
        self._sendfiles.clear()

    def _finish(self) -> None:
        ring, br = self._ring, self._bufring
        self._ring = self._bufring = None
        self._closed = True
        self._users = weakref.WeakSet()
        if ring is not None and self._owner == threading.get_native_id():
            if br is not None:
                try:
                    br.close()
                except (RuntimeError, OSError) as exc:
                    logger.debug("buffer ring close: %s", exc)
            ring.close()
        # else: dropped; the ring's finalizer closes it without entering it

    def __del__(self) -> None:
        if not self._closed and self._ring is not None and self._owned():
            try:
                self.close()
            except Exception:  # noqa: BLE001 -- finalizer
                pass


def _fileno(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    return obj.fileno()
