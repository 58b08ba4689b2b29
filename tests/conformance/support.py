"""Helpers of the conformance suite: recording protocols and real-socket clients.

Nothing here is a mock: the protocols are ordinary ``asyncio`` protocols handed to
``ioladder.serve``, and the clients are plain sockets on 127.0.0.1.

Every recording protocol checks the contract from inside its own callbacks (design.md §4 and
the Rules in ``ioladder/transport.py``) and keeps what it saw in ``violations``:

* ``connection_made`` first, then data, at most one ``eof_received``, ``connection_lost``
  exactly once and last;
* no callback of a connection starts while another thread is inside a callback of the same
  connection (a callback may nest in another on the *same* thread: ``write()`` calls
  ``pause_writing()`` synchronously, as asyncio does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HOST = "127.0.0.1"
#: bytes asked of one client recv()/send()
CHUNK = 256 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


# ------------------------------------------------------------------------------ waiting


def soak(value: Any, timeout: float) -> Any:
    """A ``parametrize`` value for the full soak of a case whose bounded version runs by
    default: marked ``slow``, given ``timeout`` seconds, and run only with ``IOLADDER_SOAK=1``."""
    return pytest.param(value, marks=[
        pytest.mark.slow, pytest.mark.timeout(timeout),
        pytest.mark.skipif(not os.environ.get("IOLADDER_SOAK"), reason="set IOLADDER_SOAK=1")])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- client sockets


def reset_close(sock: socket.socket) -> None:
    """Close with ``SO_LINGER {1, 0}``: the peer sees a reset (RST), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def recv_until_end(sock: socket.socket, limit: int | None = None
                   ) -> tuple[bytes, BaseException | None]:
    """Read until EOF or a connection error; return the bytes and the error (None on EOF).

    A socket timeout is not an end: it propagates, so a hang fails the test.
    """
    parts = []
    size = 0
    while limit is None or size < limit:
        try:
            data = sock.recv(CHUNK)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            return b"".join(parts), exc
        if not data:
            return b"".join(parts), None
        parts.append(data)
        size += len(data)
    return b"".join(parts), None


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        data = sock.recv(min(n, CHUNK))
        if not data:
            raise EOFError(f"EOF with {n} bytes still expected")
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` to an echo server and return what came back (same length)."""
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


# ------------------------------------------------------------------ recording protocols


class Tracking:
    """Contract checks shared by :class:`Probe` and buffered protocols (see module doc)."""

    def _init_tracking(self) -> None:
        self.transport: Any = None
        self.state = "new"
        self.violations: list[str] = []
        self.made = threading.Event()
        self.eof = threading.Event()
        self.lost = threading.Event()
        self.lost_calls = 0
        self.lost_exc: BaseException | None = None
        self.peername: Any = None
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def _callback(self, name: str, allowed: tuple[str, ...]) -> Iterator[None]:
        me = threading.get_ident()
        with self._guard:
            if self._owner is not None and self._owner != me:
                self.violations.append(f"{name} ran while another thread was inside a callback")
            self._owner = me
            self._depth += 1
            if self.state not in allowed:
                self.violations.append(f"{name} called in state {self.state!r}")
        try:
            yield
        finally:
            with self._guard:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None

    def _made(self, transport: Any) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.state = "made"

    def _lost(self, exc: BaseException | None) -> None:
        self.state = "lost"
        self.lost_calls += 1
        self.lost_exc = exc


class Probe(Tracking, asyncio.Protocol):
    """A recording ``asyncio.Protocol``; subclasses override the ``on_*`` hooks."""

    def __init__(self) -> None:
        self._init_tracking()
        self.received = 0
        self.data_calls = 0

    # asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self._callback("connection_made", ("new",)):
            self._made(transport)
            self.on_made()
        self.made.set()

    def data_received(self, data: bytes) -> None:
        with self._callback("data_received", ("made",)):
            if not data:
                self.violations.append("data_received(b'')")
            self.received += len(data)
            self.data_calls += 1
            self.on_data(data)

    def eof_received(self) -> bool | None:
        with self._callback("eof_received", ("made",)):
            self.state = "eof"
            keep_open = self.on_eof()
        self.eof.set()
        return keep_open

    def pause_writing(self) -> None:
        with self._callback("pause_writing", ("made", "eof")):
            self.on_pause_writing()

    def resume_writing(self) -> None:
        with self._callback("resume_writing", ("made", "eof")):
            self.on_resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        with self._callback("connection_lost", ("made", "eof")):
            self._lost(exc)
            self.on_lost(exc)
        self.lost.set()

    # hooks --------------------------------------------------------------------------------
    def on_made(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def on_eof(self) -> bool | None:
        return None

    def on_pause_writing(self) -> None:
        pass

    def on_resume_writing(self) -> None:
        pass

    def on_lost(self, exc: BaseException | None) -> None:
        pass


class EchoProbe(Probe):
    """Echo with asyncio-style flow control (like ``ioladder.apps.EchoProtocol``), recorded."""

    def on_data(self, data: bytes) -> None:
        self.transport.write(data)

    def on_pause_writing(self) -> None:
        self.transport.pause_reading()

    def on_resume_writing(self) -> None:
        self.transport.resume_reading()


class Collector:
    """A protocol factory that keeps every protocol it made, in creation order."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self.protocols: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self) -> Any:
        protocol = self._factory()
        with self._cond:
            self.protocols.append(protocol)
            self._cond.notify_all()
        return protocol

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Any]:
        """The first ``n`` protocols, once ``connection_made`` has been called on each."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.protocols) >= n, timeout):
                raise AssertionError(f"{len(self.protocols)} connections made, expected {n}")
            protocols = self.protocols[:n]
        for p in protocols:
            assert p.made.wait(timeout), "connection_made not called"
        return protocols

    def by_peer(self) -> dict[Any, Any]:
        with self._cond:
            return {p.peername: p for p in self.protocols}

    def violations(self) -> list[str]:
        with self._cond:
            return [v for p in self.protocols for v in p.violations]

    def assert_all_lost_once(self, timeout: float = 10.0) -> None:
        """Every connection ended with exactly one ``connection_lost``, and no violation."""
        with self._cond:
            protocols = list(self.protocols)
        for p in protocols:
            assert p.lost.wait(timeout), f"connection_lost never called ({p.state})"
        assert [p.lost_calls for p in protocols] == [1] * len(protocols)
        assert self.violations() == []


# --------------------------------------------------------------- many concurrent clients


class _EchoClient:
    __slots__ = ("sock", "payload", "sent", "received", "digest", "error", "done")

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        self.sock = sock
        self.payload = memoryview(payload)
        self.sent = 0
        self.received = 0
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self.done = False


def run_echo_clients(port: int, payloads: list[bytes], timeout: float = 30.0
                     ) -> list[tuple[int, str]]:
    """Send each payload on its own connection (all concurrently, one selector thread),
    half-close, read until EOF; return ``(bytes received, sha256 hex)`` per payload."""
    sel = selectors.DefaultSelector()
    clients: list[_EchoClient] = []
    try:
        for payload in payloads:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            clients.append(_EchoClient(sock, payload))
            sock.connect_ex((HOST, port))
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, clients[-1])
        pending = len(clients)
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stuck = [(c.sent, len(c.payload), c.received) for c in clients if not c.done]
                raise TimeoutError(f"{pending} echo clients unfinished (sent, size, received): "
                                   f"{stuck[:10]}")
            for key, events in sel.select(min(remaining, 1.0)):
                c: _EchoClient = key.data
                if c.done:
                    continue
                try:
                    if events & selectors.EVENT_WRITE and c.sent < len(c.payload):
                        try:
                            c.sent += c.sock.send(c.payload[c.sent:c.sent + CHUNK])
                        except BlockingIOError:
                            pass
                        if c.sent == len(c.payload):
                            c.sock.shutdown(socket.SHUT_WR)
                            sel.modify(c.sock, selectors.EVENT_READ, c)
                    if events & selectors.EVENT_READ:
                        try:
                            data = c.sock.recv(CHUNK)
                        except BlockingIOError:
                            continue
                        if data:
                            c.received += len(data)
                            c.digest.update(data)
                        else:
                            c.done = True
                except OSError as exc:
                    c.error = exc
                    c.done = True
                if c.done:
                    pending -= 1
                    sel.unregister(c.sock)
                    c.sock.close()
    finally:
        for c in clients:
            c.sock.close()
        sel.close()
    errors = [c.error for c in clients if c.error is not None]
    assert not errors, f"{len(errors)} echo clients failed, first: {errors[0]!r}"
    return [(c.received, c.digest.hexdigest()) for c in clients]


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()
