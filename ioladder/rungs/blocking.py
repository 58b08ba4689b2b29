"""Rung ``blocking``: blocking sockets, one thread per client — the bottom of the ladder.

Seed concept: the article's first server. An acceptor thread blocks in ``accept()``; each client
gets its own thread that blocks in ``recv()``. Windows API: ``accept``/``recv``/``send`` on
blocking sockets with ``CreateThread``; Linux mechanism: blocking ``accept(2)``/``recv(2)``/
``send(2)`` and ``threading``.

Trait kept, with its limits: a **thread per connection**, parked in the kernel inside ``recv``
(so threads, stacks and context switches grow with clients, and the GIL serialises the Python
work they do). A send that cannot complete at once is handed to a **writer thread** for that
connection that blocks in ``send()`` — the blocking model's only way to wait for a slow reader
without stopping the reads, so the shared transport's flow control still sees the buffer grow.

Waking a thread parked in a blocking call is the model's classic difficulty: ``close()`` from
another thread does not interrupt a ``recv`` on Linux. ``shutdown(SHUT_RD)`` does (recv returns
0), and on a listening socket makes ``accept`` fail with ``EINVAL``; the rung marks the
connection released *before* doing so, so that wake-up is never mistaken for the peer's EOF.
"""

from __future__ import annotations

import ctypes
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
    _LINGER_RESET,
    LINGER_DONE,
    LINGER_POLL,
    Rung,
    Strand,
    close_socket,
    linger_step,
    linger_timeout,
    release_policy,
    send_nonblocking,
)

log = logging.getLogger("ioladder")

#: per recv(); below glibc's mmap threshold, so CPython's allocate-then-shrink of the bytes
#: object stays in the heap (256 KiB costs mmap+mremap+munmap per call; a reused buffer per
#: thread would cost 256 KiB of RSS per connection here).
RECV_SIZE = 64 * 1024
#: small stacks: thread-per-connection pays one per client (the default is 8 MiB of address
#: space each).
THREAD_STACK = 256 * 1024


_libc = ctypes.CDLL(None, use_errno=True)


class _SockaddrUnspec(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


_UNSPEC = _SockaddrUnspec(socket.AF_UNSPEC)


def _reset_now(sock: socket.socket) -> None:
    """Reset a connected TCP socket without closing its descriptor.

    ``connect(AF_UNSPEC)`` runs the kernel's ``tcp_disconnect()``: it sends RST, drops unsent
    data and wakes every thread blocked in ``send()``/``recv()`` on the socket with an error.
    Python's ``socket.connect`` cannot pass an AF_UNSPEC address, hence libc. If the kernel
    refuses, fall back to SHUT_WR (the writer wakes; the peer may see a FIN before the RST).
    """
    if _libc.connect(sock.fileno(), ctypes.byref(_UNSPEC), ctypes.sizeof(_UNSPEC)) != 0:
        log.debug("connect(AF_UNSPEC) failed: %s", os.strerror(ctypes.get_errno()))
        sock.shutdown(socket.SHUT_WR)


class _Conn:
    """The rung's per-connection state: its strand, reader and writer threads."""

    __slots__ = ("strand", "cond", "reading", "released", "abort", "writer", "reader",
                 "sent_event", "lingering", "lingerer", "peer_gone")

    def __init__(self) -> None:
        self.strand = Strand()
        self.cond = threading.Condition(threading.Lock())
        self.reading = False
        self.released = False
        self.abort = False
        self.writer: threading.Thread | None = None
        self.reader: threading.Thread | None = None
        self.sent_event = threading.Event()
        self.lingering = False  # released, but the peer has not acknowledged everything yet
        self.lingerer: threading.Thread | None = None
        self.peer_gone = False  # the reader saw the peer's EOF or an error after release


class BlockingRung(Rung):
    name = "blocking"
    seed = "blocking sockets, one thread per client"
    windows_api = "accept/recv/send (blocking) + CreateThread"
    mechanism = "blocking accept(2)/recv(2)/send(2), one threading.Thread per connection"
    trait = ("acceptor thread; a thread per connection parked in recv(); a writer thread only "
             "while a send blocks; threads grow with clients")
    rank = 10

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self._acceptors: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        self._accepting = True
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        old = threading.stack_size(THREAD_STACK)
        try:
            for sock in listeners:
                sock.setblocking(True)
                self._listeners.append(sock)
                t = threading.Thread(target=self._acceptor, args=(sock,), daemon=True,
                                     name=f"ioladder-accept-{sock.getsockname()[1]}")
                self._acceptors.append(t)
                t.start()
        finally:
            threading.stack_size(old)

    def stop_accepting(self) -> None:
        self._accepting = False
        for sock in self._listeners:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes the blocked accept() with EINVAL
            except OSError:
                pass
        me = threading.current_thread()
        for t in self._acceptors:
            if t is not me:
                t.join(5.0)
        for sock in self._listeners:
            sock.close()

    def stop(self) -> None:
        self._stopping = True  # lingering closes give up (reset) at once
        self.stop_accepting()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(5.0)

    def thread_count(self) -> int:
        with self._lock:
            return len(self._threads) + sum(t.is_alive() for t in self._acceptors)

    def _spawn(self, target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
        """Start a tracked thread; ``RuntimeError`` when none can be started (out of threads:
        the model's own limit), and then nothing is tracked."""
        t = threading.Thread(target=self._tracked, args=(target, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(t)
        old = threading.stack_size(THREAD_STACK)
        try:
            t.start()
        except BaseException:
            with self._lock:
                self._threads.discard(t)  # never started: stop() must not join it
            raise
        finally:
            threading.stack_size(old)
        return t

    def _tracked(self, target: Callable[..., Any], *args: Any) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    # ------------------------------------------------------------------------- accepting
    def _acceptor(self, lsock: socket.socket) -> None:
        while self._accepting:
            try:
                sock, _addr = lsock.accept()
            except OSError as exc:
                if not self._accepting or exc.errno in (errno.EINVAL, errno.EBADF):
                    return
                delay = self.core.accept_error(exc)
                if delay:
                    time.sleep(delay)
                continue
            conn = self.core.admit(sock, self)
            if conn is None:
                continue
            st = _Conn()
            conn.rung_data = st
            try:
                st.reader = self._spawn(self._reader, conn, name=f"ioladder-conn-{conn._fd}")
            except RuntimeError as exc:  # can't start new thread: the model's own limit
                self.core.forget(conn)
                self.core.refuse(sock, f"cannot start a thread for it: {exc}")

    # --------------------------------------------------------------- per-connection threads
    def _reader(self, conn: Transport) -> None:
        st: _Conn = conn.rung_data
        sock = conn._sock
        st.strand.run(conn._start)
        while True:
            with st.cond:
                while not st.reading and not st.released:
                    st.cond.wait()
                if st.released and not st.lingering:
                    break
            try:
                data = sock.recv(RECV_SIZE)
            except OSError as exc:
                if st.released:
                    break
                st.strand.run(conn._on_error, exc)
                continue
            if st.released:
                if data and st.lingering:
                    continue  # a lingering close discards what the peer still sends
                break  # our own shutdown(SHUT_RD) woke us, or the peer ended: not an EOF to report
            if data:
                st.strand.run(conn._on_data, data)
            else:
                with st.cond:
                    st.reading = False
                st.strand.run(conn._on_eof)
        # Released: only now may the descriptor go, once no thread of ours uses it.
        st.peer_gone = True
        for helper in (st.lingerer, st.writer):
            if helper is not None:
                helper.join()
        close_socket(sock, st.abort, shutdown=False)
        st.strand.run(conn._on_released)

    def _writer(self, conn: Transport) -> None:
        """Block in send() until the transport's buffer is empty, then end."""
        st: _Conn = conn.rung_data
        sock = conn._sock
        me = threading.current_thread()
        while not st.released:
            try:
                chunk = conn._buffer[0]
            except IndexError:
                break
            try:
                n = sock.send(chunk)
            except OSError as exc:
                if not st.released:
                    self._report(st, conn._on_error, exc)
                break
            if not self._report(st, self._sent, st, me, conn, chunk, n):
                break
        self._writer_done(st, me)

    def _linger(self, conn: Transport) -> None:
        """The lingering close's watch: the reader stays in recv(), discarding, while this
        thread waits for the peer to acknowledge every byte, then wakes it with SHUT_RD (no
        readiness event says "all acked", and SHUT_RD any earlier would make the kernel answer
        the peer's next bytes with a reset that destroys ours)."""
        st: _Conn = conn.rung_data
        sock = conn._sock
        deadline = time.monotonic() + linger_timeout(self.core)
        while not st.peer_gone:
            verdict = linger_step(conn, deadline, time.monotonic())
            if verdict == LINGER_DONE:
                break
            if self._stopping or verdict is not None:
                st.abort = True  # give up: the reader's close() resets
                break
            time.sleep(LINGER_POLL)
        with st.cond:
            st.lingering = False
        try:
            if st.abort:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.shutdown(socket.SHUT_RD)  # wake the reader parked in recv()
        except OSError:
            pass

    @staticmethod
    def _sent(st: _Conn, me: threading.Thread, conn: Transport, chunk: Any, n: int) -> bool:
        if conn._released or not conn._buffer or conn._buffer[0] is not chunk:
            more = False  # aborted meanwhile
        else:
            more = conn._on_sent(n)
        if not more:
            # The flush is over. Give up the writer slot now, inside the strand: a write that
            # runs in the strand right after this must see no writer and start its own, or its
            # bytes would wait forever behind a writer thread that is already leaving.
            BlockingRung._writer_done(st, me)
        return more

    @staticmethod
    def _writer_done(st: _Conn, me: threading.Thread) -> None:
        with st.cond:
            if st.writer is me:
                st.writer = None

    @staticmethod
    def _report(st: _Conn, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the strand, wait until it has run (it may be queued), return its
        result."""
        st.sent_event.clear()
        result: list[Any] = [None]

        def call() -> None:
            try:
                result[0] = fn(*args)
            finally:
                st.sent_event.set()
        st.strand.run(call)
        st.sent_event.wait()
        return result[0]

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        conn.rung_data.strand.run(fn, *args)

    def in_context(self, conn: Transport) -> bool:
        return conn.rung_data.strand.inside()

    def start_send(self, conn: Transport) -> None:
        if not send_nonblocking(conn, until_eagain=False, flags=socket.MSG_DONTWAIT):
            return
        st: _Conn = conn.rung_data
        # The kernel buffer is full: a writer thread blocks in send() for this connection.
        with st.cond:
            if st.writer is not None or st.released:
                return
            try:
                st.writer = self._spawn(self._writer, conn, name=f"ioladder-send-{conn._fd}")
                return
            except RuntimeError as exc:  # out of threads: this connection cannot wait for room
                error = OSError(errno.EAGAIN, f"cannot start a writer thread: {exc}")
        log.warning("blocking: aborting %r: %s", conn, error)
        conn._on_error(error)

    def set_reading(self, conn: Transport, on: bool) -> None:
        st: _Conn = conn.rung_data
        with st.cond:
            st.reading = on
            st.cond.notify()

    def release(self, conn: Transport, abort: bool) -> None:
        st: _Conn = conn.rung_data
        sock = conn._sock
        abort, linger = release_policy(conn, self.core, abort, may_linger=not self._stopping)
        with st.cond:
            st.released = True
            st.abort = abort
            st.lingering = linger
            if linger:
                # The lingering close (see rungs.base): the reader keeps reading and
                # discarding; a watcher thread wakes it once the peer has acknowledged
                # everything. Published under the lock that publishes the release, so the
                # reader, which looks only after it has seen the release, joins it.
                try:
                    st.lingerer = self._spawn(self._linger, conn,
                                              name=f"ioladder-linger-{conn._fd}")
                except RuntimeError as exc:
                    # Out of threads: close gracefully at once, unguarded (the kernel still
                    # sends what it holds; only a peer that keeps sending can now reset it).
                    log.warning("blocking: no lingering close for %r: %s", conn, exc)
                    linger = st.lingering = False
            st.cond.notify()
        if linger:
            return
        try:
            if abort:
                # The peer must see a reset, never a FIN first: once a FIN has arrived, Linux
                # reports EOF to the peer's recv() even if a RST follows (tcp_reset() keeps
                # SOCK_DONE), so shutdown(SHUT_WR) here would turn the abort into a graceful
                # close. SO_LINGER {1, 0} makes the reader's close() a reset; SHUT_RD wakes the
                # reader from recv().
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.shutdown(socket.SHUT_RD)
                if st.writer is not None:
                    # A writer blocked in send() wakes only on SHUT_WR, whose FIN would reach
                    # the peer before our reset as soon as the peer reads. Reset now instead.
                    _reset_now(sock)
            else:
                sock.shutdown(socket.SHUT_RD)  # wake the reader parked in recv()
        except OSError:
            pass


RUNG = BlockingRung
