"""``StopRequest``: the stop flag ``ioladder serve`` and its worker processes set from signal
handlers. A ``threading.Event`` there deadlocked: a handler that runs while the main thread is
inside the same event's ``wait()`` bookkeeping waits in ``set()`` for a lock its own thread
holds (seen as ``ioladder serve`` ignoring SIGTERM)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from ioladder.server import StopRequest

#: A main thread that waits in short slices, as the CLI's loop does, with SIGUSR1 setting the
#: stop request and SIGUSR2 ending the loop through a plain list (no lock): it answers SIGUSR2
#: only if no SIGUSR1 handler ever got stuck.
HAMMERED = """
import signal, sys
from ioladder.server import StopRequest
stop = StopRequest.on_signals(signal.SIGUSR1)
done = []
signal.signal(signal.SIGUSR2, lambda *a: done.append(1))
print("ready", flush=True)
while not done:
    stop.wait(0.0001)
print("set" if stop.is_set() else "not set", flush=True)
"""


def test_set_from_signal_handlers_never_hangs_the_waiting_thread() -> None:
    # 200 signals into a thread that spends much of its time in wait()'s own code: with a
    # threading.Event in StopRequest's place this hangs in the first few dozen, every time.
    proc = subprocess.Popen([sys.executable, "-c", HAMMERED], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(200):
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.0005)
        proc.send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and out.strip() == "set"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_times_out_until_set_and_then_stays_set() -> None:
    stop = StopRequest()
    try:
        t0 = time.monotonic()
        assert stop.wait(0.05) is False and not stop.is_set()
        assert time.monotonic() - t0 >= 0.04
        stop.set()
        stop.set()  # idempotent
        assert stop.wait(0) and stop.wait(5) and stop.is_set()
    finally:
        stop.close()


def test_set_from_another_thread_wakes_a_waiter_at_once() -> None:
    stop = StopRequest()
    try:
        timer = threading.Timer(0.1, stop.set)
        timer.start()
        t0 = time.monotonic()
        assert stop.wait(10)
        assert time.monotonic() - t0 < 5
        timer.join()
    finally:
        stop.close()


def test_works_with_descriptors_past_fd_setsize() -> None:
    # a server process may hold thousands of sockets when it makes one (select() stops at 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"RLIMIT_NOFILE {soft} < 1200")
    null = os.open(os.devnull, os.O_RDONLY)
    fillers = [os.dup(null) for _ in range(1100)]
    try:
        stop = StopRequest()
        try:
            assert stop._r > 1024
            assert not stop.wait(0.01)
            stop.set()
            assert stop.wait(1)
        finally:
            stop.close()
    finally:
        for fd in [*fillers, null]:
            os.close(fd)


def test_is_set_from_another_thread_while_the_main_thread_waits() -> None:
    # a worker's lifeline thread asks is_set() and sets it while the main thread waits in it
    stop = StopRequest()
    errors: list[BaseException] = []

    def watcher() -> None:
        try:
            for _ in range(50):
                assert not stop.is_set()
                time.sleep(0.002)
            stop.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    try:
        t = threading.Thread(target=watcher)
        t.start()
        assert stop.wait(10)
        t.join(10)
        assert not errors, errors
    finally:
        stop.close()
