"""Workers: N processes sharing one port with SO_REUSEPORT, supervised by a parent.

Load spreads across processes (each worker's ``http`` app stamps ``X-Worker-Pid`` when there is
more than one worker); a killed worker is replaced and serves; crash loops back off; SIGTERM to
the parent finishes a response in flight, stops every worker and exits 0; a parent that dies
takes its workers with it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

import ioladder
from ioladder import rungs
from ioladder.apps import AppOptions, EchoProtocol
from ioladder.workers import WorkerPool, restart_delay, serve_workers

MODEL = "epoll"
BIG_SIZE = 12 * 1024 * 1024  # well past loopback's 4 MiB send buffer: the server must wait
TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(rungs.reason(MODEL) is not None,
                                reason=f"rung {MODEL} unavailable: {rungs.reason(MODEL)}")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def worker_pid(port: int, path: str = "/") -> int:
    """GET ``path`` on a fresh connection; the pid of the worker that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"Hello, World!"
        return int(r.getheader("X-Worker-Pid"))
    finally:
        conn.close()


@pytest.fixture
def pool():  # noqa: ANN201 - a generator
    pools: list[WorkerPool] = []

    def start(workers: int, **kwargs: Any) -> WorkerPool:
        p = serve_workers(kwargs.pop("app", "http"), "127.0.0.1", 0, workers=workers,
                          model=MODEL, **kwargs)
        pools.append(p)
        return p
    yield start
    for p in pools:
        p.shutdown(5.0)


def test_restart_delay_backs_off() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert restart_delay(50) == 30.0


def test_load_spreads_across_processes(pool: Any) -> None:
    p = pool(3)
    pids = set(p.pids)
    assert len(pids) == 3 and os.getpid() not in pids
    seen: dict[int, int] = {}
    for _ in range(90):  # each a new connection: SO_REUSEPORT hashes it to one worker
        pid = worker_pid(p.port)
        seen[pid] = seen.get(pid, 0) + 1
    assert set(seen) == pids, seen  # every worker served, and only workers did
    # and concurrently: all connections open at once, every one answered
    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT)
             for _ in range(60)]
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        answered = set()
        for s in socks:
            data = b""
            while not data.endswith(b"Hello, World!"):
                chunk = s.recv(4096)
                assert chunk
                data += chunk
            answered.add(int(re.search(rb"X-Worker-Pid: (\d+)", data).group(1)))
        assert answered <= pids and len(answered) >= 2
    finally:
        for s in socks:
            s.close()


def test_single_worker_has_no_pid_header() -> None:
    srv = ioladder.serve(ioladder.apps.make_factory("http"), "127.0.0.1", 0, model=MODEL,
                         workers=1)
    try:
        assert isinstance(srv, ioladder.Server)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.read() == b"Hello, World!" and r.getheader("X-Worker-Pid") is None
        conn.close()
    finally:
        srv.shutdown(5.0)


def test_killed_worker_is_restarted_and_serves(pool: Any) -> None:
    p = pool(2)
    before = p.pids
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(p.pids) == 2 and victim not in p.pids, 15, "a replacement worker")
    new = set(p.pids) - set(before)
    assert len(new) == 1 and p.restarts == 1
    assert not alive(victim)  # reaped, no zombie left
    seen = set()
    for _ in range(400):
        seen.add(worker_pid(p.port))
        if new <= seen:
            break
    assert new <= seen, "the replacement worker never served"
    assert seen <= set(p.pids)


def test_crash_loop_backs_off(pool: Any) -> None:
    p = pool(2)
    gaps = []
    for _ in range(4):
        victim = p.pids[0]  # slot 0 every time (pids are listed in slot order)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda v=victim: len(p.pids) == 2 and v not in p.pids, 20,
                 "a replacement worker")
        gaps.append(time.monotonic() - t0)
    assert p.restarts == 4
    # consecutive quick deaths wait 0.1, 0.2, 0.4, 0.8 s before the restart (plus start-up)
    assert gaps[3] >= 0.8, gaps
    assert gaps[3] > gaps[0], gaps


def test_pool_shutdown_is_graceful_and_complete(pool: Any) -> None:
    p = pool(2)
    pids = p.pids
    port = p.port
    assert worker_pid(port) in pids
    assert p.shutdown(5.0) is True
    assert all(not alive(pid) for pid in pids)
    assert p.wait_closed(0)
    with socket.socket() as s:  # the port is free again (no SO_REUSEPORT needed)
        s.bind(("127.0.0.1", port))


def test_serve_workers_hook_and_echo() -> None:
    srv = ioladder.serve(EchoProtocol, "127.0.0.1", 0, model=MODEL, workers=2)
    try:
        assert isinstance(srv, WorkerPool) and len(srv.pids) == 2
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as s:
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
    finally:
        assert srv.shutdown(5.0)
    with pytest.raises(TypeError):
        ioladder.serve(lambda: EchoProtocol(), "127.0.0.1", 0, workers=2)


def test_worker_start_failure_is_reported(tmp_path: Any) -> None:
    with pytest.raises(ValueError):  # caught in the parent: nothing spawned
        serve_workers("http", "127.0.0.1", 0, workers=2, model=MODEL,
                      app_options=AppOptions(root=str(tmp_path / "missing")))
    # max_connections=0 is refused by each worker's Server: the parent reports why
    with pytest.raises(RuntimeError, match="max_connections"):
        serve_workers("echo", "127.0.0.1", 0, workers=2, model=MODEL, max_connections=0)


# ------------------------------------------------------------------- the CLI parent process

def start_cli(args: list[str], log_path: Any) -> tuple[subprocess.Popen[str], int, list[int]]:
    log = open(log_path, "w")  # noqa: SIM115 - kept open for the child
    proc = subprocess.Popen([sys.executable, "-m", "ioladder", "serve", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(TIMEOUT):
        proc.kill()
        raise AssertionError(f"no serving line; log: {open(log_path).read()}")
    line = proc.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+) .*pids ([\d, ]+)\)", line)
    assert m, (line, open(log_path).read())
    return proc, int(m.group(1)), [int(x) for x in m.group(2).split(", ")]


def test_sigterm_finishes_response_in_flight_then_exits_0(tmp_path: Any) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(BIG_SIZE)
    (root / "big.bin").write_bytes(data)
    proc, port, pids = start_cli(["--app", "files", "--root", str(root), "--workers", "2",
                                  "--port", "0", "--model", MODEL], tmp_path / "serve.log")
    try:
        assert len(pids) == 2
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        client.settimeout(TIMEOUT)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        buf = bytearray()
        while b"\r\n\r\n" not in buf or len(buf) < 256 * 1024:
            buf += client.recv(65536)
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        assert int(re.search(rb"X-Worker-Pid: (\d+)", head).group(1)) in pids
        assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == BIG_SIZE

        proc.send_signal(signal.SIGTERM)  # mid-response: megabytes still to send

        def refused() -> bool:  # every worker stops accepting at once
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_for(refused, 10, "the port to stop accepting")
        assert proc.poll() is None  # still waiting for the response in flight

        h = hashlib.sha256(body)
        got = len(body)
        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                break  # the server closed after the last byte
            h.update(chunk)
            got += len(chunk)
        client.close()
        assert got == BIG_SIZE
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert proc.wait(TIMEOUT) == 0
        assert all(not alive(pid) for pid in pids)
        assert "shutting down gracefully" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_orphaned_workers_shut_down(tmp_path: Any) -> None:
    proc, port, pids = start_cli(["--app", "http", "--workers", "2", "--port", "0",
                                  "--model", MODEL], tmp_path / "serve.log")
    try:
        assert worker_pid(port) in pids
        proc.kill()  # SIGKILL: the parent cannot tell anyone
        proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), 15,
                 "the orphaned workers to exit")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
