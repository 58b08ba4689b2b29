"""Client-side helpers the rung-specific tests share (real sockets on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"


def wait_for(pred: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll ``pred`` every 10 ms until it is true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; an EOF before that fails the test."""
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "EOF too early"
        got += chunk
    return got


def echo(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` and read back as many bytes."""
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def echo_round(port: int, payload: bytes) -> tuple[int, str]:
    """Send ``payload`` while reading the echo, half-close, read to EOF: (length, sha256)."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        digest = hashlib.sha256()
        total = 0
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        sender.join()
    return total, digest.hexdigest()


def echo_many(port: int, clients: int, size: int) -> list[bool]:
    """``clients`` concurrent echo_round()s of random ``size``-byte payloads: which matched."""
    payloads = [os.urandom(size) for _ in range(clients)]
    ok = [False] * clients

    def run(i: int) -> None:
        ok[i] = echo_round(port, payloads[i]) == (size, hashlib.sha256(payloads[i]).hexdigest())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ok
