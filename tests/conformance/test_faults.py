"""Hostile and careless peers: resets with data in flight, peers that never read, abrupt
drops of many connections, IPv6 loopback. Each must end only the connection concerned, within
the server's limits, and leave no descriptor, thread or connection record behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import ioladder

from .support import (
    HOST,
    Collector,
    EchoProbe,
    Probe,
    fd_count,
    recv_until_end,
    reset_close,
    round_trip,
    soak,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


class Flood(Probe):
    """Writes ``size`` bytes as fast as flow control allows (it honours pause_writing)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size
        self.paused = False

    def on_made(self) -> None:
        self._pump()

    def _pump(self) -> None:
        while self.left > 0 and not self.paused:
            n = min(65536, self.left)
            self.left -= n
            self.transport.write(b"z" * n)

    def on_pause_writing(self) -> None:
        self.paused = True

    def on_resume_writing(self) -> None:
        self.paused = False
        self._pump()


@pytest.mark.parametrize("size", [200_000, 8 * 1024 * 1024],
                         ids=["in-kernel", "in-transport"])
def test_shutdown_timeout_bounds_a_peer_that_never_reads(server, connect, size):
    # The bytes sit in the kernel (the close lingers, waiting for acknowledgements that never
    # come) or still in the transport (the flush cannot finish): shutdown(timeout) must end
    # both at its timeout with a reset, not wait for the linger time (5 s) on top.
    collector = Collector(lambda: Flood(size))
    srv = server(collector)
    clients = [connect(srv.port, rcvbuf=4096) for _ in range(3)]  # and never read
    collector.wait_for(3)
    time.sleep(0.1)  # let the writes fill every buffer they can
    start = time.monotonic()
    srv.shutdown(timeout=0.3)
    took = time.monotonic() - start
    assert took < 1.5, f"shutdown(timeout=0.3) took {took:.2f} s"
    collector.assert_all_lost_once()
    for client in clients:
        data, error = recv_until_end(client)
        assert isinstance(error, ConnectionResetError), f"{len(data)} bytes then {error!r}"
        assert len(data) < size


# ------------------------------------------------------------------------ resets in bursts

def test_a_burst_of_resets_with_unread_data_and_before_accept_spares_a_served_client(
        server, connect):
    # Each offender connects, sends 64 KiB and resets before the server has read any of it,
    # or resets straight after connecting, before the server has accepted: every one must end
    # with one connection_lost, while an established client is served throughout.
    collector = Collector(EchoProbe)
    srv = server(collector)
    good = connect(srv.port)
    assert round_trip(good, b"first") == b"first"
    for i in range(60):
        sock = socket.create_connection((HOST, srv.port), timeout=5.0)
        if i % 2 == 0:
            sock.sendall(b"r" * 65536)
        reset_close(sock)
        if i % 10 == 0:
            assert round_trip(good, b"still %d" % i) == b"still %d" % i
    assert wait_until(lambda: srv.connections == 1, 10.0), f"{srv.connections} connections"
    assert round_trip(good, b"last") == b"last"
    (kept,) = [p for p in collector.protocols if p.peername == good.getsockname()]
    others = [p for p in collector.protocols if p is not kept]
    for p in others:
        assert p.lost.wait(5.0)
        assert p.lost_calls == 1
    assert collector.violations() == []


# ------------------------------------------------------------------------------ IPv6

def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback_echo_reset_and_graceful_close(rung):
    collector = Collector(EchoProbe)
    with ioladder.serve(collector, "::1", 0, model=rung) as srv:
        with socket.create_connection(("::1", srv.port), timeout=10.0) as client:
            payload = os.urandom(300_000)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            data, error = recv_until_end(client)
            assert error is None and data == payload
        sock = socket.create_connection(("::1", srv.port), timeout=10.0)
        sock.sendall(b"x" * 10_000)
        reset_close(sock)
        (first, second) = collector.wait_for(2)
        assert first.peername[0] == "::1" and len(first.peername) == 4
        collector.assert_all_lost_once()


# ------------------------------------------------------------- a client process killed

HOLDER = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2:
        s.sendall(b"u" * 4096)  # echoed back and never read: the kernel resets at exit
    socks.append(s)
print("ready", flush=True)
time.sleep(60)
"""

HELD = 200
SOAK_HELD = 2000


@pytest.mark.parametrize("held", [HELD, soak(SOAK_HELD, timeout=300)])
def test_a_killed_client_process_leaves_no_fd_thread_or_connection_behind(rung, held):
    fds, threads = fd_count(), set(threading.enumerate())
    collector = Collector(EchoProbe)
    srv = ioladder.serve(collector, HOST, 0, model=rung)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(srv.port), str(held)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        # Every one admitted, or refused past the rung's structural limit (select's fd_set).
        assert wait_until(lambda: srv.connections + srv.core.refused_total == held, 20.0), (
            srv.connections, srv.core.refused_total)
        assert srv.core.refused_total == 0 or srv.rung.structural_limit is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10.0)
        assert wait_until(lambda: srv.connections == 0, 20.0), (
            f"{srv.connections} connections still open after the client died")
        collector.assert_all_lost_once()
        with socket.create_connection((HOST, srv.port), timeout=5.0) as client:
            assert round_trip(client, b"served on") == b"served on"
        # Threads that grow with connections (blocking, eventselect, overlapped-event) go
        # back down without a shutdown.
        assert wait_until(lambda: srv.rung.thread_count() <= 40, 10.0), srv.rung.thread_count()
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        srv.shutdown(5.0)
    assert wait_until(lambda: set(threading.enumerate()) <= threads, 5.0)
    assert wait_until(lambda: fd_count() == fds, 5.0), f"{fd_count() - fds} fds left behind"


# ------------------------------------------------------------------------------ linger=N

class BigReplyOnRequest(EchoProbe):
    """Echoes, but answers ``BIG`` with 150 KB that fit the server's kernel buffer at once."""

    def on_made(self) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)

    def on_data(self, data: bytes) -> None:
        self.transport.write(b"b" * 150_000 if data == b"BIG" else data)


def test_linger_seconds_never_blocks_the_rung_on_a_half_closed_slow_reader(server, connect):
    # The slow peer asks for a reply it reads slowly, then half-closes: the server's close
    # ends its lingering at that EOF with bytes still unacknowledged. A kernel SO_LINGER
    # {1, N} would make that close() block the calling thread for up to N seconds — the
    # thread that serves every other connection on the reactor and completion rungs.
    collector = Collector(BigReplyOnRequest)
    srv = server(collector, linger=3)
    slow = connect(srv.port, rcvbuf=4096)
    fast = connect(srv.port)
    assert round_trip(fast, b"warm") == b"warm"
    slow.sendall(b"BIG")
    time.sleep(0.1)  # the reply sits in the kernel, mostly unacknowledged
    slow.shutdown(socket.SHUT_WR)
    worst = 0.0
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        start = time.monotonic()
        assert round_trip(fast, b"p") == b"p"
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.01)
    assert worst < 0.5, f"a round trip took {worst:.2f} s while a close lingered"
    data, error = recv_until_end(slow)  # every byte of the reply, then our FIN
    assert error is None and len(data) == 150_000


# ----------------------------------------------------------------- max_connections churn

def test_max_connections_holds_exactly_under_churn_at_the_limit(server, connect):
    # Limit - 1 clients stay; the last slot is taken and dropped (FIN or reset) over and over,
    # by two clients at a time. Every attempt is served or refused cleanly, never hangs; the
    # server never holds more than the limit; the steady clients are served throughout.
    limit = 4
    collector = Collector(EchoProbe)
    srv = server(collector, max_connections=limit)
    steady = [connect(srv.port) for _ in range(limit - 1)]
    for client in steady:
        assert round_trip(client, b"in") == b"in"
    peak = 0
    served = refused = 0
    for i in range(60):
        assert wait_until(lambda: srv.connections == limit - 1, 5.0), srv.connections
        # Two at once for the one free slot: the first is admitted, the second refused.
        pair = [socket.create_connection((HOST, srv.port), timeout=5.0) for _ in range(2)]
        for sock in pair:
            try:
                sock.sendall(b"x")
                reply = sock.recv(1)
            except ConnectionResetError:
                reply = b""
            if reply == b"x":
                served += 1
            else:
                refused += 1
            peak = max(peak, srv.connections)
        for sock in pair:
            if i % 2:
                reset_close(sock)
            else:
                sock.close()
        if i % 10 == 0:
            assert round_trip(steady[i % len(steady)], b"ok") == b"ok"
    assert peak <= limit
    assert (served, refused) == (60, 60)
    assert wait_until(lambda: srv.connections == limit - 1, 5.0), srv.connections
    for client in steady:
        assert round_trip(client, b"out") == b"out"
    assert collector.violations() == []


# ------------------------------------------------------------ a slow reader at close time

class WriteAllThenClose(Probe):
    """Writes ``size`` bytes into a large kernel buffer at once, then closes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def on_made(self) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * 1024 * 1024)
        self.transport.write(b"d" * self.size)
        self.transport.close()


def test_graceful_close_to_a_slow_but_reading_peer_outlasts_the_linger_time(
        server, connect, monkeypatch):
    # The bytes are in the kernel when close() releases the connection; the peer reads them
    # slower than the lingering close's time allows. Without linger=N it must not give up
    # (reset, losing what is unread) while the peer is still acknowledging bytes: only a
    # peer that stops making progress for LINGER_TIMEOUT is reset.
    monkeypatch.setattr(ioladder.rungs.base, "LINGER_TIMEOUT", 0.3)
    size = 1_000_000
    collector = Collector(lambda: WriteAllThenClose(size))
    srv = server(collector)
    client = connect(srv.port, rcvbuf=16384)
    received = 0
    start = time.monotonic()
    while True:
        data = client.recv(16384)  # a ConnectionResetError here is the failure
        if not data:
            break
        received += len(data)
        time.sleep(0.005)
    assert received == size
    assert time.monotonic() - start > 0.3  # it did outlast LINGER_TIMEOUT
    collector.assert_all_lost_once()


def test_graceful_close_to_a_peer_that_stops_reading_is_reset_after_linger_timeout(
        server, connect, monkeypatch):
    # The other half of the rule: no acknowledgement for LINGER_TIMEOUT ends the close with
    # a reset, so a zero-window peer cannot hold the descriptor forever.
    monkeypatch.setattr(ioladder.rungs.base, "LINGER_TIMEOUT", 0.3)
    collector = Collector(lambda: WriteAllThenClose(1_000_000))
    srv = server(collector)
    client = connect(srv.port, rcvbuf=16384)  # and never read
    (proto,) = collector.wait_for(1)
    start = time.monotonic()
    assert proto.lost.wait(5.0), "the close lingers on for a peer that reads nothing"
    assert 0.25 < time.monotonic() - start < 2.0
    data, error = recv_until_end(client)
    assert isinstance(error, ConnectionResetError) and len(data) < 1_000_000


# ----------------------------------------------------------- idle_timeout and slow readers

class WriteAllAndStay(WriteAllThenClose):
    """Writes ``size`` bytes into a large kernel buffer at once and keeps the connection."""

    def on_made(self) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * 1024 * 1024)
        self.transport.write(b"d" * self.size)


def test_idle_timeout_spares_a_peer_still_reading_what_the_kernel_holds(server, connect):
    # After one big write the transport sees no activity while the kernel delivers the bytes
    # to a slow reader: that peer is not idle and must get everything; one that reads
    # nothing at all is idle and is aborted.
    size = 1_000_000
    collector = Collector(lambda: WriteAllAndStay(size))
    srv = server(collector, idle_timeout=0.3)
    stalled = connect(srv.port, rcvbuf=16384)  # never reads
    reader = connect(srv.port, rcvbuf=16384)
    received = 0
    start = time.monotonic()
    while received < size:
        data = reader.recv(16384)  # a ConnectionResetError here is the failure
        assert data, f"EOF after {received} bytes"
        received += len(data)
        time.sleep(0.008)
    assert time.monotonic() - start > 0.45  # it did outlast the idle timeout
    data, error = recv_until_end(stalled)
    assert isinstance(error, ConnectionResetError) and len(data) < size
    by_peer = collector.by_peer()
    assert isinstance(by_peer[stalled.getsockname()].lost_exc, TimeoutError)
    assert not by_peer[reader.getsockname()].lost.is_set()


# ------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("option", [
    {"max_connections": 0}, {"max_connections": float("nan")}, {"max_connections": 2.5},
    {"idle_timeout": 0}, {"idle_timeout": float("nan")}, {"idle_timeout": -1},
    {"linger": -1}, {"linger": float("nan")},
], ids=lambda o: f"{next(iter(o))}={next(iter(o.values()))}")
def test_nonsense_limits_are_refused_with_a_clear_error(option):
    # NaN compares false with everything: accepted, it silently meant "no limit" (or a
    # lingering close without a deadline). Refused before any socket or thread exists.
    threads = set(threading.enumerate())
    fds = fd_count()
    with pytest.raises(ValueError, match=next(iter(option))):
        ioladder.serve(EchoProbe, HOST, 0, model="epoll", **option)
    assert fd_count() == fds and set(threading.enumerate()) == threads
