"""Flow control both ways: pause_writing/resume_writing on the water marks, and
pause_reading/resume_reading stopping and restarting delivery."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .support import Collector, Probe, recv_until_end, wait_until

pytestmark = pytest.mark.timeout(30)

KiB = 1024
MiB = 1024 * KiB


class Producer(Probe):
    """Writes ``total`` bytes in ``chunk``-sized writes, only while not paused — the way an
    asyncio app honours flow control — then closes.

    The kernel send buffer is made small so the transport's own buffer is what fills up.
    """

    def __init__(self, total: int, chunk: int, limits: tuple[int, int] | None) -> None:
        super().__init__()
        self.total = total
        self.chunk = chunk
        self.limits = limits
        self.written = 0
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.max_buffered = 0
        self.writes_while_paused = 0
        self.paused_event = threading.Event()
        self.high = 0

    def on_made(self) -> None:
        self.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * KiB)
        if self.limits is not None:
            self.transport.set_write_buffer_limits(high=self.limits[1], low=self.limits[0])
        self.high = self.transport.get_write_buffer_limits()[1]
        self.produce()

    def produce(self) -> None:
        while not self.paused and self.written < self.total:
            n = min(self.chunk, self.total - self.written)
            self.transport.write(b"w" * n)
            self.written += n
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if self.written >= self.total and not self.transport.is_closing():
            self.transport.close()

    def on_pause_writing(self) -> None:
        if self.paused:
            self.violations.append("pause_writing twice without resume_writing")
        self.paused = True
        self.pauses += 1
        if self.transport.get_write_buffer_size() <= self.high:
            self.violations.append("pause_writing below the high-water mark")
        self.paused_event.set()

    def on_resume_writing(self) -> None:
        if not self.paused:
            self.violations.append("resume_writing without pause_writing")
        self.paused = False
        self.resumes += 1
        low = self.transport.get_write_buffer_limits()[0]
        if self.transport.get_write_buffer_size() > low:
            self.violations.append("resume_writing above the low-water mark")
        self.produce()


@pytest.mark.parametrize("limits", [None, (4 * KiB, 256 * KiB)], ids=["default", "custom"])
def test_write_flow_control_pauses_and_resumes_with_bounded_buffer(server, connect, limits):
    total, chunk = 8 * MiB, 16 * KiB
    collector = Collector(lambda: Producer(total, chunk, limits))
    srv = server(collector)
    client = connect(srv.port, rcvbuf=64 * KiB)  # and we do not read yet
    (proto,) = collector.wait_for(1)
    assert proto.paused_event.wait(5.0), "pause_writing never called against a stalled reader"
    time.sleep(0.5)
    # The kernel may still take a little now and then (its receive-queue collapsing reopens
    # the window a crack), and each time the transport resumes and re-pauses the producer; but
    # production is held to what the buffers hold, nowhere near the 8 MiB it wants to write.
    assert wait_until(lambda: proto.paused, 1.0)
    assert proto.written < total // 4, f"{proto.written} bytes produced for a stalled reader"
    assert proto.max_buffered <= proto.high + chunk
    assert proto.transport.get_write_buffer_size() <= proto.high + chunk
    # Now read everything: the transport drains, resumes the producer, and it finishes.
    data, error = recv_until_end(client)
    assert (len(data), error) == (total, None)
    collector.assert_all_lost_once()
    assert proto.resumes >= 1
    assert proto.pauses in (proto.resumes, proto.resumes + 1)
    assert proto.max_buffered <= proto.high + chunk


class Pausable(Probe):
    """Pauses reading after the first data (``in_callback``) or is paused from outside; records
    every data_received that arrives while delivery should be stopped."""

    def __init__(self, pause_in_callback: bool) -> None:
        super().__init__()
        self.pause_in_callback = pause_in_callback
        self.allowed = True
        self.data = bytearray()
        self.first = threading.Event()
        self.reading_after_pause: bool | None = None

    def on_data(self, data: bytes) -> None:
        if not self.allowed:
            self.violations.append(f"data_received({len(data)} bytes) while paused")
        if not self.transport.is_reading():
            self.violations.append("data_received while is_reading() is False")
        self.data += data
        if self.pause_in_callback and not self.first.is_set():
            self.transport.pause_reading()
            self.allowed = False
            self.reading_after_pause = self.transport.is_reading()
        self.first.set()


@pytest.mark.parametrize("where", ["in_callback", "from_thread"])
def test_pause_reading_stops_delivery_and_resume_restarts_it(server, connect, where):
    collector = Collector(lambda: Pausable(where == "in_callback"))
    srv = server(collector)
    client = connect(srv.port)
    (proto,) = collector.wait_for(1)
    assert proto.transport.is_reading()
    client.sendall(b"first")
    assert proto.first.wait(5.0)
    if where == "from_thread":
        proto.transport.pause_reading()  # from this (foreign) thread: dispatched to the context
        assert wait_until(lambda: not proto.transport.is_reading(), 5.0)
        proto.allowed = False
    else:
        assert proto.reading_after_pause is False
    assert not proto.transport.is_reading()
    paused_at = len(proto.data)
    client.sendall(b"p" * 100_000)
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.5)
    assert len(proto.data) == paused_at, "data delivered while reading was paused"
    assert not proto.eof.is_set(), "eof_received delivered while reading was paused"
    assert not proto.transport.is_reading()
    proto.allowed = True
    proto.transport.resume_reading()
    assert wait_until(lambda: len(proto.data) == paused_at + 100_000, 5.0), len(proto.data)
    assert proto.transport.is_reading() or proto.eof.is_set()
    assert proto.eof.wait(5.0)
    assert bytes(proto.data) == b"first" + b"p" * 100_000
    data, error = recv_until_end(client)  # eof_received returned None: the server closes
    assert (data, error) == (b"", None)
    collector.assert_all_lost_once()


@pytest.mark.parametrize("tail", [b"", b"more"], ids=["eof_alone", "data_then_eof"])
def test_eof_is_not_delivered_while_reading_is_paused(server, connect, tail):
    """The peer's EOF is part of the stream: like its data, it waits for resume_reading(), and
    comes after every byte held back by the pause."""
    collector = Collector(lambda: Pausable(pause_in_callback=False))
    srv = server(collector)
    client = connect(srv.port)
    (proto,) = collector.wait_for(1)
    client.sendall(b"first")
    assert proto.first.wait(5.0)
    proto.transport.pause_reading()  # from this thread, while the server waits for input
    assert wait_until(lambda: not proto.transport.is_reading(), 5.0)
    proto.allowed = False
    time.sleep(0.1)
    client.sendall(tail)
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.5)
    assert not proto.eof.is_set(), "eof_received delivered while reading was paused"
    proto.allowed = True
    proto.transport.resume_reading()
    assert proto.eof.wait(5.0)
    assert bytes(proto.data) == b"first" + tail
    data, error = recv_until_end(client)
    assert (data, error) == (b"", None)
    collector.assert_all_lost_once()
