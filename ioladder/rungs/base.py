"""What every rung is: a driver of the shared transport, plus its place on the ladder.

A rung subclasses :class:`Rung`, fills in the class attributes that ``ioladder models`` prints,
and implements the driver methods the shared :class:`~ioladder.transport.Transport` calls. All
protocol-visible behaviour lives in the transport; a rung only decides *how the kernel is asked*.

Two helpers are shared here because several rungs need them and they must be written once:

* :class:`Strand` — a per-connection serial context for rungs that run application code on
  several threads (``blocking``, ``eventselect``, ``iocp``): never blocks, never deadlocks, and
  guarantees two callbacks of one connection never overlap.
* :func:`close_socket` — the end of a connection's life: a graceful close drains what the peer
  already sent (so the kernel does not answer our FIN with a reset that destroys bytes still in
  flight to the peer), an abort sets ``SO_LINGER {1, 0}`` so the peer sees a reset.
* :func:`unsent_bytes` and :func:`linger_timeout` — the *lingering close*. Draining at close()
  is not enough while the peer keeps sending: Linux answers data that reaches a closed socket
  with a reset too, and a reset throws away every byte the peer has not acknowledged yet (a
  slow reader can leave megabytes there). So a graceful release shuts the write side down,
  then keeps the descriptor open, reading and discarding, until the peer has acknowledged
  everything (``unsent_bytes() == 0``), sent its own EOF, or it must give up and reset
  (:func:`linger_expired`: ``linger=N`` seconds after the release; without ``linger``, once
  the peer has acknowledged nothing for :data:`LINGER_TIMEOUT`, so a slow reader still gets
  every byte); only then does it close and report ``_on_released``. The decisions are
  made once here (:func:`release_policy`, :func:`linger_step`, :func:`sweep_lingering`,
  :func:`discard_input`, :class:`Lingering`); each rung keeps only how it *waits* for them.
"""

from __future__ import annotations

import abc
import collections
import errno
import fcntl
import logging
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from ..server import ServerCore
    from ..transport import Transport

log = logging.getLogger("ioladder")

_LINGER_RESET = struct.pack("ii", 1, 0)

#: accept() errors that mean "out of a resource": back off instead of spinning on a listener
#: that stays readable while the process cannot take the connection.
ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors that concern only the one connection (it died in the backlog) or no-one.
ACCEPT_TRANSIENT = frozenset({errno.EAGAIN, errno.ECONNABORTED, errno.EPROTO, errno.EINTR,
                              errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH})
#: how long to stop accepting after an exhaustion error.
ACCEPT_BACKOFF = 0.1
#: how long a graceful close waits for the peer to acknowledge our last bytes before it gives
#: up with a reset (the server's ``linger=N`` option sets it instead).
LINGER_TIMEOUT = 5.0
#: how often a lingering close looks at the send queue: no readiness event says "all acked".
LINGER_POLL = 0.01


def close_socket(sock: socket.socket, abort: bool, shutdown: bool = True) -> None:
    """Close ``sock``: a reset when ``abort``, otherwise FIN after all queued bytes."""
    try:
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        else:
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
            # Unread input makes close() send RST instead of FIN, and a RST can destroy data
            # the peer has not read yet. Drain what is queued now (never blocks).
            drain_input(sock)
    except OSError:
        pass
    sock.close()


class Receiver:
    """``recv()`` into one reused buffer, returning exactly the bytes received.

    Why: ``sock.recv(256 KiB)`` makes CPython allocate 256 KiB and then shrink it to what
    arrived; that size is above glibc's mmap threshold, so each call costs ``mmap``, ``mremap``
    and ``munmap`` — three extra syscalls per message, measured with ``perf trace`` (5 syscalls
    per echo round trip against the C floor's 2). Receiving into a buffer kept for the thread's
    lifetime and copying out ``n`` bytes costs one small allocation instead. One Receiver per
    thread: it is not shared across threads.
    """

    __slots__ = ("_buf", "_view", "size")

    def __init__(self, size: int = 256 * 1024) -> None:
        self.size = size
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)

    def recv(self, sock: socket.socket) -> bytes:
        """One ``recv`` (raises what it raises); ``b""`` is the peer's EOF."""
        n = sock.recv_into(self._buf)
        return self._view[:n].tobytes()


class _AlwaysSend:
    """A transport send gate that is always open (see ``ioladder/_transport.c``): ``write()``
    tries a non-blocking ``send()`` at once, in C, and hands the driver only what the socket
    did not take. What a readiness loop would do first anyway, without a round through the
    driver's Python code."""

    __slots__ = ()
    sync_send = True


SEND_AT_ONCE: Final = _AlwaysSend()


def send_nonblocking(conn: Transport, until_eagain: bool, flags: int = 0) -> bool:
    """Send the transport's buffer with non-blocking ``send()`` calls (the readiness rungs'
    write path). True: bytes remain and the caller must wait for write space its own way;
    False: the flush ended, or failed and the transport was told. ``until_eagain``: keep
    sending after a short send until the kernel refuses (edge-like notifications such as
    ``FD_WRITE`` are re-enabled only by a send that fails with ``EWOULDBLOCK``)."""
    sock = conn._sock
    while True:
        chunk = conn._next_chunk()
        try:
            n = sock.send(chunk, flags)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            conn._on_error(exc)
            return False
        if not conn._on_sent(n):
            return False
        if not n or (n < len(chunk) and not until_eagain):
            return True


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged yet (``SIOCOUTQ``; a FIN
    counts as one). 0 when the socket cannot say (closed, not TCP)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def linger_timeout(core: ServerCore) -> float:
    """How long a graceful close may linger: the server's ``linger=N`` (N > 0), else
    :data:`LINGER_TIMEOUT` — then counted from the peer's last acknowledgement, not from the
    start (see :func:`linger_expired`)."""
    return core.linger if core.linger else LINGER_TIMEOUT


#: what :func:`linger_step` and :func:`discard_input` decide: the lingering close is over
#: (close with a FIN) or must give up (close with a reset); ``None``: keep lingering.
LINGER_DONE: Final = "done"
LINGER_RESET: Final = "reset"
#: :func:`discard_input` used its whole budget: more input may be queued.
LINGER_MORE: Final = "more"


def release_policy(conn: Transport, core: ServerCore, abort: bool,
                   may_linger: bool = True) -> tuple[bool, bool]:
    """The policy part of every driver's ``release()``: returns ``(abort, linger)``.

    ``linger=0`` makes every close a reset (``LingerOption(true, 0)``: never a FIN first). A
    graceful release shuts the write side down (unless the transport already did) and lingers
    when the peer has not acknowledged every byte yet and ``may_linger`` (the rung's own
    conditions: not stopping, no send still in flight). When the shutdown fails the peer is
    gone already: nothing is left to protect, close without lingering. The rung then either
    starts its lingering close or closes the socket with ``close_socket(sock, abort,
    shutdown=False)`` — how it waits is the rung's own.
    """
    if core.linger == 0:
        abort = True
    if abort:
        return True, False
    sock = conn._sock
    try:
        if not conn._shut_wr:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False, False
    return False, bool(unsent_bytes(sock)) and may_linger


def linger_step(conn: Transport, deadline: float, now: float) -> str | None:
    """One look at the lingering close of ``conn``: :data:`LINGER_DONE` once the peer has
    acknowledged every byte, :data:`LINGER_RESET` once it must give up
    (:func:`linger_expired`), else None (keep waiting)."""
    unsent = unsent_bytes(conn._sock)
    if not unsent:
        return LINGER_DONE
    if linger_expired(conn, deadline, now, unsent):
        return LINGER_RESET
    return None


def linger_expired(conn: Transport, deadline: float, now: float, unsent: int) -> bool:
    """True once a lingering close with ``unsent`` bytes unacknowledged must give up.

    With the server's ``linger=N``: at ``deadline`` (``LingerOption``: close waits up to N
    seconds). Without: once the peer has acknowledged nothing for :data:`LINGER_TIMEOUT` — a
    peer still reading, however slowly, gets every byte (as the kernel would deliver them
    after a plain close), one that stopped (a zero window, a dead host) is reset. Either way
    when ``Server.shutdown(timeout)`` reaches its timeout (``core.linger_cutoff``), which
    aborts what is still lingering like what is still flushing.
    """
    core = conn._core
    if core is None:
        return now >= deadline
    if now >= core.linger_cutoff:
        return True
    if core.linger:
        return now >= deadline
    mark = conn._unacked_mark
    if mark is None or unsent < mark[0]:  # first look, or progress: the clock restarts
        conn._unacked_mark = (unsent, now)
        return False
    return now - mark[1] >= LINGER_TIMEOUT


def sweep_lingering(lingering: Iterable[Any], end: Callable[[Any, bool], None]) -> None:
    """:func:`linger_step` for every record of ``lingering`` (each has ``.conn`` and
    ``.deadline``), calling ``end(record, abort)`` for those whose lingering is over."""
    now = time.monotonic()
    for lg in list(lingering):
        verdict = linger_step(lg.conn, lg.deadline, now)
        if verdict is not None:
            end(lg, verdict == LINGER_RESET)


def discard_input(sock: socket.socket, size: int, budget: int) -> str | None:
    """A lingering close's read: up to ``budget`` non-blocking ``recv(size)``, discarded.

    :data:`LINGER_DONE` on the peer's EOF (it sends nothing more, so close() cannot provoke a
    reset; the kernel still delivers what is queued, then our FIN), :data:`LINGER_RESET` on an
    error, None once nothing more is queued, :data:`LINGER_MORE` when the budget ran out.
    """
    try:
        for _ in range(budget):
            if not sock.recv(size):
                return LINGER_DONE
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return LINGER_RESET
    return LINGER_MORE


class Lingering:
    """A released connection in its lingering close, for rungs that keep one record per
    lingering socket: write side shut, input read and discarded, until the peer has
    acknowledged every byte, sent its EOF, or ``deadline``. It stands in for the connection
    in the rung's wait structures (``_fd`` as a Transport's)."""

    __slots__ = ("conn", "sock", "_fd", "deadline")

    def __init__(self, conn: Transport, core: ServerCore) -> None:
        self.conn = conn
        self.sock = conn._sock
        self._fd = conn._fd
        self.deadline = time.monotonic() + linger_timeout(core)


def drain_input(sock: socket.socket) -> None:
    """Discard bytes already queued for reading, without blocking."""
    for _ in range(64):
        try:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return
        except OSError:
            return


class Strand:
    """A serial execution context shared by several threads (Boost.Asio's strand).

    ``run(fn)`` executes ``fn`` now on the calling thread if no other thread is inside the
    strand; otherwise it queues ``fn`` for the thread that is, which runs it before leaving.
    A thread already inside the strand runs nested calls inline. Nobody ever waits for a lock
    held across application code, so cross-connection calls cannot deadlock.
    """

    __slots__ = ("_lock", "_queue", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._owner: int | None = None

    def inside(self) -> bool:
        """True when the calling thread is executing inside this strand."""
        return self._owner == threading.get_ident()

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._owner is not None:
                if self._owner != me:
                    self._queue.append((fn, args))
                    return
                nested = True
            else:
                self._owner = me
                nested = False
        if nested:
            fn(*args)
            return
        try:
            fn(*args)
        finally:
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._owner = None
                    return
                fn, args = self._queue.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("callback %r failed inside a strand", fn)


class Rung(abc.ABC):
    """A server engine on one kernel mechanism; the driver of the shared transport.

    Lifecycle (called by :class:`~ioladder.server.ServerCore`): ``start(listeners)`` once,
    ``stop_accepting()`` to stop taking connections, ``stop()`` after every connection has been
    released or aborted. The driver methods below are called by the transport.
    """

    #: short id used by ``model=`` and the CLI
    name: ClassVar[str]
    #: the concept from the article
    seed: ClassVar[str]
    #: the Windows API it stands for
    windows_api: ClassVar[str]
    #: the Linux mechanism used here
    mechanism: ClassVar[str]
    #: the defining trait kept, including its limits
    trait: ClassVar[str]
    #: connections this rung can hold by construction (None: only RLIMIT_NOFILE)
    structural_limit: ClassVar[int | None] = None
    #: higher is better; ``model="auto"`` picks the highest available
    rank: ClassVar[int] = 0

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this rung cannot run on this machine, or None if it can."""
        return None

    # ------------------------------------------------------------------------- lifecycle
    @abc.abstractmethod
    def start(self, listeners: list[socket.socket]) -> None:
        """Start accepting on ``listeners`` (already bound and listening)."""

    @abc.abstractmethod
    def stop_accepting(self) -> None:
        """Stop accepting and close the listeners; thread-safe and idempotent."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every thread of the rung and release kernel objects; idempotent."""

    def thread_count(self) -> int:
        """Threads the rung currently runs (for ``models``/bench reporting)."""
        return 0

    # ------------------------------------------------------------------------- driver API
    @abc.abstractmethod
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in ``conn``'s context; callable from any thread."""

    @abc.abstractmethod
    def in_context(self, conn: Transport) -> bool:
        """True when the caller already runs in ``conn``'s context."""

    @abc.abstractmethod
    def start_send(self, conn: Transport) -> None:
        """``conn`` has buffered bytes: send ``conn._next_chunk()`` and report ``_on_sent``."""

    @abc.abstractmethod
    def set_reading(self, conn: Transport, on: bool) -> None:
        """Start or stop delivering received data to ``conn``."""

    def shutdown_write(self, conn: Transport) -> None:
        """Every buffered byte is sent: ``shutdown(SHUT_WR)`` (the half-close); a failure
        ends the connection through the transport."""
        try:
            conn._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            conn._on_error(exc)

    @abc.abstractmethod
    def release(self, conn: Transport, abort: bool) -> None:
        """End ``conn``: stop its I/O, close the socket (reset if ``abort``), then call
        ``conn._on_released()`` in its context once no kernel operation refers to it."""
