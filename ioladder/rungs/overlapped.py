"""What the two overlapped-I/O rungs (``overlapped-event``, ``overlapped-routine``) share.

Both post single-shot io_uring ops, one context per op: a connection has a receive context
(owning its receive buffer) and a send context; each listener keeps AcceptEx-style accepts
pending. What a completed op *means* — deliver the data, resubmit the rest of a short send,
cancel the pending ops and close once their results are in, the lingering close — is the same
in both and written here once, in :class:`OverlappedConns`. What differs is the model: how a
rung learns that an op has finished (an event object per op waited on in groups of 64, or a
completion routine run inside the issuing thread's alertable wait) and so how it posts an op,
queues a call to its thread and arms a timer — the hooks a host implements.
"""

from __future__ import annotations

import abc
import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .base import close_socket, linger_timeout, release_policy

if TYPE_CHECKING:
    from ..server import ServerCore
    from ..transport import Transport

#: accept errors that mean the listener itself is gone (our own stop_accepting).
LISTENER_GONE = frozenset({errno.ECANCELED, errno.EINVAL, errno.EBADF, errno.ENOTSOCK})


def oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def uring_unavailable_reason() -> str | None:
    """Why the io_uring extension cannot be used here, or None."""
    try:
        from ..kernel import uring
    except ImportError as exc:
        return f"the io_uring extension is not built: {exc}"
    return uring.availability()


def check_options(accepts: int, recv_size: int) -> None:
    if accepts < 1:
        raise ValueError("accepts must be >= 1")
    if recv_size < 1:
        raise ValueError("recv_size must be >= 1")


class ConnState:
    """Per-connection state: a receive and a send context, and where the connection is in its
    life. ``recv_ov``/``send_ov`` are the rung's own op contexts (``.pending``, ``.view``)."""

    __slots__ = ("conn", "sock", "fd", "recv_ov", "send_ov", "reading", "eof_held", "released",
                 "lingering", "deadline", "ending", "abort", "finished")

    def __init__(self, conn: Transport, recv_ov: Any, send_ov: Any) -> None:
        self.conn = conn
        self.sock = conn._sock
        self.fd = conn._fd
        self.recv_ov = recv_ov
        self.send_ov = send_ov
        self.reading = False
        self.eof_held = False     # the peer's EOF came while reading was paused
        self.released = False     # release() called: the transport is done with it
        self.lingering = False    # released gracefully, waiting for the peer's ACKs
        self.deadline = 0.0
        self.ending = False       # ops cancelled; close once their results are in
        self.abort = False
        self.finished = False     # socket closed, release reported

    def busy(self) -> bool:
        return self.recv_ov.pending or self.send_ov.pending


class Listener:
    __slots__ = ("sock", "fd", "ovs", "closing", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.ovs: list[Any] = []
        self.closing = False
        self.closed = False


def close_listener_sockets(listeners: Iterable[Listener]) -> None:
    """Close every listener socket not closed yet (no op refers to it any more)."""
    for lst in listeners:
        if not lst.closed:
            lst.closed = True
            lst.sock.close()


def stop_listening(listeners: Iterable[Listener]) -> None:
    """``shutdown(SHUT_RD)`` every listener: new SYNs are refused from now on, while the
    pending accepts are still being cancelled."""
    for lst in listeners:
        try:
            lst.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass


def maybe_close_listener(lst: Listener, listeners: list[Listener],
                         all_closed: threading.Event) -> None:
    """Close ``lst`` once it is closing and none of its accepts is pending; set
    ``all_closed`` once every listener is."""
    if lst.closed or not lst.closing or any(ov.pending for ov in lst.ovs):
        return
    lst.closed = True
    lst.sock.close()
    if all(x.closed for x in listeners):
        all_closed.set()


def wrap_fd(lst: Listener, fd: int) -> socket.socket | None:
    """A socket object for a descriptor an accept returned (None, and closed, if not)."""
    try:
        return socket.socket(lst.sock.family, lst.sock.type, lst.sock.proto, fileno=fd)
    except OSError:
        os.close(fd)
        return None


def refuse_fd(core: ServerCore, lst: Listener, fd: int, why: str) -> None:
    sock = wrap_fd(lst, fd)
    if sock is not None:
        core.refuse(sock, why)


def deliver_eof(st: ConnState) -> None:
    """The EOF held while reading was paused, once reading is on again."""
    if st.eof_held and st.reading and not st.released:
        st.eof_held = False
        st.conn._on_eof()


class OverlappedConns(abc.ABC):
    """The connection side of an overlapped rung, on the thread that posts its ops: what each
    completed receive and send means, closing (``CancelIo``, then close once every result is
    in) and the lingering close. The host supplies the model: the hooks below."""

    _lingering: set[ConnState]

    # --------------------------------------------------------------------------- hooks
    @property
    @abc.abstractmethod
    def _core(self) -> ServerCore:
        """The server core (for ``linger``)."""

    @abc.abstractmethod
    def _is_stopping(self) -> bool:
        """True once the host is stopping: no new lingering close."""

    @abc.abstractmethod
    def wsa_recv(self, st: ConnState) -> None:
        """Post ``st``'s receive (``WSARecv``)."""

    @abc.abstractmethod
    def _post_send(self, st: ConnState) -> None:
        """Post ``st``'s send of the next chunk (``WSASend``)."""

    @abc.abstractmethod
    def _cancel_conn(self, st: ConnState) -> None:
        """``CancelIo``: cancel every op pending on ``st``'s socket."""

    @abc.abstractmethod
    def _queue(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the host's thread later (never inside the caller)."""

    @abc.abstractmethod
    def _forget(self, st: ConnState) -> None:
        """``st`` is finished: drop it from the host's bookkeeping."""

    @abc.abstractmethod
    def _start_linger_tick(self) -> None:
        """Make sure the lingering-close tick (every LINGER_POLL) is armed."""

    # ------------------------------------------------------------------------ results
    def _recv_result(self, st: ConnState, err: int, n: int) -> None:
        """A receive completed: ``err`` an errno (0 on success), ``n`` the bytes received."""
        if st.released:
            if st.lingering and not st.ending:
                self._linger_recv(st, err, n)
            else:
                self._maybe_finish(st)
            return
        conn = st.conn
        if err:
            conn._on_error(oserror(err))
            return
        if not n:
            if st.reading:
                conn._on_eof()
            else:
                st.eof_held = True   # part of the stream: delivered after resume_reading()
            return
        ov = st.recv_ov
        conn._on_data(bytes(ov.view[:n]))
        if st.reading and not ov.pending and not st.released:
            self.wsa_recv(st)   # and post the next receive

    def _send_result(self, st: ConnState, err: int, n: int) -> None:
        """A send completed."""
        if st.released:
            self._maybe_finish(st)
            return
        conn = st.conn
        if err or not n:
            conn._on_error(oserror(err) if err else OSError(errno.EPIPE, "send moved no bytes"))
            return
        if conn._on_sent(n):
            self._post_send(st)   # a short send: the rest, as a new op

    def set_conn_reading(self, st: ConnState, on: bool) -> None:
        if st.released:
            return
        st.reading = on
        if not on:
            return   # a receive already posted stays: the transport holds what it brings
        if st.eof_held:
            self._queue(deliver_eof, st)
        elif not st.recv_ov.pending:
            self.wsa_recv(st)

    # ------------------------------------------------------------------------ closing
    def release_conn(self, st: ConnState, abort: bool) -> None:
        """The driver's ``release()``: linger, or cancel and close."""
        st.released = True
        st.reading = False
        abort, linger = release_policy(
            st.conn, self._core, abort,
            may_linger=not st.send_ov.pending and not self._is_stopping())
        if linger:
            self.linger(st)
            return
        self._end(st, abort, later=True)

    def _end(self, st: ConnState, abort: bool, later: bool = False) -> None:
        """Cancel the connection's pending ops (``CancelIo``; each still reports, with
        ``ECANCELED`` or its own result); once every result is in, close the socket (a reset
        if ``abort``) and report the release. ``later``: from ``release()``, which must not
        report it itself."""
        if st.lingering:
            st.lingering = False
            self._lingering.discard(st)
        st.ending = True
        st.abort = abort
        if st.busy():
            self._cancel_conn(st)
            return
        if later:
            self._queue(self._maybe_finish, st)
        else:
            self._maybe_finish(st)

    def _maybe_finish(self, st: ConnState) -> None:
        if st.finished or not st.ending or st.busy():
            return
        st.finished = True
        close_socket(st.sock, st.abort, shutdown=False)
        self._forget(st)
        st.conn._on_released()

    def _reset_conns(self, conns: Iterable[Transport]) -> None:
        """At stop: reset what is still open, cut lingering closes short."""
        for conn in list(conns):
            st: ConnState = conn.rung_data
            if not conn._released:
                conn._force_close(None)
            elif not st.ending and not st.finished:
                self._end(st, abort=True)

    @staticmethod
    def _close_leftovers(conns: set[Transport]) -> None:
        """After the ring's close (no op refers to these sockets any more): close and report
        the connections not finished yet."""
        for conn in list(conns):
            st: ConnState = conn.rung_data
            if not st.finished:
                st.finished = True
                close_socket(st.sock, True, shutdown=False)
                conns.discard(conn)
                conn._on_released()

    # ------------------------------------------------------------------ lingering close
    def linger(self, st: ConnState) -> None:
        """Released gracefully with bytes the peer has not acknowledged (``rungs.base``): a
        receive stays posted that discards what the peer still sends, and a timer looks at
        the send queue, until it is empty, the peer's EOF, or the deadline."""
        st.lingering = True
        st.deadline = time.monotonic() + linger_timeout(self._core)
        self._lingering.add(st)
        if not st.recv_ov.pending:
            self.wsa_recv(st)
        self._start_linger_tick()

    def _linger_recv(self, st: ConnState, err: int, n: int) -> None:
        if err:
            self._end(st, abort=True)
        elif not n:
            # The peer's EOF: it sends nothing more, so close() cannot provoke a reset; the
            # kernel still delivers what is queued, then our FIN.
            self._end(st, abort=False)
        else:
            self.wsa_recv(st)   # discard and keep listening
            if not st.recv_ov.pending:   # it could not be posted: give up waiting
                self._end(st, abort=True)
