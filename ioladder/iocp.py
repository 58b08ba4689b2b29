"""The I/O completion port, Win32 semantics in Python naming, on one shared io_uring ring.

Seed concept: the article's completion port (完成端口) — "a queue the system fills with the
notifications of finished network operations; take one and there is one fewer" — served by a
pool of worker threads. Here the queue *is* an io_uring completion queue: every op started
through the port is a single-shot SQE on one ring shared by all threads, and its CQE, turned
into ``(nbytes, key, overlapped)``, is what :meth:`CompletionPort.get_queued` returns.

=====================================  ==================================================
Win32                                  ``ioladder.iocp``
=====================================  ==================================================
``CreateIoCompletionPort(INVALID, 0,   ``CompletionPort(concurrency=0)`` (0: one per CPU)
0, NumberOfConcurrentThreads)``
``CreateIoCompletionPort(sock, port,   ``port.associate(sock, key)``
key, 0)``
``GetQueuedCompletionStatus``          ``port.get_queued(timeout=None) -> (nbytes, key, ov)``
``PostQueuedCompletionStatus``         ``port.post_queued(nbytes, key, overlapped)``
``OVERLAPPED`` (+ your fields)         :class:`Overlapped` (subclass it, or use ``.user``)
``WSARecv`` / ``WSASend``              ``port.recv(sock, buffer, ov)`` / ``port.send(...)``
``AcceptEx`` / ``ConnectEx``           ``port.accept(listener, ov)`` / ``port.connect(...)``
``shutdown`` (``DisconnectEx``-ish)    ``port.shutdown(sock, how, ov)``
``CancelIoEx``                         ``port.cancel(sock, ov=None)``
a threadpool timer posting a packet    ``port.post_after(seconds, key, ov)``
``CloseHandle(port)``                  ``port.close()``
worker threads looping on GQCS         :class:`WorkerPool` / ``port.start_workers(n, fn)``
=====================================  ==================================================

What ``get_queued`` returns mirrors ``GetQueuedCompletionStatus`` case by case:

* an op succeeded, or a packet was posted: ``(nbytes, key, overlapped)`` (TRUE);
* an op failed: :class:`CompletionError` (an ``OSError`` with the op's errno) carrying
  ``.nbytes``, ``.key`` and ``.overlapped`` — FALSE with a non-NULL ``lpOverlapped``; the
  overlapped's ``.error`` holds the same errno. A cancelled op fails with ``ECANCELED``
  (``ERROR_OPERATION_ABORTED``);
* nothing completed in time: :class:`WaitTimeout` (a ``TimeoutError``) — FALSE, NULL
  ``lpOverlapped``, ``WAIT_TIMEOUT``;
* the port was closed: :class:`PortClosed` — FALSE, ``ERROR_ABANDONED_WAIT_0``.

Every op is *always* pending when its starter returns (``WSA_IO_PENDING``): its completion is
queued to the port even if the kernel finished it at once (no
``FILE_SKIP_COMPLETION_PORT_ON_SUCCESS``; that is the ``saea`` rung's business). The kernel
owns the overlapped — and the buffer, which the ring keeps alive — until the completion has
been reaped; starting a second op on a pending overlapped raises ``RuntimeError``.

Thread model: leader/followers over one ring.
    The ring may be waited on by several threads at once, but each ``Ring.wait()`` returns
    *every* available CQE, while ``get_queued`` hands out one; and the concurrency limit must
    decide *which* waiting thread may take a completion, which the kernel cannot know. So the
    port's queue is the ring's CQ plus a small user-space queue: at most one waiting thread at a
    time — the *leader* — blocks in ``Ring.wait()`` (GIL released); it moves the batch it reaps
    into the queue, takes one for itself and leaves, and a follower becomes the next leader.
    Followers wait on per-thread locks and are woken **LIFO**, as IOCP releases its waiting
    threads (the most recently active thread, whose stack and cache are warm, runs next). No
    dedicated reaper thread, so no extra thread hop: usually the thread that reaps a completion
    runs it. ``post_queued`` appends to the user-space part of the queue (and wakes the leader
    if no parked thread can take the packet): packets and I/O completions share one FIFO from
    the moment they are reaped; a packet may overtake a completion the kernel has posted but
    no thread has reaped yet — an order no program can observe on Windows either.
    The alternatives, and why not: every worker blocked in ``Ring.wait(max_complete=1)``
    leaves the choice of thread to the kernel (which knows nothing of the concurrency value)
    and needs a wake per waiter to close; a dedicated reaper thread feeding a queue costs a
    thread hop (a GIL hand-off) on every completion. Leader/followers keeps one thread in the
    ring, which the ring's submission rules also demand (next section).

Threads that submit (the kernel's rule, not Windows').
    An io_uring op belongs to the thread whose ``io_uring_enter`` submitted it: if that thread
    exits while the op is pending, the kernel cancels it (a receive completes with
    ``ECANCELED``; a send may end short or with ``EINTR``). Windows (since Vista) lets I/O
    outlive its thread. And only one thread may enter the ring at a time: a ``submit()``
    racing with another thread's ``wait()`` can strand completions where the sleeping waiter
    never looks (a ring issue reported to its owner). So the port funnels every submission:
    while a thread sleeps in the ring, a starter (or ``flush``) only prepares the op and wakes
    that thread, whose next wait submits it — the op then belongs to a port thread; with
    nobody in the ring, the caller submits under the port's mutex. A starter called with
    ``submit=False`` only prepares; the next ``get_queued`` of any thread submits. Start I/O
    from threads that outlive it — the workers — or with ``submit=False`` followed by
    ``post_queued`` (which never touches the ring) so that a worker submits it.

The concurrency value.
    IOCP counts the threads *running* on behalf of a port: a thread starts running when
    ``GetQueuedCompletionStatus`` hands it a packet and stops when it calls it again. A waiting
    thread is released only while fewer than ``concurrency`` threads run, so with more
    workers than ``concurrency`` the surplus stays parked even when packets are queued. Here
    the same count is a semaphore-like counter under the port's mutex: ``get_queued`` first
    gives back the slot its thread holds (the "calls it again" release), then takes a packet
    only if ``running < concurrency``. The approximation: Windows also stops counting a
    running thread while it is *blocked* (in ``Sleep``, a lock, synchronous I/O) and lets
    another run — that is why IOCP servers start more workers than CPUs — and it may briefly
    exceed the limit when the blocked thread wakes. Python cannot see a thread block, so a
    handler keeps its slot while it blocks unless it says so with
    ``with port.blocking(): ...``, which gives the slot back for the duration (and, like
    Windows, lets the count exceed the limit briefly on return). :class:`WorkerPool` releases
    the slot when a worker exits.

Association.
    ``associate(sock, key)`` maps the socket's descriptor to ``key``; every op started on the
    socket carries that key. Windows drops the association when the handle closes; Python
    cannot see a close, and Linux reuses descriptor numbers at once, so call
    ``disassociate(sock)`` *before* closing an associated socket (a later ``associate`` of the
    same number simply replaces the old key).

Accepted sockets (``AcceptEx``): io_uring creates the socket, so ``accept`` takes no
pre-created accept socket and returns no initial data; the completion's ``overlapped.result``
is the new ``socket.socket`` (non-blocking, close-on-exec), ``nbytes`` is 0. It is not
associated with the port: associate it, as with AcceptEx.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .kernel import uring

__all__ = [
    "CompletionPort",
    "CompletionError",
    "Op",
    "Overlapped",
    "PortClosed",
    "WaitTimeout",
    "WorkerPool",
    "cpu_count",
]

log = logging.getLogger("ioladder")

_monotonic = time.monotonic


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class WaitTimeout(TimeoutError):
    """``get_queued`` timed out: nothing completed in time (``WAIT_TIMEOUT``)."""

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__(errno.ETIMEDOUT,
                         f"no completion within {timeout:g} s (WAIT_TIMEOUT)"
                         if timeout is not None else "no completion (WAIT_TIMEOUT)")


class PortClosed(OSError):
    """The completion port was closed (``ERROR_ABANDONED_WAIT_0`` / ``ERROR_INVALID_HANDLE``)."""

    def __init__(self) -> None:
        super().__init__(errno.EBADF, "the completion port is closed (ERROR_ABANDONED_WAIT_0)")


class CompletionError(OSError):
    """A dequeued operation failed: GetQueuedCompletionStatus returned FALSE with a non-NULL
    ``lpOverlapped``. ``errno`` is the op's error; the packet is in ``nbytes``, ``key`` and
    ``overlapped`` (also ``entry``)."""

    def __init__(self, err: int, nbytes: int, key: Any, overlapped: Overlapped) -> None:
        super().__init__(err, os.strerror(err))
        self.nbytes = nbytes
        self.key = key
        self.overlapped = overlapped

    @property
    def entry(self) -> tuple[int, Any, Overlapped]:
        return (self.nbytes, self.key, self.overlapped)


class Op(str, enum.Enum):
    """The kind of the last operation started on an :class:`Overlapped`."""

    NONE = "none"
    RECV = "recv"          # WSARecv
    SEND = "send"          # WSASend
    ACCEPT = "accept"      # AcceptEx
    CONNECT = "connect"    # ConnectEx
    SHUTDOWN = "shutdown"  # shutdown / DisconnectEx (without socket reuse)
    TIMER = "timer"        # a packet posted after a delay


class Overlapped:
    """One operation's context (``OVERLAPPED`` plus the fields servers hang on it).

    ``kind``: the :class:`Op` started last; ``buffer``: the buffer it names; ``nbytes``: bytes
    transferred; ``error``: 0 or the errno it failed with; ``result``: the accepted socket for
    ``ACCEPT``; ``key``: the completion key it was started with; ``user``: free for the caller.
    Subclasses may add fields (``CONTAINING_RECORD``-style per-I/O data).
    """

    __slots__ = ("kind", "buffer", "nbytes", "error", "result", "key", "user", "op_id",
                 "_pending", "__weakref__")

    def __init__(self, user: Any = None) -> None:
        self.kind = Op.NONE
        self.buffer: Any = None
        self.nbytes = 0
        self.error = 0
        self.result: Any = None
        self.key: Any = None
        self.user = user
        self.op_id = 0
        self._pending = False

    @property
    def pending(self) -> bool:
        """True from the start of an op until its completion has been reaped."""
        return self._pending

    def __repr__(self) -> str:
        state = "pending" if self._pending else f"nbytes={self.nbytes} error={self.error}"
        return f"<Overlapped {self.kind.value} {state}>"


_IGNORE = object()      # ctx of our own cancel ops: their CQEs are not packets
_QUIT = object()        # key of the packets that stop a WorkerPool's workers
_ETIME = -errno.ETIME


def _fd(sock: Any) -> int:
    fd = sock if isinstance(sock, int) else sock.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "socket is closed")
    return fd


class CompletionPort:
    """An I/O completion port: one queue of completions for every associated socket.

    ``concurrency``: how many threads may run completion handlers at once (0: the CPUs this
    process may use). ``entries``/``cq_entries`` size the ring (the CQ overflows without loss).
    All methods are thread-safe.
    """

    def __init__(self, concurrency: int = 0, *, entries: int = 256,
                 cq_entries: int = 4096) -> None:
        if concurrency < 0:
            raise ValueError("concurrency must be >= 0 (0: one per CPU)")
        uring.require()
        self._concurrency = concurrency or cpu_count()
        self._ring = uring.Ring(entries, cq_entries=cq_entries, single_issuer=False)
        self._mutex = threading.Lock()
        self._leader_left = threading.Condition(self._mutex)
        self._queue: collections.deque[tuple[int, Any, Any, int]] = collections.deque()
        self._waiters: list[threading.Lock] = []   # parked followers; the last one wakes first
        self._woken = 0        # followers released but not yet back under the mutex
        self._running = 0      # threads holding a slot (IOCP's running-thread count)
        self._waiting = 0      # threads inside get_queued
        self._leader = False   # a thread is blocked in Ring.wait()
        self._leader_woken = False   # ... and Ring.wake() was called for it
        self._closed = False
        self._tls = threading.local()
        self._keys: dict[int, Any] = {}

    # --------------------------------------------------------------------------- properties
    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def running(self) -> int:
        """Threads currently counted as running on this port."""
        return self._running

    @property
    def waiting(self) -> int:
        """Threads currently inside ``get_queued`` (leader and parked followers)."""
        return self._waiting

    @property
    def queued(self) -> int:
        """Completions reaped from the ring and not yet taken (those still in the kernel's CQ
        are not counted)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ring(self) -> uring.Ring:
        """The io_uring ring whose completion queue is this port's queue."""
        return self._ring

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"running={self._running}/{self._concurrency}"
        return f"<CompletionPort {state} queued={len(self._queue)}>"

    # -------------------------------------------------------------------------- association
    def associate(self, sock: Any, key: Any) -> None:
        """Bind ``sock`` (a socket or descriptor) to this port with completion ``key``."""
        if self._closed:
            raise PortClosed()
        self._keys[_fd(sock)] = key

    def disassociate(self, sock: Any) -> None:
        """Forget ``sock``'s association; call it before closing the socket."""
        try:
            fd = _fd(sock)
        except OSError:
            return
        self._keys.pop(fd, None)

    # ------------------------------------------------------------------------------ posting
    def post_queued(self, nbytes: int = 0, key: Any = None, overlapped: Any = None) -> None:
        """PostQueuedCompletionStatus: queue the packet ``(nbytes, key, overlapped)``.

        ``overlapped`` may be any object. Callable from any thread: the packet goes straight
        into the port's queue (no io_uring op, so no submission from this thread — see
        "Threads that submit" in the module docstring); a thread sleeping in the ring is woken
        if no parked thread can take it.
        """
        with self._mutex:
            if self._closed:
                raise PortClosed()
            self._queue.append((nbytes, key, overlapped, 0))
            self._kick()

    # --------------------------------------------------------------------------- op starters
    def _begin(self, ov: Overlapped, kind: Op, key: Any, buffer: Any) -> None:
        if self._closed:
            raise PortClosed()
        if ov._pending:
            raise RuntimeError(f"{ov!r} already has an operation pending")
        ov.kind = kind
        ov.buffer = buffer
        ov.key = key
        ov.nbytes = 0
        ov.error = 0
        ov.result = None
        ov._pending = True

    def _key(self, fd: int) -> Any:
        try:
            return self._keys[fd]
        except KeyError:
            raise ValueError(f"descriptor {fd} is not associated with this completion port "
                             "(call associate(sock, key) first)") from None

    def _issue(self, ov: Overlapped, prep: Callable[..., int], *args: Any, submit: bool,
               **kwargs: Any) -> None:
        try:
            ov.op_id = prep(*args, **kwargs)
            if submit:
                self.flush()
        except ValueError as exc:
            ov._pending = False
            if self._ring.closed:
                raise PortClosed() from None
            raise exc
        except BaseException:
            ov._pending = False
            raise

    def recv(self, sock: Any, buffer: Any, overlapped: Overlapped, flags: int = 0, *,
             nbytes: int = -1, submit: bool = True) -> None:
        """WSARecv: receive into ``buffer`` (writable; the first ``nbytes`` bytes, default all).

        Completes with the byte count; 0 means the peer shut its side down.
        """
        fd = _fd(sock)
        self._begin(overlapped, Op.RECV, self._key(fd), buffer)
        self._issue(overlapped, self._ring.prep_recv, fd, buffer, overlapped, flags,
                    nbytes=nbytes, submit=submit)

    def send(self, sock: Any, data: Any, overlapped: Overlapped,
             flags: int = uring.MSG_NOSIGNAL, *, submit: bool = True) -> None:
        """WSASend: send ``data``. May complete short (fewer bytes than asked): send the rest
        with another op."""
        fd = _fd(sock)
        self._begin(overlapped, Op.SEND, self._key(fd), data)
        self._issue(overlapped, self._ring.prep_send, fd, data, overlapped, flags,
                    submit=submit)

    def accept(self, listener: Any, overlapped: Overlapped, *, submit: bool = True) -> None:
        """AcceptEx: accept one connection; ``overlapped.result`` is the new socket."""
        fd = _fd(listener)
        self._begin(overlapped, Op.ACCEPT, self._key(fd), None)
        self._issue(overlapped, self._ring.prep_accept, fd, overlapped, submit=submit)

    def connect(self, sock: Any, address: tuple[Any, ...], overlapped: Overlapped, *,
                submit: bool = True) -> None:
        """ConnectEx: connect ``sock`` to ``address`` (a numeric ``(host, port)``)."""
        fd = _fd(sock)
        self._begin(overlapped, Op.CONNECT, self._key(fd), None)
        self._issue(overlapped, self._ring.prep_connect, fd, tuple(address), overlapped,
                    submit=submit)

    def shutdown(self, sock: Any, how: int, overlapped: Overlapped, *,
                 submit: bool = True) -> None:
        """Shut down one or both directions of ``sock`` through the port."""
        fd = _fd(sock)
        self._begin(overlapped, Op.SHUTDOWN, self._key(fd), None)
        self._issue(overlapped, self._ring.prep_shutdown, fd, how, overlapped, submit=submit)

    def post_after(self, seconds: float, key: Any, overlapped: Overlapped, *,
                   submit: bool = True) -> None:
        """Queue the packet ``(0, key, overlapped)`` after ``seconds`` (a timer whose expiry is
        a completion; cancel it with ``cancel(None, overlapped)``)."""
        self._begin(overlapped, Op.TIMER, key, None)
        self._issue(overlapped, self._ring.prep_timeout, max(0.0, seconds), overlapped,
                    submit=submit)

    def cancel(self, sock: Any, overlapped: Overlapped | None = None, *,
               submit: bool = True) -> None:
        """CancelIoEx: cancel ``overlapped``'s pending op, or every pending op on ``sock``.

        Asynchronous, as on Windows: each cancelled op still completes — with ``ECANCELED`` —
        or with its real result if it finished first. Cancelling nothing is not an error.
        """
        if self._closed:
            raise PortClosed()
        try:
            if overlapped is not None:
                if not overlapped._pending:
                    return
                self._ring.prep_cancel(overlapped.op_id, _IGNORE)
            else:
                self._ring.prep_cancel_fd(_fd(sock), _IGNORE)
            if submit:
                self.flush()
        except ValueError:
            if self._ring.closed:
                raise PortClosed() from None
            raise

    def flush(self) -> None:
        """Submit ops started with ``submit=False`` (one ``io_uring_enter`` for the batch)."""
        with self._mutex:
            if self._closed:
                raise PortClosed()
            self._flush()

    # ---------------------------------------------------------------------- taking packets
    def get_queued(self, timeout: float | None = None) -> tuple[int, Any, Any]:
        """GetQueuedCompletionStatus: the next ``(nbytes, key, overlapped)``.

        Blocks up to ``timeout`` seconds (None: forever) and honours the concurrency value
        (see the module docstring). Raises :class:`CompletionError` for a failed op,
        :class:`WaitTimeout` when nothing came in time, :class:`PortClosed` once closed.
        """
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        ring = self._ring
        tls = self._tls
        mutex = self._mutex
        mutex.acquire()
        self._waiting += 1
        try:
            if getattr(tls, "slot", False):
                tls.slot = False
                self._running -= 1
            while True:
                if self._closed:
                    self._kick()
                    raise PortClosed()
                if self._queue and self._running < self._concurrency:
                    if ring.pending:
                        self._flush()   # ops this thread's handler prepared (submit=False)
                    nbytes, key, ov, err = self._queue.popleft()
                    self._running += 1
                    tls.slot = True
                    self._kick()
                    if err:
                        raise CompletionError(err, nbytes, key, ov)
                    return nbytes, key, ov
                if not self._leader and self._running < self._concurrency:
                    try:
                        self._lead(deadline)
                    except BaseException:
                        self._kick()   # hand the ring to another waiter before leaving
                        raise
                    if self._queue or self._closed:
                        continue
                    if deadline is not None and _monotonic() >= deadline:
                        if ring.pending:
                            self._flush()
                        self._kick()   # someone else must watch the ring now
                        raise WaitTimeout(timeout)
                    continue
                if ring.pending:
                    self._flush()   # never sleep on unsubmitted ops: the leader waits for them
                left = None if deadline is None else deadline - _monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(timeout)
                self._park(left)
        finally:
            self._waiting -= 1
            mutex.release()

    def _flush(self) -> None:
        """Get prepared ops submitted (mutex held).

        Only one thread enters the ring at a time. While the leader sleeps in ``Ring.wait()``
        another thread's ``submit()`` races with the wait's own submission: the kernel may
        give it nothing to submit, which the ring takes for EAGAIN and answers by moving the
        CQ into its backlog — where the sleeping leader never looks (reported to the ring's
        owner). So with a leader in the ring, wake it: its next wait submits everything.
        Without one (held off by the mutex), submit here.
        """
        if self._leader:
            if not self._leader_woken:
                self._leader_woken = True
                self._ring.wake()
            return
        with contextlib.suppress(ValueError):   # closed: nothing to submit to
            self._ring.submit()

    def _lead(self, deadline: float | None) -> None:
        """Become the leader: wait in the ring (mutex released), queue what it returns.
        The wait's ``io_uring_enter`` also submits every op prepared with submit=False."""
        self._leader = True
        self._mutex.release()
        batch: list[Any] = []
        entries: list[tuple[int, Any, Any, int]] = []
        try:
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            try:
                batch = self._ring.wait(1, left)
            except ValueError:   # closed under us
                batch = []
            entries = self._convert(batch)
        finally:
            self._mutex.acquire()
            self._leader = False
            self._leader_woken = False
            self._queue.extend(entries)
            if self._closed:
                self._leader_left.notify_all()

    def _convert(self, batch: list[tuple[Any, int, int]]) -> list[tuple[int, Any, Any, int]]:
        out = []
        for ctx, res, _flags in batch:
            if ctx is _IGNORE:
                continue
            ov: Overlapped = ctx
            ov._pending = False
            if res >= 0:
                if ov.kind is Op.ACCEPT:
                    try:
                        ov.result = socket.socket(fileno=res)
                    except OSError as exc:
                        os.close(res)
                        ov.error = exc.errno or errno.EBADF
                else:
                    ov.nbytes = res
            elif res == _ETIME and ov.kind is Op.TIMER:
                pass                           # the timer expired: that is its success
            else:
                ov.error = -res
            out.append((ov.nbytes, ov.key, ov, ov.error))
        return out

    def _park(self, timeout: float | None) -> None:
        """Wait as a follower until woken (LIFO) or ``timeout``; mutex held on entry and exit."""
        waiter = threading.Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._mutex.release()
        got = False
        try:
            got = waiter.acquire(True, -1 if timeout is None else timeout)
        finally:
            self._mutex.acquire()
            if got:
                self._woken -= 1
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:   # released just as we gave up: it still counts as a wake
                    self._woken -= 1

    def _kick(self) -> None:
        """Wake as many waiting threads as there is work for (mutex held): one per queued
        packet a free slot can take, plus one to lead if nobody watches the ring. Parked
        followers first (LIFO); if they are too few, the leader is woken out of the ring."""
        if self._closed:
            while self._waiters:
                self._waiters.pop().release()
                self._woken += 1
            return
        free = self._concurrency - self._running
        if free <= 0:
            return
        want = min(len(self._queue), free)
        if not self._leader and want < free:
            want += 1
        want -= self._woken
        while want > 0 and self._waiters:
            self._waiters.pop().release()   # LIFO, as IOCP releases its threads
            self._woken += 1
            want -= 1
        if want > 0 and self._leader and self._queue and not self._leader_woken:
            self._leader_woken = True
            self._ring.wake()   # an eventfd write: ends the leader's Ring.wait()

    def release_slot(self) -> None:
        """Stop counting the calling thread as running (it will not call get_queued again)."""
        if getattr(self._tls, "slot", False):
            self._tls.slot = False
            with self._mutex:
                self._running -= 1
                self._kick()

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Mark a blocking stretch inside a handler: its slot goes to another thread meanwhile
        (IOCP does this by itself when a running thread blocks)."""
        held = getattr(self._tls, "slot", False)
        if held:
            self.release_slot()
        try:
            yield
        finally:
            if held:
                with self._mutex:
                    self._running += 1   # like Windows: may exceed concurrency for a moment
                self._tls.slot = True

    # ------------------------------------------------------------------------------ workers
    def start_workers(self, n: int, handler: Callable[[int, Any, Any], Any], *,
                      name: str = "iocp-worker") -> WorkerPool:
        """Start ``n`` threads looping on get_queued and calling ``handler(nbytes, key, ov)``."""
        pool = WorkerPool(self, handler, n, name=name)
        pool.start()
        return pool

    # ------------------------------------------------------------------------------ closing
    def close(self, timeout: float = 2.0) -> None:
        """CloseHandle: wake every waiting thread with :class:`PortClosed`, then close the ring
        (pending ops are cancelled; packets not yet taken are dropped and accepted sockets in
        them closed). Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._kick()
            if self._leader:
                self._ring.wake()
                self._leader_left.wait_for(lambda: not self._leader, timeout)
            dropped = list(self._queue)
            self._queue.clear()
        for _nbytes, _key, ov, _err in dropped:
            if isinstance(ov, Overlapped) and isinstance(ov.result, socket.socket):
                ov.result.close()
        self._keys.clear()
        self._ring.close()

    def __enter__(self) -> CompletionPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerPool:
    """Threads that loop on ``port.get_queued()`` and run ``handler(nbytes, key, overlapped)``.

    A failed op reaches the handler too (``overlapped.error`` is its errno), so the handler
    sees every packet. The port's concurrency value limits how many handlers run at once;
    extra workers wait. ``stop()`` posts one quit packet per worker (the Windows idiom) and
    joins them; closing the port also ends them.
    """

    def __init__(self, port: CompletionPort, handler: Callable[[int, Any, Any], Any],
                 workers: int, *, name: str = "iocp-worker") -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.port = port
        self.handler = handler
        self.size = workers
        self.name = name
        self._threads: list[threading.Thread] = []
        self._local = threading.local()

    def start(self) -> None:
        for i in range(self.size):
            t = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def in_worker(self) -> bool:
        """True when called from one of this pool's threads."""
        return getattr(self._local, "worker", False)

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def _run(self) -> None:
        port = self.port
        handler = self.handler
        self._local.worker = True
        try:
            while True:
                try:
                    nbytes, key, ov = port.get_queued()
                except CompletionError as exc:
                    nbytes, key, ov = exc.nbytes, exc.key, exc.overlapped
                except PortClosed:
                    return
                except OSError:   # the ring itself failed (io_uring_enter): keep serving
                    log.exception("get_queued failed on %r", port)
                    time.sleep(0.01)
                    continue
                if key is _QUIT:
                    return
                try:
                    handler(nbytes, key, ov)
                except Exception:
                    log.exception("completion handler %r failed on (%r, %r, %r)",
                                  handler, nbytes, key, ov)
        finally:
            port.release_slot()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop every worker (after the packets queued before this call); True if all ended."""
        me = threading.current_thread()
        live = [t for t in self._threads if t.is_alive()]
        for _ in live:
            try:
                self.port.post_queued(0, _QUIT, None)
            except PortClosed:
                break
        deadline = _monotonic() + timeout
        for t in live:
            if t is not me:
                t.join(max(0.0, deadline - _monotonic()))
        return all(not t.is_alive() or t is me for t in self._threads)
