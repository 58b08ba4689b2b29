"""Rung ``asyncselect`` (WSAAsyncSelect on O_ASYNC + F_SETSIG + signalfd): what is specific to
it — who owns the sockets, where the signal is blocked, the overflow rescan, stale messages."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import ioladder
from ioladder import rungs
from ioladder.apps.echo import EchoProtocol
from ioladder.kernel import signals as ksig
from ioladder.rungs import asyncselect

from .support import HOST, echo_many, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(rungs.reason("asyncselect") is not None,
                       reason=f"asyncselect unavailable: {rungs.reason('asyncselect')}"),
]


def blocked_signals(tid: int) -> set[int]:
    """The signal mask of thread ``tid`` of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {n + 1 for n in range(64) if mask >> n & 1}
    raise AssertionError("no SigBlk line")


class Recorder(asyncio.Protocol):
    """Keeps the transport and the thread of every callback."""

    instances: list[Recorder] = []

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.data = bytearray()
        self.lost = threading.Event()
        Recorder.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.threads.add(threading.get_native_id())

    def data_received(self, data: bytes) -> None:
        self.threads.add(threading.get_native_id())
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.threads.add(threading.get_native_id())
        self.lost.set()


@pytest.fixture
def recorder():
    Recorder.instances = []
    srv = ioladder.serve(Recorder, HOST, 0, model="asyncselect")
    yield srv
    srv.shutdown(5)


# ----------------------------------------------------------------------- ownership
def test_pump_thread_owns_every_socket_and_runs_every_callback(recorder):
    rung = recorder.rung
    with socket.create_connection((HOST, recorder.port)) as client:
        client.sendall(b"ping")
        assert wait_for(lambda: Recorder.instances and Recorder.instances[0].data == b"ping")
        proto = Recorder.instances[0]
        fd = proto.transport.get_extra_info("socket").fileno()
        # F_GETOWN_EX: the owner is the pump's TID, as a thread (not the process).
        assert ksig.get_owner(fd) == (ksig.F_OWNER_TID, rung.pump_tid)
        assert ksig.get_signal(fd) == rung.signum
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ASYNC | os.O_NONBLOCK) == (
            os.O_ASYNC | os.O_NONBLOCK)
        assert rung.pump_tid != threading.get_native_id()
        assert os.path.isdir(f"/proc/self/task/{rung.pump_tid}")
        for lst in recorder.sockets:
            assert ksig.get_owner(lst.fileno()) == (ksig.F_OWNER_TID, rung.pump_tid)
        assert proto.threads == {rung.pump_tid}
    assert proto.lost.wait(5)
    assert proto.threads == {rung.pump_tid}


def test_signal_blocked_in_pump_only_and_never_delivered():
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="asyncselect")
    try:
        _check_masks(srv)
    finally:
        srv.shutdown(5)


def _check_masks(srv: ioladder.Server) -> None:
    rung = srv.rung
    pump = blocked_signals(rung.pump_tid)
    assert {rung.signum, signal.SIGIO} <= pump
    # Other threads are untouched: the signal is thread-directed, nobody else can get it.
    assert rung.signum not in blocked_signals(threading.get_native_id())
    assert rung.signum not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # Traffic raises many signals; none is delivered (the process would die), all are read.
    assert echo_many(srv.port, 4, 256 * 1024) == [True] * 4
    assert rung.messages > 0


def test_signal_choice_constructor_class_env_and_default(monkeypatch):
    monkeypatch.delenv(asyncselect.ENV_SIGNAL, raising=False)
    assert asyncselect.resolve_signal() == signal.SIGRTMIN + 4
    monkeypatch.setenv(asyncselect.ENV_SIGNAL, "SIGRTMIN+7")
    assert asyncselect.resolve_signal() == signal.SIGRTMIN + 7
    assert asyncselect.resolve_signal(None, "RTMAX-1") == signal.SIGRTMAX - 1
    assert asyncselect.resolve_signal(signal.SIGRTMIN + 2, "RTMAX") == signal.SIGRTMIN + 2
    monkeypatch.setenv(asyncselect.ENV_SIGNAL, "SIGTERM")
    with pytest.raises(ValueError):
        asyncselect.resolve_signal()
    assert asyncselect.ENV_SIGNAL in asyncselect.AsyncSelectRung.unavailable_reason()
    monkeypatch.setenv(asyncselect.ENV_SIGNAL, str(int(signal.SIGUSR1)))
    with pytest.raises(ValueError):
        asyncselect.resolve_signal()
    monkeypatch.setenv(asyncselect.ENV_SIGNAL, str(int(signal.SIGRTMIN) + 9))
    assert asyncselect.AsyncSelectRung.unavailable_reason() is None
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="asyncselect")
    try:
        assert srv.rung.signum == signal.SIGRTMIN + 9
        assert echo_many(srv.port, 2, 100_000) == [True, True]
        assert signal.SIGRTMIN + 9 in blocked_signals(srv.rung.pump_tid)
    finally:
        srv.shutdown(5)


def test_cross_thread_write_is_posted_to_an_idle_pump(recorder):
    with socket.create_connection((HOST, recorder.port), timeout=5) as client:
        assert wait_for(lambda: Recorder.instances)
        proto = Recorder.instances[0]
        time.sleep(0.2)  # the pump is now parked in its GetMessage wait
        proto.transport.write(b"from another thread")
        assert client.recv(100) == b"from another thread"
        proto.transport.close()
        assert client.recv(100) == b""
    assert proto.lost.wait(5)


# -------------------------------------------------------------------- stale messages
class SlowThenAbort(asyncio.Protocol):
    """Sleeps inside the window procedure so that more messages queue for its socket, then
    aborts: those messages name a closed (and perhaps reused) descriptor."""

    fds: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        SlowThenAbort.fds.append(self.fd)
        self.first = len(SlowThenAbort.fds) == 1

    def data_received(self, data: bytes) -> None:
        if self.first:
            time.sleep(0.3)
            self.transport.abort()
        else:
            self.transport.write(data)


def test_messages_naming_closed_or_reused_fds_are_harmless():
    SlowThenAbort.fds = []
    srv = ioladder.serve(SlowThenAbort, HOST, 0, model="asyncselect")
    try:
        rung = srv.rung
        a = socket.create_connection((HOST, srv.port), timeout=5)
        a.sendall(b"a")
        time.sleep(0.1)          # the window procedure is now sleeping on a's first message
        for _ in range(5):        # more messages for a's fd queue up behind it
            a.sendall(b"more")
            time.sleep(0.01)
        b = socket.create_connection((HOST, srv.port), timeout=5)  # and an FD_ACCEPT
        with pytest.raises((ConnectionResetError, OSError)):
            a.sendall(b"x" * 100000)
            a.recv(10)
        a.close()
        # b was accepted after a's fd was closed: it most likely got the same number, so a's
        # late messages named b. Either way b is served correctly.
        assert wait_for(lambda: len(SlowThenAbort.fds) == 2)
        b.sendall(b"hello")
        assert b.recv(100) == b"hello"
        b.close()
        if SlowThenAbort.fds[0] != SlowThenAbort.fds[1]:
            assert wait_for(lambda: rung.stale_messages > 0)
        assert echo_many(srv.port, 3, 10_000) == [True] * 3
    finally:
        srv.shutdown(5)


def test_stale_messages_for_closed_sockets_are_counted_and_ignored():
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="asyncselect")
    try:
        # Each client's FIN and our own close race with queued data messages: after the
        # server closes, some messages name fds no longer in the map.
        for _ in range(3):
            assert echo_many(srv.port, 20, 200_000) == [True] * 20
        assert wait_for(lambda: not srv.core.connections)
        assert srv.rung.stale_messages > 0
        assert not srv.rung._by_fd.keys() - {srv.rung._box.rfd,
                                             *(s.fileno() for s in srv.sockets)}
    finally:
        srv.shutdown(5)


# --------------------------------------------------------------- queue overflow
OVERFLOW_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, resource, socket, sys, threading
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (limit, limit))
    import ioladder
    from ioladder.apps.echo import EchoProtocol

    CLIENTS, SIZE = 50, 1 << 20
    srv = ioladder.serve(EchoProtocol, "127.0.0.1", 0, model="asyncselect")
    payloads = [os.urandom(SIZE) for _ in range(CLIENTS)]
    ok = [False] * CLIENTS

    def client(i):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
            t = threading.Thread(target=lambda: (s.sendall(payloads[i]),
                                                 s.shutdown(socket.SHUT_WR)))
            t.start()
            h = hashlib.sha256()
            n = 0
            while chunk := s.recv(1 << 20):
                h.update(chunk)
                n += len(chunk)
            t.join()
        ok[i] = (n, h.hexdigest()) == (SIZE, hashlib.sha256(payloads[i]).hexdigest())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads: t.start()
    for t in threads: t.join(90)
    r = srv.rung
    stats = dict(ok=sum(ok), messages=r.messages, rescans=r.rescans, reposts=r.reposts)
    srv.shutdown(10)
    stats["threads_left"] = r.thread_count()
    print(json.dumps(stats))
""")


@pytest.mark.parametrize("limit", [0, 1, 4])
def test_queue_overflow_falls_back_to_sigio_and_a_rescan_loses_no_byte(limit):
    """With RLIMIT_SIGPENDING tiny the kernel cannot queue the realtime messages and sends a
    bare SIGIO instead; 50 concurrent 1 MiB echoes must still match byte for byte."""
    proc = subprocess.run([sys.executable, "-c", OVERFLOW_SCRIPT, str(limit)],
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["ok"] == 50, stats
    assert stats["rescans"] > 0, stats        # the overflow path really ran
    assert stats["threads_left"] == 0


# ------------------------------------------------------------------ load and shutdown
def test_echo_50_clients_1mib_by_digest_and_clean_shutdown():
    fds_before = len(os.listdir("/proc/self/fd"))
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="asyncselect")
    try:
        assert echo_many(srv.port, 50, 1 << 20) == [True] * 50
        assert srv.rung.thread_count() == 1
    finally:
        srv.shutdown(5)
    assert srv.rung.thread_count() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("ioladder-asyncselect")]
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)


def test_shutdown_with_open_connections_closes_them_and_stops_the_pump():
    fds_before = len(os.listdir("/proc/self/fd"))
    srv = ioladder.serve(EchoProtocol, HOST, 0, model="asyncselect")
    clients = [socket.create_connection((HOST, srv.port), timeout=5) for _ in range(20)]
    for c in clients:
        c.sendall(b"x")
        assert c.recv(1) == b"x"
    srv.shutdown(5)
    for c in clients:
        assert c.recv(1) == b""
        c.close()
    assert srv.rung.thread_count() == 0
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)
