"""Rung ``saea``: .NET's ``SocketAsyncEventArgs`` server over the completion port, on io_uring.

Seed concept: the article's System.Net.Sockets section — the SAEA pattern is how .NET servers
run the completion port without allocating per operation: op contexts come from a pool and are
reused for the connection's whole life, accepts are posted ahead of time (``AcceptEx``), receive
memory is one slab managed by a ``BufferManager``, and every op is a context handed to the
kernel whose completion comes back to a small loop. Linux mechanism: io_uring, which goes one
step further than Windows in exactly the directions SAEA was reaching for.

How each SAEA idea lands (and what it costs per connection and per op):

* **Pre-posted accepts** -> one **multishot accept** per listener: a single SQE keeps producing
  accepted sockets until it ends; it is re-armed when a completion comes without
  ``CQE_F_MORE``, and after the back-off :meth:`ServerCore.accept_error` prescribes when the
  process is out of descriptors (``EMFILE``): no spinning on a listener that stays readable.
* **One buffer slab (BufferManager)** -> one **provided buffer ring** shared by every
  connection: the kernel picks a buffer only when bytes arrive, so an *idle connection owns no
  receive buffer at all* (the point: thousands of idle sockets cost no receive memory). The
  ring is consumed incrementally (``IOU_PBUF_RING_INC``, Linux 6.12; older kernels consume
  whole buffers): a receive takes only the bytes it needs of the current buffer, so small
  messages from every connection fill the slab front to back, hot in the caches, rather than
  each starting a cold buffer of its own. Received bytes are copied out (``bytes`` for
  ``data_received``) at once, and a buffer goes back to the kernel once it is filled.
* **Receive args re-posted after each completion** -> one **multishot receive** per connection,
  armed once; it is re-armed only when it ends: ``-ENOBUFS`` (the ring ran dry in one burst:
  the bytes are still in the socket, nothing is lost), a completion without ``CQE_F_MORE``, or
  ``resume_reading`` after a pause. ``pause_reading`` cancels it (by op id) so delivery really
  stops and the peer is flow-controlled by TCP; bytes (or an EOF) that were already in flight
  are held by the transport until resume.
* **Pooled args** -> two small slot objects per connection (the receive context, which is also
  the connection's driver state, and the send context), taken from free lists and returned when
  the connection ends: after warm-up, connections come and go without allocating them.
* **Send args** -> ``IORING_OP_SEND`` of the transport's next chunk, straight from the
  transport's buffer (the ring holds the buffer export until the completion); a short send is
  reported to the transport, which hands back the rest, and the rest is resubmitted.
  ``SendAsync`` returning false (completed synchronously), as .NET on Linux does it: while the
  completion batch being run is small (at most ``SYNC_SEND`` completions), the transport's
  ``write`` first tries a non-blocking ``send()`` in C (its send gate is the ring:
  ``Ring.sync_send``, set by ``Ring.dispatch`` per batch) and only
  what the socket does not take becomes a ring op. A ring send costs no Python frame either:
  the transport starts it through the gate's C entry (its ``_send_ctx`` is the connection's
  ``SendContext``), and ``Ring.dispatch`` completes it, and sends what the transport has
  next, in C. Measured at a fixed 40k round trips/s,
  one send syscall is cheaper than a send completion's pass through the loop; under load one
  enter submits many sends, so large batches keep every send on the ring.
* **Batched submission**: every SQE prepared while handling a batch of completions (sends,
  re-arms, cancels) is submitted by the *next* ``io_uring_enter``, which also waits: one
  syscall per loop pass, whatever the number of connections served in it.
* **Closing**: ``release`` cancels every op on the socket (``IORING_ASYNC_CANCEL_FD |
  ALL``), waits for each op's final completion, and only then closes the socket and calls
  ``_on_released`` — so the kernel never writes into a recycled buffer nor acts on a reused
  descriptor number.
* **Closing gracefully** follows ``rungs.base``'s lingering close: after the cancels, shut the
  write side down and, while the peer has not acknowledged everything, keep a multishot receive
  discarding its input (so its data never meets a closed socket and a reset) until it has,
  sent its EOF, or the linger time passed (then a reset). ``linger=0`` makes every close a reset.
* **TransmitFile** -> ``Transport.sendfile_nowait``: a file region queued in the write buffer
  goes out as linked chains ``splice(file -> pipe)`` -> ``poll(socket writable)`` ->
  ``splice(pipe -> socket)`` (zero copies through Python), in order with the bytes written
  before and after it.

Steady state per echoed message: one multishot-receive completion (copied out and released,
then handed to the transport's ``_on_data`` by ``Ring.dispatch`` in C: the receive context is
a ``RecvContext``), ``data_received``, then a synchronous send (small batches) or one send SQE
and its completion (large batches; both handled in C: ``SendContext``); no Python object
survives the round trip
(``tests/saea/test_saea_rung.py`` checks it with ``tracemalloc``).

Between passes nothing runs in Python while no call or timer is queued: the engine's
``Ring.dispatch(..., until=(calls, timers))`` runs the passes back to back in C.

Threads: one, the completion engine's (:class:`ioladder.saea.CompletionEngine`); every
connection's context is that thread, so callbacks never overlap; calls from other threads are
queued to it and the ring is woken through its eventfd.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport import FileSpan, Transport
from .base import (
    LINGER_POLL,
    LINGER_RESET,
    Rung,
    close_socket,
    linger_step,
    linger_timeout,
    unsent_bytes,
)

log = logging.getLogger("ioladder")

#: buffers in the provided buffer ring shared by all connections, and their size: an 8 MiB
#: slab, the most receive memory the server ever touches. Consumed incrementally, a small
#: message takes only its own bytes and a bulk stream up to 256 KiB per receive (uvloop reads
#: 256 KiB too); measured against 256 x 32 KiB (paired, docs/saea.md), one echoed stream costs
#: ~11 % less CPU per GB and 4 KiB messages at 1,000 connections ~5 % less per round trip.
BUFFER_COUNT = 32
BUFFER_SIZE = 256 * 1024
#: the same slab where receives consume whole buffers (kernels before 6.12): more, smaller
#: buffers, since every receive, however small, takes one.
WHOLE_BUFFER_COUNT = 256
WHOLE_BUFFER_SIZE = 32 * 1024
#: consume the receive buffers incrementally where the kernel can (6.12; see the module
#: docstring and ``uring.receive_buffers``); False: whole buffers, as on older kernels.
INCREMENTAL = True
#: submission queue entries (the completion queue is twice as large; overflow loses nothing).
RING_ENTRIES = 4096
#: bytes moved by one file -> pipe -> socket splice pair (the pipe is sized to it).
SPLICE_CHUNK = 256 * 1024
#: send synchronously first when the completion batch being run has at most this many
#: completions (the transport's send gate); 0: every send goes through the ring.
SYNC_SEND = int(os.environ.get("IOLADDER_SAEA_SYNC_SEND", "2"))
#: wake-up coalescing while busy, seconds (``CompletionEngine(coalesce=...)``); 0: off.
COALESCE = float(os.environ.get("IOLADDER_SAEA_COALESCE_US", "0")) / 1e6
#: how long ``stop()`` waits for cancelled ops to complete before giving up on them.
STOP_DRAIN = 2.0

_ECANCELED = errno.ECANCELED
_ENOBUFS = errno.ENOBUFS
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_EAGAIN = errno.EAGAIN
_FILL = 0
_WAIT = 1
_DRAIN = 2


def _oserror(res: int) -> OSError:
    err = -res
    return OSError(err, os.strerror(err))


class _Ignore:
    """ctx of ops whose completion needs no handling (cancels)."""

    __slots__ = ()

    def _complete(self, res: int, flags: int) -> None:
        pass


_IGNORE = _Ignore()


#: the per-connection state's fields, besides ``conn``, ``fd``, ``ops`` and ``closing`` (the C
#: base's, see ``_ConnBase``)
_CONN_SLOTS = ("tx", "recv_op", "reading", "cancelling", "abort", "file", "linger")


class _ConnBase:
    """Per-connection driver state, and the ctx of the connection's multishot receive.

    The class used is ``_Conn``, made per rung instance by ``SaeaRung._build``: its hot
    ``_complete`` has the ring's and buffer ring's bound methods in closure cells, not
    attribute chains, and it also derives from :class:`ioladder.kernel.uring.RecvContext`
    (which holds ``conn``, ``fd``, ``ops`` and ``closing``, read by the send fast path too),
    so ``Ring.dispatch`` hands the steady-state receive completions to ``conn._on_data``
    itself, in C; ``_complete`` sees the others (the receive ending, errors).
    """

    __slots__ = ()

    def __init__(self) -> None:
        self.conn: Any = None
        self.fd = -1
        self.tx: Any = None
        self.recv_op: int | None = None  # op id of the armed multishot receive
        self.reading = False
        self.cancelling = False
        self.ops = 0            # ops in the ring that refer to this socket
        self.closing = False    # release() called
        self.abort = False
        self.file: _FileTx | None = None
        self.linger = 0.0       # lingering close: its deadline (0.0: not lingering)


class _SendBase:
    """ctx of a connection's sends (one in flight at a time: the transport serialises them).

    The class used is ``_Send``, which also derives from
    :class:`ioladder.kernel.uring.SendContext` (which holds ``st``, the connection's
    ``_Conn``): ``Ring.dispatch`` completes a successful send and submits the transport's next
    chunk itself, in C, and the transport starts a flush's send through the ring's send gate
    (``conn._send_ctx``) without a Python call; ``_complete`` sees the rest."""

    __slots__ = ()

    def __init__(self) -> None:
        self.st: Any = None


class _Acceptor:
    """A listener and its multishot accept."""

    __slots__ = ("rung", "sock", "fd", "op", "closed", "timer")

    def __init__(self, rung: SaeaRung, sock: socket.socket) -> None:
        self.rung = rung
        self.sock = sock
        self.fd = sock.fileno()
        self.op: int | None = None  # op id of the armed multishot accept (0 is a valid id)
        self.closed = False
        self.timer: Any = None

    def arm(self) -> None:
        self.timer = None
        if self.closed or self.op is not None:
            return
        self.op = self.rung._ring.prep_accept(self.fd, self, True)

    def _complete(self, res: int, flags: int) -> None:
        rung = self.rung
        if res >= 0:
            if self.closed:  # accepted after stop_accepting() returned: not ours to serve
                rung._refuse_fd(self, res, "the server stopped accepting")
            else:
                rung._accepted(self, res)
            if flags & rung._F_MORE:
                return
            self.op = None
            if self.closed:
                self._closed()
            else:
                self.arm()  # the multishot ended (CQ overflow, say): post it again
            return
        self.op = None
        if self.closed or res == -_ECANCELED:
            self.closed = True
            self._closed()
            return
        delay = rung.core.accept_error(_oserror(res))
        if delay:
            self.timer = rung._engine.call_later(delay, self.arm)
        else:
            self.arm()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.op is not None:
            self.rung._ring.prep_cancel(self.op, _IGNORE)  # the final completion closes it
        else:
            self._closed()

    def _closed(self) -> None:
        self.sock.close()
        self.rung._listener_closed()


class _Step:
    """ctx of one op of a file transfer: fill (file -> pipe), wait (the socket is writable),
    drain (pipe -> socket)."""

    __slots__ = ("tx", "kind")

    def __init__(self, tx: _FileTx, kind: int) -> None:
        self.tx = tx
        self.kind = kind

    def _complete(self, res: int, flags: int) -> None:
        self.tx.step(self.kind, res)


class _FileTx:
    """TransmitFile for one connection: the transport's :class:`FileSpan` at the head of its
    write buffer goes out as linked chains ``splice(file -> pipe)`` -> ``poll(socket
    writable)`` -> ``splice(pipe -> socket)``, one chain in flight. io_uring does not poll-arm
    a splice, and the socket is non-blocking, so the linked poll is what makes the drain wait
    for room instead of failing with ``EAGAIN`` (one that still does is simply retried). The
    pipe is filled only when empty, so the file offset of the next fill is always the span's
    offset (the transport advances it as drained bytes are reported with ``_on_sent``). A
    short fill breaks the link: the bytes it did put in the pipe are drained by the next
    chain."""

    __slots__ = ("st", "rung", "pipe_r", "pipe_w", "chunk", "in_pipe", "outstanding",
                 "error", "reported", "more", "fill", "wait", "drain")

    def __init__(self, rung: SaeaRung, st: Any) -> None:
        self.rung = rung
        self.st = st
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, SPLICE_CHUNK)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: keep the default
        self.chunk = fcntl.fcntl(self.pipe_w, _F_GETPIPE_SZ)
        self.in_pipe = 0
        self.outstanding = 0
        self.error: OSError | None = None
        self.reported = False
        self.more = False
        self.fill = _Step(self, _FILL)
        self.wait = _Step(self, _WAIT)
        self.drain = _Step(self, _DRAIN)

    def start(self, span: FileSpan) -> None:
        rung = self.rung
        ring = rung._ring
        st = self.st
        fd = st.fd
        n = self.in_pipe
        if not n:
            n = min(self.chunk, span.count)
            ring.prep_splice(span.fd, span.offset, self.pipe_w, -1, n, self.fill,
                             rung._SPLICE_F_MOVE, link=True)
            self.outstanding += 1
        ring.prep_poll_add(fd, rung._EPOLLOUT, self.wait, link=True)
        ring.prep_splice(self.pipe_r, -1, fd, -1, n, self.drain, rung._SPLICE_F_MOVE)
        self.outstanding += 2
        st.ops += self.outstanding

    def step(self, kind: int, res: int) -> None:
        st = self.st
        rung = self.rung
        st.ops -= 1
        self.outstanding -= 1
        if st.closing:
            if not st.ops:
                rung._finish(st)
            return
        conn = st.conn
        if kind == _DRAIN:
            if res > 0:
                self.in_pipe -= res
                self.reported = True
                self.more = conn._on_sent(res)
                if st.closing:
                    # The flush ended and released the connection inside _on_sent: release()
                    # saw the op count after this step, so it finishes the connection itself.
                    return
            elif res == 0:
                if self.in_pipe:
                    self.error = OSError(errno.EIO, "splice to the socket moved nothing")
            elif res != -_ECANCELED and res != -_EAGAIN:
                self.error = _oserror(res)
        elif kind == _FILL:
            if res > 0:
                self.in_pipe += res
            elif res == 0:
                self.error = OSError(errno.EIO, "the file is shorter than the count given to "
                                     "sendfile_nowait()")
            elif res != -_ECANCELED:
                self.error = _oserror(res)
        elif res < 0 and res != -_ECANCELED:  # the writability poll
            self.error = _oserror(res)
        if self.outstanding:
            return
        if self.error is not None:
            error, self.error = self.error, None
            conn._on_error(error)
            return
        if self.reported and not self.more:
            self.reported = False
            self.close_pipe_if_idle()
            return  # the flush is over; the next start_send starts again
        self.reported = False
        rung._send_next(st)

    def close_pipe_if_idle(self) -> None:
        if self.outstanding or self.in_pipe:
            return
        self.close()
        self.st.file = None

    def close(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


class SaeaRung(Rung):
    name = "saea"
    seed = ".NET SocketAsyncEventArgs over the I/O completion port (System.Net.Sockets)"
    windows_api = ("SocketAsyncEventArgs (AcceptAsync/ReceiveAsync/SendAsync), AcceptEx, "
                   "TransmitFile, BufferManager + args pool")
    mechanism = ("io_uring: multishot accept and recv into a provided buffer ring, batched "
                 "submission, splice for files")
    trait = ("pooled, reused op contexts (one op per context at a time); pre-posted accepts; "
             "one shared receive buffer slab (idle connections own no buffer); no per-op "
             "allocation; one io_uring_enter per loop pass")
    rank = 90
    #: the transport may queue FileSpans (``sendfile_nowait``): this driver splices them.
    supports_sendfile = True

    _reason: str | None | bool = False  # cached unavailable_reason (False: not computed)

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        from .. import saea
        from ..kernel import uring

        self._uring = uring
        self._saea = saea
        self._F_MORE = uring.CQE_F_MORE
        self._SPLICE_F_MOVE = uring.SPLICE_F_MOVE
        self._EPOLLOUT = uring.EPOLLOUT
        self._engine: Any = None
        self._ring: Any = None
        self._bufring: Any = None
        self._tid: int | None = None
        self._acceptors: list[_Acceptor] = []
        self._free_conns: list[Any] = []
        self._free_sends: list[Any] = []
        self._Conn: Any = None
        self._Send: Any = None
        self._stopping = False
        self._listeners_done: list[threading.Event] = []
        self._lingering: set[Any] = set()
        self._linger_timer: Any = None
        #: multishot receives ended by -ENOBUFS (the shared buffer ring ran dry) and re-armed
        self.enobufs = 0

    # ------------------------------------------------------------------ availability
    @classmethod
    def unavailable_reason(cls) -> str | None:
        if cls._reason is not False:
            return cls._reason  # type: ignore[return-value]
        cls._reason = cls._probe()
        return cls._reason

    @staticmethod
    def _probe() -> str | None:
        try:
            from ..kernel import uring
        except ImportError as exc:
            return f"the io_uring extension ioladder.kernel._uring is not built: {exc}"
        why = uring.availability()
        if why is not None:
            return why
        try:
            with uring.Ring(8) as ring:
                missing = [what for what, ok in (
                    ("multishot accept (Linux 5.19)", ring.has_multishot_accept),
                    ("multishot receive (Linux 6.0)", ring.has_recv_multishot),
                    ("provided buffer rings (Linux 5.19)", ring.has_buffer_rings),
                    ("IORING_OP_SPLICE", ring.supports("splice")),
                    ("IORING_OP_POLL_ADD", ring.supports("poll_add")),
                    ("IORING_OP_SEND", ring.supports("send")),
                ) if not ok]
        except OSError as exc:
            return f"cannot create an io_uring ring: {exc}"
        if missing:
            return "this kernel's io_uring lacks " + ", ".join(missing)
        return None

    # --------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        engine = self._saea.CompletionEngine(RING_ENTRIES, name="ioladder-saea",
                                             coalesce=COALESCE)
        engine.sync_send_batch = SYNC_SEND
        self._engine = engine
        engine.on_stop.append(self._after_loop)
        try:
            engine.run_sync(self._setup, listeners)
        except BaseException:
            engine.close()
            raise

    def _setup(self, listeners: list[socket.socket]) -> None:
        engine = self._engine
        self._tid = threading.get_ident()
        self._ring = engine.ring
        self._bufring = self._uring.receive_buffers(
            self._ring, 0, BUFFER_COUNT, BUFFER_SIZE, incremental=INCREMENTAL,
            whole=(WHOLE_BUFFER_COUNT, WHOLE_BUFFER_SIZE))
        self._Conn, self._Send = self._build()
        for sock in listeners:
            sock.setblocking(False)
            acceptor = _Acceptor(self, sock)
            self._acceptors.append(acceptor)
            acceptor.arm()

    def stop_accepting(self) -> None:
        """Close the listeners; returns once they are closed (their multishot accepts
        cancelled and completed), so no connection is admitted after it."""
        engine = self._engine
        if engine is None or engine.closed or not engine.thread.is_alive():
            for acceptor in self._acceptors:
                acceptor.closed = True
                acceptor.sock.close()
            return
        if engine.in_engine_thread():
            self._close_listeners()
            return
        done = threading.Event()
        try:
            engine.call_soon(self._close_listeners, done)
        except self._saea.ObjectDisposedError:
            return
        done.wait(5.0)

    def _close_listeners(self, done: threading.Event | None = None) -> None:
        if done is not None:
            self._listeners_done.append(done)
        for acceptor in self._acceptors:
            acceptor.close()
        self._listener_closed()

    def _listener_closed(self) -> None:
        if all(a.sock.fileno() == -1 for a in self._acceptors):
            for done in self._listeners_done:
                done.set()
            self._listeners_done.clear()

    def _refuse_fd(self, acceptor: _Acceptor, fd: int, why: str) -> None:
        lst = acceptor.sock
        try:
            sock = socket.socket(lst.family, lst.type, lst.proto, fileno=fd)
        except OSError:
            os.close(fd)
            return
        self.core.refuse(sock, why)

    def stop(self) -> None:
        engine = self._engine
        if engine is None:
            return
        if not engine.closed:
            try:
                engine.call_soon(self._teardown)
            except self._saea.ObjectDisposedError:
                pass
        if engine.thread is not threading.current_thread():
            engine.thread.join(10.0)
        engine.close()
        self._engine = None

    def _teardown(self) -> None:
        """Engine thread: abort what is left, let the cancelled ops complete (bounded), stop."""
        self._stopping = True
        self._close_listeners()
        for conn in self._live():
            conn._force_close(None)
        for st in list(self._lingering):
            self._end_linger(st, abort=True)
        deadline = time.monotonic() + STOP_DRAIN

        def check() -> None:
            busy = self._live() or any(a.op is not None for a in self._acceptors)
            if busy and time.monotonic() < deadline:
                self._engine.call_later(0.005, check)
                return
            self._engine.stop()
        check()

    def _after_loop(self) -> None:
        """Engine thread, after the loop: connections whose ops never completed (the ring's
        close cancels them) are closed and reported now."""
        for acceptor in self._acceptors:
            acceptor.closed = True
            acceptor.sock.close()  # an accept still pending is cancelled by the ring's close
        for conn in self._live():
            st = conn.rung_data
            st.ops = 0
            st.closing = True
            if st.file is not None:
                st.file.close()
                st.file = None
            self._close(st, abort=True)
        if self._bufring is not None:
            self._bufring = None

    def _live(self) -> list[Transport]:
        """Connections not yet released (the core's set: the rung keeps none of its own)."""
        return [c for c in list(self.core.connections)
                if c.rung_data is not None and c.rung_data.conn is c]

    def thread_count(self) -> int:
        engine = self._engine
        return 1 if engine is not None and engine.thread.is_alive() else 0

    # ---------------------------------------------------------------- the hot path
    def _build(self) -> tuple[type, type]:
        """The per-connection classes, with this ring's methods bound in closure cells."""
        take = self._bufring.take
        recycle = self._bufring.recycle
        F_BUFFER = self._uring.CQE_F_BUFFER
        F_BUF_MORE = self._uring.CQE_F_BUF_MORE
        prep_send = self._ring.prep_send
        F_MORE = self._F_MORE
        ENOBUFS = _ENOBUFS
        rung = self

        class _Conn(_ConnBase, self._uring.RecvContext):
            __slots__ = _CONN_SLOTS

            def _complete(self, res: int, flags: int) -> None:
                # The multishot receive: bytes in buffer (flags >> 16) of the shared ring.
                # Ring.dispatch delivers those with CQE_F_MORE itself (RecvContext), exactly as
                # the first two lines here would; this sees the rest.
                if res > 0:
                    self.conn._on_data(take(flags >> 16, res, flags & F_BUF_MORE))
                    if flags & F_MORE:
                        return
                elif flags & F_BUFFER:
                    # the kernel un-selects the buffer of an EOF or error today; if a kernel
                    # ever reports one consumed, it goes back, or the ring would shrink
                    recycle(flags >> 16, 0, flags & F_BUF_MORE)
                self.ops -= 1
                self.recv_op = None
                if self.closing:
                    rung._closing_recv_ended(self, res)
                    return
                self.cancelling = False
                if res > 0 or res == -ENOBUFS or res == -_ECANCELED:
                    # Ended without an error (ring ran dry, CQ overflow, pause): re-arm if
                    # still wanted; the bytes still queued in the socket come with it.
                    if res == -ENOBUFS:
                        rung.enobufs += 1
                    if self.reading:
                        rung._arm(self)
                elif res == 0:
                    self.conn._on_eof()  # held by the transport if reading is paused
                else:
                    self.conn._on_error(_oserror(res))

        class _Send(_SendBase, self._uring.SendContext):
            __slots__ = ()

            def _send_chunk(self, chunk: Any) -> None:
                # Ring.dispatch's send fast path: the next chunk is not a buffer (a FileSpan)
                rung._send_file(self.st, chunk)

            def _complete(self, res: int, flags: int) -> None:
                st = self.st
                st.ops -= 1
                if res > 0 and not st.closing:
                    conn = st.conn
                    if conn._on_sent(res) and not st.closing:
                        chunk = conn._next_chunk()
                        if type(chunk) is FileSpan:
                            rung._send_file(st, chunk)
                            return
                        prep_send(st.fd, chunk, self)
                        st.ops += 1
                    # else: the flush is over; if it released the connection (close() was
                    # waiting for it), release() saw this op already counted out and
                    # finishes the connection itself.
                    return
                if st.closing:
                    if not st.ops:
                        rung._finish(st)
                    return
                st.conn._on_error(_oserror(res) if res < 0 else
                                  OSError(errno.EPIPE, "send moved no bytes"))

        return _Conn, _Send

    def _arm(self, st: Any) -> None:
        st.recv_op = self._ring.prep_recv_multishot(st.fd, self._bufring, st)
        st.ops += 1

    # ----------------------------------------------------------------------- accepting
    def _accepted(self, acceptor: _Acceptor, fd: int) -> None:
        lst = acceptor.sock
        try:
            sock = socket.socket(lst.family, lst.type, lst.proto, fileno=fd)
        except OSError:
            os.close(fd)
            return
        if self._stopping:
            sock.close()
            return
        conn = self.core.admit(sock, self)
        if conn is None:
            return
        st = self._free_conns.pop() if self._free_conns else self._Conn()
        tx = self._free_sends.pop() if self._free_sends else self._Send()
        tx.st = st
        st.conn = conn
        st.fd = conn._fd  # the transport's int: one object less per connection
        st.tx = tx
        st.recv_op = None
        st.reading = False
        st.cancelling = False
        st.ops = 0
        st.closing = False
        st.abort = False
        st.file = None
        st.linger = 0.0
        conn.rung_data = st
        conn._ctx_tid = self._tid  # write() checks its context without calling in_context
        conn._send_gate = self._ring  # Ring.sync_send: this dispatch batch is small
        conn._send_ctx = tx  # the ring's gate starts a flush's send with it, in C
        conn._start()

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._tid:
            fn(*args)
            return
        engine = self._engine
        if engine is None or engine.closed:
            log.debug("dropping %r for %r: the saea rung is stopped", fn, conn)
            return
        try:
            engine.call_soon(fn, *args)
        except self._saea.ObjectDisposedError:
            log.debug("dropping %r for %r: the saea rung is stopped", fn, conn)

    def in_context(self, conn: Transport) -> bool:
        return threading.get_ident() == self._tid

    def start_send(self, conn: Transport) -> None:
        st = conn.rung_data
        chunk = conn._next_chunk()
        if type(chunk) is FileSpan:
            self._send_file(st, chunk)
            return
        self._ring.prep_send(st.fd, chunk, st.tx)
        st.ops += 1

    def _send_next(self, st: Any) -> None:
        """Continue a flush after a file span moved on: the next chunk, whatever it is."""
        chunk = st.conn._next_chunk()
        if type(chunk) is FileSpan:
            self._send_file(st, chunk)
            return
        if st.file is not None:
            st.file.close_pipe_if_idle()
        self._ring.prep_send(st.fd, chunk, st.tx)
        st.ops += 1

    def _send_file(self, st: Any, span: FileSpan) -> None:
        tx = st.file
        if tx is None:
            try:
                tx = st.file = _FileTx(self, st)
            except OSError as exc:  # out of descriptors for the pipe
                st.conn._on_error(exc)
                return
        tx.start(span)

    def set_reading(self, conn: Transport, on: bool) -> None:
        st = conn.rung_data
        if st is None or st.closing:
            return
        st.reading = on
        if on:
            if st.recv_op is None:
                self._arm(st)
            # else: still armed (maybe being cancelled: its final completion re-arms it)
        elif st.recv_op is not None and not st.cancelling:
            self._ring.prep_cancel(st.recv_op, _IGNORE)
            st.cancelling = True

    def shutdown_write(self, conn: Transport) -> None:
        try:
            conn._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            conn._on_error(exc)

    def release(self, conn: Transport, abort: bool) -> None:
        st = conn.rung_data
        if st.closing:
            return
        st.closing = True
        st.abort = abort
        st.reading = False
        if st.ops:
            # Cancel every op on the socket; each completes (ECANCELED or its own result) and
            # the last one to do so closes the socket and reports the release.
            self._ring.prep_cancel_fd(st.fd, _IGNORE, True)
        else:
            self._engine.call_soon(self._finish, st, conn)

    def _finish(self, st: Any, expected: Transport | None = None) -> None:
        """Every op on the socket has completed after ``release``: close it (abort), or shut
        the write side down and close once the peer has everything (the lingering close of
        ``rungs.base``), then report.

        Called by the completion that brings the op count to zero after ``release``, or (no
        op pending at ``release``) one pass later with ``expected``, the connection it was
        scheduled for (the state may have been recycled by then)."""
        conn = st.conn
        if conn is None or (expected is not None and conn is not expected) or st.linger:
            return
        if st.file is not None:
            st.file.close()
            st.file = None
        abort = st.abort or self.core.linger == 0  # LingerOption(true, 0): always a reset
        if not abort:
            sock = conn._sock
            try:
                if not conn._shut_wr:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already: nothing left to protect
            else:
                if unsent_bytes(sock):
                    self._linger(st)
                    return
        self._close(st, abort)

    # ------------------------------------------------------------------ lingering close
    def _linger(self, st: Any) -> None:
        """Keep the socket open, discarding what the peer still sends (a multishot receive
        into the shared ring), until it has acknowledged our last byte, sent its EOF, or the
        linger time has passed: closing earlier would answer its data with a reset that
        destroys our unacknowledged bytes."""
        st.linger = time.monotonic() + linger_timeout(self.core)
        st.cancelling = False
        self._lingering.add(st)
        self._arm(st)
        if self._linger_timer is None:
            self._linger_timer = self._engine.call_later(LINGER_POLL, self._linger_tick)

    def _linger_tick(self) -> None:
        self._linger_timer = None
        now = time.monotonic()
        for st in list(self._lingering):
            if st.cancelling:
                continue  # ending already
            verdict = linger_step(st.conn, st.linger, now)
            if verdict is not None:
                self._end_linger(st, abort=verdict == LINGER_RESET)
        if self._lingering:
            self._linger_timer = self._engine.call_later(LINGER_POLL, self._linger_tick)

    def _end_linger(self, st: Any, abort: bool) -> None:
        if st.recv_op is not None:
            if not st.cancelling:
                st.abort = abort
                st.cancelling = True
                self._ring.prep_cancel(st.recv_op, _IGNORE)  # its final completion closes
        else:
            self._close(st, abort)

    def _closing_recv_ended(self, st: Any, res: int) -> None:
        """The receive of a released connection ended (its op count is already down)."""
        if not st.linger:
            if not st.ops:
                self._finish(st)
            return
        if st.cancelling:  # ended by _end_linger, which decided how to close
            self._close(st, st.abort)
        elif res == 0:  # the peer's EOF: it sends nothing more, a FIN-close cannot be reset
            self._close(st, False)
        elif res > 0 or res == -_ENOBUFS:
            self._arm(st)  # keep discarding
        else:
            self._close(st, True)

    def _close(self, st: Any, abort: bool) -> None:
        """Close the socket, report the release, recycle the contexts."""
        conn = st.conn
        if st.linger:
            st.linger = 0.0
            self._lingering.discard(st)
        close_socket(conn._sock, abort, shutdown=False)
        tx = st.tx
        tx.st = None
        conn._send_ctx = None
        st.conn = None
        st.tx = None
        st.fd = -1
        self._free_conns.append(st)
        self._free_sends.append(tx)
        conn._on_released()


RUNG = SaeaRung
