"""Rung ``overlapped-routine`` (overlapped I/O with completion routines): every routine — and so
every protocol callback — runs on the thread that issued the op, only inside its alertable wait;
while that thread works, completions wait for it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import ioladder
from ioladder import rungs
from ioladder.apps.echo import EchoProtocol
from ioladder.rungs.overlapped_routine import Overlapped, OverlappedRoutineRung

from .support import HOST, recv_exactly, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(rungs.reason("overlapped-routine") is not None,
                       reason=f"overlapped-routine unavailable: "
                              f"{rungs.reason('overlapped-routine')}"),
]

MODEL = "overlapped-routine"
ROUTINES = ("_accept_done", "_backoff_done", "_recv_done", "_send_done", "_linger_tick")


class Recorder(asyncio.Protocol):
    """Echo that records, for each callback, the thread it ran on and whether the rung was
    inside its alertable wait at the time."""

    rung: OverlappedRoutineRung | None = None
    calls: list[tuple[str, int, bool]] = []
    made: list[Recorder] = []

    def _note(self, name: str) -> None:
        rung = Recorder.rung
        assert rung is not None
        Recorder.calls.append((name, threading.get_ident(), rung.in_alertable_wait()))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.lost = threading.Event()
        self._note("connection_made")
        Recorder.made.append(self)

    def data_received(self, data: bytes) -> None:
        self._note("data_received")
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> None:
        self._note("eof_received")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._note("connection_lost")
        self.lost.set()


def test_every_routine_runs_on_the_issuing_thread_inside_its_alertable_wait(monkeypatch):
    """Wrap every completion routine: each one runs on the thread that created the ring and
    issued the op, from within sleep_ex() — never on a client thread, never on the thread that
    called write() or shutdown(); the protocol's callbacks, which run inside routines (or user
    APCs), likewise."""
    seen: list[tuple[str, int, bool]] = []

    def traced(name: str):
        original = getattr(OverlappedRoutineRung, name)

        def routine(self, err, n, ov, flags):
            assert isinstance(ov, Overlapped)
            seen.append((name, threading.get_ident(), self.in_alertable_wait()))
            return original(self, err, n, ov, flags)
        return routine

    for name in ROUTINES:
        monkeypatch.setattr(OverlappedRoutineRung, name, traced(name))

    Recorder.calls = []
    Recorder.made = []
    srv = ioladder.serve(Recorder, HOST, 0, model=MODEL)
    rung = srv.rung
    Recorder.rung = rung
    cancel_done = rung._cancel_ov.routine   # the cancel ops' routine, bound at construction

    def traced_cancel(err, n, ov, flags):
        seen.append(("_cancel_done", threading.get_ident(), rung.in_alertable_wait()))
        return cancel_done(err, n, ov, flags)
    rung._cancel_ov.routine = traced_cancel
    issuing = rung._tid
    assert issuing is not None and issuing != threading.get_ident()
    try:
        clients = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(8)]
        assert wait_for(lambda: len(Recorder.made) == 8)
        for i, c in enumerate(clients):
            payload = bytes([i]) * 100_000   # large enough for several receives and sends
            sender = threading.Thread(target=c.sendall, args=(payload,))
            sender.start()
            assert recv_exactly(c, len(payload)) == payload
            sender.join()
        # A write from this thread is a user APC: it runs in the issuing thread's next wait.
        Recorder.made[0].transport.write(b"apc")
        assert recv_exactly(clients[0], 3) == b"apc"
        clients[1].shutdown(socket.SHUT_WR)   # eof_received, then a close: a cancel op
        assert Recorder.made[1].lost.wait(5)
        Recorder.made[2].transport.close()    # from this thread
        assert Recorder.made[2].lost.wait(5)
    finally:
        for c in clients:
            c.close()
        srv.shutdown(5)
    assert all(p.lost.is_set() for p in Recorder.made)
    names = {name for name, _, _ in seen}
    assert {"_accept_done", "_recv_done", "_send_done", "_cancel_done"} <= names
    assert all(tid == issuing for _, tid, _ in seen), "a routine ran on another thread"
    assert all(alertable for _, _, alertable in seen), "a routine ran outside sleep_ex()"
    kinds = {name for name, _, _ in Recorder.calls}
    assert {"connection_made", "data_received", "eof_received", "connection_lost"} <= kinds
    assert all(tid == issuing for _, tid, _ in Recorder.calls)
    assert all(alertable for _, _, alertable in Recorder.calls)
    stats = rung.stats()
    assert stats["apcs_run"] >= 2 and stats["routines_run"] >= len(seen)


def test_the_ring_refuses_every_thread_but_the_issuing_one():
    """Completions cannot be taken (nor ops issued) by another thread: the ring says so."""
    srv = ioladder.serve(EchoProtocol, HOST, 0, model=MODEL)
    try:
        with pytest.raises(RuntimeError):
            srv.rung._ring.reap()
        with pytest.raises(RuntimeError):
            srv.rung._ring.prep_nop(Overlapped(None))
    finally:
        srv.shutdown(5)


class Busy(asyncio.Protocol):
    """The first data_received on the connection marked slow keeps the thread working for
    0.4 s (no alertable wait meanwhile)."""

    log: list[tuple[str, float, float]] = []
    slow_started = threading.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        start = time.monotonic()
        if data == b"slow":
            Busy.slow_started.set()
            time.sleep(0.4)   # the thread is working: it is not alertable
        Busy.log.append((data.decode(), start, time.monotonic()))
        self.transport.write(data)  # type: ignore[attr-defined]


def test_completions_wait_while_the_issuing_thread_works():
    """The model's drawback, kept: a completion that arrives while the thread runs a routine is
    queued by the kernel and delivered only at the thread's next alertable wait."""
    Busy.log = []
    Busy.slow_started.clear()
    srv = ioladder.serve(Busy, HOST, 0, model=MODEL)
    try:
        a = socket.create_connection((HOST, srv.port), timeout=10)
        b = socket.create_connection((HOST, srv.port), timeout=10)
        time.sleep(0.1)   # both connected, both receives posted
        a.sendall(b"slow")
        assert Busy.slow_started.wait(5)
        b.sendall(b"fast")   # its receive completes in the kernel now...
        assert recv_exactly(b, 4) == b"fast"
        assert recv_exactly(a, 4) == b"slow"
        (_, _, slow_end), = [e for e in Busy.log if e[0] == "slow"]
        (_, fast_start, _), = [e for e in Busy.log if e[0] == "fast"]
        assert fast_start >= slow_end   # ...but its routine ran only after the slow one
        a.close()
        b.close()
    finally:
        srv.shutdown(5)
