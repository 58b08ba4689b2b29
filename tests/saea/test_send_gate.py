"""The transport's send gate (``Transport._send_gate``, ``ioladder/_transport.c``).

A gate lets ``write()`` send at once with a non-blocking ``send()`` instead of handing the bytes
to the driver. Any object with a ``sync_send`` attribute is a gate; the io_uring ring also
publishes a C entry (``ioladder/_sendgate.h``) that the transport calls instead of reading the
attribute. Both ways must decide the same: these cases drive a real transport over a real
socket pair with each, and check where the bytes went.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ioladder.kernel import uring
from ioladder.transport import Transport


class _Driver:
    """The least a driver is for ``write()``: it records the flushes it was asked to start."""

    name = "test"

    def __init__(self) -> None:
        self.started: list[Transport] = []

    def start_send(self, conn: Transport) -> None:
        self.started.append(conn)


class _Gate:
    sync_send = False


@pytest.fixture
def pair() -> Iterator[tuple[Transport, _Driver, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(5.0)
    driver = _Driver()
    transport = Transport(a, asyncio.Protocol, driver)  # type: ignore[arg-type]
    transport._ctx_tid = threading.get_ident()
    try:
        yield transport, driver, b
    finally:
        a.close()
        b.close()


def _pending(b: socket.socket) -> bytes:
    b.setblocking(False)
    try:
        return b.recv(4096)
    except BlockingIOError:
        return b""
    finally:
        b.settimeout(5.0)


def test_a_python_gate_is_read_at_each_write(pair: tuple[Any, _Driver, socket.socket]) -> None:
    transport, driver, peer = pair
    gate = _Gate()
    transport._send_gate = gate
    assert transport._send_gate is gate
    gate.sync_send = True
    transport.write(b"now")
    assert peer.recv(16) == b"now" and driver.started == []
    gate.sync_send = False
    transport.write(b"later")
    assert driver.started == [transport] and _pending(peer) == b""
    assert transport.get_write_buffer_size() == 5


def test_a_gate_that_raises_fails_the_write(pair: tuple[Any, _Driver, socket.socket]) -> None:
    transport, driver, peer = pair

    class Broken:
        @property
        def sync_send(self) -> bool:
            raise RuntimeError("gate broken")

    transport._send_gate = Broken()
    with pytest.raises(RuntimeError, match="gate broken"):
        transport.write(b"x")
    transport._send_gate = None  # no gate: the driver flushes
    transport.write(b"y")
    assert driver.started == [transport]


def test_the_ring_gate_opens_only_inside_a_small_dispatch_batch(
        pair: tuple[Any, _Driver, socket.socket]) -> None:
    why = uring.availability()
    if why is not None:
        pytest.skip(why)
    transport, driver, peer = pair
    with uring.Ring(8) as ring:
        assert isinstance(getattr(type(ring), "_sendgate_c", None), type(uring.Ring._sendgate_c))
        transport._send_gate = ring
        ring.sync_send_batch = 1
        transport.write(b"outside")  # no batch running: the gate is shut
        assert driver.started == [transport] and _pending(peer) == b""
        driver.started.clear()
        transport._buffer.clear()
        transport._buffer_size = 0
        transport._sending = False

        def one(res: int, flags: int) -> None:
            transport.write(b"inside")

        ring.prep_nop(one)
        assert ring.dispatch(1, 5.0) == 1
        assert peer.recv(16) == b"inside" and driver.started == []

        def two(res: int, flags: int) -> None:
            transport.write(b"big")

        ring.prep_nop(two)
        ring.prep_nop(two)
        assert ring.dispatch(2, 5.0) == 2  # a batch of 2 > sync_send_batch: the driver sends
        assert driver.started == [transport] and _pending(peer) == b""
        assert transport.get_write_buffer_size() == 6


def test_the_ring_gate_starts_a_flush_with_the_send_ctx(
        pair: tuple[Any, _Driver, socket.socket]) -> None:
    """With ``_send_ctx`` set to a ``SendContext``, a flush's send is submitted from C (the
    driver's ``start_send`` is not called) and its completion continues the flush in C."""
    why = uring.availability()
    if why is not None:
        pytest.skip(why)
    transport, driver, peer = pair

    class St(uring.RecvContext):
        __slots__ = ()

    class Tx(uring.SendContext):
        __slots__ = ("slow",)

        def _complete(self, res: int, flags: int) -> None:
            self.slow.append(res)

    st, tx = St(), Tx()
    tx.slow = []
    st.conn, st.fd, st.ops, tx.st = transport, transport._fd, 0, st
    with uring.Ring(8) as ring:
        transport._send_gate = ring
        transport._send_ctx = tx
        ring.sync_send_batch = 0  # never synchronous: every flush goes through the ring
        transport.write(b"one")
        transport.write(b"two")  # buffered behind the send in flight
        assert driver.started == [] and st.ops == 1 and _pending(peer) == b""
        while st.ops:
            assert ring.dispatch(1, 5.0, "_complete") == 1
        got = b""
        while len(got) < 6:
            got += peer.recv(16)
        assert got == b"onetwo" and tx.slow == [] and transport.get_write_buffer_size() == 0
        assert not transport._sending
        st.closing = True  # the driver is closing: flushes are its own again
        transport.write(b"x")
        assert driver.started == [transport] and st.ops == 0
