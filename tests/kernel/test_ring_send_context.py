"""``SendContext``: a connection's sends completed, and continued, by ``Ring.dispatch`` in C.

While the owner (``st``, a ``RecvContext``) is not closing, a send's successful completion
becomes ``st.conn._on_sent(res)`` with ``st.ops`` counted down, and, when that returns True,
the next chunk (``st.conn._next_chunk()``) is sent from C (``st.ops`` counted up) or, if it is
not a buffer, handed to ``ctx._send_chunk``. Everything else reaches the ctx's own method.
Real ring, real socket pair.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ioladder.kernel import uring


@pytest.fixture
def ring() -> Iterator[Any]:
    why = uring.availability()
    if why is not None:
        pytest.skip(why)
    with uring.Ring(16) as r:
        yield r


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(5.0)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Conn:
    """What the fast path calls: _on_sent(n) -> more?, _next_chunk()."""

    def __init__(self, *chunks: Any) -> None:
        self.chunks = list(chunks)
        self.sent: list[int] = []

    def _on_sent(self, n: int) -> bool:
        self.sent.append(n)
        return bool(self.chunks)

    def _next_chunk(self) -> Any:
        return self.chunks.pop(0)


class St(uring.RecvContext):
    __slots__ = ()


class Tx(uring.SendContext):
    __slots__ = ("slow", "other")

    def __init__(self) -> None:
        self.slow: list[tuple[int, int]] = []
        self.other: list[Any] = []

    def _complete(self, res: int, flags: int) -> None:
        self.slow.append((res, flags))

    def _send_chunk(self, chunk: Any) -> None:
        self.other.append(chunk)


def _conn(fd: int, conn: Any) -> tuple[St, Tx]:
    st, tx = St(), Tx()
    st.conn, st.fd, st.ops = conn, fd, 1
    tx.st = st
    return st, tx


def test_a_successful_send_is_completed_in_c(ring: Any, pair: Any) -> None:
    a, b = pair
    conn = Conn()
    st, tx = _conn(a.fileno(), conn)
    ring.prep_send(a.fileno(), b"hello", tx)
    assert ring.dispatch(1, 5.0, "_complete") == 1
    assert conn.sent == [5] and st.ops == 0 and tx.slow == []
    assert b.recv(16) == b"hello"


def test_the_next_chunk_is_sent_from_c_until_none_remains(ring: Any, pair: Any) -> None:
    a, b = pair
    conn = Conn(b"two", memoryview(b"three"))
    st, tx = _conn(a.fileno(), conn)
    ring.prep_send(a.fileno(), b"one", tx)
    got = b""
    for expect_ops in (1, 1, 0):
        assert ring.dispatch(1, 5.0, "_complete") == 1
        assert st.ops == expect_ops
    while len(got) < 11:
        got += b.recv(16)
    assert got == b"onetwothree" and conn.sent == [3, 3, 5] and tx.slow == []


def test_a_chunk_that_is_not_a_buffer_goes_to_send_chunk(ring: Any, pair: Any) -> None:
    a, b = pair
    span = object()
    conn = Conn(span)
    st, tx = _conn(a.fileno(), conn)
    ring.prep_send(a.fileno(), b"x", tx)
    assert ring.dispatch(1, 5.0, "_complete") == 1
    assert tx.other == [span] and st.ops == 0 and tx.slow == []


def test_closing_errors_and_strangers_go_to_the_method(ring: Any, pair: Any) -> None:
    a, b = pair
    conn = Conn()
    st, tx = _conn(a.fileno(), conn)
    st.closing = True
    ring.prep_send(a.fileno(), b"x", tx)
    assert ring.dispatch(1, 5.0, "_complete") == 1
    assert tx.slow == [(1, 0)] and conn.sent == [] and st.ops == 1
    st.closing = False
    tx.st = object()  # not a RecvContext: nothing to count with
    ring.prep_send(a.fileno(), b"y", tx)
    assert ring.dispatch(1, 5.0, "_complete") == 1
    assert tx.slow[-1] == (1, 0) and conn.sent == []
    tx.st = st
    b.close()
    ring.prep_send(a.fileno(), b"z", tx)
    assert ring.dispatch(1, 5.0, "_complete") == 1
    res, _ = tx.slow[-1]
    assert res < 0 and conn.sent == []


def test_a_raising_on_sent_is_a_raising_callback(ring: Any, pair: Any) -> None:
    a, b = pair

    class Broken(Conn):
        def _on_sent(self, n: int) -> bool:
            raise RuntimeError("boom")

    st, tx = _conn(a.fileno(), Broken())
    errors: list[tuple[BaseException, Any]] = []
    ring.prep_send(a.fileno(), b"x", tx)
    assert ring.dispatch(1, 5.0, "_complete", lambda exc, ctx: errors.append((exc, ctx))) == 1
    assert len(errors) == 1 and str(errors[0][0]) == "boom" and errors[0][1] is tx
    assert st.ops == 0 and tx.slow == []
