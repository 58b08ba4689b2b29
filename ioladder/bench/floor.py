"""The measurement floor: a minimal C epoll echo server, built on demand.

Every server in the benchmark is compared with `c/epoll_echo.c`: one thread, level-triggered
epoll, one read and one write per round trip. It is compiled with the machine's gcc into a cache
directory keyed by the source's hash, so an edited source is rebuilt and an unchanged one is
not, and concurrent builds (parallel tests) never see a half-written binary.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("c") / "epoll_echo.c"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]


class FloorBuildError(RuntimeError):
    """The floor server could not be compiled (no gcc, or a compiler error)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ioladder"


def build_floor(cc: str | None = None) -> Path:
    """Compile the floor server if needed and return the binary's path."""
    cc = cc or os.environ.get("CC") or "gcc"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    binary = out_dir / f"epoll_echo-{key}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    compiler = shutil.which(cc)
    if compiler is None:
        raise FloorBuildError(
            f"cannot build the C epoll floor server: compiler {cc!r} not found on PATH "
            "(install gcc, e.g. `apt-get install gcc`, or set CC)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".epoll_echo-", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *CFLAGS, "-o", tmp, str(SOURCE)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise FloorBuildError(f"gcc failed building {SOURCE}:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)  # atomic: a concurrent builder sees the old or the new file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


class FloorServer:
    """Run the floor server as a child process: ``with FloorServer(cpu=0) as s: s.port``."""

    def __init__(self, port: int = 0, cpu: int | None = None, start_timeout: float = 10.0):
        self.requested_port = port
        self.cpu = cpu
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> FloorServer:
        binary = build_floor()
        self.proc = subprocess.Popen(
            [str(binary), str(self.requested_port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        assert self.proc.stdout is not None
        # the server flushes this one line before serving; don't wait forever for it
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"floor server did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> FloorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
