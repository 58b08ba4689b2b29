"""Fixtures for the io_uring ring tests: real rings, real loopback sockets on 127.0.0.1.

Every test here is skipped, with the exact reason, where io_uring cannot be used (see
``uring.availability()``), except those marked ``without_uring``. Every socket, ring and thread a
fixture makes is closed/joined at teardown; waits are always bounded.
"""

from __future__ import annotations

import socket
import time

import pytest

from ioladder.kernel import uring


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "without_uring: runs even where io_uring is unavailable"
    )


@pytest.fixture(autouse=True)
def _require_uring(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("without_uring"):
        return
    reason = uring.availability()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")


class Rings:
    """Makes rings and closes them all at teardown."""

    def __init__(self) -> None:
        self.rings: list[uring.Ring] = []

    def __call__(self, *args, **kwargs) -> uring.Ring:
        ring = uring.Ring(*args, **kwargs)
        self.rings.append(ring)
        return ring

    def close(self) -> None:
        for ring in self.rings:
            ring.close()


@pytest.fixture
def make_ring():
    rings = Rings()
    yield rings
    rings.close()


@pytest.fixture
def ring(make_ring) -> uring.Ring:
    return make_ring(64)


class Sockets:
    """Loopback TCP sockets, all closed at teardown."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def keep(self, sock: socket.socket) -> socket.socket:
        self.socks.append(sock)
        return sock

    def listener(self, backlog: int = 128, port: int = 0) -> socket.socket:
        s = self.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(backlog)
        return s

    def client(self, addr) -> socket.socket:
        c = self.keep(socket.create_connection(addr, timeout=5))
        return c

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected TCP pair (client, server side), both blocking with a 5 s timeout."""
        lst = self.listener()
        c = self.client(lst.getsockname())
        s, _ = lst.accept()
        self.keep(s)
        s.settimeout(5)
        return c, s

    def adopt_fd(self, fd: int) -> socket.socket:
        return self.keep(socket.socket(fileno=fd))

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def socks():
    s = Sockets()
    yield s
    s.close()


def _collect(ring: uring.Ring, n: int, timeout: float = 5.0) -> list[tuple]:
    """Wait until n completions arrived (or fail after timeout)."""
    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(out)} of {n} completions within {timeout}s: {out}")
        out += ring.wait(n - len(out), timeout=left)
    return out


@pytest.fixture
def collect():
    return _collect
