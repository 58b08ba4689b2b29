"""Rung ``overlapped-event`` (overlapped I/O with event objects): what is specific to it — a
kernel event (eventfd) per pending op, signalled by a hard-linked write even when the op fails,
never more than 64 events in one wait, and I/O threads that grow by groups of connections."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import select
import socket
import sys
import threading
import time

import pytest

import ioladder
from ioladder import rungs
from ioladder.apps.echo import EchoProtocol
from ioladder.rungs import overlapped_event
from ioladder.rungs.overlapped_event import (
    CONNECTIONS_PER_THREAD,
    MAXIMUM_WAIT_EVENTS,
    OPS_PER_THREAD,
)

from .support import HOST, echo, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(rungs.reason("overlapped-event") is not None,
                       reason=f"overlapped-event unavailable: {rungs.reason('overlapped-event')}"),
]

MODEL = "overlapped-event"


def eventfds() -> int:
    """eventfds this process has open, from /proc/self/fd."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]":
                n += 1
        except OSError:
            pass
    return n


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ioladder-overlapped-event")]


def threads_for(connections: int, accept_events: int) -> int:
    """I/O threads the rung needs: the first holds the accepts' events and fewer connections."""
    first = (OPS_PER_THREAD - accept_events) // 2
    rest = max(0, connections - first)
    return 1 + -(-rest // CONNECTIONS_PER_THREAD)


# ------------------------------------------------------------------ the event per op
def test_each_pending_receive_holds_its_own_eventfd():
    """N idle connections = N pending receives = N kernel event objects, visible in
    /proc/self/fd; they go back to the pool (mostly closed) when the connections end."""
    n = 40
    base = eventfds()
    srv = ioladder.serve(EchoProtocol, HOST, 0, model=MODEL)
    clients: list[socket.socket] = []
    try:
        rung = srv.rung
        clients = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(n)]
        for c in clients:   # every connection is live and has re-posted its receive
            assert echo(c, b"ping") == b"ping"
        assert wait_for(lambda: rung.stats()["ops_pending"] == n + rung.accepts)
        held = eventfds() - base
        # n receives + the pending accepts, plus each I/O thread's wake-up event
        assert held >= n + rung.accepts, held
        assert rung.event_count() >= n
        assert rung.pool.in_use >= n + rung.accepts   # (+ events whose write is being reaped)
        for c in clients:
            c.close()
        clients = []
        assert wait_for(lambda: srv.connections == 0)
        assert wait_for(lambda: rung.stats()["ops_pending"] == rung.accepts)
        # Free events beyond the pool's spares are closed: the count follows the pending ops.
        assert rung.event_count() <= rung.accepts + overlapped_event.POOL_SPARE
    finally:
        for c in clients:
            c.close()
        srv.shutdown(5)
    assert wait_for(lambda: eventfds() <= base)


FLOOD = b"x" * (1 << 20)


class Flood(asyncio.Protocol):
    """Writes 1 MiB at once to a client that never reads: the send stays pending, so the
    connection holds two events (its receive and its send)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # so the send stays pending
        transport.write(FLOOD)  # type: ignore[attr-defined]


def test_no_wait_holds_more_than_64_events_and_threads_grow_by_groups():
    """With every connection holding two pending ops, a full I/O thread waits on 62 op events
    plus its wake-up event, never more than WSA_MAXIMUM_WAIT_EVENTS; past that, connections go
    to a new thread."""
    n = 100
    srv = ioladder.serve(Flood, HOST, 0, model=MODEL)
    clients: list[socket.socket] = []
    try:
        rung = srv.rung
        for _ in range(n):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect((HOST, srv.port))
            clients.append(c)
        assert wait_for(lambda: rung.stats()["ops_pending"] == 2 * n + rung.accepts, 10), \
            rung.stats()
        assert rung.thread_count() == threads_for(n, rung.accepts) == 4
        assert len(io_threads()) == 4
        # Let every thread pass through another wait with its full array.
        for c in clients[:5]:
            c.sendall(b"?")
        time.sleep(0.2)
        stats = rung.stats()
        assert stats["max_handles_per_wait"] <= MAXIMUM_WAIT_EVENTS
        assert stats["max_handles_per_wait"] >= 2 * CONNECTIONS_PER_THREAD + 1   # a full group
        assert max(stats["connections_per_thread"]) <= CONNECTIONS_PER_THREAD
        assert sum(stats["connections_per_thread"]) == n
        assert eventfds() >= 2 * n
    finally:
        for c in clients:
            c.close()
        srv.shutdown(5)
    assert srv.rung.thread_count() == 0
    assert wait_for(lambda: not io_threads())


def test_many_connections_echo_across_groups_and_idle_threads_exit(monkeypatch):
    monkeypatch.setattr(overlapped_event, "THREAD_LINGER", 0.2)
    srv = ioladder.serve(EchoProtocol, HOST, 0, model=MODEL)
    try:
        rung = srv.rung
        payloads = [os.urandom(200_000) for _ in range(70)]
        ok = [False] * len(payloads)
        connected = threading.Barrier(len(payloads) + 1)
        go = threading.Event()

        def run(i: int) -> None:
            with socket.create_connection((HOST, srv.port), timeout=30) as sock:
                connected.wait()
                go.wait(30)
                sender = threading.Thread(target=sock.sendall, args=(payloads[i],))
                sender.start()
                digest = hashlib.sha256()
                total = 0
                while total < len(payloads[i]):
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    total += len(chunk)
                sender.join()
                ok[i] = digest.digest() == hashlib.sha256(payloads[i]).digest()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        connected.wait(30)
        try:
            assert wait_for(lambda: srv.connections == 70)
            assert rung.thread_count() == threads_for(70, rung.accepts) == 3
        finally:
            go.set()
        for t in threads:
            t.join(60)
        assert all(ok)
        assert rung.stats()["max_handles_per_wait"] <= MAXIMUM_WAIT_EVENTS
        assert wait_for(lambda: srv.connections == 0)
        # The first thread keeps the accepts; the others exit once idle for THREAD_LINGER.
        assert wait_for(lambda: rung.thread_count() == 1)
        with socket.create_connection((HOST, srv.port), timeout=5) as c:
            assert echo(c, b"still serving") == b"still serving"
    finally:
        srv.shutdown(5)


# --------------------------------------------------------------- the I/O thread role
class Where(asyncio.Protocol):
    seen: list[Where] = []

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.lost = threading.Event()
        Where.seen.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.io = transport.rung_data.io  # type: ignore[attr-defined]
        self.threads.add(threading.get_ident())

    def data_received(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.threads.add(threading.get_ident())
        self.lost.set()


def test_a_connections_callbacks_run_on_its_io_thread_and_foreign_writes_are_queued():
    Where.seen = []
    srv = ioladder.serve(Where, HOST, 0, model=MODEL)
    try:
        clients = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(45)]
        assert wait_for(lambda: len(Where.seen) == 45)
        for c in clients:
            assert echo(c, b"hi") == b"hi"
        for proto in Where.seen:   # from this thread: queued to the owner, which wakes
            proto.transport.write(b"foreign")
        for c in clients:
            got = b""
            while len(got) < 7:
                got += c.recv(7 - len(got))
            assert got == b"foreign"
        for c in clients:
            c.close()
        for proto in Where.seen:
            assert proto.lost.wait(5)
            assert proto.threads == {proto.io.tid}
        assert len({proto.io.tid for proto in Where.seen}) == 2
    finally:
        srv.shutdown(5)


def test_the_ring_of_an_io_thread_refuses_every_other_thread():
    srv = ioladder.serve(EchoProtocol, HOST, 0, model=MODEL)
    try:
        io = srv.rung._threads[0]
        with pytest.raises(RuntimeError):
            io.ring.prep_nop(object())
    finally:
        srv.shutdown(5)


# ------------------------------------------------------------- the kernel mechanism
def test_a_hardlinked_event_write_signals_even_when_the_op_fails():
    """The mechanism the rung relies on: a receive cancelled (or failed) still signals its
    event, because the link to the write is hard; and the ring must not defer completion
    work, or the write would wait for the thread to enter the ring instead of waking poll."""
    from ioladder.kernel import uring

    lst = socket.create_server((HOST, 0))
    client = socket.create_connection(lst.getsockname())
    server_side, _ = lst.accept()
    ring = uring.Ring(8, single_issuer=False, flags=uring.SETUP_SINGLE_ISSUER)
    ev = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(ev, select.POLLIN)
        buf = bytearray(64)
        ring.prep_recv(server_side.fileno(), buf, "recv", hardlink=True)
        ring.prep_write(ev, (1).to_bytes(8, sys.byteorder), "event")
        ring.submit()
        assert poller.poll(100) == []             # pending: not signalled
        ring.prep_cancel_fd(server_side.fileno(), "cancel")
        ring.submit()
        assert poller.poll(2000) == [(ev, select.POLLIN)]
        assert os.eventfd_read(ev) == 1           # WSAResetEvent
        got = {}
        deadline = time.monotonic() + 2
        while len(got) < 3 and time.monotonic() < deadline:
            for ctx, res, _ in ring.wait(1, 0.5):
                got[ctx] = res
        assert got["recv"] == -errno.ECANCELED    # WSAGetOverlappedResult: the op failed...
        assert got["event"] == 8                  # ...and its event was still signalled
    finally:
        ring.close()
        os.close(ev)
        for s in (client, server_side, lst):
            s.close()
