"""Rung ``overlapped-routine``: overlapped I/O with completion routines (APCs).

Seed concept: the article's second way of learning that an overlapped operation finished. No
event object: every ``WSARecv``/``WSASend``/``AcceptEx`` is given a *completion routine*; when the
operation completes the system queues that routine to the issuing thread's APC queue, and the
thread runs the queue — on its own stack, one routine after another — only when it enters an
*alertable* wait (``SleepEx(..., TRUE)`` or ``WSAWaitForMultipleEvents(..., fAlertable=TRUE)``).
Windows API: ``WSARecv``/``WSASend``/``AcceptEx`` with ``lpCompletionRoutine``, ``SleepEx``,
``QueueUserAPC``. Linux mechanism: an io_uring ring created by the issuing thread with
``SINGLE_ISSUER | DEFER_TASKRUN``.

Why that ring *is* an APC queue: with ``DEFER_TASKRUN`` the kernel parks the completion work of
every op on the ring's deferred list and runs it only when the thread that owns the ring calls
``io_uring_enter`` to wait — never in an interrupt, never on another thread. So completions are
queued by the kernel while the thread is busy, exactly as APCs queue, and delivered in a batch
when it next sits in its wait. ``Ring.wait()`` is ``SleepEx(timeout, TRUE)``; here it is wrapped
by :meth:`OverlappedRoutineRung.sleep_ex`, which, like ``SleepEx``, runs every routine that came
in *before it returns*. A ring with ``SINGLE_ISSUER`` refuses to be submitted to or reaped from by
any other thread (``RuntimeError``), so "never on another thread" is enforced, not just followed.
(Kernels before 6.1 lack ``DEFER_TASKRUN``; the ring then falls back to ``COOP_TASKRUN`` and the
kernel may finish an op at any kernel entry of the thread — but only :meth:`sleep_ex` reaps, so
the routines still run only there.)

How each piece maps:

* **WSAOVERLAPPED + lpCompletionRoutine** = :class:`Overlapped`, the op's ``ctx``: it carries the
  routine to call, set when the op is posted. The loop does not look at what kind of op came
  back; it calls ``ov.routine(error, transferred, ov, flags)`` — ``CompletionROUTINE``'s own
  signature (``dwError``, ``cbTransferred``, ``lpOverlapped``, ``dwFlags``). Single-shot ops only,
  one op per context at a time: a connection has a receive context owning its receive buffer
  (WSARecv's ``WSABUF``: the kernel's while the receive is pending) and a send context;
* **SleepEx(INFINITE, TRUE)** = :meth:`sleep_ex`: submit what the routines prepared, block in
  ``io_uring_enter`` until something completes, then run the routines (and user APCs) in order;
* **QueueUserAPC** = :meth:`queue_apc`: calls from other threads (``write()`` from an application
  thread, ``Server.shutdown``, the idle reaper) are queued to the issuing thread, which is woken
  and runs them inside its alertable wait — the thread's only way in;
* **AcceptEx** = single-shot accepts (``ACCEPTS`` per listener) re-posted by their own routine;
  **SetWaitableTimer with a completion routine** = an io_uring timeout op whose routine runs like
  any other (the accept back-off after ``EMFILE``, the lingering-close tick);
* **CancelIo** = ``IORING_OP_ASYNC_CANCEL`` of every op on the socket; the cancelled routines
  still run (with ``ECANCELED``), and the socket is closed only after the last one has.

Trait kept, with its limits: **one thread issues every op and runs every routine**, so every
protocol callback runs inside a completion routine, on that thread, inside its alertable wait
(tests/rungs/test_overlapped_routine.py asserts it). The thread alternates between the two
states the article describes: *working* (a routine — the application's ``data_received`` — is
running; completions keep arriving and wait in the kernel, undelivered) and *alertable*
(waiting; nothing to do until the kernel hands over a routine). It never does both: a slow
callback delays every other connection's completions, and no second thread can take them —
the problem the completion port (the next rung) exists to solve. ``stats()`` shows the
alternation: waits, routines per wait (the backlog a busy thread builds up), user APCs.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport import Transport
from .base import LINGER_POLL, Rung, sweep_lingering
from .overlapped import (
    LISTENER_GONE,
    ConnState,
    Listener,
    OverlappedConns,
    check_options,
    close_listener_sockets,
    maybe_close_listener,
    oserror,
    refuse_fd,
    stop_listening,
    uring_unavailable_reason,
    wrap_fd,
)

log = logging.getLogger("ioladder")

#: bytes of each connection's receive buffer, owned by its receive context (WSABUF).
RECV_SIZE = 16 * 1024
#: AcceptEx-style single-shot accepts kept pending on each listener.
ACCEPTS = 4
#: submission queue entries of the ring (the completion queue is twice as large).
RING_ENTRIES = 1024
#: how long ``stop()`` lets cancelled ops complete before the ring's close takes over.
STOP_DRAIN = 2.0


class Overlapped:
    """``WSAOVERLAPPED`` plus its ``lpCompletionRoutine``: the ctx of one pending op.

    ``routine(error, transferred, ov, flags)`` is called on the issuing thread, inside its
    alertable wait, once the op completes (``error`` is an errno, 0 on success). ``owner`` is
    what the op belongs to (a connection's state, a listener, the rung); ``buf``/``view`` the
    receive buffer handed to the kernel with a receive.
    """

    __slots__ = ("routine", "owner", "buf", "view", "pending", "op_id")

    def __init__(self, owner: Any, size: int = 0) -> None:
        self.routine: Callable[[int, int, Overlapped, int], None] | None = None
        self.owner = owner
        self.buf = bytearray(size) if size else None
        self.view = memoryview(self.buf) if size else None
        self.pending = False
        self.op_id = -1

    def __repr__(self) -> str:
        name = getattr(self.routine, "__name__", None)
        return f"<Overlapped routine={name} pending={self.pending}>"


class _Conn(ConnState):
    """The rung's per-connection state: a receive and a send context (each op's routine runs
    with it as ``ov.owner``), and where the connection is in its life."""

    __slots__ = ()

    def __init__(self, conn: Transport, recv_size: int) -> None:
        super().__init__(conn, Overlapped(self, recv_size), Overlapped(self))


_Listener = Listener


class OverlappedRoutineRung(OverlappedConns, Rung):
    name = "overlapped-routine"
    seed = "overlapped I/O, completion routines (APC)"
    windows_api = ("WSARecv/WSASend/AcceptEx with lpCompletionRoutine, SleepEx / "
                   "WSAWaitForMultipleEvents(fAlertable=TRUE), QueueUserAPC")
    mechanism = ("io_uring ring owned by one thread (SINGLE_ISSUER + DEFER_TASKRUN): each op's "
                 "ctx carries its routine, run only inside that thread's own io_uring_enter")
    trait = ("each op carries its callback; routines run only on the issuing thread and only "
             "inside its alertable wait; one thread for everything; single-shot ops, one "
             "context per op")
    rank = 65

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return uring_unavailable_reason()

    def __init__(self, core: Any, *, accepts: int = ACCEPTS, recv_size: int = RECV_SIZE) -> None:
        super().__init__(core)
        from ..kernel import uring
        check_options(accepts, recv_size)
        self._uring = uring
        self.accepts = accepts
        self.recv_size = recv_size
        self._ring: Any = None
        self._thread: threading.Thread | None = None
        self._tid: int | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        #: the thread's user-mode APC queue (QueueUserAPC); deque appends are thread-safe.
        self._apcs: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._wake_lock = threading.Lock()
        self._ring_open = False
        self._alertable = False
        self._inflight = 0           # ops posted whose routine has not run yet
        self._listeners: list[_Listener] = []
        self._listeners_closed = threading.Event()
        self._accepting = False
        self._conns: set[Transport] = set()
        self._lingering: set[_Conn] = set()
        self._tick_ov = Overlapped(self)
        self._stopping = False
        self._stop_deadline = 0.0
        self._cancel_ov = Overlapped(self)   # shared ctx of cancel ops: their routine is a no-op
        self._cancel_ov.routine = self._cancel_done
        # statistics (the model's alternation made visible)
        self.alertable_waits = 0
        self.routines_run = 0
        self.apcs_run = 0
        self.max_batch = 0

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        self._listeners = [_Listener(sock) for sock in listeners]
        if not self._listeners:
            self._listeners_closed.set()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="ioladder-overlapped-routine",
                                        daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join(5.0)
            self._thread = None
            raise self._start_error

    def _run(self) -> None:
        """The issuing thread: creates the ring (so it is the only thread that may use it),
        posts the accepts, then spends its life in alertable waits."""
        self._tid = threading.get_ident()
        try:
            self._ring = self._uring.Ring(RING_ENTRIES)
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._ring_open = True
        self._started.set()
        try:
            for lst in self._listeners:
                for _ in range(self.accepts):
                    ov = Overlapped(lst)
                    lst.ovs.append(ov)
                    self._accept_ex(lst, ov)
            while not self._stopping or ((self._inflight or self._apcs) and
                                         time.monotonic() < self._stop_deadline):
                self.sleep_ex(0.05 if self._stopping else None)
        except BaseException:
            log.exception("overlapped-routine thread crashed")
            raise
        finally:
            self._after_loop()

    def _after_loop(self) -> None:
        """On the issuing thread, after its last wait: close the ring (it cancels any op still
        pending and waits for it), then close and report the connections those ops held — the
        one place a ``connection_lost`` runs outside a routine, when ``STOP_DRAIN`` ran out."""
        with self._wake_lock:
            self._ring_open = False
        try:
            self._ring.close()   # cancels what is still pending and waits for it (bounded)
        finally:
            # No kernel op refers to these sockets any more: close and report them.
            self._close_leftovers(self._conns)
            close_listener_sockets(self._listeners)
            self._listeners_closed.set()
            # APCs queued after the last wait find nothing to act on: the connections are gone.
            self._apcs.clear()

    def stop_accepting(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            close_listener_sockets(self._listeners)
            self._listeners_closed.set()
            return
        self._accepting = False
        stop_listening(self._listeners)  # new SYNs are refused from now on
        if threading.get_ident() == self._tid:
            self._close_listeners()
            return
        self.queue_apc(self._close_listeners)
        if not self._listeners_closed.wait(5.0):
            log.warning("overlapped-routine: listeners still have accepts pending after 5 s")

    def _close_listeners(self) -> None:
        """Issuing thread: cancel every pending accept (and back-off timer); each listener is
        closed by the routine of its last op."""
        self._accepting = False
        for lst in self._listeners:
            if lst.closing:
                continue
            lst.closing = True
            for ov in lst.ovs:
                if ov.pending:
                    self._post(self._ring.prep_cancel, ov.op_id, self._cancel_ov)
            self._maybe_close_listener(lst)

    def _maybe_close_listener(self, lst: _Listener) -> None:
        maybe_close_listener(lst, self._listeners, self._listeners_closed)

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self.queue_apc(self._teardown)
            if thread is not threading.current_thread():
                thread.join(10.0)
                if thread.is_alive():
                    log.error("overlapped-routine: the issuing thread did not stop in 10 s")
        self._thread = None

    def _teardown(self) -> None:
        """Issuing thread: stop accepting, reset what is still open, cut lingering closes
        short; the loop ends once every routine has run (bounded by STOP_DRAIN)."""
        self._close_listeners()
        self._reset_conns(self._conns)
        self._stop_deadline = time.monotonic() + STOP_DRAIN
        self._stopping = True

    def thread_count(self) -> int:
        thread = self._thread
        return 1 if thread is not None and thread.is_alive() else 0

    def stats(self) -> dict[str, int]:
        """The alternation of work and alertable waits, counted."""
        return {"alertable_waits": self.alertable_waits, "routines_run": self.routines_run,
                "apcs_run": self.apcs_run, "max_routines_per_wait": self.max_batch,
                "ops_pending": self._inflight}

    # ------------------------------------------------------------- the alertable wait
    def sleep_ex(self, timeout: float | None) -> int:
        """``SleepEx(timeout, bAlertable=TRUE)``, on the issuing thread only.

        Submits the ops the routines prepared, waits in ``io_uring_enter`` until at least one
        completes (or a user APC is queued, or ``timeout``), then — still inside this call, as
        ``SleepEx`` does before returning ``WAIT_IO_COMPLETION`` — runs the completion routine
        of every completed op, then the user APCs queued so far, in order. Returns how many
        routines and APCs ran.
        """
        ring = self._ring
        # A queued user APC makes the wait return at once, as on Windows.
        done = ring.wait(0) if self._apcs else ring.wait(1, timeout)
        self.alertable_waits += 1
        if len(done) > self.max_batch:
            self.max_batch = len(done)
        ran = 0
        self._alertable = True
        try:
            for ov, res, flags in done:
                self._inflight -= 1
                ov.pending = False
                ran += 1
                try:
                    if res < 0:
                        ov.routine(-res, 0, ov, flags)  # type: ignore[misc]
                    else:
                        ov.routine(0, res, ov, flags)  # type: ignore[misc]
                except Exception:
                    log.exception("completion routine %r failed", ov)
            self.routines_run += len(done)
            apcs = self._apcs
            for _ in range(len(apcs)):
                fn, args = apcs.popleft()
                ran += 1
                self.apcs_run += 1
                try:
                    fn(*args)
                except Exception:
                    log.exception("APC %r failed", fn)
        finally:
            self._alertable = False
        return ran

    def queue_apc(self, fn: Callable[..., Any], *args: Any) -> None:
        """``QueueUserAPC``: run ``fn(*args)`` on the issuing thread in its next alertable wait.
        Callable from any thread."""
        self._apcs.append((fn, args))
        if threading.get_ident() != self._tid:
            with self._wake_lock:
                if self._ring_open:
                    self._ring.wake()  # end a blocked wait: it then sees the queued APC

    def in_alertable_wait(self) -> bool:
        """True while the calling thread is the issuing thread running routines/APCs inside
        :meth:`sleep_ex` (what the thread-identity test checks)."""
        return self._alertable and threading.get_ident() == self._tid

    def _post(self, prep: Callable[..., int], *args: Any) -> int:
        """Prepare one op (it is submitted by the next alertable wait) and count it."""
        op_id = prep(*args)
        self._inflight += 1
        return op_id

    @staticmethod
    def _cancel_done(err: int, n: int, ov: Overlapped, flags: int) -> None:
        """Routine of a cancel op: the cancelled ops report through their own routines."""

    # ------------------------------------------------------------------------- accepting
    def _accept_ex(self, lst: _Listener, ov: Overlapped) -> None:
        """``AcceptEx(listener, ..., ov)`` with ``_accept_done`` as the routine."""
        ov.routine = self._accept_done
        ov.op_id = self._post(self._ring.prep_accept, lst.fd, ov)
        ov.pending = True

    def _accept_done(self, err: int, fd: int, ov: Overlapped, flags: int) -> None:
        lst: _Listener = ov.owner
        if lst.closing or not self._accepting:
            # stop_accepting() has begun: not ours to serve; _close_listeners() closes it.
            if not err:
                refuse_fd(self.core, lst, fd, "the server stopped accepting")
            self._maybe_close_listener(lst)
            return
        if not err:
            self._accept_ex(lst, ov)   # keep ACCEPTS pending, as with AcceptEx
            self._adopt(lst, fd)
            return
        if err in LISTENER_GONE:
            lst.closing = True
            self._maybe_close_listener(lst)
            return
        delay = self.core.accept_error(oserror(err))
        if not delay:
            self._accept_ex(lst, ov)
            return
        # Out of descriptors: the listener stays readable; re-posting now would spin. The
        # accept's context becomes a waitable timer whose routine re-posts it.
        ov.routine = self._backoff_done
        ov.op_id = self._post(self._ring.prep_timeout, delay, ov)
        ov.pending = True

    def _backoff_done(self, err: int, n: int, ov: Overlapped, flags: int) -> None:
        lst: _Listener = ov.owner
        if lst.closing:
            self._maybe_close_listener(lst)
        else:
            self._accept_ex(lst, ov)

    def _adopt(self, lst: _Listener, fd: int) -> None:
        sock = wrap_fd(lst, fd)
        if sock is None:
            return
        conn = self.core.admit(sock, self)
        if conn is None:
            return
        conn.rung_data = _Conn(conn, self.recv_size)
        self._conns.add(conn)
        conn._start()   # connection_made, inside the accept's routine

    # ------------------------------------------- the connections' model (OverlappedConns)
    @property
    def _core(self) -> Any:
        return self.core

    def _is_stopping(self) -> bool:
        return self._stopping

    def wsa_recv(self, st: ConnState) -> None:
        """``WSARecv(sock, WSABUF, ..., ov, _recv_done)``: the buffer goes with the request."""
        ov = st.recv_ov
        ov.routine = self._recv_done
        ov.op_id = self._post(self._ring.prep_recv, st.fd, ov.buf, ov)
        ov.pending = True

    def _post_send(self, st: ConnState) -> None:
        self.start_send(st.conn)

    def _cancel_conn(self, st: ConnState) -> None:
        self._post(self._ring.prep_cancel_fd, st.fd, self._cancel_ov, True)

    def _queue(self, fn: Callable[..., Any], *args: Any) -> None:
        self.queue_apc(fn, *args)   # on this thread, after the caller returns

    def _forget(self, st: ConnState) -> None:
        self._conns.discard(st.conn)

    def _start_linger_tick(self) -> None:
        if not self._tick_ov.pending:
            self._arm_tick()

    # ------------------------------------------------------------------------ routines
    def _recv_done(self, err: int, n: int, ov: Overlapped, flags: int) -> None:
        self._recv_result(ov.owner, err, n)

    def _send_done(self, err: int, n: int, ov: Overlapped, flags: int) -> None:
        self._send_result(ov.owner, err, n)

    def _arm_tick(self) -> None:
        ov = self._tick_ov
        ov.routine = self._linger_tick
        ov.op_id = self._post(self._ring.prep_timeout, LINGER_POLL, ov)
        ov.pending = True

    def _linger_tick(self, err: int, n: int, ov: Overlapped, flags: int) -> None:
        sweep_lingering(self._lingering, self._end)
        if self._lingering and not self._stopping:
            self._arm_tick()

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._tid:
            fn(*args)
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            log.debug("dropping %r for %r: the overlapped-routine rung is stopped", fn, conn)
            return
        self.queue_apc(fn, *args)

    def in_context(self, conn: Transport) -> bool:
        return threading.get_ident() == self._tid

    def start_send(self, conn: Transport) -> None:
        """``WSASend(sock, chunk, ..., ov, _send_done)``: one send at a time per connection."""
        st: _Conn = conn.rung_data
        ov = st.send_ov
        ov.routine = self._send_done
        ov.op_id = self._post(self._ring.prep_send, st.fd, conn._next_chunk(), ov)
        ov.pending = True

    def set_reading(self, conn: Transport, on: bool) -> None:
        self.set_conn_reading(conn.rung_data, on)

    def release(self, conn: Transport, abort: bool) -> None:
        self.release_conn(conn.rung_data, abort)


RUNG = OverlappedRoutineRung
