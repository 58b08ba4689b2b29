"""How connections end: half-close both ways, graceful close, abort, and a peer's reset."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from .support import (
    Collector,
    EchoProbe,
    Probe,
    digest,
    recv_until_end,
    reset_close,
    round_trip,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


class ReplyOnEof(Probe):
    """Keeps the connection open on the peer's EOF (returns True), then answers with the
    number of bytes it received and closes — inline, or later from another thread."""

    def __init__(self, later: bool) -> None:
        super().__init__()
        self.later = later
        self.timer: threading.Timer | None = None

    def reply(self) -> None:
        self.transport.write(b"got %d" % self.received)
        self.transport.close()

    def on_eof(self) -> bool:
        if self.later:
            self.timer = threading.Timer(0.2, self.reply)
            self.timer.start()
        else:
            self.reply()
        return True


@pytest.mark.parametrize("when", ["inline", "later"])
def test_half_close_delivers_eof_and_server_can_still_reply(server, connect, when):
    collector = Collector(lambda: ReplyOnEof(later=when == "later"))
    srv = server(collector)
    client = connect(srv.port)
    client.sendall(b"hello" * 1000)
    client.shutdown(socket.SHUT_WR)
    data, error = recv_until_end(client)
    assert (data, error) == (b"got 5000", None)
    (proto,) = collector.wait_for(1)
    if proto.timer is not None:
        proto.timer.join()
    collector.assert_all_lost_once()
    assert proto.eof.is_set()
    assert proto.lost_exc is None


class EchoOrBlast(EchoProbe):
    """Echoes, except that the message ``BLAST`` starts a 16 MiB transfer to the client."""

    def on_data(self, data: bytes) -> None:
        if data == b"BLAST":
            self.transport.write(b"s" * 16 * MiB)
        else:
            super().on_data(data)


@pytest.mark.parametrize("direction", ["client_sending", "server_sending"])
def test_peer_reset_mid_transfer_calls_connection_lost_once(server, connect, direction):
    collector = Collector(EchoOrBlast)
    srv = server(collector)
    bystander = connect(srv.port)
    assert round_trip(bystander, b"before") == b"before"
    victim = connect(srv.port)
    _, victim_proto = collector.wait_for(2)
    if direction == "client_sending":
        victim.sendall(b"c" * MiB)  # its echo is never read
        assert wait_until(lambda: victim_proto.received > 0, 5.0)
    else:
        victim.sendall(b"BLAST")
        assert victim.recv(65536)  # the transfer has started
    reset_close(victim)
    assert victim_proto.lost.wait(5.0), "connection_lost not called after the peer's reset"
    time.sleep(0.2)  # room for a second, wrong call
    assert victim_proto.lost_calls == 1
    assert isinstance(victim_proto.lost_exc, OSError), victim_proto.lost_exc
    # The server keeps serving: the bystander and a newcomer.
    assert round_trip(bystander, b"after") == b"after"
    assert round_trip(connect(srv.port)) == b"ping"
    assert collector.violations() == []


class WriteThenClose(Probe):
    """Writes ``payload`` in connection_made — in one write or many — then closes at once."""

    def __init__(self, payload: bytes, pieces: int) -> None:
        super().__init__()
        self.payload = payload
        self.pieces = pieces

    def on_made(self) -> None:
        step = -(-len(self.payload) // self.pieces)
        view = memoryview(self.payload)
        for i in range(0, len(self.payload), step):
            self.transport.write(view[i:i + step])
        self.transport.close()
        if not self.transport.is_closing():
            self.violations.append("is_closing() false after close()")


@pytest.mark.parametrize("pieces", [1, 2048], ids=["one_write", "many_writes"])
def test_graceful_close_delivers_every_byte(server, connect, pieces):
    payload = random.Random(pieces).randbytes(8 * MiB)
    collector = Collector(lambda: WriteThenClose(payload, pieces))
    srv = server(collector)
    client = connect(srv.port)
    time.sleep(0.2)  # let the server's buffer fill while nobody reads
    data, error = recv_until_end(client)
    assert error is None
    assert digest(data) == digest(payload)
    collector.assert_all_lost_once()
    assert collector.protocols[0].lost_exc is None


class AbortOnData(Probe):
    """Optionally queues a large write on connect; aborts on the first data received."""

    def __init__(self, pending: int) -> None:
        super().__init__()
        self.pending = pending

    def on_made(self) -> None:
        if self.pending:
            self.transport.write(b"p" * self.pending)

    def on_data(self, data: bytes) -> None:
        self.transport.abort()
        if not self.transport.is_closing():
            self.violations.append("is_closing() false after abort()")


@pytest.mark.parametrize("pending", [0, 8 * MiB], ids=["idle", "unsent_data"])
def test_abort_resets_the_peer(server, connect, pending):
    collector = Collector(lambda: AbortOnData(pending))
    srv = server(collector)
    client = connect(srv.port, rcvbuf=65536)  # so most of the 8 MiB stays in the server
    (proto,) = collector.wait_for(1)
    time.sleep(0.1)  # with unsent data: let the server's buffers fill while nobody reads
    client.sendall(b"go")
    assert proto.lost.wait(5.0)  # read only once the abort is done: nothing may follow it
    data, error = recv_until_end(client)
    assert isinstance(error, ConnectionResetError), f"{len(data)} bytes then {error!r}"
    if pending:  # at most what our small receive buffer held; the rest was dropped
        assert len(data) < MiB, "abort() must drop what is still unsent"
    collector.assert_all_lost_once()
    assert proto.lost_exc is None  # asyncio: abort() is not an error


class WriteEof(Probe):
    """Sends ``size`` bytes then write_eof(); keeps receiving after it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.can_write_eof: bool | None = None
        self.write_after_eof: BaseException | None = None
        self.data = bytearray()

    def on_made(self) -> None:
        self.can_write_eof = self.transport.can_write_eof()
        self.transport.write(b"d" * self.size)
        self.transport.write_eof()
        try:
            self.transport.write(b"too late")
        except RuntimeError as exc:  # asyncio refuses a write after write_eof()
            self.write_after_eof = exc

    def on_data(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("size", [5, 8 * MiB], ids=["small", "large"])
def test_write_eof_half_closes_and_keeps_receiving(server, connect, size):
    collector = Collector(lambda: WriteEof(size))
    srv = server(collector)
    client = connect(srv.port)
    (proto,) = collector.wait_for(1)
    data, error = recv_until_end(client)
    assert (len(data), error) == (size, None)
    assert data == b"d" * size
    # Our direction is still open: the server still receives.
    client.sendall(b"after eof")
    assert wait_until(lambda: bytes(proto.data) == b"after eof", 5.0), bytes(proto.data)
    assert not proto.lost.is_set()
    client.shutdown(socket.SHUT_WR)
    assert proto.eof.wait(5.0)
    collector.assert_all_lost_once()
    assert proto.can_write_eof is True
    assert isinstance(proto.write_after_eof, RuntimeError)


class CloseThenWrite(Probe):
    """On data: close(), then write — the write must vanish without an exception."""

    def __init__(self) -> None:
        super().__init__()
        self.write_errors: list[BaseException] = []

    def on_data(self, data: bytes) -> None:
        self.transport.close()
        self.try_write(b"after close")

    def on_lost(self, exc: BaseException | None) -> None:
        self.try_write(b"in connection_lost")

    def try_write(self, data: bytes) -> None:
        try:
            self.transport.write(data)
        except BaseException as exc:  # noqa: BLE001 - any exception is the failure
            self.write_errors.append(exc)


def test_writes_after_close_are_dropped_and_connection_lost_once(server, connect):
    collector = Collector(CloseThenWrite)
    srv = server(collector)
    client = connect(srv.port)
    client.sendall(b"x")
    data, error = recv_until_end(client)
    assert (data, error) == (b"", None)
    (proto,) = collector.wait_for(1)
    assert proto.lost.wait(5.0)
    proto.try_write(b"from another thread, after connection_lost")
    proto.transport.close()  # idempotent, from any thread
    proto.transport.abort()
    time.sleep(0.2)
    collector.assert_all_lost_once()
    assert proto.write_errors == []
    assert proto.transport.is_closing()


def test_graceful_close_delivers_every_byte_to_a_peer_that_keeps_sending(server, connect):
    """close() with bytes still queued while the peer is still sending: a socket closed with
    unread input, or receiving data after close(), makes the kernel answer with a reset that
    throws away everything not yet acknowledged. Nothing written may be lost that way."""
    payload = random.Random(3).randbytes(4 * MiB)
    collector = Collector(lambda: WriteThenClose(payload, 1))
    srv = server(collector)
    client = connect(srv.port, rcvbuf=65536)  # a slow window: most bytes wait in the server
    (proto,) = collector.wait_for(1)
    client.setblocking(False)
    received = bytearray()
    end: BaseException | None | str = "open"
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        try:  # keep talking: the server stopped reading at close(), its kernel did not
            client.send(b"chatter" * 100)
        except BlockingIOError:
            pass
        except OSError:
            pass
        try:
            data = client.recv(16384)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError as exc:
            end = exc
            break
        if not data:
            end = None
            break
        received += data
    assert end is None, f"{len(received)} of {len(payload)} bytes, then {end!r}"
    assert digest(bytes(received)) == digest(payload)
    collector.assert_all_lost_once()


class CloseOnData(Probe):
    def on_data(self, data: bytes) -> None:
        self.transport.write(b"last words")
        self.transport.close()


def test_linger_zero_makes_every_close_a_reset(server, connect):
    collector = Collector(CloseOnData)
    srv = server(collector, linger=0)
    client = connect(srv.port)
    client.sendall(b"bye")
    (proto,) = collector.wait_for(1)
    assert proto.lost.wait(5.0)
    data, error = recv_until_end(client)
    assert isinstance(error, ConnectionResetError), f"{data!r} then {error!r}"
    collector.assert_all_lost_once()


class BigKernelBufferWriteThenClose(WriteThenClose):
    def on_made(self) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        super().on_made()


def test_linger_bounds_a_graceful_close_to_a_peer_that_never_reads(server, connect):
    # Small enough to leave the transport for the kernel at once, too big for the peer's window:
    # what remains is the kernel's lingering, which linger=0.5 bounds.
    collector = Collector(lambda: BigKernelBufferWriteThenClose(b"z" * 300_000, 1))
    srv = server(collector, linger=0.5)
    client = connect(srv.port, rcvbuf=65536)  # and never read: the bytes cannot all leave
    (proto,) = collector.wait_for(1)
    start = time.monotonic()
    assert proto.lost.wait(5.0), "the close lingers past its linger time"
    assert 0.4 < time.monotonic() - start < 3.0
    collector.assert_all_lost_once()
    assert srv.connections == 0
    data, error = recv_until_end(client)  # what got through, then the reset that ended it
    assert len(data) < 300_000
    assert isinstance(error, ConnectionResetError), f"{len(data)} bytes then {error!r}"
