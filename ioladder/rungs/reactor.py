"""The readiness reactor shared by the single-threaded readiness rungs (``select``, ``epoll``).

One thread waits for readiness, then performs the non-blocking ``accept``/``recv``/``send``
itself: the kernel only says *when* to try. Every connection's context is that thread, so
callbacks never overlap; calls from other threads are queued and the thread is woken through
an ``eventfd``.

Writes: ``write()`` sends at once (the transport's C core, through the always-open
``SEND_AT_ONCE`` gate) and only what the socket did not take reaches ``start_send``, which
watches for writability; each writable event then sends what the socket takes.

A subclass supplies only the wait: how interest is registered (``_watch``) and how readiness is
collected (``_wait``) — the rebuilt ``fd_set`` of ``select`` or the kernel-held interest set of
``epoll``. That difference is the rung.
"""

from __future__ import annotations

import abc
import collections
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..transport import Transport
from .base import (
    LINGER_DONE,
    LINGER_POLL,
    LINGER_RESET,
    SEND_AT_ONCE,
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

#: bytes asked of one recv(); asyncio's selector transport uses the same.
RECV_SIZE = 256 * 1024
#: connections accepted per readiness event before serving the others (fairness).
ACCEPT_BATCH = 64


class Listener:
    """A listening socket inside the reactor (distinguished from connections by type)."""

    __slots__ = ("sock", "fd", "paused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.paused = False


class ReactorRung(Rung):
    """A readiness event loop on one thread; subclasses implement the wait."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self._rx = Receiver(RECV_SIZE)
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()
        self._woken = False
        self._listeners: list[Listener] = []
        self._conns: set[Transport] = set()
        self._lingering: set[Lingering] = set()
        self._linger_ticking = False
        self._thread: threading.Thread | None = None
        self._tid: int | None = None
        self._running = False

    # ----------------------------------------------------------------- subclass interface
    @abc.abstractmethod
    def _watch(self, obj: Transport | Listener, read: bool, write: bool) -> bool:
        """Set the interest of ``obj``; False if it cannot be watched (structural limit)."""

    @abc.abstractmethod
    def _unwatch(self, obj: Transport | Listener) -> None:
        """Forget ``obj`` entirely (before its fd is closed)."""

    @abc.abstractmethod
    def _wait(self, timeout: float | None) -> Iterable[tuple[Any, bool, bool]]:
        """Block until readiness; yield ``(obj, readable, writable)``; ``obj`` None = wakeup."""

    def _close_wait(self) -> None:
        """Release the wait mechanism's own kernel objects."""

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        for sock in listeners:
            sock.setblocking(False)
            self._listeners.append(Listener(sock))
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"ioladder-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        """Close the listeners; returns once they are closed, so that no connection is admitted
        after it (``Server.shutdown()`` then closes a complete set of connections)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            for lst in self._listeners:  # no loop to race with (nor a wait set to leave)
                lst.sock.close()
            self._listeners.clear()
            return
        if threading.get_ident() == self._tid:
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

    def _close_listeners(self) -> None:
        for lst in self._listeners:
            self._unwatch(lst)
            lst.sock.close()
        self._listeners.clear()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._call(self._shutdown_loop)
        if self._thread is not threading.current_thread():
            self._thread.join(10.0)
        self._thread = None

    def _shutdown_loop(self) -> None:
        self._close_listeners()
        for lg in list(self._lingering):
            self._end_linger(lg, abort=True)
        for conn in list(self._conns):
            conn._force_close(None)  # through the transport, so later calls find it released
        # The loop stops after this call: deliver the connection_lost calls queued just now.
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in %s reactor", fn, self.name)
        self._running = False

    def thread_count(self) -> int:
        return 1 if self._thread is not None else 0

    # ------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        self._tid = threading.get_ident()
        for lst in self._listeners:
            self._watch(lst, True, False)
        self._watch_wakeup()
        try:
            while self._running:
                self._run_once()
        except BaseException:
            log.exception("%s reactor crashed", self.name)
            raise
        finally:
            with self._wake_lock:
                os.close(self._wakefd)
                self._wakefd = -1
            self._close_wait()

    def _watch_wakeup(self) -> None:
        """Subclasses register ``self._wakefd`` for reading in their own structure."""

    def _run_once(self) -> None:
        timeout: float | None = None
        if self._calls:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        for obj, readable, writable in self._wait(timeout):
            if obj is None:
                self._drain_wakeup()
            elif type(obj) is Listener:
                self._accept(obj)
            elif type(obj) is Lingering:
                self._linger_read(obj)
            elif obj._released:
                # Released by an earlier event of this same batch (select reports from a
                # table built before the wait): its fd is closed, maybe already reused.
                continue
            else:
                if writable and obj._sending:
                    self._watch(obj, obj.rung_data, False)
                    self._send(obj)
                if readable and obj.rung_data and not obj._released:
                    self._read(obj)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        for _ in range(len(self._calls)):
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in %s reactor", fn, self.name)

    def _drain_wakeup(self) -> None:
        # Read first, clear the flag after. The other order loses wake-ups: a caller that sees
        # the flag clear writes the eventfd; if that write lands before our read, the read
        # consumes it while the flag stays set, and every later caller skips its write while
        # the loop sleeps with calls queued (seen as a 10 s hang in Server.shutdown()).
        try:
            os.eventfd_read(self._wakefd)
        except BlockingIOError:
            pass
        self._woken = False

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn`` for the loop thread from any thread and wake it."""
        self._calls.append((fn, args))
        if threading.get_ident() != self._tid and not self._woken:
            self._woken = True
            with self._wake_lock:
                # After the loop has ended the number may already belong to another file.
                if self._wakefd >= 0:
                    os.eventfd_write(self._wakefd, 1)

    def _call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    # ----------------------------------------------------------------------- accepting
    def _accept(self, lst: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = lst.sock.accept()
            except OSError as exc:
                delay = self.core.accept_error(exc)
                if delay:
                    self._pause_listener(lst, delay)
                if isinstance(exc, BlockingIOError) or delay:
                    return
                continue
            conn = self.core.admit(sock, self)
            if conn is None:
                continue
            sock.setblocking(False)
            conn.rung_data = False  # reading interest; set by set_reading()
            if not self._watch(conn, False, False):
                self.core.forget(conn)
                self.core.refuse(sock, f"{self.name} cannot watch fd {conn._fd} "
                                 f"(structural limit {self.structural_limit})")
                continue
            self._conns.add(conn)
            conn._ctx_tid = self._tid  # the context is this thread: write() checks it in C
            conn._send_gate = SEND_AT_ONCE
            conn._start()

    def _pause_listener(self, lst: Listener, delay: float) -> None:
        # The listener stays readable while we cannot accept: stop watching it for a while
        # rather than spin.
        lst.paused = True
        self._unwatch(lst)

        def resume() -> None:
            if lst in self._listeners and lst.paused:
                lst.paused = False
                self._watch(lst, True, False)
        self._call_later(delay, resume)

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._tid:
            fn(*args)
        else:
            self._call(fn, *args)

    def in_context(self, conn: Transport) -> bool:
        return threading.get_ident() == self._tid

    def _read(self, conn: Transport) -> None:
        try:
            data = self._rx.recv(conn._sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn._on_error(exc)
            return
        if data:
            conn._on_data(data)
        else:
            conn._on_eof()

    def start_send(self, conn: Transport) -> None:
        if conn._send_gate is SEND_AT_ONCE:
            # write() has just tried the send (SEND_AT_ONCE) and the socket took only part of
            # it, or nothing: trying again now would fail too; wait until there is room.
            self._watch(conn, conn.rung_data, True)
        else:
            self._send(conn)

    def _send(self, conn: Transport) -> None:
        if send_nonblocking(conn, until_eagain=False):
            self._watch(conn, conn.rung_data, True)

    def set_reading(self, conn: Transport, on: bool) -> None:
        if conn.rung_data != on and not conn._released:
            conn.rung_data = on
            self._watch(conn, on, conn._sending)

    def release(self, conn: Transport, abort: bool) -> None:
        self._unwatch(conn)
        self._conns.discard(conn)
        abort, linger = release_policy(conn, self.core, abort)
        if linger:
            self._linger(conn)
            return
        close_socket(conn._sock, abort, shutdown=False)
        # asyncio delivers connection_lost on a later loop iteration, never inside close().
        self._call(conn._on_released)

    # ------------------------------------------------------------------- lingering close
    def _linger(self, conn: Transport) -> None:
        lg = Lingering(conn, self.core)
        self._lingering.add(lg)
        self._watch(lg, True, False)  # the slot conn just gave up (same _fd): never refused
        if not self._linger_ticking:
            self._linger_ticking = True
            self._call_later(LINGER_POLL, self._linger_tick)

    def _linger_tick(self) -> None:
        sweep_lingering(self._lingering, self._end_linger)
        if self._lingering:
            self._call_later(LINGER_POLL, self._linger_tick)
        else:
            self._linger_ticking = False

    def _linger_read(self, lg: Lingering) -> None:
        """The lingering peer sent something: discard it; its EOF or an error ends the wait."""
        if lg not in self._lingering:
            return
        verdict = discard_input(lg.sock, RECV_SIZE, 16)
        if verdict in (LINGER_DONE, LINGER_RESET):
            self._end_linger(lg, abort=verdict == LINGER_RESET)

    def _end_linger(self, lg: Lingering, abort: bool) -> None:
        if lg not in self._lingering:
            return
        self._lingering.discard(lg)
        self._unwatch(lg)
        close_socket(lg.sock, abort, shutdown=False)
        self._call(lg.conn._on_released)
