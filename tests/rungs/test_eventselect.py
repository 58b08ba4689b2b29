"""Rung ``eventselect`` (WSAEventSelect on poll(2) groups of <= 64): what is specific to it —
threads that grow and shrink with connections, enumerate-and-reset with Winsock's re-enabling
rule, and the group thread as each connection's context."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time

import pytest

import ioladder
from ioladder import rungs
from ioladder.apps.echo import EchoProtocol
from ioladder.rungs import eventselect
from ioladder.rungs.eventselect import FD_READ, SOCKETS_PER_GROUP

from .support import HOST, echo_many, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(rungs.reason("eventselect") is not None,
                       reason=f"eventselect unavailable: {rungs.reason('eventselect')}"),
]


def group_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ioladder-eventselect")]


# -------------------------------------------------------------- threads and groups
def test_threads_grow_by_one_per_63_sockets_and_empty_groups_exit():
    """1000 connections + the listener = 1001 events -> 16 waiting threads, as on Windows."""
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="eventselect", backlog=2048)
    clients: list[socket.socket] = []
    try:
        rung = srv.rung
        assert rung.thread_count() == 1
        for _ in range(1000):
            clients.append(socket.create_connection((HOST, srv.port), timeout=10))
        for c in clients:  # every connection is live on its group
            c.sendall(b"?")
        for c in clients:
            assert c.recv(1) == b"?"
        assert srv.connections == 1000
        assert rung.thread_count() == 16 == -(-1001 // SOCKETS_PER_GROUP)
        loads = rung.group_loads()
        assert sum(loads) == 1001 and max(loads) <= SOCKETS_PER_GROUP == 63
        assert len(group_threads()) == 16
        for c in clients[63:]:
            c.close()
        clients = clients[:63]
        # The first group keeps the listener and 62 clients; one client spills into a second.
        assert wait_for(lambda: srv.connections == 63)
        assert wait_for(lambda: rung.thread_count() == 2)
        assert rung.group_loads() == [63, 1]
        assert len(group_threads()) == 2
    finally:
        for c in clients:
            c.close()
        srv.shutdown(10)
    assert srv.rung.thread_count() == 0
    assert wait_for(lambda: not group_threads())


def test_group_linger_keeps_an_empty_group_for_a_while(monkeypatch):
    monkeypatch.setattr(eventselect, "GROUP_LINGER", 0.5)
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="eventselect")
    try:
        clients = [socket.create_connection((HOST, srv.port), timeout=5) for _ in range(63)]
        for c in clients:
            c.sendall(b"!")
            assert c.recv(1) == b"!"
        assert srv.rung.thread_count() == 2
        clients.pop().close()  # the one connection of the second group
        assert wait_for(lambda: srv.rung.group_loads() == [63, 0])
        time.sleep(0.2)
        assert srv.rung.thread_count() == 2      # lingering, empty
        assert wait_for(lambda: srv.rung.thread_count() == 1, timeout=3)
        for c in clients:
            c.close()
    finally:
        srv.shutdown(5)


class Where(asyncio.Protocol):
    """Records the thread of every callback and the group it belongs to."""

    seen: list[Where] = []

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.lost = threading.Event()
        Where.seen.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.group = transport.rung_data.group  # type: ignore[attr-defined]
        self.threads.add(threading.get_ident())

    def data_received(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.threads.add(threading.get_ident())
        self.lost.set()


def test_callbacks_run_on_the_group_thread_and_foreign_writes_are_dispatched():
    Where.seen = []
    srv = ioladder.serve(Where, HOST, 0, model="eventselect")
    try:
        clients = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(150)]
        assert wait_for(lambda: len(Where.seen) == 150)
        assert srv.rung.thread_count() == 3
        for c in clients:
            c.sendall(b"hi")
            assert c.recv(2) == b"hi"
        # Writes from this (foreign) thread are queued to the owning group and wake it.
        for proto in Where.seen:
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
            assert proto.threads == {proto.group.ident}
        assert len({proto.group.ident for proto in Where.seen}) == 3
    finally:
        srv.shutdown(5)


# ---------------------------------------------------------- enumerate-and-reset
class ReEnable(asyncio.Protocol):
    """Looks at its own event object from inside data_received: FD_READ was reported, so it
    must be disarmed until the recv that delivered this data has returned to the driver. (The
    pollfd itself is brought in line before the group's next wait, which is after that.)"""

    seen: list[int] = []
    after: list[tuple[int, int | None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.ev = transport.rung_data  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        ReEnable.seen.append(self.ev.armed & FD_READ)
        self.ev.group.call(lambda: ReEnable.after.append((self.ev.armed & FD_READ,
                                                          self.ev.mask)))
        self.transport.write(data)


def test_fd_read_is_reset_when_reported_and_re_enabled_by_recv():
    ReEnable.seen, ReEnable.after = [], []
    srv = ioladder.serve(ReEnable, HOST, 0, model="eventselect")
    try:
        with socket.create_connection((HOST, srv.port), timeout=5) as c:
            for _ in range(5):
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
        assert ReEnable.seen == [0] * 5          # reset by WSAEnumNetworkEvents
        assert wait_for(lambda: len(ReEnable.after) == 5)
        # recv() re-enabled it, and the pollfd waits for POLLIN again.
        assert ReEnable.after == [(FD_READ, select.POLLIN)] * 5
    finally:
        srv.shutdown(5)


class Paused(asyncio.Protocol):
    inst: Paused | None = None

    def __init__(self) -> None:
        self.events: list[str] = []
        Paused.inst = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.ev = transport.rung_data  # type: ignore[attr-defined]
        transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.events.append(data.decode())

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False


def test_fd_close_is_reported_once_and_delivered_after_resume():
    srv = ioladder.serve(Paused, HOST, 0, model="eventselect")
    try:
        with socket.create_connection((HOST, srv.port), timeout=5) as c:
            c.sendall(b"data")
            c.shutdown(socket.SHUT_WR)
            assert wait_for(lambda: Paused.inst is not None)
            proto = Paused.inst
            time.sleep(0.2)
            assert proto.events == []         # paused: FD_READ is not selected
            assert proto.ev.armed & FD_READ == 0
            assert proto.ev.mask == 0             # still waited on, for FD_CLOSE only
            group = proto.ev.group
            # Close our side too: the socket hangs up; FD_CLOSE is enumerated once, then the
            # event leaves the wait array instead of being signalled on every wait.
            proto.transport.write_eof()
            assert wait_for(lambda: proto.ev.closed and proto.ev.mask is None)
            waits = group.waits
            time.sleep(0.2)
            assert group.waits - waits <= 2        # no busy loop on POLLHUP
            assert proto.events == []
            proto.transport.resume_reading()
            assert wait_for(lambda: proto.events == ["data", "eof"])
            assert c.recv(10) == b""
    finally:
        srv.shutdown(5)


# ------------------------------------------------------------------ load and shutdown
def test_echo_by_digest_across_several_groups():
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="eventselect")
    try:
        assert echo_many(srv.port, 50, 1 << 20) == [True] * 50
        assert echo_many(srv.port, 160, 128 * 1024) == [True] * 160
    finally:
        srv.shutdown(5)


def test_shutdown_with_connections_in_many_groups_leaves_no_thread_or_fd():
    fds_before = len(os.listdir("/proc/self/fd"))
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="eventselect")
    clients = [socket.create_connection((HOST, srv.port), timeout=5) for _ in range(200)]
    for c in clients:
        c.sendall(b"x")
    for c in clients:
        assert c.recv(1) == b"x"
    assert srv.rung.thread_count() == 4
    srv.shutdown(5)
    for c in clients:
        assert c.recv(1) == b""
        c.close()
    assert srv.rung.thread_count() == 0
    assert wait_for(lambda: not group_threads())
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)
