"""Fixtures for the completion-port API tests: real ports (one io_uring ring each) and real
loopback sockets on 127.0.0.1, all closed at teardown; no thread may outlive its test.

Skipped, with the exact reason, where io_uring cannot be used here.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ioladder.kernel import uring


@pytest.fixture(autouse=True)
def _require_uring() -> None:
    reason = uring.availability()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left behind: {[t.name for t in leaked]}"


@pytest.fixture
def make_port() -> Iterator[Callable[..., Any]]:
    """``make_port(concurrency=0)`` -> a CompletionPort closed at teardown."""
    from ioladder.iocp import CompletionPort

    ports: list[CompletionPort] = []

    def make(concurrency: int = 0, **kw: Any) -> CompletionPort:
        port = CompletionPort(concurrency, **kw)
        ports.append(port)
        return port

    yield make
    for port in ports:
        port.close()


class Sockets:
    """Loopback TCP sockets, all closed at teardown."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def keep(self, sock: socket.socket) -> socket.socket:
        self.socks.append(sock)
        return sock

    def listener(self) -> socket.socket:
        s = self.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        return s

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected pair (client, server side), blocking with a 5 s timeout."""
        lst = self.listener()
        c = self.keep(socket.create_connection(lst.getsockname(), timeout=5))
        s, _ = lst.accept()
        self.keep(s)
        s.settimeout(5)
        return c, s

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def socks() -> Iterator[Sockets]:
    s = Sockets()
    yield s
    s.close()
