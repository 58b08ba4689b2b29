"""Fixtures for the ``ioladder.saea`` API and ``saea`` rung tests.

Real io_uring rings and real sockets on 127.0.0.1, no mocks. Everything here is skipped, with
the exact reason, where the rung cannot run (io_uring disabled, an old kernel). Every engine,
socket and server a fixture makes is closed at teardown, every wait is bounded, and a guard
checks that no thread is left behind.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ioladder import rungs
from ioladder.saea import AsyncSocket, CompletionEngine, SocketAsyncEventArgs

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def _require_saea() -> None:
    why = rungs.reason("saea")
    if why is not None:
        pytest.skip(f"the saea rung is unavailable here: {why}")


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]
    wait_until(lambda: not leaked(), timeout=5.0)
    assert not leaked(), f"threads left behind: {[t.name for t in leaked()]}"


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


@pytest.fixture
def engine() -> Iterator[CompletionEngine]:
    eng = CompletionEngine(256, name="test-saea-engine")
    yield eng
    eng.close()
    assert not eng.thread.is_alive()


@pytest.fixture
def listener(engine: CompletionEngine) -> Iterator[AsyncSocket]:
    sock = AsyncSocket(engine=engine)
    sock.bind((HOST, 0))
    sock.listen(64)
    yield sock
    sock.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., socket.socket]]:
    """``clients(port)`` -> a connected blocking client socket, closed at teardown."""
    made: list[socket.socket] = []

    def connect(port: int, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close()


class Completions:
    """A ``completed`` handler that records ``(sender, op, error, bytes, thread)`` and lets a
    test wait for the n-th completion."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any, Any, int, str]] = []
        self._cond = threading.Condition()

    def __call__(self, sender: Any, e: SocketAsyncEventArgs) -> None:
        with self._cond:
            self.seen.append((sender, e.last_operation, e.socket_error, e.bytes_transferred,
                              threading.current_thread().name))
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[tuple[Any, Any, Any, int, str]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.seen) >= n, timeout):
                raise AssertionError(f"{len(self.seen)} completions, expected {n}")
            return list(self.seen)


@pytest.fixture
def completions() -> Completions:
    return Completions()


def accept_pair(listener: AsyncSocket, connect: Callable[..., socket.socket]
                ) -> tuple[AsyncSocket, socket.socket]:
    """A server-side AsyncSocket and its blocking client."""
    client = connect(listener.local_endpoint[1])
    e = SocketAsyncEventArgs()
    done = threading.Event()
    e.completed += lambda sender, args: done.set()
    if listener.accept_async(e):
        assert done.wait(5.0)
    assert e.accept_socket is not None, e.socket_error
    return e.accept_socket, client
