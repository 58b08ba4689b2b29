"""Rung ``asyncselect``: ``WSAAsyncSelect`` — network events delivered as window messages.

Seed concept: the article's message model. Instead of asking ``select()`` which sockets are
ready, the program registers each socket once and the system *posts a message* to a window —
``(socket, FD_ACCEPT|FD_READ|FD_WRITE|FD_CLOSE, error)`` — whenever something happens on it.
One thread runs the message pump (``GetMessage``/``DispatchMessage``) and the window procedure
acts on each message: accept, recv, send, close. Windows API: ``WSAAsyncSelect`` + a window
procedure; Linux mechanism: signal-driven I/O. Every socket (listeners, connections and the
pump's own post box) is set ``O_ASYNC | O_NONBLOCK``, with ``F_SETSIG`` choosing a realtime
signal (which carries ``si_fd`` and ``si_band``: the message's socket and event) and
``F_SETOWN_EX {F_OWNER_TID}`` naming the **pump thread** as owner. The pump keeps those signals
blocked and reads them as records from a ``signalfd``: that descriptor *is* the message queue,
and a ``poll`` on it alone is the ``GetMessage`` wait.

Trait kept, with its limits:

* **one message queue, one window-procedure thread** for every socket; application callbacks
  run there, so callbacks never overlap and calls from other threads are *posted* to it;
* messages are **edge-like**: the kernel queues one per state change, like Windows' rule that
  ``FD_READ``/``FD_ACCEPT``/``FD_WRITE`` are re-enabled only by the call that consumes them
  (``recv``, ``accept``, a ``send`` failing with ``WSAEWOULDBLOCK``). So the pump sends until
  ``EAGAIN`` before expecting ``FD_WRITE``, accepts until ``EAGAIN``, and after a ``recv`` that
  filled its buffer it *re-posts* ``FD_READ`` to itself — exactly what Windows does when data
  remains. Resuming reading also posts ``FD_READ`` (calling ``WSAAsyncSelect`` again does);
* the queue is **finite**: past ``RLIMIT_SIGPENDING`` queued signals the kernel drops the
  realtime message and raises a bare ``SIGIO`` without the fd. The pump reads that ``SIGIO``
  from the same ``signalfd`` and **rescans every socket** (non-blocking accept/recv/send on
  each), so nothing is lost — the O(n) cost a window drowning in thousands of sockets pays;
* messages may name a socket already closed, or a descriptor already reused: they are matched
  through the fd -> object map and every action is a non-blocking retry that checks state, so
  a stale message costs one ``EAGAIN`` at most (Windows apps must tolerate the same).

Why the signal can never kill the process: the realtime signal (and the fallback ``SIGIO``) is
*thread-directed* — ``F_OWNER_TID`` queues it on the pump thread alone, which no other thread
can dequeue or be chosen for. The pump blocks both signals *before* it names itself owner of
any descriptor, never unblocks them, and only ever consumes them through the ``signalfd``; a
signal raised after the pump has exited finds no task behind the owner's ``struct pid`` and is
not sent at all. So the default action (terminate) has no thread to run on, no Python-level
handler is needed (it could only ever run on the main thread), and the application's own
threads keep their signal masks untouched. (One side effect: a process spawned from a protocol
callback, i.e. from the pump thread, inherits that mask — masks survive ``fork``/``exec``.)

Posting from another thread (``PostMessage``): a byte written to a pipe whose read end is owned
like a socket (``O_ASYNC`` works on pipes, not on an ``eventfd``). The byte becomes an ordinary
message on the same queue, and an overflow covers it like any socket: the rescan drains it.

The signal is ``SIGRTMIN+4`` unless configured: ``AsyncSelectRung(core, signum=...)``, the class
attribute ``AsyncSelectRung.default_signal``, or the environment variable
``IOLADDER_ASYNCSELECT_SIGNAL`` (``"SIGRTMIN+6"``, ``"RTMAX-2"`` or a number), in that order.
Several servers may share one signal: each pump owns only its own sockets.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ..kernel import signals as ksig
from ..transport import Transport
from .base import (
    LINGER_MORE,
    LINGER_POLL,
    LINGER_RESET,
    Lingering,
    Receiver,
    Rung,
    close_socket,
    discard_input,
    release_policy,
    send_nonblocking,
    sweep_lingering,
)

log = logging.getLogger("ioladder")

#: bytes asked of one recv() (as the reactor rungs).
RECV_SIZE = 256 * 1024
#: recv() calls per FD_READ message before FD_READ is re-posted (fairness).
READ_BUDGET = 8
#: connections accepted per FD_ACCEPT before FD_ACCEPT is re-posted (fairness).
ACCEPT_BATCH = 64
#: records dequeued from the signalfd per pass of the pump.
MESSAGES_PER_PASS = 1024

#: Winsock network events (winsock2.h values), the ``event`` of a message.
FD_READ = 0x01
FD_WRITE = 0x02
FD_OOB = 0x04
FD_ACCEPT = 0x08
FD_CLOSE = 0x20

ENV_SIGNAL = "IOLADDER_ASYNCSELECT_SIGNAL"
DEFAULT_SIGNAL = "SIGRTMIN+4"

_POLLIN = select.POLLIN | select.POLLRDNORM
_POLLOUT = select.POLLOUT | select.POLLWRNORM
_POLLERR = select.POLLERR
_POLLCLOSE = select.POLLHUP | select.POLLERR


def resolve_signal(signum: int | str | None = None,
                   default: int | str | None = None) -> int:
    """The realtime signal to use: ``signum``, else ``default``, else the environment variable
    ``IOLADDER_ASYNCSELECT_SIGNAL``, else ``SIGRTMIN+4``. ValueError if not realtime."""
    for spec in (signum, default, os.environ.get(ENV_SIGNAL) or None, DEFAULT_SIGNAL):
        if spec is not None:
            return ksig.parse_signal(spec)
    raise AssertionError("unreachable")


class _Listener:
    __slots__ = ("sock", "fd", "paused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.paused = False


class _PostBox:
    """The pipe other threads write to: ``PostMessage`` to the pump."""

    __slots__ = ("rfd", "wfd", "lock")

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.lock = threading.Lock()

    def post(self) -> None:
        with self.lock:
            if self.wfd >= 0:
                try:
                    os.write(self.wfd, b"\0")
                except BlockingIOError:  # full: the pump has messages waiting anyway
                    pass

    def drain(self) -> None:
        try:
            while len(os.read(self.rfd, 4096)) == 4096:
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        with self.lock:
            for fd in (self.rfd, self.wfd):
                if fd >= 0:
                    os.close(fd)
            self.rfd = self.wfd = -1


class _ConnState:
    """What the window procedure knows of a connection."""

    __slots__ = ("reading", "want_write")

    def __init__(self) -> None:
        self.reading = False     # the transport wants data (FD_READ is acted on)
        self.want_write = False  # a send hit EAGAIN: FD_WRITE is expected


class AsyncSelectRung(Rung):
    name = "asyncselect"
    seed = "WSAAsyncSelect: network events as window messages"
    windows_api = "WSAAsyncSelect + GetMessage/DispatchMessage (a window procedure)"
    mechanism = ("O_ASYNC + F_SETSIG realtime signal owned by the pump thread "
                 "(F_SETOWN_EX/F_OWNER_TID), read from a signalfd")
    trait = ("one message queue of (socket, event, error) consumed by one window-procedure "
             "thread; edge-like messages re-enabled by recv/accept/EWOULDBLOCK; queue "
             "overflow (RLIMIT_SIGPENDING -> SIGIO) handled by a rescan of every socket")
    rank = 30
    #: the realtime signal (number or "SIGRTMIN+N"); None: IOLADDER_ASYNCSELECT_SIGNAL or
    #: SIGRTMIN+4.
    default_signal: ClassVar[int | str | None] = None

    _probe: ClassVar[tuple[str | None] | None] = None

    def __init__(self, core: Any, signum: int | str | None = None) -> None:
        super().__init__(core)
        self.signum = resolve_signal(signum, type(self).default_signal)
        self._rx = Receiver(RECV_SIZE)  # the pump thread's
        self._listeners: list[_Listener] = []
        self._conns: set[Transport] = set()
        self._lingering: set[Lingering] = set()
        self._linger_ticking = False
        #: fd -> listener, connection or post box: how a message finds its socket.
        self._by_fd: dict[int, Any] = {}
        #: messages the window procedure posts to itself: (object, event).
        self._posted: collections.deque[tuple[Any, int]] = collections.deque()
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._box = _PostBox()
        self._woken = False
        self._sfd = -1
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        #: the pump thread's kernel TID: the owner of every socket (F_GETOWN_EX shows it).
        self.pump_tid: int | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._running = False
        self._dead = False
        # Counters (tests and bench): messages read, stale ones, SIGIO rescans, self-posts.
        self.messages = 0
        self.stale_messages = 0
        self.rescans = 0
        self.reposts = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return "signal-driven socket I/O (F_SETSIG, F_SETOWN_EX, signalfd) is Linux-only"
        try:
            signum = resolve_signal(None, cls.default_signal)
        except ValueError as exc:
            return f"{ENV_SIGNAL}: {exc}"
        if cls._probe is None:
            cls._probe = (cls._probe_kernel(signum),)
        return cls._probe[0]

    @staticmethod
    def _probe_kernel(signum: int) -> str | None:
        why = ksig.load_error()
        if why is not None:
            return why
        try:
            fd = ksig.signalfd([signum])
            os.close(fd)
        except OSError as exc:
            return f"signalfd() failed: {exc}"
        a, b = socket.socketpair()
        try:
            # Owner and signal only, no O_ASYNC: nothing can be raised by the probe.
            ksig.set_owner_thread(a.fileno(), threading.get_native_id())
            ksig.set_signal(a.fileno(), signum)
        except OSError as exc:
            return f"fcntl(F_SETOWN_EX/F_SETSIG) on a socket failed: {exc}"
        finally:
            a.close()
            b.close()
        return None

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        for sock in listeners:
            sock.setblocking(False)
            self._listeners.append(_Listener(sock))
        self._running = True
        self._thread = threading.Thread(target=self._pump, name="ioladder-asyncselect",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def stop_accepting(self) -> None:
        """Close the listeners; returns once they are closed, so no connection is admitted
        after it (``Server.shutdown()`` then closes a complete set of connections)."""
        if self._dead or self._thread is None or threading.get_ident() == self._ident:
            self._close_listeners()
            return
        done = threading.Event()

        def close() -> None:
            try:
                self._close_listeners()
            finally:
                done.set()
        self._call(close)
        done.wait(5.0)

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            self._box.close()
            self._dead = True
            return
        self._call_or_run(self._shutdown_pump)
        if thread is not threading.current_thread():
            thread.join(10.0)
            self._thread = None

    def thread_count(self) -> int:
        t = self._thread
        return 1 if t is not None and t.is_alive() else 0

    def _close_listeners(self) -> None:
        for lst in self._listeners:
            self._by_fd.pop(lst.fd, None)
            lst.sock.close()
        self._listeners.clear()

    def _shutdown_pump(self) -> None:
        self._close_listeners()
        for lg in list(self._lingering):
            self._end_linger(lg, abort=True)
        for conn in list(self._conns):
            conn._force_close(None)  # through the transport, so later calls find it released
        self._conns.clear()
        # The pump stops after this: deliver the connection_lost calls queued just now.
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in the asyncselect pump", fn)
        self._running = False

    # --------------------------------------------------------------------- the message pump
    def _pump(self) -> None:
        self._ident = threading.get_ident()
        tid = self.pump_tid = threading.get_native_id()
        poller = None
        try:
            # Block first: from the moment a descriptor names this thread as its owner, its
            # signals must queue (for the signalfd) rather than be delivered (terminate).
            signal.pthread_sigmask(signal.SIG_BLOCK, {self.signum, signal.SIGIO})
            self._sfd = ksig.signalfd([self.signum, signal.SIGIO])
            poller = select.poll()
            poller.register(self._sfd, select.POLLIN)
            ksig.own_async(self._box.rfd, tid, self.signum)
            self._by_fd[self._box.rfd] = self._box
            for lst in self._listeners:
                ksig.own_async(lst.fd, tid, self.signum)
                self._by_fd[lst.fd] = lst
                # Connections may already wait in the backlog: no signal will say so.
                self._posted.append((lst, FD_ACCEPT))
        except BaseException as exc:
            self._start_error = exc
            self._running = False
        self._ready.set()
        try:
            while self._running:
                self._run_once(poller)
        except BaseException:
            log.exception("asyncselect message pump crashed")
            raise
        finally:
            if self._conns or self._listeners or self._lingering:  # after a crash only
                try:
                    self._shutdown_pump()
                except BaseException:
                    log.exception("asyncselect: cleanup after the pump ended failed")
            self._dead = True
            while self._calls:  # posted too late for a pass: run them (no-ops, or a waiter)
                fn, args = self._calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    log.exception("call %r failed in the asyncselect pump", fn)
            self._box.close()
            if self._sfd >= 0:
                os.close(self._sfd)
                self._sfd = -1
            self._by_fd.clear()
            # The signals stay blocked: any still queued die with this thread.

    def _run_once(self, poller: Any) -> None:
        timeout: float | None = None
        if self._posted or self._calls:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        msgs = ksig.read_siginfo(self._sfd, MESSAGES_PER_PASS)
        if not msgs and timeout != 0.0:
            # GetMessage: wait on the message queue alone.
            poller.poll(None if timeout is None else math.ceil(timeout * 1000))
            msgs = ksig.read_siginfo(self._sfd, MESSAGES_PER_PASS)
        self._woken = False
        if msgs:
            self._dispatch_messages(msgs)
        posted = self._posted
        for _ in range(len(posted)):
            obj, event = posted.popleft()
            self._window_procedure(obj, event, 0)
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()
        calls = self._calls
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in the asyncselect pump", fn)

    def _dispatch_messages(self, msgs: list[tuple[int, int, int, int]]) -> None:
        """Translate signal records into window messages and dispatch them.

        Records naming the same socket in one batch are coalesced into one message carrying
        every event and how many records it stands for: each record may stand for one recv
        (data, then the FIN), so the window procedure does up to that many.
        """
        self.messages += len(msgs)
        signum = self.signum
        merged: dict[int, list[int]] = {}
        overflow = False
        for signo, code, fd, band in msgs:
            if signo == signum and code > 0:  # si_code POLL_IN..POLL_HUP: an O_ASYNC event
                entry = merged.get(fd)
                if entry is None:
                    merged[fd] = [band, 1]
                else:
                    entry[0] |= band
                    entry[1] += 1
            else:
                # SIGIO: the realtime queue overflowed and a message was lost (or a stray
                # signal without an fd): only a full rescan can tell what happened.
                overflow = True
        by_fd = self._by_fd
        for fd, (band, count) in merged.items():
            obj = by_fd.get(fd)
            if obj is None:
                self.stale_messages += 1  # a socket closed since the kernel queued this
                continue
            if type(obj) is _Listener:
                event = FD_ACCEPT if band & _POLLIN else 0
            else:
                event = ((FD_READ if band & _POLLIN else 0) | (FD_WRITE if band & _POLLOUT else 0)
                         | (FD_CLOSE if band & _POLLCLOSE else 0))
            self._window_procedure(obj, event, band & _POLLERR, count)
        if overflow:
            self._rescan()

    def _rescan(self) -> None:
        """After a lost message: try every socket, as if each had been sent every event."""
        self.rescans += 1
        self._box.drain()
        for lst in list(self._listeners):
            self._accept(lst)
        for conn in list(self._conns):
            self._window_procedure(conn, FD_READ | FD_WRITE, 0, 0)
        for lg in list(self._lingering):
            self._linger_read(lg)

    # ---------------------------------------------------------------- the window procedure
    def _window_procedure(self, obj: Any, event: int, error: int, count: int = 0) -> None:
        """Act on one message ``(socket, event, error)``.

        ``count`` is how many kernel records the message coalesces (each is worth one recv);
        0 for a posted message or a rescan, which know nothing and read until EAGAIN.

        ``error`` is non-zero when the kernel flagged an error on the socket; the recv or send
        performed for FD_CLOSE then reports the errno itself (as ``WSAGETSELECTERROR`` would)
        and the transport closes with it.
        """
        if type(obj) is _Listener:
            if event & FD_ACCEPT:
                self._accept(obj)
        elif obj is self._box:
            self._box.drain()  # the posted calls run at the end of every pass
        elif type(obj) is Lingering:
            if event & (FD_READ | FD_CLOSE):
                self._linger_read(obj)
        else:
            conn: Transport = obj
            if conn._released:
                return
            st: _ConnState = conn.rung_data
            if event & (FD_WRITE | FD_CLOSE) and st.want_write:
                st.want_write = False
                if conn._sending and conn._buffer:
                    self.start_send(conn)
            if event & (FD_READ | FD_CLOSE) and st.reading and not conn._released:
                self._read(conn, count)

    def _read(self, conn: Transport, count: int) -> None:
        """recv() for an FD_READ: ``count`` recvs for ``count`` kernel records, or, with
        ``count`` 0, until EAGAIN — in both cases at most READ_BUDGET before re-posting."""
        sock = conn._sock
        st: _ConnState = conn.rung_data
        n = count or READ_BUDGET
        for _ in range(min(n, READ_BUDGET)):
            try:
                data = self._rx.recv(sock)
            except (BlockingIOError, InterruptedError):
                return  # drained: a later event raises a new signal
            except OSError as exc:
                conn._on_error(exc)
                return
            if not data:
                conn._on_eof()
                return
            conn._on_data(data)
            if not st.reading or conn._released:
                return
        # Budget used up. A kernel record stands for bytes already queued: if the last recv
        # was short, the queue was empty then and later bytes raise their own signal; if it
        # was full, or we were reading blind, data may remain with no signal to come —
        # re-post FD_READ, as Windows re-posts it after a recv that leaves data behind.
        if n > READ_BUDGET or not count or len(data) == RECV_SIZE:
            self.reposts += 1
            self._posted.append((conn, FD_READ))

    def _accept(self, lst: _Listener) -> None:
        if lst.paused or self._by_fd.get(lst.fd) is not lst:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                delay = self.core.accept_error(exc)
                if delay:
                    self._pause_listener(lst, delay)
                    return
                continue
            conn = self.core.admit(sock, self)
            if conn is not None:
                self._adopt(conn)
        # The batch is used up and more may wait in the backlog: re-post FD_ACCEPT.
        self.reposts += 1
        self._posted.append((lst, FD_ACCEPT))

    def _adopt(self, conn: Transport) -> None:
        sock = conn._sock
        try:
            sock.setblocking(False)
            # WSAAsyncSelect on the new socket: owner, signal, then O_ASYNC.
            ksig.own_async(conn._fd, self.pump_tid, self.signum)  # type: ignore[arg-type]
        except OSError as exc:
            self.core.forget(conn)
            self.core.refuse(sock, f"cannot make it signal-driven: {exc}")
            return
        conn.rung_data = _ConnState()
        self._by_fd[conn._fd] = conn
        self._conns.add(conn)
        conn._start()  # set_reading(True) posts the first FD_READ: bytes may already wait

    def _pause_listener(self, lst: _Listener, delay: float) -> None:
        # Exhaustion (EMFILE...) leaves the backlog full: ignore FD_ACCEPT for a while.
        lst.paused = True

        def resume() -> None:
            lst.paused = False
            self._posted.append((lst, FD_ACCEPT))
        self._call_later(delay, resume)

    def _forget(self, conn: Transport) -> None:
        if self._by_fd.get(conn._fd) is conn:
            del self._by_fd[conn._fd]
        self._conns.discard(conn)
        st: _ConnState | None = conn.rung_data
        if st is not None:
            st.reading = st.want_write = False

    # ------------------------------------------------------------ posting to the pump
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn`` for the pump; from another thread, post a message to wake it."""
        self._calls.append((fn, args))
        if threading.get_ident() != self._ident and not self._woken:
            self._woken = True
            self._box.post()

    def _call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _call_or_run(self, fn: Callable[[], Any]) -> None:
        if self._dead or threading.get_ident() == self._ident:
            fn()
        else:
            self._call(fn)

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        if self._dead or threading.get_ident() == self._ident:
            # After the pump is gone every connection is released: the call is a no-op.
            fn(*args)
        else:
            self._call(fn, *args)

    def in_context(self, conn: Transport) -> bool:
        return self._dead or threading.get_ident() == self._ident

    def start_send(self, conn: Transport) -> None:
        if send_nonblocking(conn, until_eagain=True):
            # Only a send failing with EAGAIN arms the kernel's write-space wake-up
            # (WSAEWOULDBLOCK re-enables FD_WRITE): now FD_WRITE will come.
            conn.rung_data.want_write = True

    def set_reading(self, conn: Transport, on: bool) -> None:
        st: _ConnState = conn.rung_data
        if st.reading == on:
            return
        st.reading = on
        if on and not conn._released:
            # Messages that came while reading was off were dropped: post FD_READ (as
            # calling WSAAsyncSelect again does when data is waiting).
            self._posted.append((conn, FD_READ))

    def release(self, conn: Transport, abort: bool) -> None:
        self._forget(conn)
        abort, linger = release_policy(conn, self.core, abort)
        if linger:
            self._linger(conn)
            return
        close_socket(conn._sock, abort, shutdown=False)
        # As asyncio: connection_lost on a later pass, never inside close().
        self._call(conn._on_released)

    # ------------------------------------------------------------------- lingering close
    def _linger(self, conn: Transport) -> None:
        lg = Lingering(conn, self.core)
        self._lingering.add(lg)
        self._by_fd[lg._fd] = lg  # its messages now reach the lingering close
        # Input that came while reading was off raised no message we acted on: look now.
        self._posted.append((lg, FD_READ))
        if not self._linger_ticking:
            self._linger_ticking = True
            self._call_later(LINGER_POLL, self._linger_tick)

    def _linger_tick(self) -> None:
        # No message says "the peer acknowledged everything": look at the send queue.
        sweep_lingering(self._lingering, self._end_linger)
        if self._lingering:
            self._call_later(LINGER_POLL, self._linger_tick)
        else:
            self._linger_ticking = False

    def _linger_read(self, lg: Lingering) -> None:
        """Discard what the lingering peer sent; its EOF or an error ends the wait."""
        if lg not in self._lingering:
            return
        verdict = discard_input(lg.sock, RECV_SIZE, READ_BUDGET)
        if verdict == LINGER_MORE:
            self._posted.append((lg, FD_READ))  # more may be queued: no signal would say so
        elif verdict is not None:
            self._end_linger(lg, abort=verdict == LINGER_RESET)

    def _end_linger(self, lg: Lingering, abort: bool) -> None:
        if lg not in self._lingering:
            return
        self._lingering.discard(lg)
        if self._by_fd.get(lg._fd) is lg:
            del self._by_fd[lg._fd]
        close_socket(lg.sock, abort, shutdown=False)
        self._call(lg.conn._on_released)


RUNG = AsyncSelectRung
