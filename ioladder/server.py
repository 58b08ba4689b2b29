"""``serve()`` and :class:`Server`: the public face of every rung.

:class:`ServerCore` is the part of a server that is the same on every rung: the protocol
factory, the limits (``max_connections``, ``idle_timeout``, ``linger``), the set of live
connections, and the graceful shutdown. The rung only accepts and drives I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import rungs
from .rungs.base import ACCEPT_EXHAUSTED, ACCEPT_TRANSIENT, Rung
from .transport import Transport

log = logging.getLogger("ioladder")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class ServerCore:
    """Connection bookkeeping and limits shared by all rungs."""

    def __init__(self, protocol_factory: ProtocolFactory, *, max_connections: int | None,
                 idle_timeout: float | None, linger: float | None) -> None:
        # Written so that NaN fails too: it compares false with everything, and accepted it
        # would silently mean "no limit" (or a lingering close without a deadline).
        if max_connections is not None and (
                not isinstance(max_connections, int) or max_connections < 1):
            raise ValueError(f"max_connections must be an integer >= 1 or None, "
                             f"not {max_connections!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds or None, not {idle_timeout!r}")
        if linger is not None and not linger >= 0:
            raise ValueError(f"linger must be None, 0 or a positive number of seconds, "
                             f"not {linger!r}")
        self.protocol_factory = protocol_factory
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.linger = linger
        # linger=0: SO_LINGER {1, 0} on every connection, so any close is a reset. linger=N > 0
        # is the rungs' own lingering close (rungs.base), which waits without blocking; a
        # kernel SO_LINGER {1, N} would make close() itself block the calling thread — a
        # rung's loop serving every other connection — for up to N seconds whenever bytes
        # are still unacknowledged (a half-closed peer that reads slowly), whatever O_NONBLOCK.
        self._linger_opt = struct.pack("ii", 1, 0) if linger == 0 else None
        self.connections: set[Transport] = set()
        self._cond = threading.Condition()
        self.accepted_total = 0
        self.refused_total = 0
        self._last_refusal_log = 0.0
        self._last_exhaustion_log = 0.0
        self._stopping = threading.Event()
        #: monotonic time from which every lingering close gives up with a reset (see
        #: ``rungs.base.linger_expired``): set when ``close_all`` turns to aborting.
        self.linger_cutoff = math.inf
        self._reaper: threading.Thread | None = None

    # ------------------------------------------------------------------------- accepting
    def admit(self, sock: socket.socket, rung: Rung) -> Transport | None:
        """Take an accepted socket: refuse it cleanly past the limits, else wrap it.

        The caller (the rung) then attaches its state and runs ``conn._start()`` in the
        connection's context.
        """
        with self._cond:
            limit = self.max_connections
            if rung.structural_limit is not None:
                limit = rung.structural_limit if limit is None else min(limit,
                                                                        rung.structural_limit)
            if limit is not None and len(self.connections) >= limit:
                self.refuse(sock, f"{len(self.connections)} connections open, limit is {limit}")
                return None
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._linger_opt is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self._linger_opt)
            except OSError as exc:  # the peer is already gone
                log.debug("dropping connection that died before setup: %s", exc)
                sock.close()
                return None
            conn = Transport(sock, self.protocol_factory, rung, self)
            self.connections.add(conn)
            self.accepted_total += 1
            return conn

    def refuse(self, sock: socket.socket, why: str) -> None:
        """Close a connection we will not serve; the peer sees an orderly close."""
        self.refused_total += 1
        now = time.monotonic()
        if now - self._last_refusal_log > 1.0:
            self._last_refusal_log = now
            log.warning("refusing connection from %s: %s (%d refused so far)",
                        _peer(sock), why, self.refused_total)
        try:
            sock.close()
        except OSError:
            pass

    def accept_error(self, exc: OSError) -> float:
        """Classify an accept() failure: 0.0 to carry on, or seconds to stop accepting.

        Exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) leaves the listener readable, so a rung
        that retried at once would spin at 100 % CPU; it backs off instead and accepts again
        as soon as the back-off ends and descriptors are free.
        """
        if exc.errno in ACCEPT_EXHAUSTED:
            now = time.monotonic()
            if now - self._last_exhaustion_log > 5.0:
                self._last_exhaustion_log = now
                log.warning("accept() failed: %s; pausing accepts for %.0f ms", exc,
                            rungs.base.ACCEPT_BACKOFF * 1000)
            return rungs.base.ACCEPT_BACKOFF
        if exc.errno in ACCEPT_TRANSIENT or isinstance(exc, BlockingIOError):
            return 0.0
        log.error("accept() failed: %s; pausing accepts", exc)
        return rungs.base.ACCEPT_BACKOFF

    def forget(self, conn: Transport) -> None:
        with self._cond:
            self.connections.discard(conn)
            self._cond.notify_all()

    # ------------------------------------------------------------------------ idle reaper
    def start_reaper(self) -> None:
        if self.idle_timeout is None:
            return
        self._reaper = threading.Thread(target=self._reap, name="ioladder-idle", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        timeout = self.idle_timeout
        assert timeout is not None
        period = min(max(timeout / 4, 0.05), 1.0)
        while not self._stopping.wait(period):
            deadline = time.monotonic() - timeout
            with self._cond:
                idle = [c for c in self.connections if c.last_activity <= deadline]
            for conn in idle:
                try:
                    conn._driver.dispatch(conn, conn._idle_check, timeout)
                except Exception:  # one bad connection must not end the reaper for all
                    log.exception("idle check of %r failed", conn)

    # -------------------------------------------------------------------------- shutdown
    def close_all(self, timeout: float) -> bool:
        """Close every connection gracefully; abort what has not finished by ``timeout``.

        "Not finished" includes a released connection still in its lingering close (bytes
        in the kernel that the peer has not acknowledged): ``abort()`` cannot reach it any
        more, so the cutoff makes the rung end it with a reset at its next look."""
        with self._cond:
            conns = list(self.connections)
        for conn in conns:
            conn.close()
        if self.wait_empty(timeout):
            return True
        with self._cond:
            conns = list(self.connections)
        log.warning("shutdown: aborting %d connection(s) still draining after %.1f s",
                    len(conns), timeout)
        self.linger_cutoff = time.monotonic()
        for conn in conns:
            conn.abort()
        return self.wait_empty(5.0)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self.connections, timeout)

    def stop(self) -> None:
        self._stopping.set()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(5.0)


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername())
    except OSError:
        return "?"


def _listeners(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            if port == 0:  # several families: share the one ephemeral port
                port = sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class StopRequest:
    """A stop flag that a signal handler may set: one byte down a pipe, no lock taken.

    ``threading.Event.set()`` takes the event's lock. A handler runs in the main thread between
    two bytecodes, and if those are inside the same event's ``wait()`` -- which holds that lock
    around its bookkeeping -- ``set()`` waits for a lock its own thread holds, forever (seen:
    ``ioladder serve`` ignoring SIGTERM). ``set()`` here is a non-blocking ``write`` to a pipe,
    safe from a handler and from any thread; ``wait(timeout)`` polls the other end, which a
    signal interrupts and which sees the byte at once when it resumes."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @classmethod
    def on_signals(cls, *signums: int) -> StopRequest:
        """A request that each of ``signums`` sets (the handlers are installed here)."""
        stop = cls()

        def handler(signum: int, frame: object) -> None:
            stop.set()
        for signum in signums:
            signal.signal(signum, handler)
        return stop

    def set(self) -> None:
        try:
            os.write(self._w, b"\0")
        except OSError:
            pass  # the pipe is full (the request is made) or closed (nobody waits any more)

    def is_set(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        """True once ``set()`` was called (it stays set), False after ``timeout`` seconds.
        Any thread may wait or ask ``is_set()`` at the same time: each call polls with a poll
        object of its own (one object refuses concurrent polls), and not with ``select()``,
        which refuses descriptors past ``FD_SETSIZE``."""
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))

    def close(self) -> None:
        """Close the pipe; only once no handler or thread can call ``set()`` any more (the
        descriptor numbers may be reused)."""
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class Serving:
    """What every running server offers (one :class:`Server`, or a pool of worker processes):
    ``serve_forever()``, ``wait_closed()`` and the context manager, over ``shutdown()`` and the
    ``_done`` event it sets."""

    _done: threading.Event

    def shutdown(self, timeout: float = 10.0) -> Any:
        raise NotImplementedError

    def serve_forever(self) -> None:
        """Block until ``shutdown()``; Ctrl-C shuts down gracefully."""
        try:
            while not self._done.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("interrupted: shutting down gracefully")
            self.shutdown()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class Server(Serving):
    """A running TCP server on one rung; use as a context manager or call ``shutdown()``."""

    def __init__(self, protocol_factory: ProtocolFactory, host: str | None = "127.0.0.1",
                 port: int = 0, *, model: str = "auto", backlog: int = 1024,
                 max_connections: int | None = None, idle_timeout: float | None = None,
                 linger: float | None = None, reuse_port: bool = False,
                 sockets: list[socket.socket] | None = None) -> None:
        rung_cls = rungs.resolve(model)
        self.model: str = rung_cls.name
        self.core = ServerCore(protocol_factory, max_connections=max_connections,
                               idle_timeout=idle_timeout, linger=linger)
        self.sockets: list[socket.socket] = (
            sockets if sockets is not None else _listeners(host, port, backlog, reuse_port))
        self.rung: Rung = rung_cls(self.core)
        self._port: int = self.sockets[0].getsockname()[1]
        self._closed = False
        self._done = threading.Event()
        self._shutdown_lock = threading.Lock()
        try:
            self.rung.start(self.sockets)
        except BaseException:
            for sock in self.sockets:
                sock.close()
            self.rung.stop()
            raise
        self.core.start_reaper()
        log.info("serving on %s with rung %s", self.addresses, self.model)

    @property
    def addresses(self) -> list[Any]:
        return [s.getsockname() for s in self.sockets if s.fileno() != -1]

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return self._port

    @property
    def connections(self) -> int:
        return len(self.core.connections)

    def close(self) -> None:
        """Stop accepting; open connections carry on."""
        if not self._closed:
            self._closed = True
            self.rung.stop_accepting()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection gracefully, wait up to ``timeout`` for their
        buffers to drain, abort the rest, then stop the rung's threads."""
        with self._shutdown_lock:
            if self._done.is_set():
                return
            self.close()
            try:
                self.core.close_all(timeout)
            finally:
                self.core.stop()
                self.rung.stop()
                self._done.set()

    def __repr__(self) -> str:
        return f"<ioladder.Server {self.model} {self.addresses} conns={self.connections}>"


def serve(protocol_factory: ProtocolFactory, host: str | None = "127.0.0.1", port: int = 0, *,
          model: str = "auto", backlog: int = 1024, max_connections: int | None = None,
          idle_timeout: float | None = None, linger: float | None = None,
          reuse_port: bool = False, workers: int = 1) -> Server:
    """Serve ``protocol_factory`` (any ``asyncio.Protocol`` factory) over TCP on one rung.

    Returns a started :class:`Server`. ``model`` is a rung id (``ioladder models`` lists
    them) or ``"auto"``, which picks the best rung available here and logs the choice.
    ``linger`` mirrors .NET's ``LingerOption``: None keeps the kernel default (close returns
    at once, queued bytes still go out), 0 makes every close a reset, N > 0 makes close wait
    up to N seconds for queued bytes (the rung's lingering close, which never blocks a
    thread; after N seconds a reset).

    ``workers=N > 1`` serves from N supervised processes sharing the port (``SO_REUSEPORT``)
    and returns an :class:`ioladder.workers.WorkerPool` with the same interface;
    ``protocol_factory`` must then be importable by a new process (a module-level class or
    function, or a ``"module:attr"`` string). See :func:`ioladder.workers.serve_workers`.
    """
    if workers != 1:
        from .workers import serve_workers
        return serve_workers(protocol_factory, host, port, workers=workers,  # type: ignore
                             model=model, backlog=backlog, max_connections=max_connections,
                             idle_timeout=idle_timeout, linger=linger)
    return Server(protocol_factory, host, port, model=model, backlog=backlog,
                  max_connections=max_connections, idle_timeout=idle_timeout, linger=linger,
                  reuse_port=reuse_port)
