"""The one ``asyncio.Transport`` every rung shares.

A rung is only a *driver*: it decides when the kernel is asked to read, write, accept and close,
and reports what happened. Everything the application can observe — callback order, write
buffering, flow control, pause/resume, half-close, close/abort — is decided here, once, so all
rungs behave identically to an ``asyncio.Protocol`` and are compared on identical work.

Invariants (the contract the conformance suite pins):

Rule 1. Every protocol callback of a connection runs in that connection's *context*: the rung's
        loop thread, or a per-connection strand on rungs that run app code on several threads.
        Two callbacks of one connection never overlap. Public methods called from outside the
        context (another thread) are handed to the context with ``driver.dispatch``.
Rule 2. Bytes passed to ``write()`` leave in order; ``close()`` stops reading, flushes every
        buffered byte, shuts the write side down, then closes. Only ``abort()`` (or a fatal
        error) drops data, and then the peer sees a reset.
Rule 3. ``connection_made`` comes first, ``data_received``/``buffer_updated`` then at most one
        ``eof_received``, and ``connection_lost`` exactly once and last — only after the driver
        has released the socket (completion rungs must first see their cancelled ops finish).
Rule 4. ``pause_writing`` is called when the buffer rises above the high-water mark and
        ``resume_writing`` when it falls to the low-water mark (asyncio's defaults: 64 KiB/16 KiB).

The driver interface (what a rung implements; see ``ioladder.rungs.base.Rung``):
``dispatch(conn, fn, *args)``, ``in_context(conn)``, ``start_send(conn)``,
``set_reading(conn, on)``, ``shutdown_write(conn)``, ``release(conn, abort)``. The driver reports
back through ``_on_data``, ``_on_eof``, ``_on_sent``, ``_on_error`` and ``_on_released``.

Optional (TransmitFile): a driver whose class sets ``supports_sendfile = True`` accepts
``sendfile_nowait(file, offset, count)``: the file region is queued in the write buffer as a
:class:`FileSpan`, in order with the bytes around it, and ``_next_chunk()`` may then return that
span; the driver moves its bytes without copying them through Python and reports them with
``_on_sent(n)`` like any other chunk. On drivers without it the method returns False and the
caller writes the file itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from asyncio import trsock
from typing import TYPE_CHECKING, Any

from ._transport import TransportBase, _setup
from .rungs.base import unsent_bytes

if TYPE_CHECKING:
    from .rungs.base import Rung
    from .server import ServerCore

log = logging.getLogger("ioladder")

_monotonic = time.monotonic
#: asyncio's default write-buffer limits (``FlowControlMixin``).
DEFAULT_HIGH_WATER = 64 * 1024
DEFAULT_LOW_WATER = DEFAULT_HIGH_WATER // 4

#: One tuple per distinct local address: every connection accepted on a listener has the same
#: sockname, so they share it instead of holding ~140 B each (idle connections are counted
#: by the thousand). Bounded: cleared if a server ever sees this many local addresses.
_SOCKNAMES: dict[Any, Any] = {}
_SOCKNAMES_MAX = 4096


def _shared_sockname(addr: Any) -> Any:
    if len(_SOCKNAMES) >= _SOCKNAMES_MAX:
        _SOCKNAMES.clear()
    return _SOCKNAMES.setdefault(addr, addr)


def _interned_peer(addr: Any) -> Any:
    """The peer's address with its host string interned: connections from one host share it."""
    if type(addr) is tuple and addr and type(addr[0]) is str:
        return (sys.intern(addr[0]), *addr[1:])
    return addr


class FileSpan:
    """``count`` bytes of ``file`` from ``offset``: a write-buffer item queued by
    ``Transport.sendfile_nowait``. The transport owns ``file`` and closes it once the span is
    sent or the buffer is dropped."""

    __slots__ = ("file", "fd", "offset", "count")

    def __init__(self, file: Any, fd: int, offset: int, count: int) -> None:
        self.file = file
        self.fd = fd
        self.offset = offset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # a broken file object must not break the connection's teardown
            log.exception("closing the file of %r failed", self)

    def __repr__(self) -> str:
        return f"<FileSpan fd={self.fd} offset={self.offset} count={self.count}>"


class Transport(TransportBase):
    """``asyncio.Transport`` over a connected TCP socket, driven by a rung.

    Thread-safe in the sense of Rule 1: any public method may be called from any thread; calls
    from outside the connection's context are queued to it and take effect there, in order.

    Kept small on purpose (``__slots__``, a list for the write buffer, the extra-info dict and
    the held-data list built only when used): one exists per connection, and an idle
    connection's server memory is mostly this object (the ``saea`` target is <= 1 KiB each).
    """

    # The hot state (_protocol, _driver, _buffer, _buffer_size, _high, _low, last_activity,
    # _fd, _ctx_tid, _send_gate and the _sending/_closing/... flags) lives in the C base's
    # struct; these are the rest.
    __slots__ = (
        "_sock", "_protocol_factory", "_core", "_sockname", "_peername", "_held",
        "_eof_held", "_lost", "_exc", "_writes_after_loss", "rung_data", "_unacked_mark",
    )

    def __init__(self, sock: socket.socket, protocol_factory: Any, driver: Rung,
                 core: ServerCore | None = None) -> None:
        self._extra = None  # built by get_extra_info() on first use
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol_factory = protocol_factory
        self._protocol: asyncio.BaseProtocol | None = None
        self._buffered = False
        self._driver = driver
        self._core = core
        # Addresses are read now: after a reset getpeername() fails, and asyncio reports the
        # address the connection had.
        try:
            self._sockname = _shared_sockname(sock.getsockname())
        except OSError:
            self._sockname = None
        try:
            self._peername = _interned_peer(sock.getpeername())
        except OSError:
            self._peername = None
        self._buffer: list[bytes | memoryview | FileSpan] = []
        self._buffer_size = 0
        self._sending = False          # the driver owns a flush in progress
        self._closing = False          # close() or abort() called, or a fatal error
        self._eof_requested = False    # write_eof() called
        self._shut_wr = False          # shutdown(SHUT_WR) handed to the driver
        self._paused = False           # pause_reading() in force
        self._held: list[bytes] | None = None  # data that arrived while paused
        self._eof_held = False         # the peer's EOF arrived while paused
        self._eof = False              # peer's EOF seen
        self._released = False         # driver.release() called
        self._lost = False             # connection_lost delivered
        self._exc: BaseException | None = None
        self._writes_after_loss = 0
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_LOW_WATER
        self._writing_paused = False
        #: the thread that is this connection's context, when it is one fixed thread (the
        #: single-threaded rungs set it): write() then checks it without asking the driver.
        self._ctx_tid = 0
        #: the driver's send gate (see ioladder/_transport.c): None, or an object whose
        #: ``sync_send`` says whether write() may try a synchronous send right now.
        self._send_gate = None
        #: the op context a gate with a C ``start_send`` starts a flush's send with (the saea
        #: rung's ``SendContext``), or None: the driver's ``start_send`` does it.
        self._send_ctx = None
        #: monotonic time of the last byte moved either way, kept only while ``_clocked``
        #: (the server has an idle timeout, whose reaper reads it): otherwise the per-message
        #: path makes no clock call and this stays the connection's start time.
        self.last_activity = _monotonic()
        self._clocked = core is not None and core.idle_timeout is not None
        #: per-connection state owned by the rung's driver.
        self.rung_data: Any = None
        #: (bytes in the kernel the peer has not acknowledged, when last looked at): how the
        #: idle check and the lingering close (``rungs.base.linger_expired``) see a peer
        #: still reading what the kernel holds while the transport itself is quiet.
        self._unacked_mark: tuple[int, float] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<ioladder.Transport fd={self._fd} {state} rung={self._driver.name}>"

    # ---------------------------------------------------------------- lifecycle (driver side)

    def _start(self) -> None:
        """Create the protocol and call ``connection_made``; runs in the connection's context."""
        try:
            protocol = self._protocol_factory()
            self.set_protocol(protocol)
            protocol.connection_made(self)
        except BaseException as exc:
            self._fatal_error(exc, "protocol factory or connection_made() failed")
            if not isinstance(exc, Exception):
                raise
            return
        if not self._closing and not self._paused:
            self._driver.set_reading(self, True)

    # _on_data(data): in C (``TransportBase``): the driver received ``data`` (never empty).

    def _hold(self, data: bytes | memoryview) -> None:
        """Data that arrived while reading is paused: a completion rung may have had a receive
        in flight when reading was paused; hold its bytes until resume_reading() rather than
        break the pause contract."""
        if self._held is None:
            self._held = []
        self._held.append(bytes(data))

    def _feed_buffered(self, data: bytes | memoryview) -> None:
        # asyncio's rule for BufferedProtocol: fill get_buffer() repeatedly until data is used up.
        view = memoryview(data)
        protocol = self._protocol
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))  # type: ignore[union-attr]
            n = min(len(buf), len(view))
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)  # type: ignore[union-attr]
            view = view[n:]

    def _on_eof(self) -> None:
        """The peer shut its write side down (recv returned 0)."""
        if self._closing or self._eof:
            return
        if self._paused:
            # A receive in flight when reading was paused (a blocking recv, a completion op)
            # may end in EOF: hold it like data. eof_received() comes at resume_reading(),
            # after the held bytes (_on_data drops anything that arrives after the EOF).
            self._eof_held = True
            return
        self._eof = True
        self._driver.set_reading(self, False)
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[union-attr]
        except BaseException as exc:
            self._fatal_error(exc, "protocol.eof_received() call failed")
            if not isinstance(exc, Exception):
                raise
            return
        if not keep_open:
            self.close()

    def _on_error(self, exc: BaseException) -> None:
        """A kernel operation failed fatally (reset, broken pipe, ...)."""
        self._fatal_error(exc, "fatal error on transport")

    # _next_chunk() and _on_sent(n): in C (``TransportBase``). _next_chunk returns what the
    # driver should send next (small chunks coalesced); _on_sent(n) records that the driver
    # sent the first n bytes of it and returns True if more remains. When it returns False the
    # flush is over (and a close() waiting for it released the connection, or a write_eof()
    # shut the write side down): the driver must not send again until the next
    # start_send, which that call may already have triggered re-entrantly.

    def _on_released(self) -> None:
        """The driver closed the socket and no kernel op refers to it any more."""
        if self._lost:
            return
        self._lost = True
        # Also when the driver ended without release() (a dead loop): later writes must hit
        # _write_after_loss, never a synchronous send on a closed (maybe reused) descriptor.
        self._released = True
        self._send_gate = None
        self._send_ctx = None
        self._ctx_tid = 0
        self._drop_buffer()
        try:
            if self._protocol is not None:
                self._protocol.connection_lost(self._exc)
        except Exception:
            log.exception("protocol.connection_lost() call failed on %r", self)
        finally:
            self._protocol = None
            self._exc = None
            if self._core is not None:
                self._core.forget(self)

    # ------------------------------------------------------------------ internal transitions

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            log.debug("%s: %r: %s", message, self, exc)
        else:
            log.error("%s: %r", message, self, exc_info=exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._released:
            return
        self._drop_buffer()
        if not self._closing:
            self._closing = True
            self._driver.set_reading(self, False)
        self._exc = exc
        self._release(abort=True)

    def _drop_buffer(self) -> None:
        buf = self._buffer
        for item in buf:
            if type(item) is FileSpan:
                item.close()
        buf.clear()
        self._buffer_size = 0

    def _release(self, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        self._unacked_mark = None  # the lingering close keeps its own count from here
        self._driver.release(self, abort)

    def _in_context(self) -> bool:
        return self._driver.in_context(self)

    # --------------------------------------------------------------- asyncio.Transport API

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._extra is None:
            self._extra = {"socket": trsock.TransportSocket(self._sock),
                           "sockname": self._sockname, "peername": self._peername}
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if not self._in_context():
            self._driver.dispatch(self, self.pause_reading)
            return
        if self._closing or self._paused:
            return
        self._paused = True
        self._driver.set_reading(self, False)

    def resume_reading(self) -> None:
        if not self._in_context():
            self._driver.dispatch(self, self.resume_reading)
            return
        if self._closing or not self._paused:
            return
        self._paused = False
        while self._held and not self._paused and not self._closing:
            self._on_data(self._held.pop(0))
        if self._paused or self._closing:
            return
        if self._eof_held:
            self._eof_held = False
            self._on_eof()
        elif not self._eof:
            self._driver.set_reading(self, True)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 4 * low if low is not None else DEFAULT_HIGH_WATER
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        # The limits are C integers in the transport's core: convert both first (asyncio
        # accepts any number; inf means "never"), so a bad value changes neither.
        high, low = (min(int(v), sys.maxsize) if v < float("inf") else sys.maxsize
                     for v in (high, low))
        self._high, self._low = high, low
        if self._in_context():
            self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    # write(data) and _write(data) (write() in the connection's context): in C
    # (``TransportBase``), which may send at once through the driver's ``_send_gate``. A
    # write after the connection was lost lands here:

    def _write_after_loss(self) -> None:
        self._writes_after_loss += 1
        if self._writes_after_loss == 5:
            log.warning("socket.send() raised exception: writes to a closed transport %r", self)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def sendfile_nowait(self, file: Any, offset: int = 0, count: int | None = None) -> bool:
        """Queue ``count`` bytes of ``file`` from ``offset`` (None: to its end) behind the bytes
        already written, without copying them through Python (the article's TransmitFile).

        Call it in the connection's context. True: queued; the bytes count in
        ``get_write_buffer_size()`` (flow control applies), ``close()`` flushes them, the
        transport owns ``file`` and closes it once sent or when the connection ends, and a
        file shorter than ``count`` aborts the connection. False: nothing was queued (the rung
        cannot, or the transport is closing) and the caller still owns ``file``.
        """
        if (not getattr(self._driver, "supports_sendfile", False) or self._closing
                or self._eof_requested or self._released or not self._in_context()):
            return False
        try:
            fd = file.fileno()
            if count is None:
                count = max(0, os.fstat(fd).st_size - offset)
        except (AttributeError, OSError, ValueError):
            return False
        if offset < 0 or count < 0:
            raise ValueError(f"offset ({offset}) and count ({count}) must be >= 0")
        if count == 0:
            FileSpan(file, fd, offset, 0).close()
            return True
        self._buffer.append(FileSpan(file, fd, offset, count))
        self._buffer_size += count
        if not self._sending:
            self._sending = True
            self._driver.start_send(self)
        if self._buffer_size > self._high:
            self._maybe_pause_protocol()
        return True

    def write_eof(self) -> None:
        if not self._in_context():
            self._driver.dispatch(self, self.write_eof)
            return
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if not self._sending:
            self._shut_wr = True
            self._driver.shutdown_write(self)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self._in_context():
            self._driver.dispatch(self, self.close)
            return
        if self._closing:
            return
        self._closing = True
        self._driver.set_reading(self, False)
        if not self._sending:
            self._release(abort=False)

    def abort(self) -> None:
        if not self._in_context():
            self._driver.dispatch(self, self.abort)
            return
        self._force_close(None)

    def _idle_check(self, timeout: float) -> None:
        """Abort if no byte moved for ``timeout`` seconds (the slowloris defence).

        Bytes the peer acknowledges from the kernel's send queue count as moving: after one
        big write the transport may see nothing for longer than ``timeout`` while a slow
        reader drains the kernel's buffer. The first idle look records the unacknowledged
        count; later looks abort only if it has not fallen since (a stalled or zero-window
        peer: at most one reaper period past ``timeout``)."""
        if self._released:
            return
        now = _monotonic()
        if now - self.last_activity < timeout:
            return
        unacked = unsent_bytes(self._sock)
        if unacked:
            mark = self._unacked_mark
            fresh = mark is not None and mark[1] >= self.last_activity
            if not fresh or unacked < mark[0]:  # type: ignore[index]
                self._unacked_mark = (unacked, now)
                if fresh:
                    self.last_activity = now  # the peer acknowledged bytes: not idle
                return
        log.info("closing idle connection %r after %.1f s without traffic", self, timeout)
        self._force_close(TimeoutError(f"idle for {timeout:g} s"))

    # ------------------------------------------------------------------------ flow control

    def _maybe_pause_protocol(self) -> None:
        if self._buffer_size <= self._high or self._writing_paused:
            return
        self._writing_paused = True
        try:
            self._protocol.pause_writing()  # type: ignore[union-attr]
        except Exception:
            log.exception("protocol.pause_writing() failed on %r", self)

    def _resume_protocol(self) -> None:
        self._writing_paused = False
        try:
            self._protocol.resume_writing()  # type: ignore[union-attr]
        except Exception:
            log.exception("protocol.resume_writing() failed on %r", self)


_setup(FileSpan)
