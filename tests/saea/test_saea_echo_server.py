"""The .NET-style echo server of ``docs/saea.md``, executed from the document itself: many
concurrent clients, every byte checked by digest, the pool bounding the connections."""

from __future__ import annotations

import hashlib
import os
import re
import selectors
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ioladder.saea import CompletionEngine

from .conftest import HOST, wait_until

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[2] / "docs" / "saea.md"


def load_example() -> dict[str, Any]:
    text = DOC.read_text()
    section = text[text.index("## Example: the .NET echo server"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/saea.md lost its echo server example"
    namespace: dict[str, Any] = {"__name__": "saea_doc_example"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace


def echo_clients(port: int, payloads: list[bytes], timeout: float = 30.0) -> list[bytes]:
    """One connection per payload, all at once: send it, half-close, read to EOF."""
    sel = selectors.DefaultSelector()
    state = []
    for payload in payloads:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((HOST, port))
        entry = {"sock": sock, "payload": memoryview(payload), "sent": 0, "got": bytearray(),
                 "done": False}
        state.append(entry)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, entry)
    deadline = time.monotonic() + timeout
    try:
        while not all(s["done"] for s in state):
            assert time.monotonic() < deadline, "echo clients timed out"
            for key, events in sel.select(0.5):
                s = key.data
                if events & selectors.EVENT_WRITE and s["sent"] < len(s["payload"]):
                    try:
                        s["sent"] += s["sock"].send(s["payload"][s["sent"]:s["sent"] + 65536])
                    except BlockingIOError:
                        pass
                    if s["sent"] == len(s["payload"]):
                        s["sock"].shutdown(socket.SHUT_WR)
                        sel.modify(s["sock"], selectors.EVENT_READ, s)
                if events & selectors.EVENT_READ:
                    try:
                        data = s["sock"].recv(65536)
                    except BlockingIOError:
                        continue
                    if data:
                        s["got"] += data
                    else:
                        s["done"] = True
                        sel.unregister(s["sock"])
    finally:
        for s in state:
            s["sock"].close()
        sel.close()
    return [bytes(s["got"]) for s in state]


@pytest.fixture
def example() -> dict[str, Any]:
    return load_example()


def test_docs_echo_server_echoes_many_clients(example):
    engine = CompletionEngine(512, name="test-saea-echo")
    server = example["EchoServer"](max_connections=64, segment_size=1024, engine=engine)
    try:
        host, port = server.start((HOST, 0))
        payloads = [os.urandom(n) for n in [1, 1023, 1024, 1025, 70_000, 1_000_000] * 8]
        results = echo_clients(port, payloads)
        for sent, got in zip(payloads, results, strict=True):
            assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
        assert wait_until(lambda: server.connected == 0, 5.0)
        assert server.total_bytes == sum(map(len, payloads))
        assert len(server.pool) == 64  # every args came back
        assert server.buffers.free_segments == 0  # segments stay with their args
        assert server.refused == 0
    finally:
        server.stop()
        engine.close()


def test_docs_echo_server_refuses_beyond_the_pool(example):
    engine = CompletionEngine(256, name="test-saea-echo")
    server = example["EchoServer"](max_connections=2, segment_size=512, engine=engine)
    held: list[socket.socket] = []
    try:
        _, port = server.start((HOST, 0))
        for _ in range(2):
            sock = socket.create_connection((HOST, port), timeout=5.0)
            held.append(sock)
            sock.sendall(b"hi")
            assert sock.recv(16) == b"hi"
        extra = socket.create_connection((HOST, port), timeout=5.0)
        held.append(extra)
        assert extra.recv(16) == b""  # refused: closed without a byte
        assert wait_until(lambda: server.refused == 1, 5.0)
        assert server.pool.try_acquire() is None
        held[0].close()
        assert wait_until(lambda: server.connected == 1, 5.0)
        newcomer = socket.create_connection((HOST, port), timeout=5.0)
        held.append(newcomer)
        newcomer.sendall(b"back")
        assert newcomer.recv(16) == b"back"
    finally:
        for sock in held:
            sock.close()
        server.stop()
        engine.close()
