"""Fixtures for the ioladder.aio tests: real loops on real loopback sockets.

Every test is skipped, naming the cause, where io_uring cannot be used, except those marked
``without_uring`` (the fallback behaviour). ``run(coro)`` runs a coroutine on a fresh
:class:`~ioladder.aio.UringEventLoop` with a timeout and closes the loop; ``fds`` checks that a
test leaves no file descriptor behind.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import ioladder.aio as aio


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "without_uring: runs even where io_uring is unavailable")


@pytest.fixture(autouse=True)
def _require_uring(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("without_uring"):
        return
    reason = aio.availability()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fds() -> Iterator[Callable[[], set[int]]]:
    """Yields ``leaked()``; at teardown asserts no fd opened during the test is still open."""
    gc.collect()
    before = open_fds()

    def leaked() -> set[int]:
        gc.collect()
        return {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}

    yield leaked
    left = leaked()
    assert not left, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in left
                      if os.path.exists(f"/proc/self/fd/{fd}")}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = aio.new_event_loop()
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    def run_(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    return run_
