"""Fixtures of the conformance suite.

``rung`` is parametrized over every registered rung (``ioladder.rungs.names()``), so a new
rung runs the whole suite without touching it; a rung that cannot run here is skipped with its
own reason. ``server`` starts ``ioladder.serve(..., model=rung)`` and always shuts it down;
``connect`` opens client sockets that are always closed. Around every test a guard checks that
no thread was left behind.

``IOLADDER_RUNGS=epoll,select`` limits the run to those rungs (while working on one).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ioladder
from ioladder import rungs

from .support import HOST, wait_until


def _rungs() -> list[str]:
    chosen = os.environ.get("IOLADDER_RUNGS")
    if not chosen:
        return rungs.names()
    wanted = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(rungs.names()))
    if unknown:
        raise pytest.UsageError(f"IOLADDER_RUNGS names unknown rungs: {unknown}")
    return wanted


@pytest.fixture(params=_rungs())
def rung(request: pytest.FixtureRequest) -> str:
    name = request.param
    why = rungs.reason(name)
    if why is not None:
        pytest.skip(f"rung {name!r} is unavailable here: {why}")
    return name


@pytest.fixture
def server(rung: str) -> Iterator[Callable[..., ioladder.Server]]:
    """``server(factory, **opts)`` -> a started :class:`ioladder.Server` on this rung."""
    started: list[ioladder.Server] = []

    def start(factory: Callable[[], Any], **opts: Any) -> ioladder.Server:
        srv = ioladder.serve(factory, HOST, 0, model=rung, **opts)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.shutdown(timeout=5.0)


@pytest.fixture
def connect() -> Iterator[Callable[..., socket.socket]]:
    """``connect(port, timeout=10, rcvbuf=None)`` -> a connected, blocking client socket."""
    socks: list[socket.socket] = []

    def _connect(port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(sock)
        if rcvbuf is not None:  # before connect(), so the window is negotiated small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        return sock

    yield _connect
    for sock in socks:
        sock.close()


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Every thread a test (or a server it started) created is gone after its teardown."""
    before = set(threading.enumerate())
    yield
    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]
    wait_until(lambda: not leaked(), timeout=5.0)
    assert not leaked(), f"threads left behind: {[t.name for t in leaked()]}"
