"""Limits every rung enforces: max_connections, idle_timeout, bad input to the lines app, and
accept() when the process is out of file descriptors."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ioladder
from ioladder.apps import LineProtocol

from .support import (
    HOST,
    Collector,
    EchoProbe,
    cpu_seconds,
    recv_until_end,
    round_trip,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def test_max_connections_refuses_the_extra_client_cleanly(server, connect):
    collector = Collector(EchoProbe)
    srv = server(collector, max_connections=3)
    admitted = [connect(srv.port) for _ in range(3)]
    for i, client in enumerate(admitted):
        assert round_trip(client, b"hello %d" % i) == b"hello %d" % i
    extra = connect(srv.port, timeout=5.0)
    data, error = recv_until_end(extra)  # EOF or reset, never a hang (the timeout fails it)
    assert data == b""
    assert error is None or isinstance(error, ConnectionResetError)
    assert srv.core.refused_total >= 1
    # The admitted ones are unaffected.
    for client in admitted:
        assert round_trip(client) == b"ping"
    # One leaves: a newcomer is admitted and served.
    admitted.pop().close()
    assert wait_until(lambda: srv.connections == 2, 5.0)
    newcomer = connect(srv.port)
    assert round_trip(newcomer, b"welcome") == b"welcome"
    assert srv.connections == 3
    assert collector.violations() == []


def test_idle_timeout_closes_a_silent_connection_and_spares_an_active_one(server, connect):
    collector = Collector(EchoProbe)
    srv = server(collector, idle_timeout=0.5)
    silent = connect(srv.port)
    active = connect(srv.port)
    start = time.monotonic()
    silent_end: tuple[float, bytes, BaseException | None] | None = None
    while time.monotonic() - start < 2.0:
        assert round_trip(active, b"x") == b"x"
        if silent_end is None and select.select([silent], [], [], 0)[0]:
            data, error = recv_until_end(silent)
            silent_end = (time.monotonic() - start, data, error)
        time.sleep(0.1)
    if silent_end is None:  # not yet: it must come within ~3 s of going silent
        silent.settimeout(3.0 - (time.monotonic() - start))
        data, error = recv_until_end(silent)
        silent_end = (time.monotonic() - start, data, error)
    elapsed, data, error = silent_end
    assert data == b""
    assert error is None or isinstance(error, ConnectionResetError)
    assert 0.4 <= elapsed <= 3.0, f"silent connection closed after {elapsed:.2f} s"
    assert round_trip(active, b"still here") == b"still here"
    silent_proto = collector.by_peer()[silent.getsockname()]
    assert silent_proto.lost.wait(5.0)
    assert isinstance(silent_proto.lost_exc, TimeoutError)


@pytest.mark.parametrize("bad", [
    b"x" * 9000 + b"\n",
    b"y" * 9000,
    b"caf\xc3\n\xff\xfe bad utf-8\n",
], ids=["overlong_line", "overlong_without_newline", "invalid_utf8"])
def test_lines_app_rejects_bad_input_and_spares_others(server, connect, bad):
    srv = server(LineProtocol)
    good = connect(srv.port)
    assert round_trip(good, "héllo\n".encode()) == "héllo\n".encode()
    offender = connect(srv.port)
    offender.sendall(bad)
    data, error = recv_until_end(offender)
    assert data.startswith(b"ERR ") and data.endswith(b"\n") and data.count(b"\n") == 1, data
    assert error is None or isinstance(error, ConnectionResetError)
    assert round_trip(good, b"still fine\n") == b"still fine\n"


# --------------------------------------------------------------- out of file descriptors

FD_SERVER = Path(__file__).with_name("fd_server.py")
NOFILE = 64


@pytest.fixture
def fd_starved_server(rung: str, tmp_path: Path):
    """An echo server on ``rung`` in a child process whose RLIMIT_NOFILE is only 64;
    yields ``(process, port, path of its log)``."""
    repo = Path(ioladder.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(FD_SERVER), rung, str(NOFILE)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), f"no port from the server: {log_path.read_text()}"
        yield proc, int(line), log_path
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_accept_backs_off_without_spinning_when_out_of_fds(fd_starved_server):
    proc, port, log_path = fd_starved_server
    clients = []
    try:
        for _ in range(NOFILE + 40):
            clients.append(socket.create_connection((HOST, port), timeout=5.0))
        time.sleep(0.5)  # the server takes what it can and hits EMFILE
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(1.5)
        spent = cpu_seconds(proc.pid) - cpu_before
        assert spent < 0.3, f"server burned {spent:.2f} s CPU in 1.5 s while out of fds"
    finally:
        for client in clients:
            client.close()
    # Descriptors come back: a new client is served.
    deadline = time.monotonic() + 5.0
    with socket.create_connection((HOST, port), timeout=5.0) as client:
        assert round_trip(client, b"served again") == b"served again"
    assert time.monotonic() < deadline
    proc.stdin.close()
    assert proc.wait(10.0) == 0, log_path.read_text()
    log = log_path.read_text()
    assert "Too many open files" in log, f"EMFILE was never hit: {log[-2000:]}"

