"""UringEventLoop: a complete asyncio event loop on the io_uring proactor.

It is a ``BaseProactorEventLoop`` (asyncio's loop for completion ports) whose proactor is
:class:`~ioladder.aio._proactor.UringProactor`, plus what asyncio's Unix loop adds on top of the
selector loop: signals, UNIX sockets, pipes and subprocesses, ``add_reader``/``add_writer``.

One iteration (:meth:`UringEventLoop._run_once`) is: the socket transports' writes of the last
iteration become one ``SEND`` each; one ``io_uring_enter`` submits every queued SQE and waits
for (or, with callbacks ready, only reaps) completions; due timers join the ready queue; the
callbacks that were ready run; then each completion's ``ctx(res, flags)`` runs (socket
transports call their protocol from there, as uvloop calls protocols from libuv callbacks;
future-based ops resolve their future, whose callbacks join the ready queue). Ready callbacks
before completions is the order both the selector loop (which queues I/O callbacks behind the
ready ones) and uvloop (ready callbacks in libuv's idle phase, before the poll) give.

``call_soon_threadsafe`` wakes the ring with ``ring.wake()`` (an eventfd the ring polls);
signals arrive through the self-pipe, which Python's C signal handler writes to
(``signal.set_wakeup_fd``) and the ring polls.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import heapq
import io
import operator
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import warnings
import weakref
from asyncio import (
    base_events,
    coroutines,
    events,
    exceptions,
    format_helpers,
    futures,
    proactor_events,
    selector_events,
    sslproto,
    tasks,
    unix_events,
)
from typing import Any

from ._proactor import (
    DEFAULT_BUFFERS,
    DEFAULT_ENTRIES,
    POLLIN,
    POLLOUT,
    UringProactor,
    logger,
)
from ._speedups import CallSoon
from ._speedups import dispatch as _dispatch
from ._speedups import flush_all as _flush_all
from ._speedups import run_ready as _run_ready
from ._transports import Acceptor, SocketTransport

_MIN_SCHEDULED_TIMER_HANDLES = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
MAXIMUM_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT
_HAS_IPV6 = hasattr(socket, "AF_INET6")
_fileobj_to_fd = selectors._fileobj_to_fd

# call_soon() builds its Handle by filling the slots itself (one Python frame instead of two)
# where events.Handle has exactly the slots asyncio's constructor fills; else it uses the class.
_HANDLE_SLOTS = ("_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr",
                 "__weakref__", "_context")
_FAST_HANDLE = tuple(getattr(events.Handle, "__slots__", ())) == _HANDLE_SLOTS
_copy_context = contextvars.copy_context
_new_handle = object.__new__
_Handle = events.Handle
_get_debug = operator.attrgetter("_debug")


def _handle_error(handle: events.Handle, exc: BaseException) -> None:
    """What events.Handle._run does when its callback raises (the ready loop inlines _run)."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _write_now(transport: Any) -> None:
    transport._write_now()


def _sighandler_noop(signum: int, frame: Any) -> None:
    """Python-level handler that lets the C handler write the signal number to the wakeup fd."""


class UringEventLoop(proactor_events.BaseProactorEventLoop):
    """An asyncio event loop whose I/O is io_uring (see the module docstring).

    ``entries``: submission queue size. ``buffers``: (count, size) of the provided receive buffer
    ring shared by the socket transports. ``transports="proactor"`` uses asyncio's own proactor
    transports (a future per recv/send) instead of the completion-driven ones, e.g. to check
    that the proactor interface alone is enough. ``batch_writes=False`` makes socket transports
    send in ``write()`` (one syscall per write, as on the selector loop) instead of handing each
    iteration's writes to the kernel in the loop's next ``io_uring_enter``.
    """

    def __init__(self, *, entries: int = DEFAULT_ENTRIES,
                 buffers: tuple[int, int] = DEFAULT_BUFFERS, transports: str = "uring",
                 batch_writes: bool = True) -> None:
        if transports not in ("uring", "proactor"):
            self._closed = True  # what BaseEventLoop.__del__ looks at
            raise ValueError("transports must be 'uring' or 'proactor'")
        proactor = UringProactor(entries, buffers)
        self._generic = transports == "proactor"
        self._batch_writes = batch_writes
        self._flushq: list[Any] = []  # transports whose writes go out with the next enter
        self._looping = False  # inside run_forever: _run_once() iterates until stop()
        # what a socket transport calls on its first write of an iteration: while the loop runs
        # (and batches), flushq.append; otherwise the transport writes to its socket at once
        self._defer_write = _write_now
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._signal_handlers: dict[int, events.Handle] = {}
        self._acceptors: dict[int, Acceptor] = {}
        self._pidfds: set[int] = set()
        self._self_reading = False
        # BaseProactorEventLoop installs the self-pipe as the signal wakeup fd whenever it is
        # made in the main thread; like asyncio's Unix loop, do that only in add_signal_handler
        main = threading.current_thread() is threading.main_thread()
        previous = signal.set_wakeup_fd(-1) if main else -1
        try:
            super().__init__(proactor)
        finally:
            if main:
                signal.set_wakeup_fd(previous)
        # Called for every future (the C Future asks its loop get_debug() on creation) and
        # every stream read: C callables instead of Python methods. (They reference the loop:
        # a cycle the garbage collector takes care of once the loop is dropped.)
        self.get_debug = functools.partial(_get_debug, self)  # type: ignore[method-assign]
        self.create_future = functools.partial(  # type: ignore[method-assign]
            futures.Future, loop=self)
        # call_soon: every future's done callbacks and every stream wakeup come through it.
        # CallSoon (C) does what the method below does, and calls the method in debug mode;
        # not where a subclass overrides call_soon (the instance attribute would hide it).
        if _FAST_HANDLE and type(self).call_soon is UringEventLoop.call_soon:
            self.call_soon = CallSoon(self, self._py_call_soon)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} running={self.is_running()} closed={self.is_closed()} "
                f"debug={self.get_debug()}>")

    # ------------------------------------------------------------------ running

    def run_forever(self) -> None:
        self._check_closed()
        self._check_running()
        self._proactor.bind()  # the ring belongs to the thread that runs the loop
        if self._batch_writes:
            self._defer_write = self._flushq.append
        self._looping = True
        try:
            super().run_forever()
        finally:
            self._looping = False
            # what callbacks wrote in the last iteration reaches the kernel now, not whenever
            # the loop runs again; from now on writes go to their sockets at once
            self._defer_write = _write_now
            self._flush_writes()
            self._proactor.flush()

    def _flush_writes(self) -> None:
        flushq = self._flushq
        if flushq:
            for transport in flushq:
                transport._flush()
            flushq.clear()

    def _run_once(self) -> None:
        """One iteration; inside run_forever, every iteration until stop() (see _iterate)."""
        self._iterate(not self._looping)

    def _iterate(self, once: bool) -> None:
        """Iterations: flush writes, one ring enter, timers, ready callbacks, completions.

        run_forever() calls _run_once() in a loop; here the loop is this function's own (with
        its locals kept between iterations), returning to run_forever() when stop() was called.
        A direct _run_once() call still runs exactly one iteration.
        """
        ready = self._ready
        proactor = self._proactor
        ring = proactor._ring
        flushq = self._flushq
        popleft = ready.popleft
        while True:
            scheduled = self._scheduled
            sched_count = len(scheduled)
            if (sched_count > _MIN_SCHEDULED_TIMER_HANDLES and
                    self._timer_cancelled_count / sched_count >
                    _MIN_CANCELLED_TIMER_HANDLES_FRACTION):
                new_scheduled = []
                for handle in scheduled:
                    if handle._cancelled:
                        handle._scheduled = False
                    else:
                        new_scheduled.append(handle)
                heapq.heapify(new_scheduled)
                self._scheduled = scheduled = new_scheduled
                self._timer_cancelled_count = 0
            else:
                while scheduled and scheduled[0]._cancelled:
                    self._timer_cancelled_count -= 1
                    handle = heapq.heappop(scheduled)
                    handle._scheduled = False

            if flushq:  # this iteration's writes: one SEND per transport, submitted by the enter
                _flush_all(flushq)  # for transport in flushq: transport._flush(); then clear
            if ready or self._stopping or proactor._backlog:
                cqes = ring.reap()  # enters the kernel only if there is something to do
            elif scheduled:
                timeout = scheduled[0]._when - self.time()
                if timeout <= 0:
                    cqes = ring.reap()
                else:
                    cqes = ring.wait(1, min(timeout, MAXIMUM_SELECT_TIMEOUT))
            else:
                cqes = ring.wait(1)
            if proactor._backlog:  # left by an interrupted dispatch, or reaped by settle()
                cqes = proactor._backlog + cqes
            # Until dispatched, the completions are the backlog: an exception escaping a
            # callback below (KeyboardInterrupt) must not lose them.
            proactor._backlog = cqes

            if scheduled:
                end_time = self.time() + self._clock_resolution
                while scheduled:
                    handle = scheduled[0]
                    if handle._when >= end_time:
                        break
                    handle = heapq.heappop(scheduled)
                    handle._scheduled = False
                    ready.append(handle)

            # Callbacks that were ready before this poll run first, then the completions: the
            # order the selector loop gives (it queues I/O callbacks behind the ready ones) and
            # uvloop gives (ready callbacks run in libuv's idle phase, before the poll's I/O).
            ntodo = len(ready)
            if self._debug:
                for _ in range(ntodo):
                    handle = popleft()
                    if handle._cancelled:
                        continue
                    try:
                        self._current_handle = handle
                        t0 = self.time()
                        handle._run()
                        dt = self.time() - t0
                        if dt >= self.slow_callback_duration:
                            logger.warning("Executing %s took %.3f seconds",
                                           base_events._format_handle(handle), dt)
                    finally:
                        self._current_handle = None
            elif ntodo:
                # in C: popleft() ntodo handles; each not cancelled runs as
                # handle._context.run(handle._callback, *handle._args), an exception (but
                # SystemExit, KeyboardInterrupt) going to _handle_error(handle, exc)
                _run_ready(ready, ntodo, _handle_error)
            handle = None  # break cycles when an exception occurs

            cqes = proactor._backlog
            if cqes:
                proactor._backlog = []
                # in C: ctx(res, flags) for each completion, an exception going to
                # proactor._handler_error(exc, ctx); SystemExit and KeyboardInterrupt put the
                # completions not yet dispatched back in front of proactor._backlog and raise
                _dispatch(cqes, proactor)
                cqes = None  # type: ignore[assignment]
            if once or self._stopping:
                return

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> events.Handle:
        return self._py_call_soon(callback, *args, context=context)

    def _py_call_soon(self, callback: Any, *args: Any, context: Any = None) -> events.Handle:
        """call_soon in Python: what the instance's C CallSoon does, and its debug mode."""
        if self._debug or not _FAST_HANDLE:
            handle = super().call_soon(callback, *args, context=context)
            if handle._source_traceback:
                del handle._source_traceback[-1]  # this override's frame: the caller's is last
            return handle
        if self._closed:
            raise RuntimeError("Event loop is closed")
        # events.Handle(callback, args, self, context), its constructor inlined
        handle = _new_handle(_Handle)
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._loop = self
        handle._source_traceback = None
        handle._repr = None
        handle._context = _copy_context() if context is None else context
        self._ready.append(handle)
        return handle

    def _write_to_self(self) -> None:
        # any thread: the ring polls an eventfd for exactly this (a write(2), no socket I/O)
        proactor = self._proactor
        ring = proactor._ring if proactor is not None else None
        if ring is not None:
            ring.wake()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, skipping "
                          f"signal handlers removal", ResourceWarning, stacklevel=2,
                          source=self)
            self._signal_handlers.clear()
        for acceptor in self._acceptors.values():
            acceptor.stop()
        self._acceptors.clear()
        self._stop_accept_futures()
        self._close_self_pipe()
        for fd in self._pidfds:
            os.close(fd)
        self._pidfds.clear()
        self._proactor.close()
        self._proactor = None
        self._selector = None
        base_events.BaseEventLoop.close(self)

    # ------------------------------------------------------------------ self-pipe and signals

    def _make_self_pipe(self) -> None:
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1

    def _close_self_pipe(self) -> None:
        if self._self_reading:
            self._remove_reader(self._ssock.fileno())
            self._self_reading = False
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None
        self._internal_fds -= 1

    def _loop_self_reading(self, f: Any = None) -> None:
        """The self-pipe is read through the ring (a POLL_ADD) once signals are handled."""
        if not self._self_reading and self._ssock is not None:
            self._self_reading = True
            self._add_reader(self._ssock.fileno(), self._read_from_self)

    def _read_from_self(self) -> None:
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                self._process_self_data(data)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    def _process_self_data(self, data: bytes) -> None:
        for signum in data:
            if signum:  # null bytes are plain wake-ups
                self._handle_signal(signum)

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        """Add a handler for a signal (main thread only, as on every asyncio Unix loop)."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # raises ValueError outside the main thread: a loop running in another thread
            # cannot add a signal handler
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        self._loop_self_reading()
        self._signal_handlers[sig] = events.Handle(callback, args, self, None)
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)  # SA_RESTART: fewer EINTRs elsewhere
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _check_signal(self, sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    # ------------------------------------------------------------------ readiness

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _add_reader(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._add_watch(fd, callback, args, False)

    def _add_writer(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._add_watch(fd, callback, args, True)

    def _add_watch(self, fd: Any, callback: Any, args: Any, write: bool) -> events.Handle:
        self._check_closed()
        handle = events.Handle(callback, args, self, None)
        fileno = _fileobj_to_fd(fd)
        watch = self._proactor.watch(fileno, fd)
        if write:
            old, watch.writer = watch.writer, handle
        else:
            old, watch.reader = watch.reader, handle
        if old is not None:
            old.cancel()
        watch.arm(write)
        return handle

    def _remove_reader(self, fd: Any) -> bool:
        return self._remove_watch(fd, False)

    def _remove_writer(self, fd: Any) -> bool:
        return self._remove_watch(fd, True)

    def _remove_watch(self, fd: Any, write: bool) -> bool:
        if self.is_closed():
            return False
        proactor = self._proactor
        watch = proactor._watches.get(_fileobj_to_fd(fd))
        if watch is None:
            return False
        handle = watch.writer if write else watch.reader
        if handle is None:
            return False
        if write:
            watch.writer = None
        else:
            watch.reader = None
        handle.cancel()
        watch.disarm(write)
        proactor.unwatch(watch)
        return True

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is readable (level-triggered, ring POLL_ADD)."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd: Any, callback: Any, *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is writable (level-triggered, ring POLL_ADD)."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # ------------------------------------------------------------------ transports

    def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None,
                               extra: Any = None, server: Any = None) -> Any:
        if self._generic:
            return proactor_events._ProactorSocketTransport(self, sock, protocol, waiter, extra,
                                                            server)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: Any, sslcontext: Any,
                            waiter: Any = None, *, server_side: bool = False,
                            server_hostname: Any = None, extra: Any = None, server: Any = None,
                            **timeouts: Any) -> Any:
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname, **timeouts)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock: socket.socket, protocol: Any, address: Any = None,
                                 waiter: Any = None, extra: Any = None) -> Any:
        # readiness-driven (the ring has no recvmsg/sendmsg with an address): asyncio's own
        # datagram transport on the ring's add_reader/add_writer
        return selector_events._SelectorDatagramTransport(self, sock, protocol, address, waiter,
                                                          extra)

    def _make_read_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                  extra: Any = None) -> Any:
        return unix_events._UnixReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                   extra: Any = None) -> Any:
        return unix_events._UnixWritePipeTransport(self, pipe, protocol, waiter, extra)

    def _make_duplex_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                    extra: Any = None) -> Any:
        return self._make_socket_transport(sock, protocol, waiter, extra)

    # ------------------------------------------------------------------ servers

    def _start_serving(self, protocol_factory: Any, sock: socket.socket, sslcontext: Any = None,
                       server: Any = None, backlog: int = 100, ssl_handshake_timeout: Any = None,
                       ssl_shutdown_timeout: Any = None) -> None:
        if self._generic:
            kwargs = {"ssl_handshake_timeout": ssl_handshake_timeout}
            if sys.version_info >= (3, 11):
                kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
            return super()._start_serving(protocol_factory, sock, sslcontext, server, backlog,
                                          **kwargs)
        ssl_kwargs: dict[str, Any] = {}
        if sslcontext is not None:
            ssl_kwargs["ssl_handshake_timeout"] = ssl_handshake_timeout
            if sys.version_info >= (3, 11):
                ssl_kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        acceptor = Acceptor(self, protocol_factory, sock, sslcontext, server, backlog, ssl_kwargs)
        old = self._acceptors.pop(sock.fileno(), None)
        if old is not None:
            old.stop()
        self._acceptors[sock.fileno()] = acceptor
        self.call_soon(acceptor.start)

    def _stop_serving(self, sock: socket.socket) -> None:
        acceptor = self._acceptors.pop(sock.fileno(), None)
        if acceptor is not None:
            acceptor.stop()
        future = self._accept_futures.pop(sock.fileno(), None)
        if future:
            future.cancel()
        self._proactor._stop_serving(sock)
        sock.close()

    # ------------------------------------------------------------------ sock_* methods

    def _check_sock(self, sock: socket.socket) -> None:
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    async def _sock_ready(self, sock: socket.socket, mask: int, attempt: Any) -> Any:
        """attempt() now; if it would block, wait for readiness through the ring and retry.

        asyncio promises that cancelling sock_recv/sock_accept loses nothing and that the
        caller's buffer is free once the call returns or is cancelled. A kernel recv (accept)
        that completed just before its cancel would have consumed the data (connection), so
        these wait for readiness (a POLL_ADD, cancelled losslessly) and then make the call.
        """
        try:
            return attempt()
        except (BlockingIOError, InterruptedError):
            pass
        self._ensure_fd_no_transport(sock.fileno())
        return await self._proactor.poll(sock, mask, attempt)

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        self._check_sock(sock)
        return await self._sock_ready(sock, POLLIN, lambda: sock.recv(n))

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        self._check_sock(sock)
        return await self._sock_ready(sock, POLLIN, lambda: sock.recv_into(buf))

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        self._check_sock(sock)
        return await self._sock_ready(sock, POLLIN, lambda: sock.recvfrom(bufsize))

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any,
                                 nbytes: int = 0) -> tuple[int, Any]:
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        return await self._sock_ready(sock, POLLIN, lambda: sock.recvfrom_into(buf, nbytes))

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        self._check_sock(sock)
        view = memoryview(data).cast("B")
        total = len(view)
        pos = 0

        def attempt() -> None:
            nonlocal pos
            pos += sock.send(view[pos:])
            if pos < total:
                raise BlockingIOError
            return None

        if not total:
            return
        await self._sock_ready(sock, POLLOUT, attempt)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        self._check_sock(sock)
        return await self._sock_ready(sock, POLLOUT, lambda: sock.sendto(data, address))

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        self._check_sock(sock)
        if sock.family == socket.AF_INET or (_HAS_IPV6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(address, family=sock.family, type=sock.type,
                                                   proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        return await self._proactor.connect(sock, address)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        self._check_sock(sock)

        def attempt() -> tuple[socket.socket, Any]:
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await self._sock_ready(sock, POLLIN, attempt)

    async def _sock_sendfile_native(self, sock: socket.socket, file: Any, offset: int,
                                    count: int) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            st = os.fstat(fileno)
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        if not stat.S_ISREG(st.st_mode):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        fsize = st.st_size
        if not (count if count else fsize):
            return 0  # empty file
        offset = min(offset, fsize)
        end = min(offset + count, fsize) if count else fsize
        if end <= offset:
            return 0
        fut = self._proactor.sendfile(sock, file, offset, end - offset)
        op = getattr(fut, "_op", None)
        sent = 0
        try:
            sent = await fut
        except exceptions.CancelledError:
            sent = op.sent if op is not None else 0
            raise
        except OSError as exc:
            sent = getattr(exc, "sent", 0)
            if not sent:
                err = exceptions.SendfileNotAvailableError("splice() call failed")
                raise err from exc
            if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
            raise
        finally:
            if sent:
                os.lseek(fileno, offset + sent, os.SEEK_SET)
        return sent

    # ------------------------------------------------------------------ UNIX sockets

    async def create_unix_connection(self, protocol_factory: Any, path: Any = None, *,
                                     ssl: Any = None, sock: Any = None,
                                     server_hostname: Any = None,
                                     ssl_handshake_timeout: Any = None,
                                     ssl_shutdown_timeout: Any = None) -> Any:
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        kwargs = {"ssl_handshake_timeout": ssl_handshake_timeout}
        if sys.version_info >= (3, 11):
            kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        return await self._create_connection_transport(sock, protocol_factory, ssl,
                                                       server_hostname, **kwargs)

    async def create_unix_server(self, protocol_factory: Any, path: Any = None, *,
                                 sock: Any = None, backlog: int = 100, ssl: Any = None,
                                 ssl_handshake_timeout: Any = None,
                                 ssl_shutdown_timeout: Any = None,
                                 start_serving: bool = True) -> Any:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, "\x00"):  # not an abstract socket: remove a stale one
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)
        args: list[Any] = [self, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout]
        if sys.version_info >= (3, 11):
            args.append(ssl_shutdown_timeout)
        server = base_events.Server(*args)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)  # let the acceptor arm
        return server

    # ------------------------------------------------------------------ subprocesses

    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any,
                                         stdout: Any, stderr: Any, bufsize: int,
                                         extra: Any = None, **kwargs: Any) -> Any:
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(self, protocol, args, shell, stdin, stdout,
                                                      stderr, bufsize, waiter=waiter,
                                                      extra=extra, **kwargs)
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, pid: int, transp: Any) -> None:
        """Report the child's exit to ``transp``: a pidfd polled by the ring (no SIGCHLD handler,
        no watcher thread, no child watcher), else a thread blocked in waitpid()."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_child_thread, args=(pid, transp),
                             name=f"ioladder-waitpid-{pid}", daemon=True).start()
            return
        self._pidfds.add(pidfd)

        def exited() -> None:
            self._remove_reader(pidfd)
            self._pidfds.discard(pidfd)
            os.close(pidfd)
            self.call_soon(transp._process_exited, _reap(pid))  # pipes' last data first

        self._add_reader(pidfd, exited)

    def _wait_child_thread(self, pid: int, transp: Any) -> None:
        returncode = _reap(pid, block=True)
        try:
            self.call_soon_threadsafe(self.call_soon, transp._process_exited, returncode)
        except RuntimeError:
            pass  # the loop is closed


def _reap(pid: int, block: bool = False) -> int:
    try:
        _, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        logger.warning("child process pid %d exit status already read: will report "
                       "returncode 255", pid)
        return 255
    return unix_events.waitstatus_to_exitcode(status)
