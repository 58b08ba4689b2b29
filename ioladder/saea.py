"""``SocketAsyncEventArgs``: .NET's high-performance socket model, in Python naming, on io_uring.

Seed concept: the article's System.Net.Sockets section — ``SocketAsyncEventArgs`` (SAEA) is
.NET's wrapper over the completion port built for servers that must not allocate per operation:
op contexts are pooled and reused, one byte slab is carved into fixed receive segments, and an
``XxxAsync`` call tells you whether the op is still *pending* (its ``Completed`` event fires
later) or *finished synchronously* (no event: handle the result inline).

======================================  ===================================================
.NET                                    ``ioladder.saea``
======================================  ===================================================
``new Socket(family, type, proto)``     ``AsyncSocket(family, type, proto)`` or
                                        ``AsyncSocket(sock=existing_socket)``
``socket.AcceptAsync(e)`` etc.          ``sock.accept_async(e)`` ... ``-> bool``
``e.SetBuffer(buf, off, n)``            ``e.set_buffer(buf, off, n)`` / ``e.set_buffer(off, n)``
``e.Buffer / Offset / Count``           ``e.buffer / e.offset / e.count``
``e.BytesTransferred``                  ``e.bytes_transferred``
``e.SocketError``                       ``e.socket_error`` (:class:`SocketError`)
``e.LastOperation``                     ``e.last_operation`` (:class:`SocketAsyncOperation`)
``e.UserToken`` / ``e.AcceptSocket``    ``e.user_token`` / ``e.accept_socket``
``e.RemoteEndPoint``                    ``e.remote_endpoint``
``e.Completed += handler``              ``e.completed += handler`` (``handler(sender, e)``)
``OnCompleted(e)`` (virtual)            ``e.on_completed(e)`` (override in a subclass)
``InvalidOperationException``           :class:`InvalidOperationError`
``ObjectDisposedException``             :class:`ObjectDisposedError`
the ``SocketAsyncEventArgsPool`` and    :class:`ArgsPool` and :class:`BufferManager`
``BufferManager`` of the MS sample
the I/O completion port + its threads   :class:`CompletionEngine` (one ring, one thread)
======================================  ===================================================

When an op completes synchronously (returns False)
    Exactly as .NET does on Linux (``SocketAsyncContext``): ``accept_async``,
    ``receive_async`` and ``send_async`` first try the operation *non-blocking* in the calling
    thread. If that attempt finishes it — a connection was waiting in the backlog, bytes were
    already queued, the whole send fitted in the socket buffer — or fails outright (a reset),
    the call fills in ``e`` and returns **False**; no event is raised. Only when the attempt
    would block (``EAGAIN``) is the op handed to io_uring and the call returns **True**.
    A send the attempt completes only partly continues on the ring, and completes (pending,
    with the event) once *every* byte is sent, as a Windows overlapped ``WSASend`` does; short
    sends on the ring are resubmitted internally the same way.
    ``connect_async`` and ``disconnect_async`` always return True: a TCP connect needs the
    peer's SYN-ACK (Linux answers a non-blocking ``connect`` with ``EINPROGRESS`` even on
    loopback) and the disconnect is an io_uring ``SHUTDOWN`` op, so both always finish later.
    Argument errors raise at once (``ValueError``, :class:`InvalidOperationError`), as .NET
    throws ``ArgumentException``/``InvalidOperationException`` instead of returning.

One op per args
    Starting an op on args whose previous op has not completed raises
    :class:`InvalidOperationError` (.NET: "An asynchronous socket operation is already in
    progress using this SocketAsyncEventArgs instance"); so does ``set_buffer`` while pending.
    The args is free again *before* its ``completed`` handlers run, so a handler may start the
    next op on the same args (the usual receive -> send -> receive loop).

Threads
    Completions run on the :class:`CompletionEngine`'s thread (one per engine; the ring is
    created with ``SINGLE_ISSUER | DEFER_TASKRUN``, so only that thread touches it). An op
    started from another thread makes its non-blocking attempt there and, if it must pend, is
    handed to the engine thread (a queue plus ``Ring.wake()``); an op started from a handler is
    prepared directly and submitted, batched with every other op prepared in the same pass, by
    the engine's next ``io_uring_enter``. Sockets without an explicit engine share
    :meth:`CompletionEngine.default`.

Errors
    ``e.socket_error`` is a :class:`SocketError` (Winsock's numbering, as .NET uses); errno values
    map as .NET's Unix PAL maps them (``ECONNRESET`` -> ``ConnectionReset``, ``ECANCELED`` ->
    ``OperationAborted``, ``EPIPE`` -> ``Shutdown``, ...) and :meth:`SocketError.from_errno` is the
    table. A receive that returns 0 bytes with ``Success`` is the peer's orderly shutdown.
    Closing an :class:`AsyncSocket` cancels its pending ops, which complete with
    ``OperationAborted``; the descriptor is closed only after the last of them has completed, so
    the kernel never touches a reused descriptor number.

Example — the .NET echo server, in this API (``docs/saea.md`` has the walk-through)::

    engine = CompletionEngine()
    buffers = BufferManager(segment_count=1000, segment_size=4096)
    listener = AsyncSocket(engine=engine)
    listener.bind(("127.0.0.1", 9000)); listener.listen(100)

    def on_io(sender, e):
        while True:                      # loop instead of recursing on synchronous completions
            if e.last_operation is SocketAsyncOperation.Receive:
                if e.bytes_transferred == 0 or e.socket_error is not SocketError.Success:
                    return close(e)
                e.set_buffer(e.offset, e.bytes_transferred)
                if e.user_token.send_async(e):
                    return
            else:                        # Send done: receive again into the whole segment
                if e.socket_error is not SocketError.Success:
                    return close(e)
                e.set_buffer(e.offset, buffers.segment_size)
                if e.user_token.receive_async(e):
                    return

    pool = ArgsPool(1000, buffer_manager=buffers, completed=on_io)
    ...  # accept loop: see docs/saea.md and tests/saea/test_echo_server.py
"""

from __future__ import annotations

import atexit
import collections
import enum
import errno
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ioladder")

__all__ = [
    "ArgsPool",
    "ArgsPoolExhausted",
    "AsyncSocket",
    "BufferManager",
    "CompletedEvent",
    "CompletionEngine",
    "InvalidOperationError",
    "ObjectDisposedError",
    "SocketAsyncEventArgs",
    "SocketAsyncOperation",
    "SocketError",
]

_ECANCELED = errno.ECANCELED
_SHUT_RDWR = socket.SHUT_RDWR


# ------------------------------------------------------------------------------ exceptions


class InvalidOperationError(RuntimeError):
    """.NET's ``InvalidOperationException``: the call is not valid in the object's state."""


class ObjectDisposedError(InvalidOperationError):
    """.NET's ``ObjectDisposedException``: the socket (or engine) is closed."""


class ArgsPoolExhausted(InvalidOperationError):
    """:meth:`ArgsPool.acquire` found the pool empty (every args is in use)."""


# ----------------------------------------------------------------------------------- enums


class SocketAsyncOperation(enum.IntEnum):
    """What an args last did (``e.last_operation``); .NET's numbering.

    ``None_`` is .NET's ``None`` (a keyword in Python): the args has never been used.
    """

    None_ = 0
    Accept = 1
    Connect = 2
    Disconnect = 3
    Receive = 4
    ReceiveFrom = 5
    ReceiveMessageFrom = 6
    Send = 7
    SendPackets = 8
    SendTo = 9


class SocketError(enum.IntEnum):
    """.NET's ``System.Net.Sockets.SocketError`` (Winsock codes); see :meth:`from_errno`."""

    Success = 0
    SocketError = -1
    OperationAborted = 995
    IOPending = 997
    Interrupted = 10004
    AccessDenied = 10013
    Fault = 10014
    InvalidArgument = 10022
    TooManyOpenSockets = 10024
    WouldBlock = 10035
    InProgress = 10036
    AlreadyInProgress = 10037
    NotSocket = 10038
    DestinationAddressRequired = 10039
    MessageSize = 10040
    ProtocolType = 10041
    ProtocolOption = 10042
    ProtocolNotSupported = 10043
    SocketNotSupported = 10044
    OperationNotSupported = 10045
    ProtocolFamilyNotSupported = 10046
    AddressFamilyNotSupported = 10047
    AddressAlreadyInUse = 10048
    AddressNotAvailable = 10049
    NetworkDown = 10050
    NetworkUnreachable = 10051
    NetworkReset = 10052
    ConnectionAborted = 10053
    ConnectionReset = 10054
    NoBufferSpaceAvailable = 10055
    IsConnected = 10056
    NotConnected = 10057
    Shutdown = 10058
    TimedOut = 10060
    ConnectionRefused = 10061
    HostDown = 10064
    HostUnreachable = 10065
    ProcessLimit = 10067
    SystemNotReady = 10091
    VersionNotSupported = 10092
    NotInitialized = 10093
    Disconnecting = 10101
    TypeNotFound = 10109
    HostNotFound = 11001
    TryAgain = 11002
    NoRecovery = 11003
    NoData = 11004

    @classmethod
    def from_errno(cls, err: int) -> SocketError:
        """The ``SocketError`` .NET reports for Linux ``errno`` ``err`` (0 -> ``Success``;
        anything unmapped -> ``SocketError.SocketError``)."""
        return _ERRNO_MAP.get(err, cls.SocketError)


def _errno_map() -> dict[int, SocketError]:
    E = SocketError
    pairs = [
        ("EACCES", E.AccessDenied), ("EPERM", E.AccessDenied),
        ("EADDRINUSE", E.AddressAlreadyInUse), ("EADDRNOTAVAIL", E.AddressNotAvailable),
        ("EAFNOSUPPORT", E.AddressFamilyNotSupported), ("EAGAIN", E.WouldBlock),
        ("EALREADY", E.AlreadyInProgress), ("EBADF", E.OperationAborted),
        ("ECANCELED", E.OperationAborted), ("ECONNABORTED", E.ConnectionAborted),
        ("ECONNREFUSED", E.ConnectionRefused), ("ECONNRESET", E.ConnectionReset),
        ("EDESTADDRREQ", E.DestinationAddressRequired), ("EFAULT", E.Fault),
        ("EHOSTDOWN", E.HostDown), ("EHOSTUNREACH", E.HostUnreachable),
        ("EINPROGRESS", E.InProgress), ("EINTR", E.Interrupted), ("EINVAL", E.InvalidArgument),
        ("EISCONN", E.IsConnected), ("EMFILE", E.TooManyOpenSockets),
        ("ENFILE", E.TooManyOpenSockets), ("EMSGSIZE", E.MessageSize),
        ("ENETDOWN", E.NetworkDown), ("ENETRESET", E.NetworkReset),
        ("ENETUNREACH", E.NetworkUnreachable), ("ENOBUFS", E.NoBufferSpaceAvailable),
        ("ENOMEM", E.NoBufferSpaceAvailable), ("ENOPROTOOPT", E.ProtocolOption),
        ("ENOTCONN", E.NotConnected), ("ENOTSOCK", E.NotSocket),
        ("EOPNOTSUPP", E.OperationNotSupported), ("EPFNOSUPPORT", E.ProtocolFamilyNotSupported),
        ("EPIPE", E.Shutdown), ("EPROTONOSUPPORT", E.ProtocolNotSupported),
        ("EPROTOTYPE", E.ProtocolType), ("ESHUTDOWN", E.Shutdown),
        ("ESOCKTNOSUPPORT", E.SocketNotSupported), ("ETIMEDOUT", E.TimedOut),
        ("ENOENT", E.AddressNotAvailable), ("ENODEV", E.NetworkDown),
    ]
    table = {0: E.Success}
    for name, value in pairs:
        code = getattr(errno, name, None)
        if code is not None:
            table.setdefault(code, value)
    return table


_ERRNO_MAP = _errno_map()
_SUCCESS = SocketError.Success
_OP_ACCEPT = SocketAsyncOperation.Accept
_OP_CONNECT = SocketAsyncOperation.Connect
_OP_DISCONNECT = SocketAsyncOperation.Disconnect
_OP_RECEIVE = SocketAsyncOperation.Receive
_OP_SEND = SocketAsyncOperation.Send


# ---------------------------------------------------------------------------- the engine


class _Timer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run (thread-safe; a timer already running is not interrupted)."""
        self.cancelled = True


class CompletionEngine:
    """One io_uring ring and the one thread that waits on it and runs the completions.

    This is the completion port of the SAEA model: every op of every :class:`AsyncSocket` using
    the engine is an SQE on its ring, and the engine thread turns each CQE into the args'
    ``completed`` event. The loop is deliberately tiny (it is also the ``saea`` rung's loop):

    1. ``ring.dispatch(1, method="_complete")`` — one ``io_uring_enter`` that submits every SQE
       prepared since the last pass and sleeps until a completion (or a timer, a ``call_soon``,
       a ``wake``), then, from C, ``ctx._complete(res, flags)`` for each completion reaped, in
       completion order (no list, no tuples);
    2. due timers, then the calls queued by ``call_soon``.

    Any object with a ``_complete(res, flags)`` method can be an op's ctx, which is how the
    ``saea`` rung puts its own per-connection contexts on the same loop. An exception escaping
    a completion is logged (``dispatch``'s ``on_error``) and the batch carries on.

    ``CompletionEngine(entries=1024)`` starts the thread and creates the ring on it (raising
    here, with the kernel's reason, if io_uring is unusable). ``coalesce=seconds`` (default 0:
    off) trades latency for CPU under load: after a pass that ran completions, the next wait
    returns once ``coalesce_batch`` completions are queued or ``coalesce`` has passed. ``close()`` stops the thread:
    pending ops are cancelled by the ring's own close (their handlers are not run).
    """

    _default: CompletionEngine | None = None
    _default_lock = threading.Lock()

    def __init__(self, entries: int = 1024, *, name: str = "ioladder-saea",
                 cq_entries: int = 0, daemon: bool = True, coalesce: float = 0.0,
                 coalesce_batch: int = 16) -> None:
        from .kernel import uring  # the C extension; imported here so this module loads anyway

        self._uring = uring
        self._entries = entries
        self._cq_entries = cq_entries
        #: wake-up coalescing: after a pass that ran completions, the next wait returns when
        #: ``coalesce_batch`` completions are queued or ``coalesce`` seconds have passed
        #: (0.0: off, every completion wakes the thread at once). See ``_loop``.
        self.coalesce = coalesce
        self.coalesce_batch = coalesce_batch
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._woken = False
        self._running = True
        self._closed = False
        self._ring: Any = None
        self._tid: int | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        #: run on the engine thread after the loop ends, before the ring is closed
        self.on_stop: list[Callable[[], Any]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=daemon)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    # ----------------------------------------------------------------------- public API
    @property
    def sync_send(self) -> bool:
        """True while the completion batch being run has at most :attr:`sync_send_batch`
        completions. The ring computes it (``Ring.sync_send``), so a transport's send gate is
        the ring itself: ``transport._send_gate = engine.ring``."""
        return self._ring.sync_send

    @property
    def sync_send_batch(self) -> int:
        """The largest completion batch for which :attr:`sync_send` is true (0: never)."""
        return self._ring.sync_send_batch

    @sync_send_batch.setter
    def sync_send_batch(self, value: int) -> None:
        self._ring.sync_send_batch = value

    @classmethod
    def default(cls) -> CompletionEngine:
        """The process-wide engine used by sockets created without ``engine=`` (started on
        first use, closed at interpreter exit)."""
        with cls._default_lock:
            engine = cls._default
            if engine is None or engine._closed:
                engine = cls._default = cls(name="ioladder-saea-default")
                atexit.register(engine.close)
            return engine

    @property
    def ring(self) -> Any:
        """The :class:`ioladder.kernel.uring.Ring`; usable only on the engine thread."""
        return self._ring

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    def in_engine_thread(self) -> bool:
        return threading.get_ident() == self._tid

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the engine thread, after the current pass; thread-safe, FIFO."""
        if self._closed:
            raise ObjectDisposedError("the completion engine is closed")
        self._calls.append((fn, args))
        if not self._woken and threading.get_ident() != self._tid:
            self._woken = True
            self._ring.wake()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        """Run ``fn(*args)`` on the engine thread after ``delay`` seconds; returns a handle
        with ``cancel()``. Thread-safe."""
        timer = _Timer(time.monotonic() + max(0.0, delay), fn, args)
        if threading.get_ident() == self._tid:
            heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        else:
            self.call_soon(self._push_timer, timer)
        return timer

    def _push_timer(self, timer: _Timer) -> None:
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))

    def run_sync(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the engine thread and return its result (or raise its
        exception) to the caller; runs inline when called on the engine thread."""
        if threading.get_ident() == self._tid:
            return fn(*args)
        done = threading.Event()
        box: list[Any] = [None, None]

        def call() -> None:
            try:
                box[0] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box[1] = exc
            finally:
                done.set()
        self.call_soon(call)
        if not done.wait(timeout):
            raise TimeoutError(f"the engine thread did not run {fn!r} within {timeout} s")
        if box[1] is not None:
            raise box[1]
        return box[0]

    def stop(self) -> None:
        """Ask the loop to end after its current pass (thread-safe, returns at once)."""
        self._running = False
        if self._ring is not None:
            self._ring.wake()  # also from the engine thread: its dispatch may run on in C

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop, close the ring (cancelling pending ops) and join the thread."""
        if self._closed:
            return
        self.stop()
        if threading.get_ident() != self._tid:
            self._thread.join(timeout)
        self._closed = True

    def __enter__(self) -> CompletionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<CompletionEngine {self._thread.name} {state}>"

    # ------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            ring = self._uring.Ring(self._entries, cq_entries=self._cq_entries,
                                    single_issuer=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised by __init__
            self._error = exc
            self._ready.set()
            return
        self._ring = ring
        self._tid = threading.get_ident()
        self._ready.set()
        try:
            self._loop(ring)
        except BaseException:
            log.exception("%r crashed", self)
            raise
        finally:
            for fn in self.on_stop:
                try:
                    fn()
                except Exception:
                    log.exception("engine on_stop hook %r failed", fn)
            self._closed = True
            try:
                ring.close()
            finally:
                self._stopped.set()

    def _handler_failed(self, exc: Exception, ctx: Any) -> None:
        log.error("completion handler %r failed in %r", ctx, self, exc_info=exc)

    def _loop(self, ring: Any) -> None:
        dispatch = ring.dispatch
        calls = self._calls
        timers = self._timers
        popleft = calls.popleft
        monotonic = time.monotonic
        coalesce = self.coalesce
        many = self.coalesce_batch
        method = "_complete"
        failed = self._handler_failed
        until = (calls, timers)
        n = 0  # completions the last pass delivered
        while self._running:
            # One enter, then every completion's ctx._complete(res, flags), called from C.
            if calls:
                n = dispatch(0, None, method, failed)
            elif coalesce and n:
                # Busy: let completions accumulate (DEFER_TASKRUN wakes us only once `many` are
                # queued) for at most `coalesce` s; none falls back to waiting.
                delay = coalesce if not timers else min(
                    coalesce, max(0.0, timers[0][0] - monotonic()))
                n = dispatch(many, delay, method, failed)
            elif timers:
                n = dispatch(1, max(0.0, timers[0][0] - monotonic()), method, failed)
            else:
                # The steady state: pass after pass in C until a call or a timer is queued or
                # the ring is woken (stop() wakes it, even from this thread).
                n = dispatch(1, None, method, failed, until)
            if timers:
                now = monotonic()
                while timers and timers[0][0] <= now:
                    timer = heapq.heappop(timers)[2]
                    if not timer.cancelled:
                        try:
                            timer.fn(*timer.args)
                        except Exception:
                            log.exception("timer %r failed in %r", timer.fn, self)
            if calls:
                self._woken = False
                for _ in range(len(calls)):
                    fn, args = popleft()
                    try:
                        fn(*args)
                    except Exception:
                        log.exception("call %r failed in %r", fn, self)


# ------------------------------------------------------------------------------ the event


class CompletedEvent:
    """``e.completed``: .NET's ``Completed`` event. ``+=`` / ``-=`` handlers; each is called
    as ``handler(sender, e)`` (``sender``: the :class:`AsyncSocket` that started the op)."""

    __slots__ = ("_handlers",)

    def __init__(self, *handlers: Callable[[Any, Any], Any]) -> None:
        self._handlers: tuple[Callable[[Any, Any], Any], ...] = handlers

    def __iadd__(self, handler: Callable[[Any, Any], Any]) -> CompletedEvent:
        if not callable(handler):
            raise TypeError(f"a completed handler must be callable, not {handler!r}")
        self._handlers = (*self._handlers, handler)
        return self

    def __isub__(self, handler: Callable[[Any, Any], Any]) -> CompletedEvent:
        handlers = list(self._handlers)
        for i in range(len(handlers) - 1, -1, -1):  # .NET removes the last occurrence
            if handlers[i] == handler:
                del handlers[i]
                break
        self._handlers = tuple(handlers)
        return self

    def __call__(self, sender: Any, e: Any) -> None:
        for handler in self._handlers:
            handler(sender, e)

    def __len__(self) -> int:
        return len(self._handlers)

    def __bool__(self) -> bool:
        return bool(self._handlers)

    def __repr__(self) -> str:
        return f"<CompletedEvent {len(self._handlers)} handler(s)>"


# ---------------------------------------------------------------------- the args object


class SocketAsyncEventArgs:
    """One reusable op context (.NET's ``SocketAsyncEventArgs``).

    Holds the buffer segment an op reads into or sends from (``buffer[offset:offset+count]``),
    and after the op its results: ``bytes_transferred``, ``socket_error``, ``last_operation``,
    ``accept_socket`` (accept), ``remote_endpoint``. ``user_token`` is yours. Subclass and
    override :meth:`on_completed`, or add handlers with ``e.completed += handler``.
    """

    __slots__ = ("_buffer", "_offset", "_count", "bytes_transferred", "socket_error",
                 "last_operation", "user_token", "accept_socket", "remote_endpoint",
                 "disconnect_reuse_socket", "_completed", "_pending", "_sock", "_sent",
                 "_segment_owner", "_pool", "_in_pool", "__weakref__")

    def __init__(self, completed: Callable[[Any, Any], Any] | None = None) -> None:
        self._buffer: Any = None
        self._offset = 0
        self._count = 0
        self.bytes_transferred = 0
        self.socket_error: SocketError = _SUCCESS
        self.last_operation: SocketAsyncOperation = SocketAsyncOperation.None_
        self.user_token: Any = None
        self.accept_socket: AsyncSocket | None = None
        self.remote_endpoint: Any = None
        #: .NET's ``DisconnectReuseSocket``; True is refused (a Linux TCP socket cannot be
        #: reconnected after a disconnect, as .NET on Linux also refuses).
        self.disconnect_reuse_socket = False
        self._completed = CompletedEvent() if completed is None else CompletedEvent(completed)
        self._pending = False
        self._sock: AsyncSocket | None = None
        self._sent = 0
        self._segment_owner: BufferManager | None = None
        self._pool: ArgsPool | None = None
        self._in_pool = False

    # --------------------------------------------------------------------- the buffer
    @property
    def buffer(self) -> Any:
        return self._buffer

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def count(self) -> int:
        return self._count

    def set_buffer(self, *args: Any) -> None:
        """``set_buffer(buffer)``, ``set_buffer(buffer, offset, count)`` or
        ``set_buffer(offset, count)`` (same buffer, new window); ``set_buffer(None)`` clears.

        ``buffer`` is any writable bytes-like object for receives (``bytearray``, a
        ``memoryview`` of one, a :class:`BufferManager` slab); sends accept ``bytes`` too.
        """
        if self._pending:
            raise InvalidOperationError(
                "an asynchronous socket operation is already in progress using this "
                "SocketAsyncEventArgs instance")
        if len(args) == 2 and all(type(a) is int for a in args):
            offset, count = args
            if self._buffer is None:
                raise ValueError("set_buffer(offset, count) needs a buffer set first")
            self._check_window(len(memoryview(self._buffer)), offset, count)
            self._offset, self._count = offset, count
            return
        if len(args) not in (1, 3):
            raise TypeError("set_buffer(buffer), set_buffer(buffer, offset, count) or "
                            "set_buffer(offset, count)")
        buf = args[0]
        if buf is None:
            self._buffer, self._offset, self._count = None, 0, 0
            return
        size = memoryview(buf).nbytes  # TypeError for a non-buffer
        offset, count = (0, size) if len(args) == 1 else (args[1], args[2])
        self._check_window(size, offset, count)
        self._buffer, self._offset, self._count = buf, offset, count

    @staticmethod
    def _check_window(size: int, offset: int, count: int) -> None:
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} outside the buffer (0..{size})")
        if not 0 <= count <= size - offset:
            raise ValueError(f"count {count} does not fit the buffer after offset {offset} "
                             f"(at most {size - offset})")

    def received(self) -> bytes:
        """The bytes the last receive put in the buffer (a copy)."""
        start = self._offset
        return bytes(memoryview(self._buffer)[start:start + self.bytes_transferred])

    # ---------------------------------------------------------------------- the event
    @property
    def completed(self) -> CompletedEvent:
        return self._completed

    @completed.setter
    def completed(self, value: CompletedEvent | Callable[[Any, Any], Any] | None) -> None:
        # ``e.completed += h`` assigns the same event back; a plain callable replaces every
        # handler with that one; None removes them all.
        if isinstance(value, CompletedEvent):
            self._completed = value
        elif value is None:
            self._completed = CompletedEvent()
        else:
            self._completed = CompletedEvent(value)

    def on_completed(self, e: SocketAsyncEventArgs) -> None:
        """Raise the ``completed`` event (.NET's ``OnCompleted``); override to handle
        completions in a subclass without an event."""
        self._completed(self._sock, e)

    @property
    def pending(self) -> bool:
        """True while an op started with this args has not completed."""
        return self._pending

    def __repr__(self) -> str:
        return (f"<SocketAsyncEventArgs {self.last_operation.name} "
                f"{'pending' if self._pending else self.socket_error.name} "
                f"bytes={self.bytes_transferred}>")

    # ---------------------------------------------------- completion (engine thread)
    def _complete(self, res: int, flags: int) -> None:
        sock = self._sock
        assert sock is not None
        op = self.last_operation
        if op is _OP_SEND:
            if res > 0:
                self._sent += res
                if self._sent < self._count and not sock._closing:
                    # A short send: resubmit the rest; the op completes when all is sent.
                    start = self._offset + self._sent
                    sock._engine._ring.prep_send(sock._fd, self._buffer, self,
                                                 start=start, nbytes=self._count - self._sent)
                    return
                self._finish(sock, self._sent, _SUCCESS)
            elif res == 0:
                self._finish(sock, self._sent, SocketError.Shutdown)
            else:
                self._finish(sock, self._sent, _ERRNO_MAP.get(-res, SocketError.SocketError))
            return
        if res < 0:
            self._finish(sock, 0, _ERRNO_MAP.get(-res, SocketError.SocketError))
            return
        if op is _OP_RECEIVE:
            self._finish(sock, res, _SUCCESS)
        elif op is _OP_ACCEPT:
            try:
                self.accept_socket = sock._accepted(res)
                self.remote_endpoint = self.accept_socket.remote_endpoint
            except OSError as exc:
                self.accept_socket = None
                self._finish(sock, 0, SocketError.from_errno(exc.errno or 0))
                return
            self._finish(sock, 0, _SUCCESS)
        elif op is _OP_CONNECT:
            sock._connected = True
            self._finish(sock, 0, _SUCCESS)
        else:  # disconnect
            sock._connected = False
            self._finish(sock, 0, _SUCCESS)

    def _finish(self, sock: AsyncSocket, nbytes: int, error: SocketError) -> None:
        self.bytes_transferred = nbytes
        self.socket_error = error
        self._pending = False
        sock._op_done()
        self.on_completed(self)


# ------------------------------------------------------------------------- the socket


class AsyncSocket:
    """A socket whose ``XxxAsync`` ops run through a :class:`CompletionEngine`.

    ``AsyncSocket()`` makes a TCP/IPv4 socket; ``AsyncSocket(family, type, proto)`` another
    kind; ``AsyncSocket(sock=s)`` adopts an existing ``socket.socket`` (made non-blocking).
    The ``XxxAsync`` methods return True (pending: ``e.completed`` fires later, on the engine
    thread) or False (done synchronously: the results are in ``e`` now, no event).
    """

    def __init__(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                 proto: int = 0, *, sock: socket.socket | None = None,
                 engine: CompletionEngine | None = None) -> None:
        self._engine = engine if engine is not None else CompletionEngine.default()
        if sock is None:
            sock = socket.socket(family, type, proto)
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._closing = False
        self._ops = 0                  # ops handed to the ring and not yet completed
        self._connected = False
        self._lock = threading.Lock()  # _ops / _closing across threads
        try:
            sock.getpeername()
            self._connected = True
        except OSError:
            pass

    # ------------------------------------------------------------------ plain socket API
    @property
    def socket(self) -> socket.socket:
        """The underlying ``socket.socket`` (non-blocking)."""
        return self._sock

    @property
    def engine(self) -> CompletionEngine:
        return self._engine

    @property
    def connected(self) -> bool:
        return self._connected and not self._closing

    @property
    def local_endpoint(self) -> Any:
        return self._sock.getsockname()

    @property
    def remote_endpoint(self) -> Any:
        try:
            return self._sock.getpeername()
        except OSError:
            return None

    def fileno(self) -> int:
        return self._fd if not self._closing else -1

    def bind(self, address: Any) -> None:
        self._sock.bind(address)

    def listen(self, backlog: int = 128) -> None:
        self._sock.listen(backlog)

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self._sock.setsockopt(level, option, value)

    def shutdown(self, how: int = _SHUT_RDWR) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        """Close the socket; pending ops are cancelled and complete with
        ``OperationAborted``; the descriptor is closed after the last one. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            ops = self._ops
        self._connected = False
        if not ops:
            self._sock.close()
        else:
            self._engine.call_soon(self._cancel_all)

    def _cancel_all(self) -> None:
        if self._ops and not self._engine.closed:
            self._engine._ring.prep_cancel_fd(self._fd, _IGNORE, True)
        elif not self._ops:
            self._sock.close()

    def __enter__(self) -> AsyncSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AsyncSocket fd={self._fd}{' closed' if self._closing else ''}>"

    # ---------------------------------------------------------------- the async ops
    def _begin(self, e: SocketAsyncEventArgs, op: SocketAsyncOperation) -> None:
        if not isinstance(e, SocketAsyncEventArgs):
            raise TypeError(f"expected a SocketAsyncEventArgs, not {type(e).__name__}")
        if self._closing:
            raise ObjectDisposedError(f"{self!r} is closed")
        if e._pending:
            raise InvalidOperationError(
                "an asynchronous socket operation is already in progress using this "
                "SocketAsyncEventArgs instance")
        e._pending = True
        e._sock = self
        e.last_operation = op
        e.bytes_transferred = 0
        e.socket_error = _SUCCESS

    def _sync_done(self, e: SocketAsyncEventArgs, nbytes: int, error: SocketError) -> bool:
        e.bytes_transferred = nbytes
        e.socket_error = error
        e._pending = False
        return False

    def _pend(self, prep: Callable[..., Any], e: SocketAsyncEventArgs) -> bool:
        """Hand ``prep(e)`` to the engine thread (now, if this is it); the op is pending."""
        with self._lock:
            if self._closing:
                e._pending = False
                raise ObjectDisposedError(f"{self!r} is closed")
            self._ops += 1
        engine = self._engine
        if threading.get_ident() == engine._tid:
            try:
                prep(e)
            except BaseException:
                with self._lock:
                    self._ops -= 1
                e._pending = False
                raise
        else:
            engine.call_soon(self._prep_guarded, prep, e)
        return True

    def _prep_guarded(self, prep: Callable[..., Any], e: SocketAsyncEventArgs) -> None:
        if self._closing:  # closed before the engine got to it: abort the op
            e._finish(self, 0, SocketError.OperationAborted)
            return
        try:
            prep(e)
        except Exception as exc:
            log.exception("preparing %s on %r failed", e.last_operation.name, self)
            e._finish(self, 0, SocketError.from_errno(getattr(exc, "errno", 0) or 0)
                      if isinstance(exc, OSError) else SocketError.SocketError)

    def _op_done(self) -> None:
        with self._lock:
            self._ops -= 1
            last = self._closing and not self._ops
        if last:
            self._sock.close()

    def accept_async(self, e: SocketAsyncEventArgs) -> bool:
        """AcceptEx: a connection from the backlog into ``e.accept_socket`` (an AsyncSocket on
        the same engine). ``e.accept_socket`` must be None (Linux cannot accept into an
        existing socket; .NET servers set it to None before reusing the args anyway)."""
        if e.accept_socket is not None:
            raise ValueError("e.accept_socket must be None: set it to None before reusing "
                             "the args (Linux cannot accept into an existing socket)")
        self._begin(e, _OP_ACCEPT)
        try:
            conn, addr = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return self._pend(self._prep_accept, e)
        except OSError as exc:
            return self._sync_done(e, 0, SocketError.from_errno(exc.errno or 0))
        e.accept_socket = AsyncSocket(sock=conn, engine=self._engine)
        e.remote_endpoint = addr
        return self._sync_done(e, 0, _SUCCESS)

    def _prep_accept(self, e: SocketAsyncEventArgs) -> None:
        self._engine._ring.prep_accept(self._fd, e)

    def _accepted(self, fd: int) -> AsyncSocket:
        lst = self._sock
        return AsyncSocket(sock=socket.socket(lst.family, lst.type, lst.proto, fileno=fd),
                           engine=self._engine)

    def connect_async(self, e: SocketAsyncEventArgs) -> bool:
        """ConnectEx to ``e.remote_endpoint``, a ``(host, port)``; always pending. A host name
        is resolved first, in the calling thread (the ring's connect takes addresses only)."""
        if e.remote_endpoint is None:
            raise ValueError("set e.remote_endpoint to the (host, port) to connect to")
        endpoint = tuple(e.remote_endpoint)
        try:
            socket.inet_pton(self._sock.family, endpoint[0])
        except (OSError, TypeError, IndexError):
            infos = socket.getaddrinfo(endpoint[0], endpoint[1], self._sock.family,
                                       socket.SOCK_STREAM)
            endpoint = infos[0][4]
        self._begin(e, _OP_CONNECT)
        e.remote_endpoint = endpoint
        return self._pend(self._prep_connect, e)

    def _prep_connect(self, e: SocketAsyncEventArgs) -> None:
        self._engine._ring.prep_connect(self._fd, tuple(e.remote_endpoint), e)

    def receive_async(self, e: SocketAsyncEventArgs) -> bool:
        """WSARecv into ``e.buffer[e.offset:e.offset+e.count]``; 0 bytes with ``Success`` is the
        peer's orderly shutdown."""
        if e._buffer is None:
            raise ValueError("receive_async needs a buffer: call e.set_buffer(...) first")
        self._begin(e, _OP_RECEIVE)
        try:
            view = memoryview(e._buffer)[e._offset:e._offset + e._count]
            n = self._sock.recv_into(view, e._count, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return self._pend(self._prep_receive, e)
        except OSError as exc:
            return self._sync_done(e, 0, SocketError.from_errno(exc.errno or 0))
        return self._sync_done(e, n, _SUCCESS)

    def _prep_receive(self, e: SocketAsyncEventArgs) -> None:
        self._engine._ring.prep_recv(self._fd, e._buffer, e, start=e._offset, nbytes=e._count)

    def send_async(self, e: SocketAsyncEventArgs) -> bool:
        """WSASend of ``e.buffer[e.offset:e.offset+e.count]``; completes when every byte is
        sent (a partial non-blocking send continues on the ring)."""
        if e._buffer is None:
            raise ValueError("send_async needs a buffer: call e.set_buffer(...) first")
        self._begin(e, _OP_SEND)
        e._sent = 0
        if e._count:
            try:
                view = memoryview(e._buffer)[e._offset:e._offset + e._count]
                e._sent = self._sock.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return self._sync_done(e, 0, SocketError.from_errno(exc.errno or 0))
        if e._sent == e._count:
            return self._sync_done(e, e._sent, _SUCCESS)
        return self._pend(self._prep_send, e)

    def _prep_send(self, e: SocketAsyncEventArgs) -> None:
        self._engine._ring.prep_send(self._fd, e._buffer, e, start=e._offset + e._sent,
                                     nbytes=e._count - e._sent)

    def disconnect_async(self, e: SocketAsyncEventArgs) -> bool:
        """DisconnectEx: shut both directions down (the peer sees our FIN; a pending receive on
        this socket completes with 0 bytes). Always pending. The socket stays open until
        ``close()``; ``e.disconnect_reuse_socket = True`` is refused (not on Linux)."""
        if e.disconnect_reuse_socket:
            raise NotImplementedError("disconnect_reuse_socket=True: a Linux TCP socket cannot "
                                      "be reused after a disconnect (.NET on Linux refuses too)")
        self._begin(e, _OP_DISCONNECT)
        return self._pend(self._prep_disconnect, e)

    def _prep_disconnect(self, e: SocketAsyncEventArgs) -> None:
        self._engine._ring.prep_shutdown(self._fd, socket.SHUT_RDWR, e)


class _Ignore:
    """The ctx of ops whose completion needs no handling (cancels)."""

    __slots__ = ()

    def _complete(self, res: int, flags: int) -> None:
        pass


_IGNORE = _Ignore()


# ------------------------------------------------------------------------------- pools


class ArgsPool:
    """A bounded pool of pre-allocated :class:`SocketAsyncEventArgs` (the MS sample's
    ``SocketAsyncEventArgsPool``).

    All ``capacity`` args are created up front (``factory()``, default
    :class:`SocketAsyncEventArgs`); with ``buffer_manager`` each gets its own segment at once
    (so ``capacity`` must not exceed the manager's segments), with ``completed`` each gets that
    handler. Exhaustion: :meth:`acquire` raises :class:`ArgsPoolExhausted`,
    :meth:`try_acquire` returns None — a server maps that to "refuse the connection", never
    to "allocate more". :meth:`release` puts an args back (it must not be pending, must come
    from this pool, and not be in the pool already); it clears the per-op state
    (``user_token``, ``accept_socket``, ``remote_endpoint``, results) but keeps the buffer
    segment and the handlers. Thread-safe.
    """

    def __init__(self, capacity: int, factory: Callable[[], SocketAsyncEventArgs] | None = None,
                 *, buffer_manager: BufferManager | None = None,
                 completed: Callable[[Any, Any], Any] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        make = factory if factory is not None else SocketAsyncEventArgs
        self._lock = threading.Lock()
        self._free: list[SocketAsyncEventArgs] = []
        self.capacity = capacity
        for _ in range(capacity):
            e = make()
            if buffer_manager is not None and not buffer_manager.set_buffer(e):
                raise ValueError(f"the buffer manager has {buffer_manager.segment_count} "
                                 f"segments, fewer than the pool's capacity {capacity}")
            if completed is not None:
                e.completed += completed
            e._pool = self
            e._in_pool = True
            self._free.append(e)

    def __len__(self) -> int:
        """Args available now."""
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def try_acquire(self) -> SocketAsyncEventArgs | None:
        with self._lock:
            if not self._free:
                return None
            e = self._free.pop()
            e._in_pool = False
            return e

    def acquire(self) -> SocketAsyncEventArgs:
        e = self.try_acquire()
        if e is None:
            raise ArgsPoolExhausted(f"all {self.capacity} SocketAsyncEventArgs of the pool "
                                    "are in use")
        return e

    def release(self, e: SocketAsyncEventArgs) -> None:
        if e._pool is not self:
            raise ValueError("this SocketAsyncEventArgs does not belong to this pool")
        if e._pending:
            raise InvalidOperationError("cannot return a SocketAsyncEventArgs with an op "
                                        "pending to the pool")
        with self._lock:
            if e._in_pool:
                raise InvalidOperationError("this SocketAsyncEventArgs is already in the pool")
            if e._segment_owner is not None:  # the whole segment again, for the next user
                e._count = e._segment_owner.segment_size
            e.user_token = None
            e.accept_socket = None
            e.remote_endpoint = None
            e.bytes_transferred = 0
            e.socket_error = _SUCCESS
            e._sock = None
            e._in_pool = True
            self._free.append(e)


class BufferManager:
    """One ``bytearray`` slab carved into ``segment_count`` segments of ``segment_size`` bytes
    (the MS sample's ``BufferManager``): a server's whole receive memory in one allocation,
    allocated once, never fragmented.

    :meth:`set_buffer` points an args at a free segment (``e.buffer`` is the slab,
    ``e.offset`` the segment's start, ``e.count`` its size) and returns False when none is left
    (as .NET's ``SetBuffer`` does); :meth:`free_buffer` gives the segment back and clears the
    args' buffer. Ops receive straight into the slab (the ring is handed the slab with a start
    and a length: no slicing, no copy). Thread-safe.
    """

    def __init__(self, segment_count: int, segment_size: int) -> None:
        if segment_count < 1 or segment_size < 1:
            raise ValueError("segment_count and segment_size must be >= 1")
        self.segment_count = segment_count
        self.segment_size = segment_size
        self.buffer = bytearray(segment_count * segment_size)
        self._free = list(range((segment_count - 1) * segment_size, -1, -segment_size))
        self._used = bytearray(segment_count)
        self._lock = threading.Lock()

    @property
    def free_segments(self) -> int:
        return len(self._free)

    def set_buffer(self, e: SocketAsyncEventArgs) -> bool:
        with self._lock:
            if not self._free:
                return False
            offset = self._free.pop()
            self._used[offset // self.segment_size] = 1
        e.set_buffer(self.buffer, offset, self.segment_size)
        e._segment_owner = self
        return True

    def free_buffer(self, e: SocketAsyncEventArgs) -> None:
        if e._segment_owner is not self or e.buffer is not self.buffer:
            raise ValueError("this args does not hold a segment of this buffer manager")
        if e._pending:
            raise InvalidOperationError("cannot free the buffer of a pending op")
        size = self.segment_size
        index = e.offset // size
        with self._lock:
            if not self._used[index]:
                raise InvalidOperationError(f"segment {index} is already free")
            self._used[index] = 0
            self._free.append(index * size)
        e.set_buffer(None)
        e._segment_owner = None

    def __repr__(self) -> str:
        return (f"<BufferManager {self.segment_count} x {self.segment_size} B, "
                f"{len(self._free)} free>")


def available() -> str | None:
    """None if the API can run here, else why not (io_uring unavailable, extension missing)."""
    try:
        from .kernel import uring
    except ImportError as exc:
        return f"the io_uring extension is not built: {exc}"
    return uring.availability()

