"""Bytes in, the same bytes out: echo through the shared transport on every rung."""

from __future__ import annotations

import asyncio
import random

import pytest

from ioladder.apps import EchoProtocol

from .support import Collector, Tracking, digest, run_echo_clients

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def random_payloads(count: int, largest: int, seed: int) -> list[bytes]:
    """``count`` random payloads, sizes log-uniform from 1 byte to ``largest`` (both ends
    included), so most connections are short and a few are large."""
    rng = random.Random(seed)
    top = largest.bit_length() - 1
    sizes = [1, largest] + [max(1, int(2 ** rng.uniform(0, top))) for _ in range(count - 2)]
    rng.shuffle(sizes)
    return [rng.randbytes(n) for n in sizes]


def test_echo_of_random_payloads_matches_by_digest(server, rung):
    payloads = random_payloads(200, 4 * MiB, seed=0x10_1add)
    srv = server(EchoProtocol)
    results = run_echo_clients(srv.port, payloads, timeout=45.0)
    assert results == [digest(p) for p in payloads]


class BufferedEcho(Tracking, asyncio.BufferedProtocol):
    """Echo as an ``asyncio.BufferedProtocol`` with a buffer smaller than one recv(), so the
    transport must fill ``get_buffer()`` several times per receive."""

    def __init__(self, size: int) -> None:
        self._init_tracking()
        self.buf = bytearray(size)
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self._callback("connection_made", ("new",)):
            self._made(transport)
        self.made.set()

    def get_buffer(self, sizehint: int) -> bytearray:
        with self._callback("get_buffer", ("made",)):
            return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        with self._callback("buffer_updated", ("made",)):
            if not 0 < nbytes <= len(self.buf):
                self.violations.append(f"buffer_updated({nbytes})")
            self.received += nbytes
            self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self) -> bool:
        with self._callback("eof_received", ("made",)):
            self.state = "eof"
        self.eof.set()
        return False

    def pause_writing(self) -> None:
        with self._callback("pause_writing", ("made", "eof")):
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        with self._callback("resume_writing", ("made", "eof")):
            self.transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        with self._callback("connection_lost", ("made", "eof")):
            self._lost(exc)
        self.lost.set()


@pytest.mark.parametrize("bufsize", [1000, 65536])
def test_buffered_protocol_echo_matches_by_digest(server, bufsize):
    payloads = random_payloads(20, MiB, seed=bufsize)
    collector = Collector(lambda: BufferedEcho(bufsize))
    srv = server(collector)
    results = run_echo_clients(srv.port, payloads)
    assert results == [digest(p) for p in payloads]
    collector.assert_all_lost_once()
    assert sorted(p.received for p in collector.protocols) == sorted(map(len, payloads))
