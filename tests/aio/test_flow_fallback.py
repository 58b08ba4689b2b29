"""Flow control in both directions, context variables, and the io_uring-unavailable fallback."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket

import pytest

import ioladder.aio as aio

pytestmark = pytest.mark.timeout(60)


def test_pause_reading_stops_the_kernel_and_keeps_order(fds, run):
    """While paused nothing is delivered and the kernel reads nothing more (the peer's sends
    back up); after resume every byte arrives once, in order."""
    async def main():
        loop = asyncio.get_running_loop()
        received = bytearray()

        class Slow(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                received.extend(data)

        a, b = socket.socketpair()
        b.setblocking(False)
        with b:
            transport, proto = await loop.create_connection(Slow, sock=a)
            b.send(b"before")
            while len(received) < 6:
                await asyncio.sleep(0.005)
            transport.pause_reading()
            assert not transport.is_reading()
            sent = 0
            chunk = bytes(range(256)) * 256
            try:
                while True:  # until the kernel buffers are full: nobody reads on the other side
                    sent += b.send(chunk)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.05)
            assert len(received) <= 6 + 64 * 1024  # at most what was already on its way
            transport.resume_reading()
            while len(received) < 6 + sent:
                await asyncio.sleep(0.005)
            assert bytes(received[6:]) == (chunk * (sent // len(chunk) + 1))[:sent]
            transport.close()

    run(main())


def test_pause_writing_when_the_peer_does_not_read(fds, run):
    async def main():
        loop = asyncio.get_running_loop()
        calls = []

        class Writer(asyncio.Protocol):
            def pause_writing(self):
                calls.append("pause")

            def resume_writing(self):
                calls.append("resume")

        a, b = socket.socketpair()
        b.setblocking(False)
        with b:
            transport, _ = await loop.create_connection(Writer, sock=a)
            transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            while not calls:
                transport.write(b"z" * 65536)
            assert calls == ["pause"] and transport.get_write_buffer_size() > 64 * 1024
            total = 0
            while calls == ["pause"]:
                try:
                    total += len(b.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert calls == ["pause", "resume"]
            assert transport.get_write_buffer_size() <= 16 * 1024
            transport.close()

    run(main())


def test_protocol_callbacks_run_in_the_transport_context(fds, run):
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        done = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                var.set("set in connection_made")

            def data_received(self, data):
                seen.append(var.get())
                done.set_result(None)

        a, b = socket.socketpair()
        with b:
            var.set("creator")
            transport, _ = await loop.create_connection(P, sock=a)
            b.send(b"x")
            await done
            assert var.get() == "creator"  # the protocol's changes stay in its own context
            transport.close()
        assert seen == ["set in connection_made"]

    run(main())


@pytest.mark.without_uring
def test_unavailable_io_uring_raises_naming_the_cause(monkeypatch):
    monkeypatch.setattr(aio, "availability", lambda: "kernel.io_uring_disabled is 2 (test)")
    with pytest.raises(aio.UringUnavailable, match="io_uring_disabled is 2") as info:
        aio.new_event_loop()
    assert isinstance(info.value, OSError)
    with pytest.raises(aio.UringUnavailable, match="io_uring_disabled"):
        aio.install()


@pytest.mark.without_uring
def test_install_fallback_logs_and_keeps_the_default_loop(monkeypatch, caplog):
    monkeypatch.setattr(aio, "availability", lambda: "blocked by seccomp (test)")
    asyncio.set_event_loop_policy(None)
    with caplog.at_level(logging.WARNING, logger="ioladder.aio"):
        assert aio.install(fallback=True) is False
    assert "blocked by seccomp (test)" in caplog.text
    assert not isinstance(asyncio.get_event_loop_policy(), aio.EventLoopPolicy)
    assert asyncio.run(asyncio.sleep(0, "default")) == "default"


def test_install_sets_the_policy(fds):
    try:
        assert aio.install() is True
        assert isinstance(asyncio.get_event_loop_policy(), aio.EventLoopPolicy)

        async def main():
            return type(asyncio.get_running_loop()).__name__

        assert asyncio.run(main()) == "UringEventLoop"
    finally:
        asyncio.set_event_loop_policy(None)


def test_runner_with_loop_factory(fds):
    async def main():
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop()).__name__

    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        assert runner.run(main()) == "UringEventLoop"
        assert runner.run(main()) == "UringEventLoop"  # the same loop, run twice
