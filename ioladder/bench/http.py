"""``ioladder bench --profile http``: the ``http`` app under a real HTTP client, ``wrk``.

Method
------
* **Client**: Debian's ``wrk`` (``make ensure-wrk`` installs it, with nginx, when absent): one
  thread, 100 connections, HTTP/1.1 keep-alive, ``GET /`` answered with the 13-byte
  ``Hello, World!``; ``--latency`` for its percentiles, plus a ``done()`` script that prints the
  same histogram's p99.9 and exact counts (wrk's per-request path stays its static, script-free
  one). ``wrk`` is pinned to the load CPU (1).
* **Servers**, each a fresh process per run pinned to the server CPU (0), on 127.0.0.1: every
  available rung serving ``ioladder serve --model M --app http``; **nginx** (one worker process,
  ``return 200 "Hello, World!"``, access log off, a generated config in a temp directory run in
  the foreground as ``nginx -p DIR -c nginx.conf -g 'daemon off;'``; the CPU counted is the
  master's plus the worker's); and the peers of :mod:`ioladder.bench.peers`: a raw uvloop
  ``asyncio.Protocol`` over ``httptools``, the same Protocol on the stdlib asyncio loop, and
  uvicorn (uvloop + httptools, no access log, one worker) on a minimal ASGI app.
* **Each run**: start the server; check ``GET /`` twice on one connection (status 200, body
  exactly ``Hello, World!``, kept alive) and note the response's size; a ``wrk`` warm-up run
  (not measured); then the measured ``wrk`` run. Server CPU (every thread of the process tree,
  ``/proc`` schedstat) and wrk's own CPU are read over a window inside wrk's: from
  ``SETTLE`` s after it starts to ``MARGIN`` s before it ends, so CPU per request = CPU seconds /
  (requests/s x window). Memory and threads mid-window. Syscalls (``--perf``, off by default:
  counting a tracepoint costs every syscall a little, which would tilt CPU per request against
  the servers that make more of them) through perf's control pipe in the same window.
* **Verified**: a run whose check fails, or where wrk reports any non-2xx/3xx response or any
  socket error (connect, read, write, timeout), is a failed run: it shows the counts instead of
  numbers. wrk's bytes read per request are compared with the checked response's size.
* **Interleaved and repeated**: for each repetition every server in turn, the order rotated by
  one each repetition; medians with [min-max]. The fastest server marks wrk's ceiling (its
  CPU is reported): servers within 10 % of it may be limited by the client, not themselves.

Results go to ``OUT/results.json`` (the runner's schema, ``ioladder-bench/1``, with one case of
kind ``"http"``: ``rt_per_s`` is requests/s, ``cpu_us_per_rt`` CPU microseconds per request;
extra run fields ``p75_us``, ``p90_us``, ``requests``, ``bytes_per_response``, ``wrk_errors``,
``wrk_output``; extra cell field ``vs``: ratios to nginx and to the raw uvloop server),
``table.txt``, ``report.html`` with plots, and with ``--docs FILE`` the HTTP section of
``docs/benchmarks.md`` (between :data:`DOCS_BEGIN` and :data:`DOCS_END`; the rest of the page
is the echo bench's, and :func:`ioladder.bench.report.write_docs` keeps this section).

When wrk is missing the bench says how to get it and exits 0 without measuring; when nginx is
missing nginx is skipped with the same hint.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import grp
import html
import io
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import rungs
from . import metrics, peers, runner

HOST = "127.0.0.1"
BODY = b"Hello, World!"
CONNECTIONS = 100
THREADS = 1
WARMUP = 1            # wrk takes whole seconds
DURATION = 5
REPEAT = 3
SETTLE = 0.25         # the CPU window starts this long after wrk does (connects are done)
MARGIN = 0.05         # ... and ends this long before wrk's own end
CEILING_FRACTION = runner.CEILING_FRACTION
NGINX = "nginx"
RAW = "uvloop-httptools"     # the CPU-per-request reference of the target
TARGET_RUNG = "saea"
CASE_ID = "http-get"
DOCS_BEGIN = "<!-- ioladder-bench-http:begin -->"
DOCS_END = "<!-- ioladder-bench-http:end -->"
INSTALL_HINT = ("`make ensure-wrk` installs Debian's wrk and nginx with apt-get (needs root); "
                "or `apt-get install wrk nginx`")

#: issue 6's figures, measured on its machine the same way: (requests/s, CPU us per request)
ISSUE_REFERENCE = {NGINX: (122_000, 7.8), RAW: (None, 7.1), "asyncio-httptools": (104_000, 9.5),
                   "uvicorn": (36_000, 27.0)}

# ------------------------------------------------------------------------------- tools


def find_wrk() -> str | None:
    """The wrk binary (``IOLADDER_WRK`` overrides the PATH search), or None."""
    env = os.environ.get("IOLADDER_WRK")
    if env is not None:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("wrk")


def find_nginx() -> str | None:
    """The nginx binary (``IOLADDER_NGINX`` overrides; /usr/sbin is searched too), or None."""
    env = os.environ.get("IOLADDER_NGINX")
    if env is not None:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def tool_version(argv: list[str]) -> str | None:
    """``wrk debian/4.1.0-3+b2``, ``nginx/1.22.1``: the first line of ``-v``, trimmed."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip().splitlines()
    if not text:
        return None
    line = text[0].split(" Copyright")[0].replace("nginx version: ", "").strip()
    return line.replace(" [epoll]", "")


# --------------------------------------------------------------------------- wrk output

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_UNITS_BIN = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_UNITS_METRIC = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def time_us(text: str) -> float:
    """wrk's ``format_time_us`` back to microseconds: ``362.00us``, ``2.26ms``, ``1.02s``."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _UNITS_US[m.group(2)]


def binary_bytes(text: str) -> float:
    """wrk's ``format_binary`` (+ ``B``) back to bytes: ``7.71MB``, ``512.00B``, ``1.20GB``."""
    m = re.fullmatch(r"([0-9.]+)([KMGT]?)B", text.strip())
    if not m:
        raise ValueError(f"not a wrk byte count: {text!r}")
    return float(m.group(1)) * _UNITS_BIN[m.group(2)]


def metric(text: str) -> float:
    """wrk's ``format_metric``: ``30.45k``, ``1.20M``, ``812.00``."""
    m = re.fullmatch(r"([0-9.]+)([kMGT]?)", text.strip())
    if not m:
        raise ValueError(f"not a wrk number: {text!r}")
    return float(m.group(1)) * _UNITS_METRIC[m.group(2)]


@dataclass
class WrkResult:
    """What one wrk run printed (times in microseconds, sizes in bytes)."""

    threads: int
    connections: int
    requests: int
    duration_s: float
    bytes_read: float
    requests_per_s: float
    transfer_per_s: float
    latency_avg_us: float
    latency_stdev_us: float
    latency_max_us: float
    percentiles_us: dict[str, float]          # "50", "75", "90", "99" (--latency); "99.9"
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx_3xx: int = 0
    exact: bool = False                       # counts and percentiles from the done() script

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx_3xx

    def error_text(self) -> str:
        parts = []
        if self.non_2xx_3xx:
            parts.append(f"{self.non_2xx_3xx} non-2xx/3xx responses")
        if self.socket_errors:
            parts.append(f"socket errors: connect {self.connect_errors}, read {self.read_errors}"
                         f", write {self.write_errors}, timeout {self.timeouts}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = self.errors
        return d


#: the done() script: one line with wrk's exact counts and its latency histogram's percentiles
#: (defining only done() keeps wrk's per-request path static: no Lua runs per request)
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "ioladder-wrk requests=%.0f duration_us=%.0f bytes=%.0f connect=%.0f read=%.0f " ..
    "write=%.0f status=%.0f timeout=%.0f mean_us=%.2f stdev_us=%.2f max_us=%.0f " ..
    "p50=%.0f p75=%.0f p90=%.0f p99=%.0f p99.9=%.0f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's output (``--latency`` gives the distribution; the ``ioladder-wrk`` line of
    :data:`WRK_SCRIPT`, when present, gives exact counts and p99.9). ValueError if ``text`` is
    not a finished wrk run."""
    def find(pattern: str, required: bool = True) -> re.Match[str] | None:
        m = re.search(pattern, text, re.M)
        if m is None and required:
            raise ValueError(f"wrk output has no {pattern!r}:\n{text[-600:]}")
        return m

    head = find(r"^\s*(\d+) threads? and (\d+) connections?")
    lat = find(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+%")
    done = find(r"^\s*(\d+) requests in (\S+), (\S+) read")
    rps = find(r"^Requests/sec:\s+([0-9.]+)")
    tps = find(r"^Transfer/sec:\s+(\S+)")
    assert head and lat and done and rps and tps
    pct: dict[str, float] = {}
    dist = text.split("Latency Distribution", 1)
    if len(dist) == 2:
        for m in re.finditer(r"^\s+([0-9.]+)%\s+(\S+)\s*$", dist[1], re.M):
            key = f"{float(m.group(1)):g}"
            pct[key] = time_us(m.group(2))
    res = WrkResult(
        threads=int(head.group(1)), connections=int(head.group(2)),
        requests=int(done.group(1)), duration_s=time_us(done.group(2)) / 1e6,
        bytes_read=binary_bytes(done.group(3)), requests_per_s=float(rps.group(1)),
        transfer_per_s=binary_bytes(tps.group(1)), latency_avg_us=time_us(lat.group(1)),
        latency_stdev_us=time_us(lat.group(2)), latency_max_us=time_us(lat.group(3)),
        percentiles_us=pct)
    sock = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", False)
    if sock:
        res.connect_errors, res.read_errors, res.write_errors, res.timeouts = (
            int(x) for x in sock.groups())
    status = find(r"Non-2xx or 3xx responses: (\d+)", False)
    if status:
        res.non_2xx_3xx = int(status.group(1))
    exact = find(r"^ioladder-wrk (.*)$", False)
    if exact:
        kv = dict(item.split("=", 1) for item in exact.group(1).split())
        res.requests = int(float(kv["requests"]))
        res.duration_s = float(kv["duration_us"]) / 1e6
        res.bytes_read = float(kv["bytes"])
        if res.duration_s > 0:
            res.requests_per_s = res.requests / res.duration_s
            res.transfer_per_s = res.bytes_read / res.duration_s
        res.connect_errors, res.read_errors = int(kv["connect"]), int(kv["read"])
        res.write_errors, res.timeouts = int(kv["write"]), int(kv["timeout"])
        res.non_2xx_3xx = int(kv["status"])
        res.latency_avg_us, res.latency_stdev_us = float(kv["mean_us"]), float(kv["stdev_us"])
        res.latency_max_us = float(kv["max_us"])
        for key in ("50", "75", "90", "99", "99.9"):
            res.percentiles_us[key] = float(kv[f"p{key}"])
        res.exact = True
    return res


def wrk_argv(wrk: str, port: int, duration: int, connections: int = CONNECTIONS,
             threads: int = THREADS, script: str | None = None, host: str = HOST) -> list[str]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        argv += ["-s", script]
    return [*argv, f"http://{host}:{port}/"]


# --------------------------------------------------------------------- the response check


class ResponseError(RuntimeError):
    pass


def _read_response(sock: socket.socket, buf: bytes) -> tuple[int, dict[bytes, bytes], bytes,
                                                              int, bytes]:
    """(status, headers, body, whole response size, bytes left over) of one response."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ResponseError(f"connection closed before a whole response head ({buf[:80]!r})")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" not in headers:
        raise ResponseError("response without Content-Length")
    length = int(headers[b"content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ResponseError("connection closed inside the body")
        rest += chunk
    return int(m.group(1)), headers, rest[:length], len(head) + 4 + length, rest[length:]


def check_hello(port: int, host: str = HOST, timeout: float = 5.0) -> int:
    """``GET /`` twice on one connection: 200, body exactly ``Hello, World!``, kept alive.
    Returns the size in bytes of the whole second response; ResponseError if anything is off."""
    request = b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: ioladder-bench\r\n\r\n" % (
        host.encode(), port)
    size = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        buf = b""
        for _ in range(2):
            sock.sendall(request)
            status, headers, body, size, buf = _read_response(sock, buf)
            if status != 200:
                raise ResponseError(f"GET / answered {status}")
            if body != BODY:
                raise ResponseError(f"GET / body is {body[:40]!r}, not {BODY!r}")
            if headers.get(b"connection", b"").lower() == b"close":
                raise ResponseError("GET / closed the connection (no keep-alive)")
    return size


# ----------------------------------------------------------------------------- nginx


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (nginx cannot be told port 0 and report the one it got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def nginx_config(port: int, host: str = HOST) -> str:
    """nginx.conf for the bench: one worker, ``return 200 "Hello, World!"``, no access log,
    listening on ``host`` only; every path it writes is relative to its prefix (``-p DIR``)."""
    user = ""
    if os.geteuid() == 0:
        # as root nginx would switch its worker to nobody:nobody, a group Debian lacks;
        # the bench's own user keeps the worker able to run anywhere
        user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};\n")
    return f"""# generated by ioladder.bench.http for `ioladder bench --profile http`
{user}worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    # keep-alive for the whole run, as every other server does (nginx's default closes after
    # 1,000 requests per connection, which would make wrk reconnect mid-run)
    keepalive_requests 1000000000;
    keepalive_timeout 75s;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {{
        listen {host}:{port} backlog=1024;
        location = / {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


#: nginx servers started and not yet stopped (an interrupted bench stops them all)
_NGINX_LIVE: set[NginxServer] = set()


class NginxServer:
    """nginx in the foreground from a generated config in a temp dir, pinned to ``cpu``: the
    same interface as :class:`ioladder.bench.runner.ServerProcess` (``pid``, ``port``,
    ``wait_ready``, ``stop``). ``stop`` leaves no process (master or worker) and no directory."""

    def __init__(self, cpu: int | None = None, nice: int = 0, nginx: str | None = None,
                 port: int = 0, host: str = HOST) -> None:
        binary = nginx or find_nginx()
        if binary is None:
            raise RuntimeError(f"nginx is not installed ({INSTALL_HINT})")
        self.host = host
        self.port = port or free_port(host)
        self.cpu = cpu
        self.nice = nice
        self.dir = Path(tempfile.mkdtemp(prefix="ioladder-nginx-"))
        (self.dir / "tmp").mkdir()
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(nginx_config(self.port, host))
        self._err = tempfile.TemporaryFile()
        self.argv = [binary, "-p", str(self.dir), "-e", "stderr", "-c", str(self.conf),
                     "-g", "daemon off;"]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     start_new_session=True)  # its own group: master + worker
        runner._LIVE.add(self.proc)
        _NGINX_LIVE.add(self)
        self._pids: set[int] = {self.proc.pid}
        if cpu is not None:
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})  # the worker it forks inherits it
            except OSError:
                pass
        if nice:
            metrics.renice_tree(self.proc.pid, nice)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return metrics.tree_pids(self.proc.pid)

    def wait_ready(self, timeout: float = runner.START_TIMEOUT) -> None:
        """Until ``GET /`` is answered and the worker is up."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode} before serving"
                                   f"{self._stderr_tail()}")
            try:
                check_hello(self.port, self.host, timeout=2.0)
                pids = self.pids()
                if len(pids) >= 2:
                    self._pids.update(pids)
                    if self.cpu is not None:
                        metrics.pin_tree(self.pid, {self.cpu})
                    if self.nice:
                        metrics.renice_tree(self.pid, self.nice)
                    return
            except (OSError, ResponseError) as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not serve within {timeout:.0f} s ({last})"
                           f"{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        try:
            self._err.seek(0)
            text = self._err.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f": {text[-400:]}" if text else ""

    def stop(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM (nginx's fast shutdown: the master stops its worker), wait; SIGKILL the whole
        group after ``timeout``; remove the directory. (exit code, stderr tail)."""
        self._pids.update(self.pids())
        rc = runner._reap(self.proc, timeout)
        # a worker outlives a master that was killed: end whatever of the group is left
        for pid in self._pids:
            if pid != self.proc.pid and _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + 5.0
        while any(_alive(p) for p in self._pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        tail = self._stderr_tail()
        self._err.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        _NGINX_LIVE.discard(self)
        return rc, tail


def stop_all_nginx() -> None:
    for server in list(_NGINX_LIVE):
        try:
            server.stop(2.0)
        except OSError:
            pass


# ---------------------------------------------------------------------------- servers


@dataclass
class HttpServerSpec(runner.ServerSpec):
    """A server under the HTTP bench: a rung serving ``--app http``, an HTTP peer, or nginx."""

    def argv(self) -> list[str]:
        if self.kind == "rung":
            return [sys.executable, "-m", "ioladder", "serve", "--model", self.name,
                    "--app", "http", "--host", HOST, "--port", "0"]
        if self.kind == "peer":
            return [sys.executable, "-m", "ioladder.bench.peers", "--peer", self.name,
                    "--host", HOST, "--port", "0"]
        raise ValueError(f"{self.name} is not started from an argv")


def all_http_servers() -> list[HttpServerSpec]:
    """Every rung (ladder order), then nginx and the HTTP peers."""
    specs: list[HttpServerSpec] = []
    for name in rungs.names():
        why = rungs.reason(name)
        try:
            cls = rungs.get(name)
            desc = f"rung: {cls.mechanism}; the http app"
        except ImportError as exc:
            desc, why = "?", why or f"cannot load: {exc}"
        specs.append(HttpServerSpec(name, "rung", desc, why))
    nginx = find_nginx()
    version = tool_version([nginx, "-v"]) if nginx else None
    specs.append(HttpServerSpec(
        NGINX, "nginx", f"nginx{' ' + version.split('/')[-1] if version else ''}: one worker "
        "process, return 200, access log off", None if nginx else
        f"nginx is not installed ({INSTALL_HINT})"))
    for name in peers.http_names():
        specs.append(HttpServerSpec(name, "peer", f"peer: {peers.HTTP_PEERS[name].description}",
                                    peers.reason(name)))
    return specs


#: ``--servers`` groups of the HTTP bench: the peers are nginx and the HTTP peers
HTTP_GROUPS: dict[str, Callable[[Any], bool]] = {
    "rungs": lambda s: s.kind == "rung",
    "peers": lambda s: s.kind != "rung",
}


def select_http_servers(specs: list[HttpServerSpec], wanted: str | None
                        ) -> tuple[list[HttpServerSpec], list[str]]:
    """``--servers``: names and the groups rungs, peers (nginx and the HTTP peers), all."""
    return runner.select_servers(specs, wanted, HTTP_GROUPS, "ioladder bench --profile http")


def start_server(spec: HttpServerSpec, cpu: int, nice: int = 0) -> Any:
    if spec.kind == "nginx":
        return NginxServer(cpu, nice)
    return runner.ServerProcess(spec, cpu, nice)


# ----------------------------------------------------------------------------- one run


@dataclass
class HttpOptions:
    server_cpu: int = 0
    load_cpu: int = 1
    connections: int = CONNECTIONS
    threads: int = THREADS
    warmup: int = WARMUP
    duration: int = DURATION
    repeat: int = REPEAT
    perf: bool = False
    nice: int = 0
    wrk: str = "wrk"
    script: str | None = None        # path of WRK_SCRIPT written out, or None
    wait_quiet: float = 0.0          # > 0: before each run, wait up to this long for idle CPUs


QUIET = 0.10          # --wait-quiet: both CPUs under 10 % busy over half a second


def wait_quiet(cpus: set[int], limit: float) -> tuple[float, float]:
    """Wait until every CPU of ``cpus`` was under :data:`QUIET` busy over half a second, or
    ``limit`` seconds passed: (seconds waited, the busiest CPU's share in the last sample)."""
    t0 = time.monotonic()
    while True:
        before = metrics.CoreSample.take()
        time.sleep(0.5)
        after = metrics.CoreSample.take()
        busiest = max(after.since(before, cpu)[0] / 0.5 for cpu in cpus)
        waited = time.monotonic() - t0
        if busiest < QUIET or waited >= limit:
            return waited, busiest


def _spawn_wrk(argv: list[str], cpu: int, nice: int) -> subprocess.Popen[bytes]:
    # taskset pins wrk before its thread exists; without it, pin the tree right after
    pinned = shutil.which("taskset")
    full = [pinned, "-c", str(cpu), *argv] if pinned else argv
    proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    runner._LIVE.add(proc)
    if not pinned:
        metrics.pin_tree(proc.pid, {cpu})
    if nice:
        metrics.renice_tree(proc.pid, nice)
    return proc


def _finish_wrk(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    runner._LIVE.discard(proc)
    return out.decode(errors="replace"), err.decode(errors="replace")


def user_sys_ticks(pids: list[int]) -> tuple[int, int]:
    """utime and stime (clock ticks) summed over ``pids``: where the server's CPU went."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def judge(res: WrkResult, connections: int, response_bytes: int | None = None
          ) -> tuple[str, str | None]:
    """(status, reason) of a measured wrk run: ``error`` with wrk's counts when it saw any
    non-2xx/3xx response or socket error, completed nothing, or ran other than ``connections``;
    ``ok`` with a note when the bytes read per request differ from the checked response."""
    if res.errors:
        return "error", f"wrk: {res.error_text()}"
    if res.requests == 0:
        return "error", "wrk completed no request"
    if res.connections != connections:
        return "error", f"wrk ran {res.connections} connections, not {connections}"
    if response_bytes and res.requests:
        per = res.bytes_read / res.requests
        if abs(per - response_bytes) > 0.02 * response_bytes:
            return "ok", (f"wrk read {per:.0f} B per response; the checked response is "
                          f"{response_bytes} B")
    return "ok", None


def run_one(spec: HttpServerSpec, opts: HttpOptions, perf_reason: str | None = None
            ) -> dict[str, Any]:
    """Start ``spec`` fresh, check it, warm it up, measure one wrk run, stop it: a run record."""
    rec: dict[str, Any] = {"status": "ok", "reason": None}
    server = None
    wrk: subprocess.Popen[bytes] | None = None
    perf: metrics.SyscallCounter | None = None
    if opts.wait_quiet > 0:
        rec["quiet_wait_s"], rec["busy_before"] = wait_quiet(
            {opts.server_cpu, opts.load_cpu}, opts.wait_quiet)
    try:
        server = start_server(spec, opts.server_cpu, opts.nice)
        server.wait_ready()
        try:
            rec["response_bytes"] = check_hello(server.port)
        except (OSError, ResponseError) as exc:
            raise RuntimeError(f"response check failed: {exc}") from exc
        idle = metrics.status_fields(metrics.tree_pids(server.pid))
        rec["rss_idle_kib"] = idle["VmRSS"]
        rec["threads_idle"] = idle["Threads"]
        if opts.warmup > 0:
            warm = _spawn_wrk(wrk_argv(opts.wrk, server.port, opts.warmup, opts.connections,
                                       opts.threads), opts.load_cpu, opts.nice)
            out, err = _finish_wrk(warm, opts.warmup + 30.0)
            if warm.returncode != 0:
                raise RuntimeError(f"wrk warm-up exited {warm.returncode}: "
                                   f"{(err or out).strip()[-300:]}")
        pids = metrics.tree_pids(server.pid)  # fixed from here: cheap samples in the window
        if opts.perf and perf_reason is None:
            perf = metrics.SyscallCounter(server.pid, opts.load_cpu)
        argv = wrk_argv(opts.wrk, server.port, opts.duration, opts.connections, opts.threads,
                        opts.script)
        rec["wrk_argv"] = shlex.join(argv)
        wrk = _spawn_wrk(argv, opts.load_cpu, opts.nice)
        t0 = time.monotonic()
        t_w0, t_w1 = t0 + SETTLE, t0 + opts.duration - MARGIN
        cpu0 = cpu1 = wcpu0 = wcpu1 = None
        us0 = us1 = (0, 0)
        core0 = core1 = metrics.CoreSample({}, {})
        if runner._sleep_until(t_w0, wrk):
            wpids = metrics.tree_pids(wrk.pid)
            cpu0 = metrics.CpuSample.take(pids)
            wcpu0 = metrics.CpuSample.take(wpids)
            us0 = user_sys_ticks(pids)
            core0 = metrics.CoreSample.take()
            if perf is not None:
                perf.enable()
            if runner._sleep_until(t_w0 + 0.6 * (t_w1 - t_w0), wrk):
                load = metrics.status_fields(pids)
                rec["rss_load_kib"] = rec["rss_held_kib"] = load["VmRSS"]
                rec["rss_hwm_kib"] = load["VmHWM"]
                rec["threads"] = load["Threads"]
                if runner._sleep_until(t_w1, wrk):
                    if perf is not None:
                        perf.disable()
                    cpu1 = metrics.CpuSample.take(pids)
                    wcpu1 = metrics.CpuSample.take(wpids)
                    us1 = user_sys_ticks(pids)
                    core1 = metrics.CoreSample.take()
        out, err = _finish_wrk(wrk, opts.duration + 60.0)
        rec["wrk_output"] = out
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk exited {wrk.returncode}: {(err or out).strip()[-300:]}")
        res = parse_wrk(out)
        rec["wrk"] = res.to_dict()
        rec["load"] = rec["wrk"]
        pct = res.percentiles_us
        rec.update(rt_per_s=res.requests_per_s, mb_per_s=res.transfer_per_s / 1e6,
                   requests=res.requests, elapsed_s=res.duration_s,
                   p50_us=pct.get("50"), p75_us=pct.get("75"), p90_us=pct.get("90"),
                   p99_us=pct.get("99"), p999_us=pct.get("99.9"),
                   latency_avg_us=res.latency_avg_us, latency_max_us=res.latency_max_us,
                   connections=res.connections, errors=res.errors, wrk_errors=res.error_text(),
                   bytes_per_response=res.bytes_read / res.requests if res.requests else None)
        if cpu0 is None or cpu1 is None or wcpu0 is None or wcpu1 is None:
            raise RuntimeError("wrk ended before its measured window did")
        cpu_s, source = cpu1.seconds_since(cpu0)
        wcpu_s, _ = wcpu1.seconds_since(wcpu0)
        window = cpu1.t - cpu0.t
        rec.update(server_cpu_s=cpu_s, cpu_source=source, window_s=window,
                   server_cpu_util=cpu_s / window if window > 0 else None,
                   client_cpu_util=wcpu_s / window if window > 0 else None)
        done = res.requests_per_s * window
        rec["cpu_us_per_rt"] = cpu_s / done * 1e6 if done > 0 else None
        rec["cpu_s_per_100k"] = cpu_s / done * 1e5 if done > 0 else None
        d_user, d_sys = us1[0] - us0[0], us1[1] - us0[1]
        if d_user + d_sys > 0 and rec["cpu_us_per_rt"]:
            # the split from tick counts, applied to the schedstat total
            rec["server_sys_share"] = d_sys / (d_user + d_sys)
            rec["kernel_us_per_rt"] = rec["cpu_us_per_rt"] * rec["server_sys_share"]
            rec["user_us_per_rt"] = rec["cpu_us_per_rt"] - rec["kernel_us_per_rt"]
        rec["rss_per_conn_b"] = ((rec["rss_held_kib"] - rec["rss_idle_kib"]) * 1024
                                 / max(1, res.connections))
        runner.note_interference(rec, core0, core1, window, opts.server_cpu, opts.load_cpu,
                                 rec["client_cpu_util"], "wrk's")
        if perf is not None:
            runner.note_syscalls(rec, perf, res.requests_per_s)
            perf = None
        else:
            rec["syscalls_note"] = perf_reason or "off (--perf counts them)"
        rec["status"], rec["reason"] = judge(res, opts.connections, rec["response_bytes"])
    except (RuntimeError, TimeoutError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        rec["status"] = "error"
        rec["reason"] = str(exc)
    finally:
        if perf is not None:
            perf.close()
        if wrk is not None:
            runner._reap(wrk, 2.0)
            for f in (wrk.stdout, wrk.stderr):
                if f is not None:
                    f.close()
        if server is not None:
            rc, tail = server.stop()
            rec["server_exit"] = rc
            if rc == -signal.SIGKILL:
                rec["shutdown_note"] = "did not exit within 10 s of SIGTERM: killed"
            elif rc not in (0, -signal.SIGTERM) and rec["status"] == "ok":
                rec["status"] = "error"
                rec["reason"] = f"server exited with {rc} after the run{tail}"
    return rec


# -------------------------------------------------------------------------- summaries

SUMMARY_METRICS = ("rt_per_s", "mb_per_s", "p50_us", "p75_us", "p90_us", "p99_us", "p999_us",
                   "latency_avg_us", "latency_max_us", "server_cpu_s", "server_cpu_util",
                   "cpu_us_per_rt", "cpu_s_per_100k", "server_sys_share", "user_us_per_rt",
                   "kernel_us_per_rt", "client_cpu_util", "rss_idle_kib",
                   "rss_held_kib", "rss_load_kib", "rss_hwm_kib", "rss_per_conn_b",
                   "threads", "syscalls_per_rt", "bytes_per_response", "response_bytes",
                   "other_on_server_cpu", "steal_server_cpu", "load_cpu_busy",
                   "other_on_load_cpu")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return runner.summarize(runs, SUMMARY_METRICS)


def finish_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A server's cell: the runner's (status, notes, disturbed runs) with HTTP metrics."""
    cell = runner.finish_cell(runs)
    cell["summary"] = summarize(runs)
    # the same over the runs no other work disturbed (see run_one's "interference"): on a
    # shared machine the report shows both, and says how many runs each rests on
    clean = [r for r in runs if r.get("status") == "ok" and not r.get("interference")]
    cell["clean_runs"] = len(clean)
    cell["clean_summary"] = summarize(clean)
    cell["vs"] = {}
    return cell


def _med(cell: dict[str, Any] | None, m: str, key: str = "summary") -> float | None:
    if not cell or cell.get("status") != "ok":
        return None
    s = cell.get(key, {}).get(m)
    return s["median"] if s else None


def finish_case(case: dict[str, Any]) -> None:
    """Ratios to nginx and to the raw uvloop server; wrk's ceiling and who is near it."""
    cells = case["results"]
    ok = {n: c for n, c in cells.items() if c["status"] == "ok"}
    for cell in ok.values():
        for ref in (NGINX, RAW):
            r = ok.get(ref)
            if r is None:
                continue
            rt, rrt = _med(cell, "rt_per_s"), _med(r, "rt_per_s")
            cpu, rcpu = _med(cell, "cpu_us_per_rt"), _med(r, "cpu_us_per_rt")
            cell["vs"][ref] = {"rt_per_s": rt / rrt if rt and rrt else None,
                               "cpu_us_per_rt": cpu / rcpu if cpu and rcpu else None}
    case["ceiling"] = None
    if not ok:
        return
    best = max(ok, key=lambda n: _med(ok[n], "rt_per_s") or 0.0)
    ceiling = _med(ok[best], "rt_per_s") or 0.0
    case["ceiling"] = {"server": best, "rt_per_s": ceiling,
                       "client_cpu_util": _med(ok[best], "client_cpu_util")}
    for cell in ok.values():
        cell["near_ceiling"] = ceiling > 0 and (_med(cell, "rt_per_s") or 0) >= (
            CEILING_FRACTION * ceiling)


# ----------------------------------------------------------------------------- driver


@dataclass
class HttpBench:
    servers: list[HttpServerSpec]
    opts: HttpOptions
    notes: list[str] = field(default_factory=list)
    command: str = ""

    def case_record(self) -> dict[str, Any]:
        o = self.opts
        return {"id": CASE_ID,
                "label": f"HTTP GET / (13-byte body), {o.connections} keep-alive connections, "
                         f"wrk -t{o.threads}",
                "connections": o.connections, "requested_connections": o.connections,
                "capped": None, "size": len(BODY), "depth": 1, "rate": 0.0, "kind": "http",
                "ceiling": None, "results": {}}

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        o = self.opts
        perf_reason = metrics.perf_unavailable_reason() if o.perf else None
        runnable = [s for s in self.servers if s.reason is None]
        machine = metrics.machine_info([*runner.REPORT_PACKAGES, "httptools", "uvicorn"])
        machine["wrk"] = tool_version([o.wrk, "-v"])
        nginx = find_nginx()
        machine["nginx"] = tool_version([nginx, "-v"]) if nginx else None
        results: dict[str, Any] = {
            "schema": runner.SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "command": self.command, "interrupted": False, "elapsed_s": 0.0,
            "profile": {
                "name": "http",
                "description": f"the http app and its peers under wrk: {o.threads} thread, "
                               f"{o.connections} keep-alive connections, GET / -> 13-byte "
                               "Hello, World!",
                "warmup_s": o.warmup, "duration_s": o.duration, "repeat": o.repeat,
                "server_cpu": o.server_cpu, "load_cpu": o.load_cpu, "nice": o.nice,
                "perf": o.perf and perf_reason is None,
                "client": shlex.join(wrk_argv("wrk", 0, o.duration, o.connections, o.threads,
                                              "done.lua")).replace(":0/", ":PORT/"),
                "window": f"from {SETTLE:g} s after wrk starts to {MARGIN:g} s before it ends",
                "order": "for each repetition, every server in turn (order rotated each "
                         "repetition); a fresh server process per run, a wrk warm-up run "
                         "before the measured one",
            },
            "machine": machine,
            "servers": [s.to_dict() for s in self.servers],
            "notes": list(self.notes),
            "cases": [],
        }
        if perf_reason and o.perf:
            results["notes"].append(f"syscalls per request not counted: {perf_reason}")
        case = self.case_record()
        results["cases"].append(case)
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in runnable}
        t_start = time.monotonic()
        try:
            for rep in range(o.repeat):
                k = rep % len(runnable) if runnable else 0
                for order, spec in enumerate(runnable[k:] + runnable[:k]):
                    rec = run_one(spec, o, perf_reason)
                    rec["rep"], rec["order"] = rep, order
                    runs[spec.name].append(rec)
                    if progress:
                        progress(f"rep {rep + 1}/{o.repeat} · {spec.name}: " + run_line(rec))
        except KeyboardInterrupt:
            results["interrupted"] = True
            results["notes"].append("interrupted (Ctrl-C): results are partial")
        finally:
            runner.kill_children()
            stop_all_nginx()
            results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        for spec in runnable:
            if runs[spec.name]:
                case["results"][spec.name] = finish_cell(runs[spec.name])
        finish_case(case)
        return results


def run_line(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"FAILED: {rec['reason']}"
    cpu = rec.get("cpu_us_per_rt")
    return (f"{fmt_rate(rec['rt_per_s'])} req/s, p99 {fmt_us(rec.get('p99_us'))}, "
            f"{cpu:.2f} us CPU/request" if cpu else "")


# ------------------------------------------------------------------------------ report


def fmt_rate(x: float | None) -> str:
    from .report import fmt_rate as f

    return f(x)


def fmt_us(x: float | None) -> str:
    from .report import fmt_us as f

    return f(x)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _spread(cell: dict[str, Any], m: str, fmt: Callable[[float], str]) -> str:
    s = cell.get("summary", {}).get(m)
    if not s:
        return "-"
    text = fmt(s["median"])
    if s["n"] > 1:
        text += f" [{fmt(s['min'])}-{fmt(s['max'])}]"
    return text


COLUMNS = ["server", "req/s", "x nginx", "p50", "p90", "p99", "p99.9", "CPU us/req",
           "user+kernel", "CPU x raw uvloop", "CPU x nginx", "server core", "wrk core",
           "syscalls/req", "RSS", "B/resp", "note"]
NARROW_DROP = {"p90", "p99.9", "CPU x nginx", "RSS", "B/resp", "syscalls/req", "user+kernel"}


def row(name: str, cell: dict[str, Any], case: dict[str, Any]) -> list[str]:
    if cell["status"] != "ok":
        return [name, "FAILED", *["-"] * (len(COLUMNS) - 3), cell.get("reason") or ""]
    vs_n, vs_r = cell["vs"].get(NGINX, {}), cell["vs"].get(RAW, {})
    rt = _spread(cell, "rt_per_s", fmt_rate)
    notes = [cell["reason"]] if cell.get("reason") else []
    if cell.get("near_ceiling"):
        rt += " ⚑"
        ceiling = case.get("ceiling") or {}
        notes.append("wrk's ceiling" if ceiling.get("server") == name
                     else "within 10% of wrk's ceiling")
    sys_rt = _med(cell, "syscalls_per_rt")
    util, wutil = _med(cell, "server_cpu_util"), _med(cell, "client_cpu_util")
    bpr, rss = _med(cell, "bytes_per_response"), _med(cell, "rss_load_kib")
    user, kern = _med(cell, "user_us_per_rt"), _med(cell, "kernel_us_per_rt")
    return [name, rt, _ratio(vs_n.get("rt_per_s")), fmt_us(_med(cell, "p50_us")),
            fmt_us(_med(cell, "p90_us")), fmt_us(_med(cell, "p99_us")),
            fmt_us(_med(cell, "p999_us")),
            _spread(cell, "cpu_us_per_rt", lambda x: f"{x:.2f}"),
            f"{user:.2f}+{kern:.2f}" if user is not None and kern is not None else "-",
            _ratio(vs_r.get("cpu_us_per_rt")), _ratio(vs_n.get("cpu_us_per_rt")),
            f"{util:.0%}" if util is not None else "-",
            f"{wutil:.0%}" if wutil is not None else "-",
            f"{sys_rt:.2f}" if sys_rt is not None else "-",
            f"{rss / 1024:.1f} MiB" if rss else "-",
            f"{bpr:.0f}" if bpr else "-", "; ".join(notes)]


def ordered(results: dict[str, Any], case: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(s["name"], case["results"][s["name"]]) for s in results["servers"]
            if s["name"] in case["results"]]


def rich_table(results: dict[str, Any], case: dict[str, Any], compact: bool = False) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=case["label"], title_justify="left", header_style="bold",
                  pad_edge=False)
    keep = [i for i, c in enumerate(COLUMNS) if not (compact and c in NARROW_DROP)]
    for i in keep:
        c = COLUMNS[i]
        table.add_column(c, justify="left" if c in ("server", "note") else "right",
                         overflow="fold", max_width=44 if c == "note" else None)
    for name, cell in ordered(results, case):
        cells = row(name, cell, case)
        style = "red" if cell["status"] != "ok" else "cyan" if name in (NGINX, RAW) else None
        table.add_row(*[escape(cells[i]) for i in keep], style=style)
    return table


def footer_lines(results: dict[str, Any]) -> list[str]:
    prof = results["profile"]
    out = [f"⚑ = within 10 % of the fastest server (wrk's ceiling in this run). CPU us/req = "
           f"server CPU (whole process tree) per request over the measured window, split into "
           f"user+kernel time; 'x raw uvloop' = ratio to {RAW}. server/wrk core = share of "
           "their CPU each used. B/resp = bytes wrk read per request."]
    c = (results["cases"] or [{}])[0].get("ceiling")
    if c:
        util = c.get("client_cpu_util")
        out.append(f"wrk's ceiling: {fmt_rate(c['rt_per_s'])} req/s by {c['server']}"
                   + (f", wrk using {util:.0%} of its core" if util is not None else ""))
    out += [f"target: {what} {limit}: {got} (all runs); {clean} (undisturbed runs only)"
            for (what, limit, got), (_, _, clean) in zip(
                target_rows(results), target_rows(results, "clean_summary"), strict=True)]
    out += ["note: " + n for n in results.get("notes", [])]
    out.append(f"profile http: {prof['warmup_s']:g} s wrk warm-up + {prof['duration_s']:g} s "
               f"measured, {prof['repeat']} repetition(s), medians [min-max]; took "
               f"{results.get('elapsed_s', 0):.0f} s")
    return out


def table_text(results: dict[str, Any], width: int = 240) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      highlight=False)
    for case in results["cases"]:
        console.print(rich_table(results, case))
    for line in footer_lines(results):
        console.print(line, soft_wrap=True, markup=False)
    return buf.getvalue()


def target_rows(results: dict[str, Any], key: str = "summary"
                ) -> list[tuple[str, str, str]]:
    """Issue 6's targets, against servers measured in this run (``key``: ``summary`` for every
    run's median, ``clean_summary`` for the undisturbed runs')."""
    case = (results["cases"] or [None])[0]
    cells = case["results"] if case else {}
    saea = cells.get(TARGET_RUNG)

    def ratio(ref: str, m: str) -> float | None:
        a, b = _med(saea, m, key), _med(cells.get(ref), m, key)
        return a / b if a and b else None

    rows = []
    for what, ref, m, limit, le in (
            (f"`{TARGET_RUNG}` req/s vs nginx", NGINX, "rt_per_s", 0.95, False),
            (f"`{TARGET_RUNG}` CPU per request vs raw uvloop + httptools", RAW,
             "cpu_us_per_rt", 1.0, True),
            (f"`{TARGET_RUNG}` req/s vs uvicorn", "uvicorn", "rt_per_s", 3.0, False)):
        x = ratio(ref, m)
        lim = f"{'<=' if le else '>='} {limit:.2f}x"
        if x is None:
            why = [n for n in (TARGET_RUNG, ref) if _med(cells.get(n), m, key) is None]
            got = f"not measured ({', '.join(why)} has no result)"
        else:
            got = f"{x:.2f}x ({'met' if (x <= limit if le else x >= limit) else 'missed'})"
        rows.append((what, lim, got))
    return rows


# ------------------------------------------------------------------------------- plots


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Requests/s and CPU per request (median, bars min-max), latency percentiles."""
    from .report import _plt

    case = (results["cases"] or [None])[0]
    if case is None:
        return {}
    cells = [(n, c) for n, c in ordered(results, case) if c["status"] == "ok"]
    if not cells:
        return {}
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in cells]
    colors = ["#c44e52" if n == NGINX else "#4c72b0" if n == RAW else "#dd8452"
              if n == TARGET_RUNG else "#8c8c8c" if n in peers.HTTP_PEERS else "#55a868"
              for n in names]
    plots: dict[str, Path] = {}
    for key, metric_, label in (("http_rps", "rt_per_s", "requests / s"),
                                ("http_cpu", "cpu_us_per_rt", "server CPU us per request")):
        fig, ax = plt.subplots(figsize=(max(7, 0.75 * len(names) + 2), 4.5))
        meds = [c["summary"][metric_]["median"] if metric_ in c["summary"] else 0
                for _, c in cells]
        lo = [m - c["summary"][metric_]["min"] if metric_ in c["summary"] else 0
              for m, (_, c) in zip(meds, cells, strict=True)]
        hi = [c["summary"][metric_]["max"] - m if metric_ in c["summary"] else 0
              for m, (_, c) in zip(meds, cells, strict=True)]
        ax.bar(range(len(names)), meds, yerr=[lo, hi], capsize=3, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"HTTP GET /, {case['connections']} connections: {label} (median, bars "
                     "min-max)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        plots[key] = path
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    pct = [("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    h = 0.2
    for j, (m, label) in enumerate(pct):
        ys = [i + (j - 1.5) * h for i in range(len(names))]
        ax.barh(ys, [_med(c, m) or 0 for _, c in cells], height=h, label=label)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency, microseconds (log; wrk's histogram)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.set_title("Latency percentiles at 100 connections (median of runs)", fontsize=9)
    fig.tight_layout()
    path = out / "http_latency.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    plots["http_latency"] = path
    return plots


def write_html(results: dict[str, Any], out: Path, plots: dict[str, Path]) -> Path:
    from .report import _CSS, machine_rows

    prof = results["profile"]
    m = results["machine"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ioladder bench: HTTP"
             f"</title><style>{_CSS}</style></head><body>",
             "<h1>ioladder bench: the http app under wrk</h1>",
             f"<p>Created {html.escape(results['created'])} by "
             f"<code>{html.escape(results.get('command') or '')}</code>. "
             f"{html.escape(prof['description'])}. Client: <code>"
             f"{html.escape(prof['client'])}</code> ({html.escape(str(m.get('wrk')))}) pinned to "
             f"CPU {prof['load_cpu']}, every server to CPU {prof['server_cpu']}; "
             f"{prof['warmup_s']:g} s warm-up + {prof['duration_s']:g} s measured per run, "
             f"{prof['repeat']} repetition(s); {html.escape(prof['order'])}; CPU window "
             f"{html.escape(prof['window'])}. Took {results.get('elapsed_s', 0):.0f} s.</p>"]
    if results.get("interrupted"):
        parts.append("<p><b>Interrupted: these results are partial.</b></p>")
    rows = machine_rows(results) + [("wrk", str(m.get("wrk"))), ("nginx", str(m.get("nginx")))]
    parts.append("<h2>Machine</h2><table class='kv'>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>")
    parts.append("<h2>Servers</h2><table class='kv'>" + "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['description'])}</td><td>"
        + ("available" if s["available"] else html.escape(f"unavailable: {s['reason']}"))
        + "</td></tr>" for s in results["servers"]) + "</table>")
    for case in results["cases"]:
        parts.append(f"<h2>{html.escape(case['label'])}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>")
        for name, cell in ordered(results, case):
            cls = cell["status"] if cell["status"] != "ok" else (
                "floor" if name in (NGINX, RAW) else "")
            cells = row(name, cell, case)
            parts.append(f"<tr class='{cls}'>" + "".join(
                f"<td{' class=note' if i == len(cells) - 1 else ''}>{html.escape(c)}</td>"
                for i, c in enumerate(cells)) + "</tr>")
        parts.append("</table>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in footer_lines(results))
                 + "</ul>")
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


# -------------------------------------------------------------------------------- docs


def md_table(results: dict[str, Any], case: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("server", "note") else "---:" for c in COLUMNS) + "|"]
    for name, cell in ordered(results, case):
        cells = [c.replace("|", "/") for c in row(name, cell, case)]
        if name in (NGINX, RAW, TARGET_RUNG):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def md_clean_table(results: dict[str, Any], case: dict[str, Any]) -> str:
    key = "clean_summary"
    head = ["server", "runs", "req/s", "x nginx", "p99", "CPU us/req", "user+kernel",
            "CPU x raw uvloop", "CPU x nginx"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    cells = case["results"]
    for name, cell in ordered(results, case):
        if not cell.get("clean_runs"):
            continue
        rt, cpu = _med(cell, "rt_per_s", key), _med(cell, "cpu_us_per_rt", key)
        user, kern = _med(cell, "user_us_per_rt", key), _med(cell, "kernel_us_per_rt", key)
        n_rt, n_cpu = (_med(cells.get(NGINX), m, key) for m in ("rt_per_s", "cpu_us_per_rt"))
        r_cpu = _med(cells.get(RAW), "cpu_us_per_rt", key)
        label = f"**{name}**" if name in (NGINX, RAW, TARGET_RUNG) else name
        lines.append("| " + " | ".join([
            label, f"{cell['clean_runs']} of {len(cell['runs'])}", fmt_rate(rt),
            _ratio(rt / n_rt if rt and n_rt else None),
            fmt_us(_med(cell, "p99_us", key)), f"{cpu:.2f}" if cpu else "-",
            f"{user:.2f}+{kern:.2f}" if user is not None and kern is not None else "-",
            _ratio(cpu / r_cpu if cpu and r_cpu else None),
            _ratio(cpu / n_cpu if cpu and n_cpu else None)]) + " |")
    return "\n".join(lines)


def reading(results: dict[str, Any]) -> list[str]:
    """What the numbers say, computed from them (bullets)."""
    case = results["cases"][0]
    cells = case["results"]
    ok = [(n, c) for n, c in ordered(results, case) if c["status"] == "ok"]
    out: list[str] = []
    if not ok:
        return ["- No server completed a verified run: nothing to read."]
    ranked = sorted(ok, key=lambda nc: -(_med(nc[1], "rt_per_s") or 0))
    out.append("- Requests/s, fastest first: " + ", ".join(
        f"`{n}` {fmt_rate(_med(c, 'rt_per_s'))}" for n, c in ranked) + ".")
    cheap = sorted([(n, c) for n, c in ok if _med(c, "cpu_us_per_rt")],
                   key=lambda nc: _med(nc[1], "cpu_us_per_rt") or 0)
    out.append("- Server CPU per request, cheapest first: " + ", ".join(
        f"`{n}` {_med(c, 'cpu_us_per_rt'):.2f} us" for n, c in cheap) + ".")
    ceiling = case.get("ceiling") or {}
    util = ceiling.get("client_cpu_util")
    if ceiling:
        near = [n for n, c in ok if c.get("near_ceiling")]
        sat = util is not None and util >= 0.9
        out.append(
            f"- The client: the fastest run ({ceiling['server']}, "
            f"{fmt_rate(ceiling['rt_per_s'])} req/s) kept wrk's one thread "
            + (f"{util:.0%} busy" if util is not None else "busy (not measured)")
            + (": wrk itself is at its limit there, so the servers within 10 % of it ("
               + ", ".join(f"`{n}`" for n in near) + ") may be faster than shown; compare "
               "them on CPU per request, which the client does not cap." if sat else
               ": wrk was not saturated, so requests/s reflect the servers and loopback TCP"
               + (" (and, in the disturbed runs, the other work sharing their cores)."
                  if any(r.get("interference") for _, c in ok for r in c.get("runs", []))
                  else ".")))
    busy = [(n, _med(c, "server_cpu_util")) for n, c in ok]
    saturated = [n for n, u in busy if u is not None and u >= 0.9]
    idle = [f"`{n}` {u:.0%}" for n, u in busy if u is not None and u < 0.9]
    if saturated:
        out.append("- Servers whose core was saturated (>= 90 % busy), so their requests/s is "
                   "about 1 / CPU per request: " + ", ".join(f"`{n}`" for n in saturated)
                   + "." + (" Not saturated (limited by the client, by other work on their core, by "
                            "waiting or by threads):"
                            " " + ", ".join(idle) + "." if idle else ""))
    saea, raw = cells.get(TARGET_RUNG), cells.get(RAW)
    if _med(saea, "rt_per_s"):
        bits = []
        for ref, label in ((NGINX, "nginx"), (RAW, "the raw uvloop + httptools server"),
                           ("uvicorn", "uvicorn"), ("epoll", "the `epoll` rung (same app)")):
            r = cells.get(ref)
            if _med(r, "rt_per_s") and _med(r, "cpu_us_per_rt") and _med(saea, "cpu_us_per_rt"):
                bits.append(
                    f"{_med(saea, 'rt_per_s') / _med(r, 'rt_per_s'):.2f}x the requests/s of "
                    f"{label} at {_med(saea, 'cpu_us_per_rt') / _med(r, 'cpu_us_per_rt'):.2f}x "
                    "its CPU per request")
        if bits:
            out.append(f"- `{TARGET_RUNG}` serving the `http` app: " + "; ".join(bits) + ".")
        key = "clean_summary"
        bits = []
        for ref, label in ((NGINX, "nginx"), (RAW, "the raw uvloop + httptools server")):
            r = cells.get(ref)
            a_rt, b_rt = _med(saea, "rt_per_s", key), _med(r, "rt_per_s", key)
            a_cpu, b_cpu = _med(saea, "cpu_us_per_rt", key), _med(r, "cpu_us_per_rt", key)
            if a_rt and b_rt and a_cpu and b_cpu:
                bits.append(f"{a_rt / b_rt:.2f}x the requests/s of {label} "
                            f"({r['clean_runs']} runs) at {a_cpu / b_cpu:.2f}x its CPU per "
                            "request")
        if bits and any(c.get("clean_runs", 0) < len(c.get("runs", [])) for _, c in ok):
            out.append(f"- Over the undisturbed runs only ({saea['clean_runs']} of "
                       f"`{TARGET_RUNG}`'s): " + "; ".join(bits) + ".")
    elif saea is not None:
        out.append(f"- `{TARGET_RUNG}` did not complete a verified run: {saea.get('reason')}.")
    else:
        out.append(f"- `{TARGET_RUNG}` was not measured in this run.")
    split = [(n, _med(c, "user_us_per_rt"), _med(c, "kernel_us_per_rt")) for n, c in cheap]
    split = [(n, u, k) for n, u, k in split if u is not None and k is not None]
    if split:
        out.append("- Where each request's CPU goes, user space + kernel (from utime/stime over "
                   "the same window): " + ", ".join(f"`{n}` {u:.2f} + {k:.2f} us"
                                                    for n, u, k in split)
                   + ". The kernel part is mostly loopback TCP (both ends' segments are "
                   "processed in the sender's context, so the server pays for part of wrk's "
                   "traffic too) and whatever way the server waits and submits; the user "
                   "part is the server's own code: parser, loop, callbacks, response.")
    rung_cells = [(n, c) for n, c in ok if n in rungs.names()]
    if rung_cells and _med(raw, "cpu_us_per_rt"):
        out.append("- The `http` app on each rung, CPU per request against the raw uvloop + "
                   "httptools server: " + ", ".join(
                       f"`{n}` {_med(c, 'cpu_us_per_rt') / _med(raw, 'cpu_us_per_rt'):.2f}x"
                       for n, c in rung_cells if _med(c, "cpu_us_per_rt")) + ". The app "
                   "does more per request than the raw server (a header callback per header, "
                   "routing, keep-alive and pipelining bookkeeping), so a rung at 1.00x has "
                   "made up for that in its I/O path.")
    refs = []
    for name, (rps, cpu) in ISSUE_REFERENCE.items():
        c = cells.get(name)
        if _med(c, "rt_per_s") is None:
            continue
        text = f"`{name}` {fmt_rate(_med(c, 'rt_per_s'))} req/s"
        if rps:
            text += f" (issue: ~{fmt_rate(rps)})"
        text += f", {_med(c, 'cpu_us_per_rt'):.1f} us/req (issue: {cpu:g})"
        refs.append(text)
    if refs:
        out.append("- Against the figures issue 6 measured the same way on its machine: "
                   + "; ".join(refs) + ". Absolute numbers move with the machine and its "
                   "neighbours; the ratios between servers measured in the same run are what "
                   "this page compares.")
    for (what, _, got), (_, _, clean) in zip(
            target_rows(results), target_rows(results, "clean_summary"), strict=True):
        if ("(met)" in got) != ("(met)" in clean) and "not measured" not in got + clean:
            metric_ = "rt_per_s" if "req/s" in what else "cpu_us_per_rt"
            ref = NGINX if "nginx" in what else RAW if "uvloop" in what else "uvicorn"
            spans = []
            for n in (TARGET_RUNG, ref):
                runs = [r[metric_] for r in cells[n]["runs"] if r.get("status") == "ok"
                        and not r.get("interference") and r.get(metric_)]
                f = fmt_rate if metric_ == "rt_per_s" else (lambda x: f"{x:.2f} us")
                if runs:
                    spans.append(f"`{n}` {f(min(runs))}-{f(max(runs))}")
            out.append(f"- {what}: met on one summary and missed on the other ({got} over "
                       f"every run, {clean} over the undisturbed runs). The undisturbed runs "
                       f"span {' and '.join(spans)}: the difference is inside this run's "
                       "spread, so this run does not settle it; more repetitions on a quiet "
                       "machine would.")
    failed = [(n, c) for n, c in ordered(results, case) if c["status"] != "ok"]
    for n, c in failed:
        out.append(f"- `{n}` has no numbers: {c.get('reason')}.")
    return out


def docs_section(results: dict[str, Any], command: str) -> str:
    prof, m = results["profile"], results["machine"]
    case = results["cases"][0] if results["cases"] else None
    runs = [r for c in results["cases"] for cell in c["results"].values()
            for r in cell.get("runs", [])]
    disturbed = sum(1 for r in runs if r.get("interference"))
    pk = m.get("packages", {})
    out: list[str] = [DOCS_BEGIN, "",
                      "## HTTP: the `http` app under wrk", "",
                      "<!-- Generated by `make bench-http` (ioladder/bench/http.py, docs_section)"
                      " from results.json; `make bench-docs` keeps this section as it is. -->",
                      ""]
    w = out.append
    w(f"Measured on {results['created'][:10]} with `{command}` (= `{results.get('command')}`"
      f"): {prof['description']}. {prof['repeat']} repetition(s), {prof['warmup_s']:g} s wrk "
      f"warm-up + {prof['duration_s']:g} s measured per run; cells show the median "
      + ("and [min-max] of the repetitions" if prof["repeat"] > 1 else "of a single run")
      + f". The whole run took {results.get('elapsed_s', 0) / 60:.1f} minutes.")
    w("")
    w(f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, kernel {m.get('kernel')}, "
      f"Python {m.get('python')}; {m.get('wrk')}; {m.get('nginx')}; uvloop "
      f"{pk.get('uvloop')}, httptools {pk.get('httptools')}, uvicorn {pk.get('uvicorn')}.")
    w("")
    if disturbed:
        w(f"> **The machine was shared and noisy while this ran** (other work on both cores): "
          f"{disturbed} of {len(runs)} runs saw other work take more than 5 % of the server's "
          "core (or more than 10 % of wrk's), and their cells say `disturbed`. Server CPU per "
          "request holds up better than requests/s under such interference (time taken by "
          "other work is not counted as the server's CPU, though it still costs caches); the "
          "tables below show the medians of every run and, separately, of the undisturbed runs "
          "only, and the targets are judged on both. Run `make bench-http` on an idle machine "
          "before quoting an absolute number.")
        w("")
    w("Method:")
    w("")
    w(f"- Client: `{prof['client']}` (Debian's wrk; `make ensure-wrk` installs it and nginx): "
      "one thread, 100 connections kept alive, `GET /`, pinned to CPU "
      f"{prof['load_cpu']}. `--latency` gives the percentiles; a `done()` script prints the "
      "same histogram's p99.9 and the exact counts (wrk's per-request path stays script-free). "
      "wrk is closed-loop: latencies are response times with 100 requests in flight.")
    w(f"- Servers, each a fresh process per run pinned to CPU {prof['server_cpu']}, after a "
      f"{prof['warmup_s']:g} s wrk warm-up run; for each repetition every server in turn, the "
      "order rotated each repetition. Every available rung runs `ioladder serve --model M --app "
      "http`; `nginx` runs one worker process with `return 200 \"Hello, World!\"` and no access "
      "log, from a generated config in a temp dir (`nginx -p DIR -c nginx.conf -g 'daemon "
      "off;'`, keep-alive for the whole run); `uvloop-httptools` and `asyncio-httptools` are a "
      "bare `asyncio.Protocol` feeding httptools on uvloop and on the stdlib loop; `uvicorn` is "
      "uvicorn with `--loop uvloop --http httptools --no-access-log`, one worker, on a minimal "
      "ASGI app.")
    w("- Verified: before each run `GET /` twice on one connection must give 200, exactly "
      "`Hello, World!` and keep-alive; a run where wrk reports any non-2xx/3xx response or "
      "socket error (connect, read, write, timeout) is FAILED and shows the counts instead of "
      "numbers. `B/resp` is what wrk read per request (headers differ a little by server).")
    w(f"- Server CPU: every thread of the server's process tree (nginx: master + worker) from "
      f"`/proc` schedstat, {prof['window']}; CPU us/req = CPU seconds / (requests/s x window). "
      "`server core`/`wrk core`: the share of its CPU each used in that window. "
      + ("Syscalls counted with perf in the same window." if prof.get("perf") else
         "Syscalls were not counted (`--perf` counts them; off by default because the "
         "tracepoint costs every syscall a little)."))
    w("")
    if case is not None:
        w("### Results")
        w("")
        w(md_table(results, case))
        w("")
        w("⚑ = within 10 % of the fastest server: wrk's ceiling in this run. `x nginx` and "
          "`CPU x raw uvloop` are ratios to `nginx` and to `uvloop-httptools` measured in the same "
          "run.")
        w("")
        if disturbed:
            w("#### The undisturbed runs only")
            w("")
            w("The same medians over the runs in which no other work took more than 5 % of the "
              "server's core or 10 % of wrk's (`runs`: how many of each server's runs that "
              "leaves; servers with none are left out). Fewer samples, but each one measures "
              "the server rather than the neighbours:")
            w("")
            w(md_clean_table(results, case))
            w("")
    w("### Targets (issue 6)")
    w("")
    w("| target | limit | this run: every run's median | undisturbed runs only |")
    w("|---|---|---|---|")
    for (what, limit, got), (_, _, clean) in zip(
            target_rows(results), target_rows(results, "clean_summary"), strict=True):
        w(f"| {what} | {limit} | {got} | {clean} |")
    w("")
    if case is not None:
        w("### Reading")
        w("")
        out.extend(reading(results))
        w("")
    notes = results.get("notes") or []
    if notes:
        w("Notes from the run: " + "; ".join(notes) + ".")
        w("")
    w(DOCS_END)
    return "\n".join(out) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its HTTP section replaced by ``section`` (appended if it has none)."""
    b, e = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if b != -1 and e > b:
        return text[:b] + section.rstrip("\n") + text[e + len(DOCS_END):]
    return text.rstrip("\n") + "\n\n" + section


def preserved_section(path: Path) -> str | None:
    """The HTTP section of an existing docs page (for the echo page's writer to keep), or None."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    b, e = text.find(DOCS_BEGIN), text.find(DOCS_END)
    return text[b:e + len(DOCS_END)] + "\n" if b != -1 and e > b else None


def write_docs_section(results: dict[str, Any], path: Path, command: str = "make bench-http"
                       ) -> Path:
    """Write (or replace) the HTTP section of ``path``, leaving the rest of the page as it is."""
    section = docs_section(results, command)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = "# Benchmarks: the ladder measured\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, section))
    return path


def is_http_results(results: dict[str, Any]) -> bool:
    return any(c.get("kind") == "http" for c in results.get("cases", []))


# --------------------------------------------------------------------------- command line


def wants_http(argv: Sequence[str]) -> bool:
    """Whether an ``ioladder bench`` command line asks for this profile."""
    argv = list(argv)
    for i, word in enumerate(argv):
        if word in ("--http", "--profile=http") or (
                word == "--profile" and i + 1 < len(argv) and argv[i + 1] == "http"):
            return True
    return False


def _without_docs_options(argv: list[str]) -> list[str]:
    """The command line as the measurement's: without ``--docs``/``--docs-command`` (where the
    page goes is not how it was measured)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--docs", "--docs-command"):
            skip = True
        elif not word.startswith(("--docs=", "--docs-command=")):
            out.append(word)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ioladder bench --profile http",
        description="Drive the http app on every rung, nginx, raw uvloop/asyncio + httptools "
                    "and uvicorn with wrk (1 thread, 100 keep-alive connections, GET /). Writes "
                    "results.json, table.txt, plots and report.html into --out.")
    p.add_argument("--profile", choices=["http"], default="http")
    p.add_argument("--http", action="store_true", help="the same as --profile http")
    p.add_argument("--servers", help="comma list of servers or groups: rungs, peers, all "
                                     f"(peers: {NGINX}, {', '.join(peers.http_names())})")
    p.add_argument("--repeat", type=int, default=REPEAT)
    p.add_argument("--duration", type=int, default=DURATION, help="measured seconds per run "
                   f"(whole seconds: wrk's unit; default {DURATION})")
    p.add_argument("--warmup", type=int, default=WARMUP, help="wrk warm-up seconds per run "
                   f"(0: none; default {WARMUP})")
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--threads", type=int, default=THREADS, help="wrk threads (default 1)")
    p.add_argument("--out", default="bench-out/http")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=None, help="wrk's CPU; default 1 (0 on one)")
    p.add_argument("--perf", action="store_true", help="count syscalls per request with perf")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run servers and wrk at nice N (e.g. -10 on a shared machine)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for both CPUs to be idle "
                        f"(under {QUIET * 100:.0f}%% busy; a shared machine); default 0: do not wait")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--list", action="store_true", help="list the servers and exit")
    p.add_argument("--docs", metavar="FILE",
                   help="write the HTTP section of this docs page (docs/benchmarks.md)")
    p.add_argument("--docs-command", default="make bench-http",
                   help="the command named on the docs page")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``ioladder bench --profile http``: 0 done (or skipped: wrk missing), 130 interrupted."""
    prev = signal.signal(signal.SIGTERM, runner._sigterm)
    try:
        return _main(list(argv) if argv is not None else sys.argv[1:])
    except KeyboardInterrupt:
        print("ioladder bench: interrupted", file=sys.stderr)
        return 130
    finally:
        runner.kill_children()
        stop_all_nginx()
        signal.signal(signal.SIGTERM, prev)


def _main(argv: list[str]) -> int:
    from rich.console import Console

    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    specs = all_http_servers()
    if args.list:
        for s in specs:
            state = "available" if s.reason is None else f"unavailable: {s.reason}"
            console.print(f"{s.name:20} {s.kind:6} {state}  [dim]{s.description}[/]")
        return 0
    wrk = find_wrk()
    if wrk is None:
        console.print(f"[yellow]ioladder bench --profile http: skipped: wrk is not installed "
                      f"[/]({INSTALL_HINT}); nothing was measured")
        return 0
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1 or args.connections < 1:
        print("ioladder bench: --duration >= 1, --warmup >= 0, --repeat >= 1, --connections "
              ">= 1 (whole seconds)", file=sys.stderr)
        return 2
    servers, notes = select_http_servers(specs, args.servers)
    if not [s for s in servers if s.reason is None]:
        print("ioladder bench: no server to measure", file=sys.stderr)
        return 2
    metrics.raise_nofile()
    ncpu = len(os.sched_getaffinity(0))
    load_cpu = args.load_cpu if args.load_cpu is not None else (1 if ncpu > 1 else 0)
    if load_cpu == args.server_cpu:
        notes.append(f"server and wrk share CPU {load_cpu}: not comparable with a two-core run")
    if args.repeat == 1:
        notes.append("one repetition: no min-max spread")
    if args.wait_quiet > 0:
        notes.append(f"each run waited up to {args.wait_quiet:g} s for both CPUs to be idle "
                     f"(under {QUIET:.0%} busy) before it started")
    if args.nice:
        probe = subprocess.run([sys.executable, "-c",
                                f"import os; os.setpriority(os.PRIO_PROCESS, 0, {args.nice})"],
                               capture_output=True)
        if probe.returncode != 0:
            notes.append(f"--nice {args.nice} ignored: not permitted")
            args.nice = 0
        else:
            notes.append(f"servers and wrk ran at nice {args.nice}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    script = out / "wrk-done.lua"
    script.write_text(WRK_SCRIPT)
    opts = HttpOptions(server_cpu=args.server_cpu, load_cpu=load_cpu,
                       connections=args.connections, threads=args.threads, warmup=args.warmup,
                       duration=args.duration, repeat=args.repeat, perf=args.perf,
                       nice=args.nice, wrk=wrk, script=str(script),
                       wait_quiet=args.wait_quiet)
    command = "ioladder bench " + shlex.join(_without_docs_options(argv))
    bench = HttpBench(servers, opts, notes, command)
    try:
        os.sched_setaffinity(0, {load_cpu})  # the runner sleeps; never on the server's core
    except OSError:
        pass
    runnable = [s for s in servers if s.reason is None]
    per_run = args.warmup + args.duration + 1.0
    console.print(f"[bold]ioladder bench[/] profile [cyan]http[/]: {len(runnable)} servers x "
                  f"{args.repeat} rep, {args.warmup} s warm-up + {args.duration} s each "
                  f"(~{len(runnable) * args.repeat * per_run / 60:.1f} min); servers on CPU "
                  f"{opts.server_cpu}, wrk on CPU {load_cpu}")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    results = bench.run(progress=lambda text: console.print(f"  {text}", highlight=False,
                                                            markup=False))
    path = runner.save(results, out)
    written = [path]
    (out / "table.txt").write_text(table_text(results))
    written.append(out / "table.txt")
    for case in results["cases"]:
        console.print(rich_table(results, case, compact=console.width < 200))
    for line in footer_lines(results):
        console.print(line, highlight=False, markup=False)
    if not args.no_plots:
        plots = write_plots(results, out)
        written += list(plots.values())
        written.append(write_html(results, out, plots))
    if args.docs and not results["interrupted"]:
        written.append(write_docs_section(results, Path(args.docs), args.docs_command))
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 130 if results["interrupted"] else 0


def refresh(results: dict[str, Any]) -> dict[str, Any]:
    """Summaries, ratios and the ceiling computed again from the stored runs (so a results
    file written by an older version renders like a new one)."""
    for case in results["cases"]:
        for name, cell in list(case["results"].items()):
            if cell.get("runs"):
                case["results"][name] = finish_cell(cell["runs"])
        finish_case(case)
    return results


def render(results: dict[str, Any], html_dir: str | None, docs: str | None,
           docs_command: str) -> list[Path]:
    """Re-render a stored HTTP results file (``python -m ioladder.bench.report``)."""
    refresh(results)
    written: list[Path] = []
    if html_dir:
        out = Path(html_dir)
        written.append(write_html(results, out, write_plots(results, out)))
    if docs:
        written.append(write_docs_section(results, Path(docs), docs_command))
    return written


if __name__ == "__main__":
    sys.exit(main())
