"""The ``blocking`` rung out of threads (a real ``RLIMIT_NPROC``, in a child process).

Thread per connection is the rung's trait and its limit: a connection whose reader thread
cannot start is refused (logged); a send that needs a writer thread, or a graceful close that
needs a lingering watcher, must still end only that connection — with a reset, or gracefully
without the watcher — never raise into the application or break ``Server.shutdown``.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ioladder

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody (root ignores "
                                                  "RLIMIT_NPROC)"),
]

SERVER = Path(__file__).with_name("nproc_server.py")
#: main thread + acceptor + 6 readers: the seventh client and later are refused.
NPROC = 8


def _nobody_threads() -> int:
    uid = pwd.getpwnam("nobody").pw_uid
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


def test_out_of_threads_ends_only_the_connection_concerned(tmp_path: Path) -> None:
    if _nobody_threads():
        pytest.skip("user nobody runs processes here: RLIMIT_NPROC would count them")
    repo = Path(ioladder.__file__).resolve().parent.parent
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(SERVER), str(NPROC)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(repo)))
    clients: list[socket.socket] = []
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), log_path.read_text()
        port = int(line)
        for _ in range(9):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5.0)
            sock.connect(("127.0.0.1", port))
            clients.append(sock)
            time.sleep(0.05)  # accepted in order: the last three find no thread
        served = []
        for sock in clients:
            try:
                sock.sendall(b"x")
                if sock.recv(1) == b"x":
                    served.append(sock)
            except ConnectionResetError:
                pass
        assert len(served) == NPROC - 2, log_path.read_text()
        # 3 MB to a peer that reads nothing: the send needs a writer thread there is no room
        # for. That connection ends with a reset; the application never sees an exception.
        served[0].sendall(b"BIG 3000000")
        with pytest.raises(ConnectionResetError):
            while served[0].recv(65536):
                pass
        # Its reader thread is gone: a newcomer takes the slot (until its thread runs, it
        # may still be refused).
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            clients.append(sock)
            try:
                sock.sendall(b"n")
                if sock.recv(1) == b"n":
                    break
            except ConnectionResetError:
                pass
            time.sleep(0.02)
        else:
            raise AssertionError("the freed thread slot was never reused")
        # 200 KB that fit the kernel buffer, then close(): the lingering close needs a
        # watcher thread there is no room for. It still closes gracefully: every byte.
        served[1].sendall(b"BIG 200000 CLOSE")
        data = b""
        while chunk := served[1].recv(65536):
            data += chunk
        assert len(data) == 200_000
        for sock in served[2:]:
            sock.sendall(b"y")
            assert sock.recv(1) == b"y"
    finally:
        for sock in clients:
            sock.close()
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            rc = proc.wait(20.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    log = log_path.read_text()
    assert rc == 0 and "shutdown done" in log, log
    assert "Traceback" not in log, log
    assert "cannot start a writer thread" in log and "no lingering close" in log, log
