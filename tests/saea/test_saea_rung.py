"""What only the ``saea`` rung promises (the shared conformance suite covers the rest):
``-ENOBUFS`` re-armed without losing a byte, no allocation on the steady-state path, idle
connections owning no receive buffer, TransmitFile through ``sendfile_nowait``."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ioladder
from ioladder.apps import EchoProtocol
from ioladder.apps.files import make_files_factory
from ioladder.rungs import saea as rung_module

from .conftest import HOST, wait_until
from .test_saea_echo_server import echo_clients

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ioladder.Server] = []

    def start(factory: Any, **opts: Any) -> ioladder.Server:
        srv = ioladder.serve(factory, HOST, 0, model="saea", **opts)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown(timeout=5.0)


def test_model_saea_is_the_highest_rung_and_describes_itself():
    cls = ioladder.rungs.get("saea")
    assert cls.name == "saea" and cls.rank == max(
        ioladder.rungs.get(n).rank for n in ioladder.rungs.names())
    assert cls.unavailable_reason() is None
    for attr in ("seed", "windows_api", "mechanism", "trait"):
        assert getattr(cls, attr)
    assert ioladder.rungs.names()[-1] == "saea"


# ------------------------------------------------------------------------ -ENOBUFS re-arm


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "whole"])
def test_multishot_receive_rearms_after_enobufs_and_loses_nothing(serve, monkeypatch,
                                                                  incremental):
    # Two 1 KiB buffers shared by 40 connections that all send at once: the ring runs dry
    # over and over; every receive that ends with -ENOBUFS must be re-armed and no byte lost.
    # Incremental (Linux 6.12): receives of several connections share a buffer and split at
    # its end; whole: each receive consumes a buffer (the path older kernels take).
    for prefix in ("", "WHOLE_"):
        monkeypatch.setattr(rung_module, prefix + "BUFFER_COUNT", 2)
        monkeypatch.setattr(rung_module, prefix + "BUFFER_SIZE", 1024)
    monkeypatch.setattr(rung_module, "INCREMENTAL", incremental)
    srv = serve(EchoProtocol)
    bufring = srv.rung._bufring
    if incremental and not bufring.incremental:
        pytest.skip("the kernel has no incrementally consumed buffers (Linux 6.12)")
    assert bufring.incremental == incremental
    payloads = [os.urandom(200_000 + i) for i in range(40)]
    results = echo_clients(srv.port, payloads)
    for sent, got in zip(payloads, results, strict=True):
        assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    assert srv.rung.enobufs > 0, "the test never ran the buffer ring dry"
    assert wait_until(lambda: srv.connections == 0, 5.0)


# ------------------------------------------------------------- no allocation, steady state


def _traced(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    # Only what the server allocates: the rung, the engine, the transport, the app.
    return snapshot.filter_traces([tracemalloc.Filter(True, "*/ioladder/*")])


def test_steady_state_echo_allocates_nothing_that_survives(serve):
    srv = serve(EchoProtocol)
    clients = [socket.create_connection((HOST, srv.port), timeout=10.0) for _ in range(4)]
    try:
        msg = b"m" * 64

        def round_trips(n: int) -> None:
            for _ in range(n):
                for c in clients:
                    c.sendall(msg)
                for c in clients:
                    got = b""
                    while len(got) < len(msg):
                        got += c.recv(4096)
                    assert got == msg

        round_trips(2000)  # warm-up: pools, free lists, code paths, the buffer ring's pages
        gc.collect()
        tracemalloc.start(1)
        try:
            before = _traced(tracemalloc.take_snapshot())
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            n = 5000
            round_trips(n)
            peak = tracemalloc.get_traced_memory()[1] - base
            gc.collect()
            after = _traced(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        diff = after.compare_to(before, "lineno")
        grown = sum(d.size_diff for d in diff if d.size_diff > 0)
        blocks = sum(d.count_diff for d in diff if d.count_diff > 0)
        ops = n * len(clients)
        detail = "\n".join(str(d) for d in diff[:8])
        # Nothing survives a round trip: a few stray blocks at most (deque block boundaries,
        # an int cache), not something per op.
        assert grown < 4096 and blocks < 40, f"{grown} B in {blocks} blocks after {ops} " \
                                             f"round trips:\n{detail}"
        # Per-op transient allocations are bounded: completion tuples, the bytes handed to
        # data_received, freed as soon as they are used (the peak includes the test's own
        # client-side bytes).
        assert peak < 256 * 1024, f"peak {peak} B during {ops} round trips"
    finally:
        for c in clients:
            c.close()


# ------------------------------------------------------------------- idle connections


def test_idle_connections_own_no_receive_buffer(serve):
    srv = serve(EchoProtocol)
    rung = srv.rung
    clients = []
    try:
        for _ in range(300):
            c = socket.create_connection((HOST, srv.port), timeout=10.0)
            clients.append(c)
            c.sendall(b"x")
            assert c.recv(1) == b"x"
        assert wait_until(lambda: srv.connections == 300, 5.0)
        bufring = rung._bufring

        def all_buffers_home() -> bool:
            return rung._engine.run_sync(lambda: bufring.available) == bufring.count
        # 300 connections, each with an armed multishot receive, and every buffer of the
        # shared ring is back with the kernel: no connection holds one while idle.
        assert all_buffers_home()
        states = rung._engine.run_sync(
            lambda: [c.rung_data for c in list(srv.core.connections)])
        assert len(states) == 300
        assert all(st.recv_op is not None and st.file is None for st in states)
        for st in states:  # the per-connection state holds no buffer object at all
            for name in st.__slots__ + type(st).__mro__[1].__slots__:
                value = getattr(st, name, None)
                assert not isinstance(value, (bytes, bytearray, memoryview)), name
        # ... and traffic on some of them does not change that once it is delivered.
        for c in clients[:50]:
            c.sendall(b"y" * 5000)
        for c in clients[:50]:
            got = b""
            while len(got) < 5000:
                got += c.recv(65536)
        assert wait_until(all_buffers_home, 5.0)
    finally:
        for c in clients:
            c.close()


def test_pause_reading_cancels_the_kernel_receive(serve):
    paused = threading.Event()

    class PauseAtOnce(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.pause_reading()
            paused.set()

    srv = serve(PauseAtOnce)
    with socket.create_connection((HOST, srv.port), timeout=10.0) as client:
        client.sendall(b"go")
        assert paused.wait(5.0)
        (conn,) = list(srv.core.connections)
        st = conn.rung_data
        # The multishot receive is cancelled, not merely ignored: the kernel stops reading,
        # and the peer is pushed back by TCP (its sends eventually block).
        assert wait_until(lambda: st.recv_op is None, 5.0)
        client.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                sent += client.send(b"z" * 65536)
            except BlockingIOError:
                break
        assert time.monotonic() < deadline, "the peer was never pushed back"
        assert sent < 64 * 1024 * 1024
        assert rung_module.SaeaRung is type(srv.rung)


# ---------------------------------------------------------------------------- TransmitFile


class SendFiles(asyncio.Protocol):
    """On any input: head, the file (via sendfile_nowait), tail, a second region, close."""

    def __init__(self, path: Path, regions: list[tuple[int, int | None]]) -> None:
        self.path = path
        self.regions = regions
        self.queued: list[bool] = []
        self.buffered: list[int] = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        tr = self.transport
        tr.write(b"HEAD")
        for i, (offset, count) in enumerate(self.regions):
            f = open(self.path, "rb")  # the transport owns it once queued
            ok = tr.sendfile_nowait(f, offset, count)
            if not ok:
                f.close()
            self.queued.append(ok)
            self.buffered.append(tr.get_write_buffer_size())
            tr.write(b"MID%d" % i)
        tr.write(b"TAIL")
        tr.close()


def recv_all(sock: socket.socket, slow: bool = False) -> tuple[bytes, BaseException | None]:
    parts = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionError as exc:
            return b"".join(parts), exc
        if not data:
            return b"".join(parts), None
        parts.append(data)
        if slow:
            time.sleep(0.0002)


@pytest.mark.parametrize("slow", [False, True], ids=["fast_reader", "slow_reader"])
def test_sendfile_is_ordered_with_writes_and_digest_exact(serve, tmp_path, slow):
    blob = os.urandom(3 * 1024 * 1024 + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    regions = [(0, None), (1000, 700_001), (len(blob) - 5, 5)]
    protocols: list[SendFiles] = []

    def factory():
        p = SendFiles(path, regions)
        protocols.append(p)
        return p

    srv = serve(factory)
    fds_before = len(os.listdir("/proc/self/fd"))
    with socket.create_connection((HOST, srv.port), timeout=20.0) as client:
        if slow:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"go")
        data, error = recv_all(client, slow)
    assert error is None
    expected = b"HEAD" + blob + b"MID0" + blob[1000:701_001] + b"MID1" + blob[-5:] + \
        b"MID2" + b"TAIL"
    assert len(data) == len(expected)
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
    (proto,) = protocols
    assert proto.queued == [True, True, True]
    # The file bytes count in the write buffer (flow control sees them).
    assert proto.buffered[0] >= len(blob)
    assert wait_until(lambda: srv.connections == 0, 5.0)
    # Every queued file object and the splice pipe are closed again.
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, 5.0)


def test_sendfile_of_a_file_shorter_than_count_aborts(serve, tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"s" * 100_000)
    srv = serve(lambda: SendFiles(path, [(0, 200_000)]))
    with socket.create_connection((HOST, srv.port), timeout=10.0) as client:
        client.sendall(b"go")
        data, error = recv_all(client)
    # HEAD and the 100,000 bytes that exist may arrive; the framing is broken, so the
    # connection is reset and nothing after the file (MID0, TAIL) is sent.
    assert isinstance(error, ConnectionResetError), (len(data), error)
    assert b"TAIL" not in data
    assert wait_until(lambda: srv.connections == 0, 5.0)


def test_files_app_serves_a_tree_through_the_ring(serve, tmp_path):
    blob = os.urandom(2_000_003)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big.bin").write_bytes(blob)
    srv = serve(make_files_factory(tmp_path))
    request = b"GET /sub/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((HOST, srv.port), timeout=20.0) as client:
        client.sendall(request + request[:-2] + b"Connection: close\r\n\r\n")  # pipelined
        data, error = recv_all(client)
    assert error is None
    bodies = []
    rest = data
    for _ in range(2):
        head, rest = rest.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: %d" % len(blob) in head
        bodies.append(rest[:len(blob)])
        rest = rest[len(blob):]
    assert rest == b""
    assert all(hashlib.sha256(b).digest() == hashlib.sha256(blob).digest() for b in bodies)


def test_sendfile_is_refused_on_rungs_without_it(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    result: list[Any] = []
    done = threading.Event()

    class Try(asyncio.Protocol):
        def connection_made(self, transport):
            f = open(path, "rb")
            result.append(transport.sendfile_nowait(f))
            result.append(f.closed)
            f.close()
            transport.close()
            done.set()

    with ioladder.serve(Try, HOST, 0, model="epoll") as srv:
        with socket.create_connection((HOST, srv.port), timeout=10.0):
            assert done.wait(5.0)
    assert result == [False, False]  # nothing queued, the caller still owns the file
