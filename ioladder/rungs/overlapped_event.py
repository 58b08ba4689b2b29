"""Rung ``overlapped-event``: overlapped I/O with event-object notification.

Seed concept: the article's first way of learning that an overlapped operation finished. The
buffer goes to the kernel *with* the request (``WSARecv`` with a ``WSABUF``: the data is copied
straight into it, no readiness step), every request carries a ``WSAOVERLAPPED`` whose ``hEvent``
is an event object of its own, and the server thread loops: post the operation, wait on the
events with ``WSAWaitForMultipleEvents`` (at most ``WSA_MAXIMUM_WAIT_EVENTS`` = 64 per wait),
``WSAResetEvent`` the signalled one, ``WSAGetOverlappedResult`` to learn what the operation did,
process it, post the next one. Windows API: ``WSARecv``/``WSASend``/``AcceptEx`` with
``WSAOVERLAPPED.hEvent``, ``WSACreateEvent``, ``WSAWaitForMultipleEvents``, ``WSAResetEvent``,
``WSAGetOverlappedResult``. Linux mechanism: io_uring ops, each hard-linked to an ``eventfd``
write, the eventfds waited on with ``poll(2)`` in groups of at most 64.

How each piece maps:

* **the overlapped op** = a single-shot io_uring ``RECV``/``SEND``/``ACCEPT`` whose ctx is an
  :class:`Overlapped` (the op's identity, its buffer, its result once fetched). A connection has
  a receive context, which owns its receive buffer, and a send context: one receive and at most
  one send pending, a short send resubmitted with the rest. Each listener keeps ``ACCEPTS``
  single-shot accepts pending, each re-posted as it completes (``AcceptEx``);
* **hEvent** = an :class:`Event`, an ``eventfd``, taken from the rung's :class:`EventPool` when
  the op is posted and held until its result has been fetched. The op is submitted as
  ``op -> IOSQE_IO_HARDLINK -> write(eventfd, 1)``: the kernel signals the event when the op
  ends, *whatever* its result — a hard link is not severed by a failed or cancelled op, so an
  ``ECONNRESET`` or a ``CancelIo`` signals too. So the kernel-object cost is per pending op, as
  the article complains: N idle connections hold N eventfds (their pending receives), plus one
  per send in flight and per pending accept (``event_count()``; the bench's descriptors);
* **WSAWaitForMultipleEvents** = ``poll()`` on the thread's <= 64 eventfds; one of the 64 is the
  thread's own wake-up eventfd (Windows servers keep the same extra event to be told of new
  sockets or calls from other threads), so a thread has 63 slots for ops;
* **WSAResetEvent** = reading the eventfd; **WSAGetOverlappedResult** = reaping the thread's
  ring and matching the signalled event's op with its completion (the event's own write
  completion is reaped too; an event goes back to the pool only once both are in, so the kernel
  never writes to a recycled one). Should the event ever be seen before the op's completion,
  the fetch waits for it (``fWait=TRUE``) — the kernel posts the op's completion before it runs
  the linked write, so this is a safety net, counted in ``stats()``.

Threads — who submits. An io_uring op is tied to the thread that submitted it (its completion
work runs on that thread; the thread's exit cancels it), and a thread can wait on only 64
events. So the unit is the article's server loop on one thread: an **I/O thread** owns a ring
it created (``SINGLE_ISSUER``), posts every op of its connections, waits on their events, fetches
the results and runs the protocol callbacks — each thread is the context of its connections, so
two callbacks of one connection never overlap. Since each connection may need two events at
once (a receive and a send), a thread serves at most 31 connections (62 events + its wake-up
event); the first thread also holds the listeners' accepts, and a connection accepted there is
handed to a thread with room, a new one started when all are full — **threads grow with
connections**, the Windows remedy for the 64-handle limit (one waiting thread per 64 handles;
a single thread cycling through groups with short timeouts would add a group's timeout of
latency per group, or spin). A thread left without connections exits after ``THREAD_LINGER``.
Calls from other threads (``write()`` from an application thread, ``Server.shutdown``) are
queued to the owning thread and wake it through its wake-up event.

The ring is made *without* ``DEFER_TASKRUN`` (``SUBMIT_ALL | SINGLE_ISSUER`` only): deferred
completion work runs only inside the owner's ``io_uring_enter``, so an op would complete — and
its linked write would signal the event — only when the thread entered the ring, never while it
sleeps in ``poll()`` (measured: the wait times out). Plain task work interrupts the ``poll`` and
runs there, as an event is set behind a waiting Windows thread's back.

Trait kept, with its limits: the buffer is the kernel's with the request; **a kernel event per
pending op** (descriptors grow with pending ops, threads with connections); the thread must
stop and wait on its events — it cannot wait on more than 64, and while it processes one
result it is not waiting on the others.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport import Transport
from .base import ACCEPT_BACKOFF, LINGER_POLL, Rung, sweep_lingering
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

#: WSA_MAXIMUM_WAIT_EVENTS: handles one WSAWaitForMultipleEvents (here: one poll) waits on.
MAXIMUM_WAIT_EVENTS = 64
#: event slots of an I/O thread for ops: one of the 64 is its own wake-up event.
OPS_PER_THREAD = MAXIMUM_WAIT_EVENTS - 1
#: events a connection may hold at once: its receive and its send.
EVENTS_PER_CONNECTION = 2
#: connections an I/O thread serves (31).
CONNECTIONS_PER_THREAD = OPS_PER_THREAD // EVENTS_PER_CONNECTION
#: AcceptEx-style single-shot accepts kept pending on each listener (each holds an event).
ACCEPTS = 2
#: bytes of each connection's receive buffer, owned by its receive context (WSABUF).
RECV_SIZE = 16 * 1024
#: SQ entries of each thread's ring: <= 63 ops x 2 SQEs (op + event write) plus cancels.
RING_ENTRIES = 256
#: seconds an I/O thread left without connections waits for one before it exits (never the
#: first thread, which holds the accepts).
THREAD_LINGER = 1.0
#: free events the pool keeps for reuse; more are closed, so the descriptor count follows the
#: number of pending ops rather than its peak.
POOL_SPARE = 16
#: how long ``stop()`` lets cancelled ops complete before a thread's ring close takes over.
STOP_DRAIN = 2.0

_ONE = (1).to_bytes(8, sys.byteorder)   # what the linked write adds to the event's counter
_POLLIN = select.POLLIN
_RECV, _SEND, _ACCEPT = 0, 1, 2
_KINDS = ("recv", "send", "accept")


class _Cancel:
    """ctx of cancel ops: the cancelled ops report through their own events."""

    __slots__ = ()


_CANCEL = _Cancel()
#: ``_idle_since`` of the first thread once it has trimmed the pool for this idle period.
_TRIMMED = -1.0


class Event:
    """A kernel event object (``WSAEVENT``): an ``eventfd``, signalled by the hard-linked
    write that follows its op, reset by reading it. ``owner``: the op holding it;
    ``write_pending``: its write's completion has not been reaped yet."""

    __slots__ = ("fd", "owner", "write_pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.owner: Overlapped | None = None
        self.write_pending = False

    def __repr__(self) -> str:
        return f"<Event fd={self.fd} owner={self.owner!r}>"


class EventPool:
    """``WSACreateEvent``/``WSACloseEvent`` with reuse: events for pending ops, shared by every
    I/O thread. ``take()`` may raise ``OSError`` (``EMFILE``: the per-op kernel object cost)."""

    def __init__(self, spare: int = POOL_SPARE) -> None:
        self._lock = threading.Lock()
        self._free: list[Event] = []
        self._spare = spare
        self._closed = False
        self.created = 0
        self.open = 0        # eventfds open now (held by ops, draining, or free)
        self.in_use = 0      # held by an op

    def take(self) -> Event:
        with self._lock:
            if self._free:
                ev = self._free.pop()
                self.in_use += 1
                return ev
        ev = Event(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        with self._lock:
            self.created += 1
            self.open += 1
            self.in_use += 1
        return ev

    def reserve(self, n: int) -> None:
        """Make sure ``n`` free events exist (raises ``OSError`` when out of descriptors)."""
        while True:
            with self._lock:
                if len(self._free) >= n:
                    return
            ev = Event(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            with self._lock:
                self.created += 1
                self.open += 1
                self._free.append(ev)

    def give(self, ev: Event) -> None:
        """Return an event whose op is done (reset, its write reaped)."""
        with self._lock:
            self.in_use -= 1
            if not self._closed and len(self._free) < self._spare:
                self._free.append(ev)
                return
            self.open -= 1
        os.close(ev.fd)

    def trim(self, keep: int) -> None:
        """Close free events beyond ``keep`` (``WSACloseEvent``)."""
        with self._lock:
            extra, self._free = self._free[keep:], self._free[:keep]
            self.open -= len(extra)
        for ev in extra:
            os.close(ev.fd)

    def discard(self, ev: Event) -> None:
        """Close an event that was held by an op when its thread's ring closed."""
        with self._lock:
            self.in_use -= 1
            self.open -= 1
        os.close(ev.fd)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            self.open -= len(free)
        for ev in free:
            os.close(ev.fd)


class Overlapped:
    """``WSAOVERLAPPED``: the identity of one pending op (its io_uring ctx), its event
    (``hEvent``), the receive buffer handed to the kernel with it, and its result once reaped."""

    __slots__ = ("kind", "owner", "event", "buf", "view", "result", "op_id", "pending")

    def __init__(self, kind: int, owner: Any, size: int = 0) -> None:
        self.kind = kind
        self.owner = owner
        self.event: Event | None = None
        self.buf = bytearray(size) if size else None
        self.view = memoryview(self.buf) if size else None
        self.result: int | None = None
        self.op_id = -1
        self.pending = False

    def __repr__(self) -> str:
        return f"<Overlapped {_KINDS[self.kind]} pending={self.pending}>"


class _Conn(ConnState):
    """Per-connection state: its I/O thread, a receive and a send context, its life stage."""

    __slots__ = ("io",)

    def __init__(self, conn: Transport, io: IoThread, recv_size: int) -> None:
        super().__init__(conn, Overlapped(_RECV, self, recv_size), Overlapped(_SEND, self))
        self.io = io


_Listener = Listener


class IoThread(OverlappedConns):
    """One thread running the article's loop over at most 64 events: post ops, wait on their
    events, reset the signalled ones, fetch the results, process, re-post."""

    def __init__(self, rung: OverlappedEventRung, index: int, capacity: int,
                 listeners: list[_Listener] | None = None) -> None:
        self.rung = rung
        self.index = index
        self.capacity = capacity            # connections it may serve
        self.reserved = 0                   # connections placed on it (rung lock)
        self.retiring = False
        self.listeners = listeners or []
        self.ring: Any = None
        self.tid: int | None = None
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self.wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()
        self._woken = False
        self.poller = select.poll()
        #: the wait array: eventfd -> the op whose event it is (<= 63, plus the wake-up event)
        self.waiting: dict[int, Overlapped] = {}
        self.calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self.timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.conns: set[Transport] = set()
        self._lingering: set[ConnState] = set()
        self._ticking = False
        self.stopping = False
        self._stop_deadline = 0.0
        self._idle_since: float | None = None
        # statistics
        self.waits = 0
        self.max_wait = 0        # most handles passed to one wait (incl. the wake-up event)
        self.fetch_waits = 0     # results that had to be waited for after their event
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"ioladder-overlapped-event-{index}")

    # ----------------------------------------------------------------------- the loop
    def _run(self) -> None:
        self.tid = threading.get_ident()
        uring = self.rung._uring
        try:
            # SINGLE_ISSUER without DEFER_TASKRUN (see the module docstring): the ring refuses
            # any other thread. Kernels before 6.0 lack the flag; the ring is then used by
            # this thread alone all the same.
            try:
                self.ring = uring.Ring(RING_ENTRIES, single_issuer=False,
                                       flags=uring.SETUP_SINGLE_ISSUER)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.ring = uring.Ring(RING_ENTRIES, single_issuer=False)
        except BaseException as exc:
            self.start_error = exc
            self.started.set()
            self._close_wakefd()
            return
        self.poller.register(self.wakefd, _POLLIN)
        self.started.set()
        try:
            for lst in self.listeners:
                for _ in range(self.rung.accepts):
                    ov = Overlapped(_ACCEPT, lst)
                    lst.ovs.append(ov)
                    self._accept_ex(lst, ov)
            while True:
                self._run_calls()
                self._run_timers()
                if self.stopping:
                    if not (self.waiting or self.calls) or time.monotonic() >= self._stop_deadline:
                        break
                elif self._should_retire():
                    break
                self.ring.submit()   # this pass's ops go to the kernel: this thread submits
                self._wait(self._timeout())
        except BaseException:
            log.exception("overlapped-event I/O thread %d crashed", self.index)
            raise
        finally:
            self._after_loop()

    def _timeout(self) -> int:
        """poll() timeout in ms (-1: infinite)."""
        if self.calls:
            return 0
        if self.stopping:
            return 50
        wait: float | None = None
        if self.timers:
            wait = max(0.0, self.timers[0][0] - time.monotonic())
        if self._idle_since is not None and self._idle_since != _TRIMMED:
            left = max(0.0, self._idle_since + THREAD_LINGER - time.monotonic())
            wait = left if wait is None else min(wait, left)
        return -1 if wait is None else int(wait * 1000) + 1

    def _wait(self, timeout_ms: int) -> None:
        """``WSAWaitForMultipleEvents(n <= 64, events, FALSE, timeout, FALSE)``, then for each
        signalled event: ``WSAResetEvent``, ``WSAGetOverlappedResult``, process."""
        n = len(self.waiting) + 1
        assert n <= MAXIMUM_WAIT_EVENTS, f"{n} handles in one wait"
        if n > self.max_wait:
            self.max_wait = n
            if n > self.rung.max_wait:
                self.rung.max_wait = n
        ready = self.poller.poll(timeout_ms)
        self.waits += 1
        for fd, _ in ready:
            if fd == self.wakefd:
                try:
                    os.eventfd_read(fd)   # read first, clear the flag after (see _call)
                except BlockingIOError:
                    pass
                self._woken = False
                continue
            ov = self.waiting.pop(fd, None)
            if ov is None:
                continue
            self.poller.unregister(fd)
            try:
                os.eventfd_read(fd)   # WSAResetEvent
            except BlockingIOError:
                pass
            res = self._get_overlapped_result(ov)
            self._process(ov, res)

    def _get_overlapped_result(self, ov: Overlapped) -> int:
        """``WSAGetOverlappedResult``: the signalled op's result, from the ring's completions
        (every completion reaped is filed with its op or its event)."""
        if ov.result is None:
            self._reap(self.ring.reap())
            if ov.result is None:
                # fWait=TRUE: the event came before the op's completion was visible.
                self.fetch_waits += 1
                while ov.result is None:
                    self._reap(self.ring.wait(1, 1.0))
        res = ov.result
        ov.result = None
        ov.pending = False
        ev = ov.event
        ov.event = None
        assert ev is not None
        ev.owner = None
        if not ev.write_pending:
            self.rung.pool.give(ev)
        return res

    def _reap(self, completions: list[tuple[Any, int, int]]) -> None:
        pool = self.rung.pool
        for ctx, res, _flags in completions:
            kind = type(ctx)
            if kind is Overlapped:
                ctx.result = res
            elif kind is Event:
                ctx.write_pending = False
                if ctx.owner is None:
                    pool.give(ctx)   # its op's result was fetched already
            # _CANCEL: nothing to do

    def _process(self, ov: Overlapped, res: int) -> None:
        kind = ov.kind
        if kind == _RECV:
            self._recv_done(ov.owner, ov, res)
        elif kind == _SEND:
            self._send_done(ov.owner, res)
        else:
            self._accept_done(ov.owner, ov, res)

    def _post(self, ov: Overlapped, prep: Callable[..., int], *args: Any) -> None:
        """Post one op with an event of its own: ``op`` hard-linked to ``write(event, 1)``.
        Raises ``OSError`` if no event object can be had."""
        pool = self.rung.pool
        ev = pool.take()
        try:
            ov.op_id = prep(*args, ov, hardlink=True)
            self.ring.prep_write(ev.fd, _ONE, ev)
        except BaseException:
            pool.give(ev)
            raise
        ev.owner = ov
        ov.event = ev
        ev.write_pending = True
        ov.pending = True
        self.waiting[ev.fd] = ov
        self.poller.register(ev.fd, _POLLIN)

    # ------------------------------------------------------------ calls and timers
    def call(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)`` for this thread from any thread; False if it has exited."""
        with self._wake_lock:
            if self.wakefd < 0:
                return False
            self.calls.append((fn, args))
            if threading.get_ident() != self.tid and not self._woken:
                self._woken = True
                os.eventfd_write(self.wakefd, 1)
        return True

    def _run_calls(self) -> None:
        calls = self.calls
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed on overlapped-event thread %d", fn, self.index)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), fn, args))

    def _run_timers(self) -> None:
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(timers)
            try:
                fn(*args)
            except Exception:
                log.exception("timer %r failed on overlapped-event thread %d", fn, self.index)

    # ----------------------------------------------------------------- thread life
    def _should_retire(self) -> bool:
        """A thread other than the first exits once it has served no connection for
        THREAD_LINGER seconds. The first never exits (it holds the accepts); after as long
        without connections it hands the pool's spare events back instead, so the process's
        descriptors follow the pending operations, not the last peak."""
        if self.conns or self.calls or (self.waiting and self.index != 0):
            self._idle_since = None
            return False
        if self._idle_since == _TRIMMED:
            return False
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
            return False
        if now - self._idle_since < THREAD_LINGER:
            return False
        if self.index == 0:
            self.rung.pool.trim(keep=2)   # accept's reserve(2): one event for its connection
            self._idle_since = _TRIMMED
            return False
        return self.rung._retire(self)

    def _after_loop(self) -> None:
        """On the thread, after its loop: close the ring (which cancels and waits for any op
        still in the kernel), free the events those ops held, then close and report the
        connections they belonged to."""
        pool = self.rung.pool
        held = [ov.event for ov in self.waiting.values() if ov.event is not None]
        self.waiting.clear()
        try:
            self.ring.close()   # cancels what is still pending and waits for it (bounded)
        finally:
            for ev in held:
                pool.discard(ev)
            self._close_wakefd()
            # No kernel op refers to these sockets any more: close and report them.
            self._close_leftovers(self.conns)
            close_listener_sockets(self.listeners)
            if self.listeners:
                self.rung._listeners_closed.set()
            self.calls.clear()

    def _close_wakefd(self) -> None:
        with self._wake_lock:
            if self.wakefd >= 0:
                os.close(self.wakefd)
                self.wakefd = -1

    def teardown(self) -> None:
        """On the thread, at stop(): stop accepting, reset what is open, cut lingering closes
        short; the loop ends once every op's result is in (bounded by STOP_DRAIN)."""
        if self.listeners:
            self.close_listeners()
        self._reset_conns(self.conns)
        self._stop_deadline = time.monotonic() + STOP_DRAIN
        self.stopping = True

    # --------------------------------------------------------------------- accepting
    def _accept_ex(self, lst: _Listener, ov: Overlapped) -> None:
        """``AcceptEx(listener, ..., ov)``; first make sure an event will be there for the
        accepted connection's receive — out of descriptors, back off instead."""
        if lst.closing or not self.rung._accepting:
            self._maybe_close_listener(lst)
            return
        try:
            self.rung.pool.reserve(2)   # this accept's event and one for its connection
            self._post(ov, self.ring.prep_accept, lst.fd)
        except OSError as exc:
            delay = self.rung.core.accept_error(exc) or ACCEPT_BACKOFF
            self.call_later(delay, self._accept_ex, lst, ov)

    def _accept_done(self, lst: _Listener, ov: Overlapped, res: int) -> None:
        if lst.closing or not self.rung._accepting:
            if res >= 0:
                refuse_fd(self.rung.core, lst, res, "the server stopped accepting")
            self._maybe_close_listener(lst)
            return
        if res >= 0:
            delay = self.rung._adopt(lst, res)
            if delay:
                self.call_later(delay, self._accept_ex, lst, ov)
            else:
                self._accept_ex(lst, ov)   # keep ACCEPTS pending, as with AcceptEx
            return
        if -res in LISTENER_GONE:
            lst.closing = True
            self._maybe_close_listener(lst)
            return
        delay = self.rung.core.accept_error(oserror(-res))
        if delay:
            self.call_later(delay, self._accept_ex, lst, ov)
        else:
            self._accept_ex(lst, ov)

    def close_listeners(self) -> None:
        """On the first thread: cancel the pending accepts; each listener is closed once the
        results of all its accepts are in (a back-off timer finds it closing)."""
        for lst in self.listeners:
            if lst.closing:
                continue
            lst.closing = True
            for ov in lst.ovs:
                if ov.pending:
                    self.ring.prep_cancel(ov.op_id, _CANCEL)
            self._maybe_close_listener(lst)

    def _maybe_close_listener(self, lst: _Listener) -> None:
        """Close ``lst`` once it is closing and none of its accepts is pending (between
        ``stop_accepting()`` and ``close_listeners()`` accepts are simply not re-posted)."""
        maybe_close_listener(lst, self.listeners, self.rung._listeners_closed)

    def adopt(self, conn: Transport) -> None:
        """On this thread: a connection placed here starts (``connection_made``)."""
        self.conns.add(conn)
        if self.stopping:
            conn._force_close(None)
            return
        conn._start()

    # ------------------------------------------- the connections' model (OverlappedConns)
    @property
    def _core(self) -> Any:
        return self.rung.core

    def _is_stopping(self) -> bool:
        return self.stopping

    def wsa_recv(self, st: ConnState) -> None:
        """``WSARecv(sock, WSABUF, ..., ov{hEvent})``: the buffer goes with the request."""
        ov = st.recv_ov
        try:
            self._post(ov, self.ring.prep_recv, st.fd, ov.buf)
        except OSError as exc:   # no event object to be had
            st.conn._on_error(exc)

    def wsa_send(self, st: ConnState) -> None:
        """``WSASend(sock, chunk, ..., ov{hEvent})``: one send at a time per connection."""
        try:
            self._post(st.send_ov, self.ring.prep_send, st.fd, st.conn._next_chunk())
        except OSError as exc:
            st.conn._on_error(exc)

    _post_send = wsa_send

    def _cancel_conn(self, st: ConnState) -> None:
        self.ring.prep_cancel_fd(st.fd, _CANCEL, True)   # their events still fire: hard link

    def _queue(self, fn: Callable[..., Any], *args: Any) -> None:
        self.call(fn, *args)

    def _forget(self, st: ConnState) -> None:
        self.conns.discard(st.conn)
        self.rung._unplace(self)

    def _start_linger_tick(self) -> None:
        if not self._ticking:
            self._ticking = True
            self.call_later(LINGER_POLL, self._linger_tick)

    def _recv_done(self, st: _Conn, ov: Overlapped, res: int) -> None:
        self._recv_result(st, -res if res < 0 else 0, res if res > 0 else 0)

    def _send_done(self, st: _Conn, res: int) -> None:
        self._send_result(st, -res if res < 0 else 0, res if res > 0 else 0)

    def _linger_tick(self) -> None:
        sweep_lingering(self._lingering, self._end)
        if self._lingering:
            self.call_later(LINGER_POLL, self._linger_tick)
        else:
            self._ticking = False


class OverlappedEventRung(Rung):
    name = "overlapped-event"
    seed = "overlapped I/O, event-object notification"
    windows_api = ("WSARecv/WSASend/AcceptEx with WSAOVERLAPPED.hEvent, WSACreateEvent, "
                   "WSAWaitForMultipleEvents, WSAResetEvent, WSAGetOverlappedResult")
    mechanism = ("io_uring op hard-linked to an eventfd write per op; <= 64 eventfds per poll(2), "
                 "one I/O thread (and ring) per group")
    trait = ("buffer handed to the kernel with the op; a kernel event object (eventfd) per "
             "pending op; a thread waits on <= 64 events then fetches the result; threads grow "
             "with connections (31 per thread: 2 events each + 1 wake-up event)")
    rank = 60
    #: I/O threads per connection, for the bench's reachability estimate.
    threads_per_connection = 1 / CONNECTIONS_PER_THREAD
    #: descriptors per idle connection: its socket and its pending receive's event (a send in
    #: flight holds one more).
    fds_per_connection = 2

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
        self.pool = EventPool()
        self._lock = threading.Lock()
        self._threads: list[IoThread] = []     # live I/O threads; [0] holds the accepts
        self._every: list[IoThread] = []       # threads started and maybe alive (for stop)
        self._numbers = itertools.count()
        self._listeners: list[_Listener] = []
        self._listeners_closed = threading.Event()
        self._accepting = False
        self._stopped = False
        self.max_wait = 0   # most handles any thread passed to one wait

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        self._listeners = [_Listener(sock) for sock in listeners]
        if not self._listeners:
            self._listeners_closed.set()
        self._accepting = True
        slots = OPS_PER_THREAD - self.accepts * len(self._listeners)
        if slots < 0:
            raise ValueError(f"{len(self._listeners)} listeners x {self.accepts} accepts do not "
                             f"fit the {OPS_PER_THREAD} event slots of one wait")
        self._spawn(slots // EVENTS_PER_CONNECTION, self._listeners)

    def _spawn(self, capacity: int, listeners: list[_Listener] | None = None) -> IoThread:
        """Start an I/O thread and wait until it has created its ring (raises OSError)."""
        io = IoThread(self, next(self._numbers), capacity, listeners)
        try:
            io.thread.start()
        except BaseException:
            io._close_wakefd()
            raise
        io.started.wait()
        if io.start_error is not None:
            io.thread.join(5.0)
            raise io.start_error
        with self._lock:
            self._threads.append(io)
            self._every = [x for x in self._every if x.thread.is_alive()]
            self._every.append(io)
        return io

    def _retire(self, io: IoThread) -> bool:
        """``io`` (not the first) has been empty for a while: take it off the ladder of
        threads, unless a connection was just placed on it."""
        with self._lock:
            if io.reserved:
                return False
            io.retiring = True
            self._threads.remove(io)
            return True

    def stop_accepting(self) -> None:
        first = self._threads[0] if self._threads else None
        if first is None or not first.thread.is_alive():
            close_listener_sockets(self._listeners)
            self._listeners_closed.set()
            return
        self._accepting = False
        stop_listening(self._listeners)   # new SYNs are refused from now on
        if threading.get_ident() == first.tid:
            first.close_listeners()
            return
        if first.call(first.close_listeners) and not self._listeners_closed.wait(5.0):
            log.warning("overlapped-event: listeners still have accepts pending after 5 s")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        me = threading.current_thread()
        done: set[IoThread] = set()
        while True:   # again, in case the first thread started one while being stopped
            with self._lock:
                every = [io for io in self._every if io not in done]
            if not every:
                break
            for io in every:
                if io.thread.is_alive():
                    io.call(io.teardown)
            for io in every:
                done.add(io)
                if io.thread is not me:
                    io.thread.join(10.0)
                    if io.thread.is_alive():
                        log.error("overlapped-event: I/O thread %d did not stop in 10 s",
                                  io.index)
        if all(not io.thread.is_alive() for io in done):
            self.pool.close()

    def thread_count(self) -> int:
        with self._lock:
            return sum(1 for io in self._every if io.thread.is_alive())

    def event_count(self) -> int:
        """eventfds open now: one per pending op (+ a few spares in the pool)."""
        return self.pool.open

    def stats(self) -> dict[str, Any]:
        with self._lock:
            threads = [io for io in self._every if io.thread.is_alive()]
        return {"threads": len(threads), "ops_pending": sum(len(io.waiting) for io in threads),
                "events_open": self.pool.open,
                "events_in_use": self.pool.in_use, "events_created": self.pool.created,
                "max_handles_per_wait": self.max_wait,
                "waits": sum(io.waits for io in threads),
                "fetch_waits": sum(io.fetch_waits for io in threads),
                "connections_per_thread": [len(io.conns) for io in threads]}

    # ------------------------------------------------------------------------- placing
    def _adopt(self, lst: _Listener, fd: int) -> float:
        """On the first thread: wrap an accepted socket and place it on a thread with room
        (starting one if all are full). Returns a back-off delay when out of resources."""
        sock = wrap_fd(lst, fd)
        if sock is None:
            return 0.0
        conn = self.core.admit(sock, self)
        if conn is None:
            return 0.0
        io = None
        with self._lock:
            for candidate in self._threads:
                if candidate.reserved < candidate.capacity and not candidate.retiring:
                    candidate.reserved += 1
                    io = candidate
                    break
        if io is None:
            try:
                io = self._spawn(CONNECTIONS_PER_THREAD)
            except (OSError, RuntimeError) as exc:
                self.core.forget(conn)
                self.core.refuse(sock, f"no I/O thread can take it: {exc}")
                exc = exc if isinstance(exc, OSError) else OSError(errno.EAGAIN, str(exc))
                return self.core.accept_error(exc)
            with self._lock:
                io.reserved += 1
        conn.rung_data = _Conn(conn, io, self.recv_size)
        if io.tid == threading.get_ident():
            io.adopt(conn)
        elif not io.call(io.adopt, conn):
            self.core.forget(conn)
            self.core.refuse(sock, "its I/O thread has exited")
        return 0.0

    def _unplace(self, io: IoThread) -> None:
        with self._lock:
            io.reserved -= 1

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        io: IoThread = conn.rung_data.io
        if threading.get_ident() == io.tid:
            fn(*args)
        elif not io.call(fn, *args):
            log.debug("dropping %r for %r: its I/O thread has exited", fn, conn)

    def in_context(self, conn: Transport) -> bool:
        return threading.get_ident() == conn.rung_data.io.tid

    def start_send(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        st.io.wsa_send(st)

    def set_reading(self, conn: Transport, on: bool) -> None:
        st: _Conn = conn.rung_data
        st.io.set_conn_reading(st, on)

    def release(self, conn: Transport, abort: bool) -> None:
        st: _Conn = conn.rung_data
        st.io.release_conn(st, abort)


RUNG = OverlappedEventRung
