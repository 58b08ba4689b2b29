"""Socket transports driven straight from ring completions, without a future per operation.

:class:`SocketTransport` is the loop's TCP (and UNIX stream) transport:

* **reading** is one multishot ``RECV`` per connection on the loop's provided buffer ring: while
  data keeps arriving the kernel posts one completion per chunk and no SQE is submitted again.
  The completion handler copies the chunk out (recycling the buffer at once) and calls
  ``data_received`` (or ``get_buffer``/``buffer_updated``) directly, as uvloop calls its
  protocols from libuv callbacks, in the transport's own ``contextvars`` context.
  ``pause_reading`` cancels the recv (a paused protocol must stop the kernel from reading on its
  behalf, or flow control means nothing); completions that were already on their way are held
  and delivered, in order, after ``resume_reading``.
* **writing** is batched per loop iteration: ``write()`` appends to the transport's buffer, and
  just before its next ``io_uring_enter`` the loop hands each written-to buffer to the kernel as
  one ``SEND`` (``MSG_WAITALL``), submitted with every other connection's in that one syscall.
  No syscall per write, and writes made in one iteration leave together. One send is in flight
  per socket (byte order); a short send resubmits the rest. Writes above ``_BATCH_MAX``, and all
  writes while the loop is not running (or with ``batch_writes=False``), go straight to the
  socket as on the selector loop, the kernel op taking only what the socket did not.
  ``get_write_buffer_size`` counts buffered and in-flight bytes.
* ``close`` stops reading, lets the queued bytes go out, then calls ``connection_lost`` and
  closes the socket; ``abort`` cancels both ops. The socket is closed only after the cancels
  are submitted, and the ring keeps every buffer until the kernel is done with it.

The protocol-visible behaviour (callback order, flow control, ``write_eof``, sendfile's empty
waiter, error mapping) follows asyncio's selector transport, which the CPython suite checks.
"""

from __future__ import annotations

import collections
import contextvars
import errno
import os
import socket
import warnings
from asyncio import base_events, constants, futures, protocols, trsock
from typing import Any

from ioladder.kernel import uring

from ._proactor import logger
from ._speedups import TransportCore

_F_MORE = uring.CQE_F_MORE
_F_BUFFER = uring.CQE_F_BUFFER
_F_BUF_MORE = uring.CQE_F_BUF_MORE
_SHIFT = uring.CQE_BUFFER_SHIFT
_SEND_FLAGS = uring.MSG_NOSIGNAL | uring.MSG_WAITALL
_ENOBUFS = -errno.ENOBUFS
_ECANCELED = -errno.ECANCELED
#: writes up to this size wait for the iteration's batched submission; bigger ones go at once
_BATCH_MAX = 16384  # also BATCH_MAX in _speedups.c


def _error(res: int) -> OSError:
    return OSError(-res, os.strerror(-res))


def _feed_buffered(proto: protocols.BufferedProtocol, data: bytes) -> None:
    """Copy ``data`` into the protocol's buffers (as many get_buffer() calls as it takes)."""
    size = len(data)
    view = memoryview(data)
    while size:
        buf = proto.get_buffer(size)
        n = len(buf)
        if not n:
            raise RuntimeError("get_buffer() returned an empty buffer")
        if n >= size:
            buf[:size] = view
            proto.buffer_updated(size)
            return
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
        size -= n


def set_socket_extra(transport: Any, sock: socket.socket) -> None:
    extra = transport._extra
    extra["socket"] = trsock.TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None


class SocketTransport(TransportCore):
    """A connected stream socket on the ring (see the module docstring).

    The per-message paths are C (``TransportCore`` in ``_speedups.c``, a subclass of asyncio's
    ``_FlowControlMixin``): ``is_closing``, and ``write``, ``_flush``, ``_on_sent`` and
    ``_on_recv``, which handle the common case and call the Python methods here for everything
    else (``_write``, ``_sent``, ``_on_recv_data``, ``_on_recv_end``, ``_maybe_pause_protocol``,
    ``_fatal_error``). The
    fields those paths use live in the C struct under their attribute names: ``_ctx``,
    ``_deliver``, ``_take``, ``_buffer``, ``_sending``, ``_send_id``, ``_prep_send``,
    ``_on_sent_cb``, ``_buffered``, ``_send_off``, ``_send_len``, ``_conn_lost``, ``_fd``,
    ``_rfast``, ``_wfast``, ``_queued``, ``_closing`` (the booleans take only bools).

    Two flags keep the per-message paths short: ``_rfast`` (reading normally: not paused, nothing
    held, not closing) and ``_wfast`` (a write needs no check: no ``write_eof``, no sendfile,
    connection not lost). ``_sync_read``/``_sync_write`` recompute them wherever their inputs
    change.
    """

    # Slots: this class has more attributes than CPython's shared-key instance dicts hold (30).
    # __dict__ stays for what code may attach.
    __slots__ = ("_sock", "_send", "_proactor", "_run", "_protocol", "_protocol_connected",
                 "_server", "_paused", "_eof", "_at_eof", "_recv_id", "_br", "_held",
                 "_empty_waiter", "_on_recv_cb", "__dict__", "__weakref__")

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop: Any, sock: socket.socket, protocol: Any, waiter: Any = None,
                 extra: Any = None, server: Any = None) -> None:
        self._sock = None  # __del__ may run after a failed __init__
        super().__init__(extra, loop)
        set_socket_extra(self, sock)
        self._sock = sock
        self._fd = sock.fileno()
        self._send = sock.send
        self._proactor = loop._proactor
        self._ctx = contextvars.copy_context()
        self._run = self._ctx.run
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        self._closing = False
        self._conn_lost = 0
        self._paused = False
        self._eof = False  # write_eof() called
        self._at_eof = False  # the peer's EOF arrived
        self._recv_id: int | None = None
        self._br: uring.BufferRing | None = None
        self._take: Any = None
        self._held: collections.deque[Any] | None = None
        self._sending: bytes | None = None
        self._send_id: int | None = None
        self._send_off = 0
        self._send_len = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._queued = False
        self._prep_send = loop._proactor.ring_for_prep().prep_send
        self._empty_waiter: futures.Future | None = None
        self._rfast = True
        self._wfast = True
        self._on_recv_cb = self._on_recv
        self._on_sent_cb = self._on_sent
        if server is not None:
            server._attach()
        loop._transports[self._fd] = self
        self._proactor._users.add(self)
        base_events._set_nodelay(sock)
        loop.call_soon(self._protocol.connection_made, self, context=self._ctx)
        # only start reading when connection_made() has been called
        loop.call_soon(self._start_reading, context=self._ctx)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fd}")
        info.append("read=" + ("armed" if self._recv_id is not None else
                               "paused" if self._paused else "idle"))
        info.append(f"write=<{'sending' if self._sending is not None else 'idle'}, "
                    f"bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_sock", None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    def _sync_read(self) -> None:
        self._rfast = not self._paused and self._held is None and not self._closing

    def _sync_write(self) -> None:
        self._wfast = (not self._eof and self._empty_waiter is None and not self._conn_lost
                       and self._sock is not None)

    # ------------------------------------------------------------------ protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol
        self._protocol_connected = True
        if isinstance(protocol, protocols.BufferedProtocol):
            def deliver(data: bytes, _proto: Any = protocol) -> None:
                _feed_buffered(_proto, data)
            self._deliver = deliver
        else:
            self._deliver = protocol.data_received

    def get_protocol(self) -> Any:
        return self._protocol

    # is_closing(), in C: self._closing

    # ------------------------------------------------------------------ reading

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def _start_reading(self) -> None:
        if not self._closing and not self._paused:
            self._arm()

    def _arm(self) -> None:
        if self._recv_id is not None or self._at_eof or self._sock is None:
            return
        proactor = self._proactor
        br = self._br = proactor.bufring()
        self._take = br.take
        self._recv_id = proactor._ring.prep_recv_multishot(self._fd, br, self._on_recv_cb)

    # _on_recv(res, flags), in C: data (res > 0) taken from the buffer ring, the recv still
    # armed (CQE_F_MORE) and reading normally (_rfast): ctx.run(deliver, data), _fatal_error if
    # it raises; other data goes to _on_recv_data, and res <= 0 to _on_recv_end.

    def _on_recv_data(self, data: bytes, flags: int) -> None:
        if not flags & _F_MORE:
            self._recv_id = None
        if not self._rfast:
            if not self._closing:
                self._hold(data)
            return
        try:
            self._ctx.run(self._deliver, data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return
        if self._recv_id is None and self._rfast:
            self._arm()

    def _on_recv_end(self, res: int, flags: int) -> None:
        if flags & _F_BUFFER:
            self._br.recycle(flags >> _SHIFT, 0, flags & _F_BUF_MORE)  # type: ignore[union-attr]
        self._recv_id = None
        if self._closing:
            return
        if res == _ENOBUFS or res == _ECANCELED:
            # buffer ring momentarily empty (everything is recycled by now), or the recv was
            # cancelled: pause_reading(), or the kernel cancelling it (a submitting thread exit)
            if self._rfast:
                self._arm()
            return
        # EOF or an error: delivered from the ready queue, one iteration after the data before
        # it, where the selector loop sees it (its next recv() returns b'' / raises). Code that
        # races a peer's close against other callbacks sees the same order on both loops.
        if res == 0:
            self._at_eof = True
        start = self._rfast
        self._hold(None if res == 0 else _error(res))
        if start:
            self._loop.call_soon(self._drain_held, context=self._ctx)

    def _hold(self, item: Any) -> None:
        held = self._held
        if held is None:
            held = self._held = collections.deque()
            self._rfast = False
        held.append(item)

    def _drain_held(self) -> None:
        """Deliver what arrived while paused (runs as a loop callback in the transport's context)."""
        held = self._held
        while held and not self._paused and not self._closing:
            item = held.popleft()
            if item is None:
                self._eof_received()
            elif isinstance(item, BaseException):
                self._fatal_error(item, "Fatal read error on socket transport")
            else:
                try:
                    self._deliver(item)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
        if not held and self._held is held:
            self._held = None
            self._sync_read()
            if self._rfast:
                self._arm()

    def _eof_received(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._rfast = False
        if self._recv_id is not None:
            self._proactor._cancel_op(self._recv_id)  # the final completion clears _recv_id
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held:
            self._loop.call_soon(self._drain_held, context=self._ctx)
        else:
            self._held = None
            self._sync_read()
            self._arm()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    # ------------------------------------------------------------------ writing
    #
    # A small write waits in _buffer until the loop's next io_uring_enter: just before it, the
    # loop calls _flush() on every transport that wrote this iteration (loop._flushq), which
    # hands the buffer to the kernel as one SEND, submitted together with every other
    # connection's. No syscall per write, and writes made in one iteration leave as one send.
    # _queued: the buffer will go without further action (flush registered, or a send in flight
    # whose completion sends it). A write bigger than _BATCH_MAX, and every write when the loop
    # is not running (or batch_writes=False), goes straight to the socket as on the selector
    # loop; what the socket does not take becomes a SEND.

    # write(data), in C: with _wfast, bytes of at most _BATCH_MAX: append to _buffer, count
    # _buffered; unless _queued, set it and (no send in flight) call loop._defer_write(self):
    # loop running, flushq.append (the loop flushes before its next enter); not running, this
    # transport's buffer goes to the socket now. Then _maybe_pause_protocol() above the
    # high-water mark. Anything else: _write(data).

    def _write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost or self._sock is None:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer at once
        if len(data) > _BATCH_MAX and self._sending is None and not self._buffer:
            self._send_now(data)  # a big write: what the socket takes now goes at once
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if not self._queued:
            self._queue()
        if self._buffered + self._send_len > self._high_water:
            self._maybe_pause_protocol()

    def _queue(self) -> None:
        self._queued = True
        if self._sending is None:  # else the send in flight picks the buffer up when it is done
            self._loop._defer_write(self)

    def _write_now(self) -> None:
        """The buffer straight to the socket (loop not running, or batch_writes=False)."""
        buf = self._buffer
        if not buf or self._sending is not None or self._conn_lost:
            self._queued = self._sending is not None
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        self._buffered = 0
        self._queued = False
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        try:
            n = self._send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        if n < len(data):
            self._submit_send(data, n)

    # _flush(), in C: the loop is about to enter the ring: hand the buffer to the kernel as one
    # SEND (nothing if a send is in flight, the buffer is empty or the connection is lost).
    # _submit_send(b"".join(_buffer), 0) with the completion to _on_sent, and quiet (the ring
    # does not end its wait for this send's completion when the kernel finishes it while
    # submitting) unless someone is waiting on it: a close or write_eof to finish, a sendfile,
    # a paused protocol to resume, or a pause to come (_wfast, not _closing, not
    # _protocol_paused, at most _high_water bytes).

    def _submit_send(self, data: bytes, start: int) -> None:
        """One SEND of data[start:]; its completion comes to _on_sent."""
        self._sending = data
        self._queued = True
        self._send_off = start
        self._send_len = rest = len(data) - start
        try:
            self._send_id = self._prep_send(self._fd, data, self._on_sent_cb, _SEND_FLAGS,
                                            start=start)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._sending = None
            self._send_len = 0
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        if rest > self._high_water:
            self._maybe_pause_protocol()

    # _on_sent(res, flags), in C: _send_id = None; all of it went (res == _send_len), nothing
    # more queued, reading normally, _wfast and the protocol not paused: nothing to tell, the
    # send is over; else _sent(res).

    def _sent(self, res: int) -> None:
        if self._conn_lost:  # aborted: whatever was queued is dropped
            self._sending = None
            self._send_len = 0
            self._queued = False
            return
        if res < 0:
            self._sending = None
            self._send_len = 0
            self._queued = False
            exc = _error(res)
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(exc)
            self._run(self._fatal_error, exc, "Fatal write error on socket transport")
            return
        if res < self._send_len:  # short send: the rest goes next
            self._submit_send(self._sending, self._send_off + res)  # type: ignore[arg-type]
            return
        buf = self._buffer
        if buf:
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            self._buffered = 0
            self._submit_send(data, 0)
        else:
            self._sending = None
            self._send_len = 0
            self._queued = False
        if self._protocol_paused:
            self._run(self._maybe_resume_protocol)  # may write more
        if self._sending is None and not self._buffer:
            if self._empty_waiter is not None:
                self._empty_waiter.set_result(None)
            if self._closing:
                if not self._conn_lost:
                    self._conn_lost += 1
                    self._wfast = False
                    self._run(self._call_connection_lost, None)
            elif self._eof:
                self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on socket transport: shutdown(SHUT_WR)")

    def get_write_buffer_size(self) -> int:
        return self._send_len + self._buffered

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._wfast = False
        if self._sending is None and not self._buffer:
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._rfast = False
        self._held = None
        if self._recv_id is not None:
            self._proactor._cancel_op(self._recv_id)
        if self._sending is None and not self._buffer:
            self._conn_lost += 1
            self._wfast = False
            self._loop.call_soon(self._call_connection_lost, None, context=self._ctx)

    def abort(self) -> None:
        if not self._conn_lost and self._buffer and self._sending is None:
            # bytes written before abort() leave if the socket takes them now, as they would
            # have on a loop that sends in write(): submit them, then cancel what is left
            self._flush()
            self._proactor.flush()
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
        if self._send_id is not None:
            self._proactor._cancel_op(self._send_id)
        self._buffer.clear()
        self._buffered = 0
        self._queued = False
        if not self._closing:
            self._closing = True
            self._rfast = False
            self._held = None
            if self._recv_id is not None:
                self._proactor._cancel_op(self._recv_id)
        self._conn_lost += 1
        self._wfast = False
        self._loop.call_soon(self._call_connection_lost, exc, context=self._ctx)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._sock is None:
            return
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            proactor = self._proactor
            if self._recv_id is not None or self._send_id is not None:
                proactor.settle()  # cancels done: the socket really closes with close() below
            self._sock.close()
            self._sock = None
            self._send = None  # type: ignore[assignment]
            self._wfast = False
            self._protocol = None
            self._deliver = None  # type: ignore[assignment]
            proactor._users.discard(self)
            self._loop = None
            server = self._server
            if server is not None:
                server._detach()
                self._server = None
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    # ------------------------------------------------------------------ sendfile support

    def _make_empty_waiter(self) -> futures.Future:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._wfast = False
        if self._sending is None and not self._buffer:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        self._sync_write()

    # ------------------------------------------------------------------ proactor users

    def can_migrate(self) -> bool:
        return self._sending is None

    def rearm(self) -> None:
        self._recv_id = None
        self._br = None
        self._prep_send = self._proactor._ring.prep_send
        if self._rfast:
            self._arm()
        if self._buffer and not self._queued:
            self._queue()

    def proactor_closing(self) -> None:
        """The loop is closing: stop both directions without calling the protocol."""
        self._closing = True
        self._rfast = False
        self._held = None
        self._buffer.clear()
        self._buffered = 0
        self._queued = False
        self._conn_lost += 1
        self._wfast = False
        for op_id in (self._recv_id, self._send_id):
            if op_id is not None:
                self._proactor._cancel_op(op_id)


class Acceptor:
    """A listening socket served with one multishot ``ACCEPT`` (AcceptEx, kept posted)."""

    def __init__(self, loop: Any, protocol_factory: Any, sock: socket.socket, sslcontext: Any,
                 server: Any, backlog: int, ssl_kwargs: dict[str, Any]) -> None:
        self._loop = loop
        self._proactor = loop._proactor
        self._factory = protocol_factory
        self._sock = sock
        self._fd = sock.fileno()
        self._sslcontext = sslcontext
        self._server = server
        self._backlog = backlog
        self._ssl_kwargs = ssl_kwargs
        self._ctx = contextvars.copy_context()
        self._id: int | None = None
        self._stopped = False
        self._retry: Any = None
        self._cb = self._on_accept
        self._proactor._users.add(self)

    def __repr__(self) -> str:
        return f"<Acceptor fd={self._fd} {'stopped' if self._stopped else 'serving'}>"

    def start(self) -> None:
        self._retry = None
        if self._stopped or self._id is not None:
            return
        ring = self._proactor.ring_for_prep()
        self._id = ring.prep_accept(self._fd, self._cb, multishot=True)

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._id is not None:
            self._proactor._cancel_op(self._id)
            self._proactor.settle()  # the listener is really closed once the caller closes it
        self._proactor._users.discard(self)

    def _on_accept(self, res: int, flags: int) -> None:
        if not flags & _F_MORE:
            self._id = None
        if res >= 0:
            if self._stopped or self._loop is None or self._loop.is_closed():
                os.close(res)
                return
            sock = self._sock
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=res)
            self._ctx.run(self._accepted, conn)
            if self._id is None:
                self.start()
            return
        if self._stopped:
            return
        err = -res
        if err in (errno.ECANCELED, errno.EAGAIN, errno.EINTR, errno.ECONNABORTED,
                   errno.EPROTO):
            self.start()
        elif err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # out of a system resource: stop accepting for a while, as the selector loop does
            self._loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": _error(res),
                "socket": trsock.TransportSocket(self._sock),
            })
            self._retry = self._loop.call_later(constants.ACCEPT_RETRY_DELAY, self.start)
        else:
            self._stopped = True
            if self._sock.fileno() != -1:
                self._loop.call_exception_handler({
                    "message": "Accept failed on a socket",
                    "exception": _error(res),
                    "socket": trsock.TransportSocket(self._sock),
                })

    def _accepted(self, conn: socket.socket) -> None:
        loop = self._loop
        try:
            addr = conn.getpeername()
        except OSError:
            addr = None
        try:
            protocol = self._factory()
            if self._sslcontext is not None:
                loop._make_ssl_transport(conn, protocol, self._sslcontext, server_side=True,
                                         extra={"peername": addr}, server=self._server,
                                         **self._ssl_kwargs)
            else:
                loop._make_socket_transport(conn, protocol, extra={"peername": addr},
                                            server=self._server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            loop.call_exception_handler({
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            })

    # proactor users
    def can_migrate(self) -> bool:
        return True

    def rearm(self) -> None:
        self._id = None
        if not self._stopped and self._retry is None:
            self.start()

    def proactor_closing(self) -> None:
        self._stopped = True
        if self._id is not None:
            self._proactor._cancel_op(self._id)
