"""Rung ``iocp``: the I/O completion port — one completion queue, a pool of worker threads.

Seed concept: the article's completion port. Every socket is associated with one port; every
receive, send and accept is an overlapped op with its own context; worker threads block in
``GetQueuedCompletionStatus`` and the one that gets a completion handles it — "the alarm rings,
someone is sent to fetch the letter, and whoever is free deals with it". Windows API:
``CreateIoCompletionPort``, ``GetQueuedCompletionStatus``, ``PostQueuedCompletionStatus``,
``WSARecv``/``WSASend``/``AcceptEx``. Linux mechanism: :mod:`ioladder.iocp`, whose queue is one
io_uring ring's completion queue shared by all threads (see its docstring for the thread model).

Trait kept, with its limits — the *plain* completion port, nothing pooled or multishot:

* **one queue for every socket**; a pool of ``workers`` threads (default 2 x CPUs) takes
  completions with ``get_queued`` and at most ``concurrency`` of them (default: CPUs) run
  handlers at once, the rest stay parked even with completions queued;
* **single-shot ops, a context per op**: each connection owns a receive ``Overlapped`` with its
  own buffer (WSARecv's: the buffer is the kernel's while the receive is pending) and a send
  ``Overlapped``; one receive and at most one send are pending per connection; a short send is
  resubmitted with the rest; each listener keeps ``accepts`` (16) AcceptEx-style accepts
  pending, each re-posted as it completes;
* since any worker may run any completion, each connection's context is a
  :class:`~ioladder.rungs.base.Strand`: two callbacks of one connection never overlap, and a
  completion arriving while another thread is inside the strand is queued to that thread;
* ``pause_reading`` only stops posting the next receive: a receive already pending may still
  complete, and the shared transport holds its bytes until ``resume_reading``;
* closing cancels the connection's pending ops (``CancelIoEx`` = ``IORING_OP_ASYNC_CANCEL`` by
  descriptor), waits for their completions, then closes the socket and reports the release —
  when nothing was pending, through a posted packet, so never from inside ``release()``. A
  graceful close with bytes the peer has not acknowledged lingers first (``rungs.base``): the
  receive stays posted and discards, and a timer op on the port polls the send queue;
* out of descriptors (``EMFILE`` in an accept's completion), the accept's context is turned
  into a timer on the same port (``post_after``) and re-posted when it fires: no spinning and
  no extra thread.

Only the workers submit. io_uring cancels an op when the thread that submitted it exits (see
:mod:`ioladder.iocp`), and application threads, timers and the idle reaper come and go. So a
call from a thread outside the pool — ``write()`` from an application thread, ``close()``
from ``Server.shutdown`` — is put in the connection's *mailbox* and one packet is posted to
the port; the worker that takes it drains the mailbox inside the strand, in order. Starting
and stopping the accepts is likewise posted to the workers. Ops are prepared with
``submit=False`` and submitted together when the worker returns to ``get_queued`` (one
``io_uring_enter`` per handler, not per op; the leader's enter also waits).

Configuration: ``IocpRung(core, workers=, concurrency=, accepts=, recv_size=)``, or for
``serve()`` the environment variables ``IOLADDER_IOCP_WORKERS`` and
``IOLADDER_IOCP_CONCURRENCY``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport import Transport
from .base import (
    LINGER_DONE,
    LINGER_POLL,
    Rung,
    Strand,
    close_socket,
    linger_step,
    linger_timeout,
    release_policy,
)

log = logging.getLogger("ioladder")

#: bytes of each connection's receive buffer, its own for the connection's life (WSARecv's
#: buffer belongs to the kernel while the receive is pending): the plain completion port's
#: memory cost per idle connection, which the ``saea`` rung's provided buffers avoid.
RECV_SIZE = 16 * 1024
#: AcceptEx-style accepts kept pending on each listener.
ACCEPTS = 16
ENV_WORKERS = "IOLADDER_IOCP_WORKERS"
ENV_CONCURRENCY = "IOLADDER_IOCP_CONCURRENCY"

#: accept errors that mean the listener itself is gone (our own stop_accepting).
_LISTENER_GONE = frozenset({errno.ECANCELED, errno.EINVAL, errno.EBADF, errno.ENOTSOCK})
# Overlappeds of the rung's own posted packets (PostQueuedCompletionStatus-style control).
_RELEASED = object()   # key=conn: report a release that had nothing pending
_MAIL = object()       # key=conn: drain the connection's mailbox in its strand
_START = object()      # key=listener: post its accepts
_STOP = object()       # key=listener: cancel its accepts


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, not {n}")
    return n


class _Listener:
    __slots__ = ("sock", "pending", "overlappeds", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = 0       # accepts and back-off timers the kernel still owns
        self.overlappeds: list[Any] = []
        self.closed = False


class _Conn:
    """The rung's per-connection state: its strand, mailbox and two per-op contexts."""

    __slots__ = ("strand", "started", "mail", "mail_lock", "mail_posted", "buf", "view",
                 "recv_ov", "send_ov", "timer_ov", "reading", "recv_pending", "send_pending",
                 "timer_pending", "released", "lingering", "deadline", "ending", "abort",
                 "finished")

    def __init__(self, iocp: Any, recv_size: int) -> None:
        self.strand = Strand()
        self.started = False            # connection_made has run
        self.mail: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self.mail_lock = threading.Lock()
        self.mail_posted = False
        self.buf = bytearray(recv_size)
        self.view = memoryview(self.buf)
        self.recv_ov = iocp.Overlapped()
        self.send_ov = iocp.Overlapped()
        self.timer_ov: Any = None       # made for a lingering close only
        self.reading = False
        self.recv_pending = False
        self.send_pending = False
        self.timer_pending = False
        self.released = False           # release() called: the transport is done with it
        self.lingering = False          # released gracefully, waiting for the peer's ACKs
        self.deadline = 0.0             # ... until then at the latest (then a reset)
        self.ending = False             # pending ops cancelled; close once they are in
        self.abort = False
        self.finished = False           # socket closed


class IocpRung(Rung):
    name = "iocp"
    seed = "I/O completion port"
    windows_api = ("CreateIoCompletionPort, GetQueuedCompletionStatus, "
                   "PostQueuedCompletionStatus, WSARecv/WSASend/AcceptEx")
    mechanism = ("one io_uring ring shared by all threads; its completion queue drained by a "
                 "worker pool (ioladder.iocp)")
    trait = ("one completion queue for all sockets; worker pool (2 x CPUs) with a concurrency "
             "limit (CPUs); single-shot ops with a context per op; pre-posted accepts")
    rank = 80

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            from ..kernel import uring
        except ImportError as exc:
            return f"the io_uring extension is not built: {exc}"
        return uring.availability()

    def __init__(self, core: Any, *, workers: int | None = None,
                 concurrency: int | None = None, accepts: int = ACCEPTS,
                 recv_size: int = RECV_SIZE) -> None:
        super().__init__(core)
        from .. import iocp
        self._iocp = iocp
        self.concurrency = concurrency or _env_int(ENV_CONCURRENCY) or iocp.cpu_count()
        self.workers = workers or _env_int(ENV_WORKERS) or 2 * self.concurrency
        if accepts < 1:
            raise ValueError("accepts must be >= 1")
        self.accepts = accepts
        if recv_size < 1:
            raise ValueError("recv_size must be >= 1")
        self.recv_size = recv_size
        self.port: Any = None
        self.pool: Any = None
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []
        self._accepting = False
        self._listeners_closed = threading.Event()
        self._stopped = False

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        iocp = self._iocp
        self.port = iocp.CompletionPort(self.concurrency)
        self.pool = self.port.start_workers(self.workers, self._on_completion,
                                            name="ioladder-iocp")
        self._accepting = True
        with self._lock:
            for sock in listeners:
                lst = _Listener(sock)
                lst.pending = 1   # the _START packet: the listener stays open until it is seen
                self._listeners.append(lst)
                self.port.associate(sock, lst)
                self.port.post_queued(0, lst, _START)   # a worker posts the accepts
        if not self._listeners:
            self._listeners_closed.set()

    def _start_listener(self, lst: _Listener) -> None:
        """On a worker: post the listener's accepts (AcceptEx-style, ``accepts`` of them)."""
        with self._lock:
            lst.pending -= 1
            if self._accepting:
                for _ in range(self.accepts):
                    ov = self._iocp.Overlapped()
                    lst.overlappeds.append(ov)
                    self._post_accept(lst, ov)
            else:
                self._maybe_close_listener(lst)

    def stop_accepting(self) -> None:
        with self._lock:
            if self.port is None or not self._accepting:
                first = False
            else:
                first = True
                self._accepting = False
                for lst in self._listeners:
                    try:
                        # Stop listening now: new SYNs are refused, pending accepts fail.
                        lst.sock.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
        if not first:
            self._wait_listeners()
            return
        if self.pool is None:   # start() failed before the workers ran: no op was posted
            with self._lock:
                for lst in self._listeners:
                    lst.pending = 0
                    self._maybe_close_listener(lst)
            return
        in_worker = self.pool.in_worker()
        for lst in self._listeners:
            if in_worker:
                self._stop_listener(lst)
            else:
                try:
                    with self._lock:
                        lst.pending += 1   # the _STOP packet
                    self.port.post_queued(0, lst, _STOP)   # a worker cancels (it submits)
                except OSError:
                    with self._lock:
                        lst.pending -= 1
                        self._maybe_close_listener(lst)
        self._wait_listeners()

    def _wait_listeners(self) -> None:
        # The accepts' completions come through the workers; a worker cannot wait for them
        # (with concurrency 1 it would wait for itself).
        if self.pool is None or self.pool.in_worker() or self._listeners_closed.is_set():
            return
        if not self._listeners_closed.wait(5.0):
            log.warning("iocp: listeners still have accepts pending after 5 s")

    def _stop_listener(self, lst: _Listener, packet: bool = False) -> None:
        """On a worker: cancel the listener's accepts and back-off timers (CancelIoEx)."""
        with self._lock:
            if packet:
                lst.pending -= 1
            if not lst.closed and lst.pending:
                try:
                    self.port.cancel(lst.sock, submit=False)   # the accepts
                    for ov in lst.overlappeds:   # and the back-off timers
                        if ov.pending and ov.kind is self._iocp.Op.TIMER:
                            self.port.cancel(None, ov, submit=False)
                except (OSError, ValueError):
                    pass
            self._maybe_close_listener(lst)

    def _maybe_close_listener(self, lst: _Listener) -> None:
        """Close ``lst`` once nothing of the kernel's refers to it (lock held)."""
        if lst.closed or lst.pending or self._accepting:
            return
        lst.closed = True
        self.port.disassociate(lst.sock)
        lst.sock.close()
        if all(x.closed for x in self._listeners):
            self._listeners_closed.set()

    def stop(self) -> None:
        if self._stopped or self.port is None:
            return
        self.stop_accepting()
        self._stopped = True
        # Connections still open or lingering (Server.shutdown() normally leaves none): reset
        # them through the workers, which deliver their connection_lost.
        leftovers = [c for c in list(self.core.connections) if isinstance(c.rung_data, _Conn)]
        for conn in leftovers:
            self.dispatch(conn, self._reset, conn)
        if leftovers and not self.pool.in_worker():
            self.core.wait_empty(2.0)
        self.pool.stop(5.0)
        for conn in leftovers:   # what the workers could not end: at least free the socket
            st = conn.rung_data
            if not st.finished:
                st.finished = True
                st.abort = True
                self._close_socket(conn)
        self.port.close()
        for lst in self._listeners:
            if not lst.closed:
                lst.closed = True
                lst.sock.close()

    def thread_count(self) -> int:
        return self.pool.alive() if self.pool is not None else 0

    # ---------------------------------------------------------------------- completions
    def _on_completion(self, nbytes: int, key: Any, ov: Any) -> None:
        """The worker pool's handler: one completion packet."""
        if type(key) is Transport:
            st: _Conn = key.rung_data
            if ov is st.recv_ov:
                st.strand.run(self._recv_done, key, nbytes, ov.error)
            elif ov is st.send_ov:
                st.strand.run(self._send_done, key, nbytes, ov.error)
            elif ov is st.timer_ov:
                st.strand.run(self._linger_tick, key, ov.error)
            elif ov is _MAIL:
                st.strand.run(self._drain_mail, st)
            elif ov is _RELEASED:
                st.strand.run(key._on_released)
        elif type(key) is _Listener:
            if ov is _START:
                self._start_listener(key)
            elif ov is _STOP:
                self._stop_listener(key, packet=True)
            else:
                self._accept_done(key, ov)

    @staticmethod
    def _drain_mail(st: _Conn) -> None:
        """In the strand: run the calls other threads queued, in order (only once the
        connection has started: a close() from Server.shutdown() may arrive first)."""
        if not st.started:
            return   # mail_posted stays set: _start_conn drains
        mail = st.mail
        while True:
            with st.mail_lock:
                if not mail:
                    st.mail_posted = False
                    return
                fn, args = mail.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r dispatched to a connection failed", fn)

    # ------------------------------------------------------------------------- accepting
    def _post_accept(self, lst: _Listener, ov: Any) -> None:
        """Post an accept on ``lst`` with ``ov`` (lock held)."""
        try:
            self.port.accept(lst.sock, ov, submit=False)
        except (OSError, ValueError, RuntimeError) as exc:
            if self._accepting:
                log.error("iocp: cannot post an accept: %s", exc)
            return
        lst.pending += 1

    def _accept_done(self, lst: _Listener, ov: Any) -> None:
        sock = ov.result
        ov.result = None
        err = ov.error
        conn = None
        with self._lock:
            lst.pending -= 1
            accepting = self._accepting
            if not accepting:
                self._maybe_close_listener(lst)
            elif ov.kind is self._iocp.Op.TIMER:   # the back-off is over
                self._post_accept(lst, ov)
            elif err == 0:
                self._post_accept(lst, ov)    # keep `accepts` pending, as with AcceptEx
            elif err in _LISTENER_GONE:
                self._maybe_close_listener(lst)
            else:
                delay = self.core.accept_error(OSError(err, os.strerror(err)))
                if delay:
                    try:
                        self.port.post_after(delay, lst, ov, submit=False)
                        lst.pending += 1
                    except (OSError, ValueError):
                        pass
                else:
                    self._post_accept(lst, ov)
            if sock is not None and accepting:
                # Admitted under the lock: once stop_accepting() has returned no connection
                # appears, so Server.shutdown() closes a complete set.
                conn = self._admit(sock)
        if sock is None:
            return
        if not accepting:
            self.core.refuse(sock, "the server stopped accepting")
        elif conn is not None:
            conn.rung_data.strand.run(self._start_conn, conn)

    def _admit(self, sock: socket.socket) -> Transport | None:
        conn = self.core.admit(sock, self)
        if conn is None:
            return None
        conn.rung_data = _Conn(self._iocp, self.recv_size)
        try:
            self.port.associate(sock, conn)
        except OSError as exc:
            self.core.forget(conn)
            self.core.refuse(sock, f"the completion port is closed: {exc}")
            return None
        return conn

    def _start_conn(self, conn: Transport) -> None:
        """In the strand: connection_made, then whatever other threads queued meanwhile."""
        st: _Conn = conn.rung_data
        try:
            conn._start()
        finally:
            st.started = True
            self._drain_mail(st)

    # ------------------------------------------------------------------------ receiving
    def _post_recv(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        st.recv_pending = True
        try:
            self.port.recv(conn._sock, st.buf, st.recv_ov, submit=False)
        except (OSError, ValueError, RuntimeError) as exc:
            st.recv_pending = False
            conn._on_error(exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc)))

    def _recv_done(self, conn: Transport, nbytes: int, err: int) -> None:
        st: _Conn = conn.rung_data
        st.recv_pending = False
        if st.released:
            if st.lingering and not st.ending:
                self._linger_recv(conn, nbytes, err)
            else:
                self._maybe_finish(conn)
            return
        if err:
            conn._on_error(OSError(err, os.strerror(err)))
            return
        if not nbytes:
            conn._on_eof()
            return
        conn._on_data(bytes(st.view[:nbytes]))
        if st.reading and not st.recv_pending and not st.released:
            self._post_recv(conn)

    # -------------------------------------------------------------------------- sending
    def _send_done(self, conn: Transport, nbytes: int, err: int) -> None:
        st: _Conn = conn.rung_data
        st.send_pending = False
        if st.released:
            self._maybe_finish(conn)
            return
        if err:
            conn._on_error(OSError(err, os.strerror(err)))
            return
        if conn._on_sent(nbytes):
            self.start_send(conn)   # a short send: the rest, as a new op

    # ---------------------------------------------------------------------- closing
    def _end(self, conn: Transport, abort: bool, later: bool = False) -> None:
        """In the strand: cancel the connection's pending ops (CancelIoEx); once every one has
        completed, close the socket (a reset if ``abort``) and report the release.
        ``later``: called from ``release()``, which must not report it itself."""
        st: _Conn = conn.rung_data
        st.lingering = False
        st.ending = True
        st.abort = abort
        if st.recv_pending or st.send_pending or st.timer_pending:
            try:
                if st.recv_pending or st.send_pending:
                    self.port.cancel(conn._sock, submit=False)
                if st.timer_pending:
                    self.port.cancel(None, st.timer_ov, submit=False)
                return   # each op completes (ECANCELED or its own result): _maybe_finish
            except OSError:
                pass     # the port is closed: nothing will complete any more
        st.finished = True
        self._close_socket(conn)
        if not later:
            conn._on_released()
            return
        try:
            self.port.post_queued(0, conn, _RELEASED)   # _on_released later, in the strand
        except OSError:
            threading.Timer(0, st.strand.run, (conn._on_released,)).start()

    def _reset(self, conn: Transport) -> None:
        """In the strand, at stop(): abort an open connection, cut a lingering one short."""
        st: _Conn = conn.rung_data
        if not conn._released:
            conn._force_close(None)
        elif not st.ending and not st.finished:
            self._end(conn, abort=True)

    def _maybe_finish(self, conn: Transport) -> None:
        """In the strand: the last pending op of an ending connection is in: close, report."""
        st: _Conn = conn.rung_data
        if st.finished or not st.ending:
            return
        if st.recv_pending or st.send_pending or st.timer_pending:
            return
        st.finished = True
        self._close_socket(conn)
        conn._on_released()

    def _close_socket(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        sock = conn._sock
        if self.port is not None:
            self.port.disassociate(sock)   # before close: the number is reused at once
        close_socket(sock, st.abort, shutdown=False)

    # ------------------------------------------------------------------ lingering close
    def _linger(self, conn: Transport) -> None:
        """Released gracefully with bytes the peer has not acknowledged: keep receiving (and
        discarding) so that its data never meets a closed socket, and look at the send queue
        every LINGER_POLL with a timer op on the port, until it is empty, the peer's EOF, or
        the deadline (see ``rungs.base``)."""
        st: _Conn = conn.rung_data
        st.lingering = True
        st.deadline = time.monotonic() + linger_timeout(self.core)
        if not st.recv_pending:
            self._post_linger_recv(conn)
        if st.timer_ov is None:
            st.timer_ov = self._iocp.Overlapped()
        self._arm_linger_timer(conn)

    def _arm_linger_timer(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        try:
            self.port.post_after(LINGER_POLL, conn, st.timer_ov, submit=False)
            st.timer_pending = True
        except OSError:
            self._end(conn, abort=True)

    def _post_linger_recv(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        try:
            self.port.recv(conn._sock, st.buf, st.recv_ov, submit=False)
            st.recv_pending = True
        except OSError:
            pass   # the port is closed; the timer (or stop()) ends the linger

    def _linger_recv(self, conn: Transport, nbytes: int, err: int) -> None:
        """The lingering peer sent something: discard it; its EOF or an error ends the wait."""
        if err:
            self._end(conn, abort=True)
        elif not nbytes:
            # The peer's EOF: it sends nothing more, so close() cannot provoke a reset; the
            # kernel still delivers what is queued, then our FIN.
            self._end(conn, abort=False)
        else:
            self._post_linger_recv(conn)

    def _linger_tick(self, conn: Transport, err: int) -> None:
        st: _Conn = conn.rung_data
        st.timer_pending = False
        if not st.lingering or st.ending:
            self._maybe_finish(conn)
        elif (verdict := linger_step(conn, st.deadline, time.monotonic())) or err:
            self._end(conn, abort=verdict != LINGER_DONE)   # a failed timer: give up too
        else:
            self._arm_linger_timer(conn)

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        st: _Conn = conn.rung_data
        if st.started and self.pool.in_worker():
            st.strand.run(fn, *args)   # runs now, or queued to the worker inside the strand
            return
        # Not a worker: this thread must not submit ops (they would die with it). Queue the
        # call in the connection's mailbox; one packet makes a worker drain it in the strand.
        with st.mail_lock:
            st.mail.append((fn, args))
            if st.mail_posted:
                return
            st.mail_posted = True
        try:
            self.port.post_queued(0, conn, _MAIL)
        except OSError:   # the port is closed (the rung stopped): nothing can submit any more
            st.strand.run(self._drain_mail, st)

    def in_context(self, conn: Transport) -> bool:
        return conn.rung_data.strand.inside()

    def start_send(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        st.send_pending = True
        try:
            self.port.send(conn._sock, conn._next_chunk(), st.send_ov, submit=False)
        except (OSError, ValueError, RuntimeError) as exc:
            st.send_pending = False
            conn._on_error(exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc)))

    def set_reading(self, conn: Transport, on: bool) -> None:
        st: _Conn = conn.rung_data
        st.reading = on
        if on and not st.recv_pending and not st.released:
            self._post_recv(conn)

    def release(self, conn: Transport, abort: bool) -> None:
        st: _Conn = conn.rung_data
        st.released = True
        st.reading = False
        abort, linger = release_policy(conn, self.core, abort, may_linger=not st.send_pending)
        if linger:
            self._linger(conn)
            return
        self._end(conn, abort, later=True)

RUNG = IocpRung
