"""Rule 1: the callbacks of one connection never overlap, and calls from other threads are
dispatched to the connection's context, in order."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .support import Collector, Probe, recv_until_end

pytestmark = pytest.mark.timeout(30)

CONNECTIONS = 30
MESSAGES = 40
MESSAGE = b"e" * 100
FOREIGN_WRITES = 25
FOREIGN = b"T" * 8192


class SlowEcho(Probe):
    """Echoes with a sleep inside data_received (to widen any overlap window), keeps the
    connection open on EOF, and is closed by the foreign writer once it is done.

    Tiny write-buffer limits and a small kernel send buffer make pause_writing and
    resume_writing fire often — from whichever thread writes or completes a send — so the
    whole set of callbacks is exercised concurrently, not only data_received.
    """

    pauses = 0

    def on_made(self) -> None:
        self.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.transport.set_write_buffer_limits(high=1024, low=256)

    def on_data(self, data: bytes) -> None:
        time.sleep(0.001)
        self.transport.write(data)

    def on_pause_writing(self) -> None:
        self.pauses += 1
        time.sleep(0.0005)

    def on_resume_writing(self) -> None:
        time.sleep(0.0005)

    def on_eof(self) -> bool:
        return True


def client(port: int, results: list, index: int, written: threading.Event) -> None:
    try:
        with socket.socket() as sock:
            # Small, yet not below loopback's 64 KiB MSS: a smaller window is only reopened by
            # the sender's zero-window probes, which back off for seconds.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.settimeout(15.0)
            sock.connect(("127.0.0.1", port))
            for _ in range(MESSAGES):
                sock.sendall(MESSAGE)
                time.sleep(0.001)
            sock.shutdown(socket.SHUT_WR)
            written.wait(15.0)  # read only now: the server's buffers fill, flow control engages
            data, error = recv_until_end(sock)
            results[index] = (data.count(b"e"), data.count(b"T"), len(data), error)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        results[index] = exc


def foreign_writer(protocols: list[SlowEcho], failures: list, written: threading.Event
                   ) -> None:
    """From a thread that is no connection's context: write to every transport while its
    connection receives, then close each once its peer has finished sending."""
    try:
        for _ in range(FOREIGN_WRITES):
            for p in protocols:
                p.transport.write(FOREIGN)
            time.sleep(0.002)
        written.set()
        for p in protocols:
            assert p.eof.wait(15.0), "eof_received never called"
            p.transport.close()  # queued behind our writes: they all reach the peer first
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        failures.append(exc)
    finally:
        written.set()


def test_callbacks_of_one_connection_never_overlap(server):
    collector = Collector(SlowEcho)
    srv = server(collector)
    results: list = [None] * CONNECTIONS
    written = threading.Event()
    clients = [threading.Thread(target=client, args=(srv.port, results, i, written))
               for i in range(CONNECTIONS)]
    for t in clients:
        t.start()
    failures: list = []
    writer = None
    try:
        protocols = collector.wait_for(CONNECTIONS)
        writer = threading.Thread(target=foreign_writer, args=(protocols, failures, written))
        writer.start()
    finally:
        if writer is None:
            written.set()
        for t in clients:
            t.join(20.0)
        if writer is not None:
            writer.join(20.0)
    assert failures == []
    echoed, foreign = MESSAGES * len(MESSAGE), FOREIGN_WRITES * len(FOREIGN)
    assert results == [(echoed, foreign, echoed + foreign, None)] * CONNECTIONS
    collector.assert_all_lost_once()
    assert sum(p.pauses for p in collector.protocols) > 0, "flow control never engaged"
