"""The ``iocp`` rung's own traits, beside the shared conformance suite: the worker pool and its
concurrency limit as the application sees them, and I/O started from threads that exit."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import ioladder
from ioladder.rungs.iocp import ENV_CONCURRENCY, ENV_WORKERS

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


class Gauge:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.threads: set[int] = set()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads.add(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def make_echo(gauge: Gauge) -> type[asyncio.Protocol]:
    class SlowEcho(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            with gauge:
                time.sleep(0.002)  # long enough for the other workers to want to run
                self.transport.write(data)
    return SlowEcho


def echo_clients(port: int, clients: int, rounds: int) -> None:
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(clients)]
    try:
        for r in range(rounds):
            for i, s in enumerate(socks):
                s.sendall(b"%d:%d;" % (i, r))
            for i, s in enumerate(socks):
                want = b"%d:%d;" % (i, r)
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(64)
                    assert chunk, "server closed"
                    got += chunk
                assert got == want
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("concurrency, workers", [(1, 4), (2, 6)])
def test_callbacks_across_connections_respect_the_concurrency_value(
        monkeypatch, concurrency, workers):
    monkeypatch.setenv(ENV_CONCURRENCY, str(concurrency))
    monkeypatch.setenv(ENV_WORKERS, str(workers))
    gauge = Gauge()
    with ioladder.serve(make_echo(gauge), HOST, 0, model="iocp") as srv:
        assert srv.rung.thread_count() == workers
        assert srv.rung.port.concurrency == concurrency
        echo_clients(srv.port, clients=12, rounds=15)
    assert gauge.peak == concurrency, gauge.peak
    # Any worker may run any connection's callbacks; with concurrency 1 the thread that comes
    # back to get_queued usually takes the next completion itself (IOCP's LIFO release).
    assert len(gauge.threads) >= concurrency


def test_default_pool_is_twice_the_cpus_with_concurrency_cpus(monkeypatch):
    from ioladder.iocp import cpu_count

    monkeypatch.delenv(ENV_CONCURRENCY, raising=False)
    monkeypatch.delenv(ENV_WORKERS, raising=False)
    with ioladder.serve(asyncio.Protocol, HOST, 0, model="iocp") as srv:
        assert srv.rung.port.concurrency == cpu_count()
        assert srv.rung.thread_count() == 2 * cpu_count()
    assert srv.rung.thread_count() == 0


def test_writes_from_a_thread_that_exits_at_once_all_arrive():
    """io_uring cancels ops when their submitting thread exits; the rung submits only from its
    workers, so a short-lived application thread's write survives it."""
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than the socket buffers
    writers: list[threading.Thread] = []

    class Blast(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            def write() -> None:
                transport.write(payload)
                transport.close()
            t = threading.Timer(0.1, write)  # runs once connection_made has left the strand
            t.start()
            writers.append(t)

    with ioladder.serve(Blast, HOST, 0, model="iocp") as srv:
        with socket.create_connection((HOST, srv.port), timeout=10) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            while not writers:
                time.sleep(0.01)
            writers[0].join(5)
            time.sleep(0.3)  # the writer thread is gone while most bytes still wait
            got = bytearray()
            while True:
                chunk = client.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
    assert len(got) == len(payload) and bytes(got) == payload


def test_reading_resumed_from_a_thread_that_exits_at_once_still_receives():
    """The receive that resume_reading() starts must not die with the calling thread (the
    kernel would complete it with ECANCELED when that thread exits)."""
    received = threading.Event()
    lost: list[BaseException | None] = []
    resumers: list[threading.Thread] = []

    class ResumeElsewhere(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transport.pause_reading()
            # Later, once this callback has left the strand: the thread itself would run
            # resume_reading() and, without the rung's mailbox, submit the receive.
            t = threading.Timer(0.1, transport.resume_reading)
            t.start()
            resumers.append(t)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)
            received.set()

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    with ioladder.serve(ResumeElsewhere, HOST, 0, model="iocp") as srv:
        with socket.create_connection((HOST, srv.port), timeout=10) as client:
            deadline = time.monotonic() + 5
            while not resumers and time.monotonic() < deadline:
                time.sleep(0.01)
            resumers[0].join(5)
            time.sleep(0.3)  # the resuming thread has exited; only now does data arrive
            client.sendall(b"late")
            assert received.wait(5), f"no data_received; connection_lost({lost})"
            assert client.recv(16) == b"late"
    assert lost == [None]
