"""Threads (call_soon_threadsafe, executors, a loop run in another thread), signals, subprocesses,
and the ways to get the loop (Runner with loop_factory, the policy)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import ioladder.aio as aio

pytestmark = pytest.mark.timeout(60)


def test_call_soon_threadsafe_wakes_a_sleeping_loop(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        t0 = time.monotonic()

        def other():
            time.sleep(0.2)
            loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

        threading.Thread(target=other).start()
        ident = await fut  # the loop sleeps in io_uring_enter with no timer: only wake() ends it
        assert ident != threading.get_ident()
        assert time.monotonic() - t0 < 2.0

    run(main())


def test_many_threads_calling_soon(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        n = 0
        done = loop.create_future()

        def bump():
            nonlocal n
            n += 1
            if n == 8 * 500:
                done.set_result(None)

        def worker():
            for _ in range(500):
                loop.call_soon_threadsafe(bump)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()

    run(main())


def test_executor_and_to_thread(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, sum, range(10)) == 45
        assert await asyncio.to_thread(threading.get_ident) != threading.get_ident()
        results = await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.05)
                                         for _ in range(8)))
        assert results == [None] * 8

    run(main())


def _echo_once_server(loop):
    async def handler(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()
    return asyncio.start_server(handler, "127.0.0.1", 0)


def test_loop_created_in_one_thread_run_and_closed_in_others(fds):
    """The ring is made by the thread that first needs it, and replaced when the loop moves to
    another thread while idle; close() from a third thread leaves nothing open."""
    loop = aio.new_event_loop()
    result = {}

    def serve():
        async def main():
            server = await _echo_once_server(loop)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"from a thread")
            result["echo"] = await reader.read(100)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
        loop.run_until_complete(main())

    for _ in range(2):  # two threads in turn
        t = threading.Thread(target=serve)
        t.start()
        t.join()
        assert result.pop("echo") == b"from a thread"
    loop.run_until_complete(asyncio.sleep(0))  # and back in this one
    closer = threading.Thread(target=loop.close)
    closer.start()
    closer.join()
    assert loop.is_closed()


def test_moving_a_loop_with_a_serving_listener_between_threads(fds):
    loop = aio.new_event_loop()
    server = loop.run_until_complete(_echo_once_server(loop))  # accept armed in this thread
    port = server.sockets[0].getsockname()[1]
    got = {}

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"moved")
            got["echo"] = s.recv(100)
        loop.call_soon_threadsafe(loop.stop)

    def run_loop():
        threading.Thread(target=client).start()
        loop.run_forever()  # the accept is re-armed on this thread's ring

    t = threading.Thread(target=run_loop)
    t.start()
    t.join(20)
    assert got["echo"] == b"moved"
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


def test_moving_a_loop_with_a_send_in_flight_is_refused(fds):
    loop = aio.new_event_loop()
    a, b = socket.socketpair()
    a.setblocking(False)

    async def start():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        transport.write(b"x" * (16 << 20))  # far more than the socket buffer: a SEND waits
        return transport

    transport = loop.run_until_complete(start())
    errors = []

    def other():
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "another thread" in errors[0]
    transport.abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    b.close()


def test_signal_handler(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        try:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            assert await got == "usr1"  # the loop was asleep in io_uring_enter
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR2, main)
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, print)

    run(main())
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handlers_cannot_be_added_outside_the_main_thread(fds, loop):
    errors = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors


def test_runner_sigint_cancels_the_main_task(fds):
    """asyncio.Runner's Ctrl-C handling: the first SIGINT cancels the main task."""
    async def main():
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        await asyncio.sleep(10)

    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        assert type(runner.get_loop()).__name__ == "UringEventLoop"
        with pytest.raises(KeyboardInterrupt):
            runner.run(main())


def test_subprocess_exec_pipes_and_returncode(fds, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]);"
            "sys.stderr.write('err'); sys.exit(3)",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate(b"abc" * 100_000)
        assert out == (b"abc" * 100_000)[::-1] and err == b"err" and proc.returncode == 3

        proc = await asyncio.create_subprocess_shell("sleep 30")
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM

        proc = await asyncio.create_subprocess_exec("true")
        assert await proc.wait() == 0

    run(main())


def test_subprocess_many_at_once(fds, run):
    async def main():
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"print({i})", stdout=subprocess.PIPE) for i in range(10)]
        outs = await asyncio.gather(*(p.communicate() for p in procs))
        assert [int(o) for o, _ in outs] == list(range(10))

    run(main())


def test_read_and_write_pipes(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        rtransport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        wtransport, wproto = await loop.connect_write_pipe(asyncio.Protocol,
                                                           os.fdopen(w, "wb", 0))
        wtransport.write(b"through a pipe " * 10000)
        wtransport.close()
        data = await reader.read()
        assert data == b"through a pipe " * 10000
        rtransport.close()
        await asyncio.sleep(0)

    run(main())


def test_add_reader_and_writer_are_level_triggered(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            calls = []
            loop.add_reader(a, calls.append, "r")
            b.send(b"x")
            await asyncio.sleep(0.05)
            assert len(calls) > 3  # not consumed: reported every iteration
            a.recv(1)
            await asyncio.sleep(0.02)
            n = len(calls)
            await asyncio.sleep(0.05)
            assert len(calls) <= n + 1  # consumed: quiet
            assert loop.remove_reader(a)
            assert not loop.remove_reader(a)
            writable = loop.create_future()
            loop.add_writer(a.fileno(), lambda: writable.done() or writable.set_result(1))
            assert await writable == 1
            assert loop.remove_writer(a.fileno())
            key = loop._proactor.get_key
            with pytest.raises(KeyError):
                key(a.fileno())

    run(main())
