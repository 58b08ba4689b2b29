"""``ioladder bench``: the ladder measured beside its peers, under one load generator.

Method (design.md section 7)
----------------------------
* **Servers under test**, each its own process pinned to CPU 0 (``--server-cpu``), listening on
  127.0.0.1 on an ephemeral port, ready once it prints its listening line: every available rung
  (``python -m ioladder serve --model M --app echo --port 0``), the peers of
  :mod:`ioladder.bench.peers`, and the C epoll floor of :mod:`ioladder.bench.floor`.
* **Load**: one generator process (:mod:`ioladder.bench.loadgen`, C hot loop) pinned to CPU 1
  (``--load-cpu``). It connects every connection first (each counts only after one verified
  round trip), says READY, and starts on our GO, so the runner knows the measured window to
  the millisecond: ``[GO + warm-up, GO + warm-up + duration)``.
* **One fresh server process per run.** Every (case, repetition, server) starts its own server
  and stops it afterwards: the idle RSS is a true baseline, no run inherits another's heap,
  sockets in TIME_WAIT or grown thread pool, and repetitions are independent samples of the
  whole process (a Python server costs ~0.2 s to start; that is outside every window).
* **Interleaved**: for each case, for each repetition, every server in turn, in an order
  rotated by one each repetition, so slow drift of the machine (a VM's neighbours, thermal)
  spreads over all servers instead of landing on one. Medians are reported with min-max.
* **Windows**: server CPU is read from ``/proc`` at the start and the end of the measured
  window only (never warm-up, connect or drain); ``perf stat`` counts syscalls only inside
  it (switched on and off through perf's control pipe); RSS is read idle (before the
  generator connects), with every connection held (at READY, before load), and at the end of
  the window; threads at the end of the window.
* **Cannot reach**: a case beyond a rung's ``structural_limit`` (``select``: FD_SETSIZE), beyond
  the thread limit for a thread-per-connection rung, or beyond RLIMIT_NOFILE is not run and
  says why; a run whose connections fail to open reports the connect error instead of
  numbers; a run with any verify or close error reports the errors instead of numbers.
* **The generator's ceiling**: for each closed-loop case the fastest server (normally the C
  floor) sets the ceiling; every server within 10 % of it is flagged, because there the
  generator (or loopback TCP itself), not the server, may be the limit. The generator's own
  CPU use in the ceiling run is reported so the reader can tell which.

Profiles: ``--quick`` (the demo, ~2 minutes on 2 cores, 1 repetition), ``--profile echo``
(issue 3's cases), ``--profile docs`` (what ``docs/benchmarks.md`` shows), ``--full`` (the
whole matrix, 3 repetitions).

``results.json`` schema (``"schema": "ioladder-bench/1"``)
---------------------------------------------------------
::

    {
      "schema": "ioladder-bench/1",
      "created": "2026-01-01T12:00:00+00:00",        # UTC, ISO 8601
      "command": "ioladder bench --quick",
      "interrupted": false,                           # true: Ctrl-C, partial results
      "elapsed_s": 118.2,
      "profile": {"name", "description", "warmup_s", "duration_s", "repeat",
                  "server_cpu", "load_cpu", "perf": bool, "order": "..."},
      "machine": {"cpu_model", "cores", "cpus_allowed", "mem_total_mib", "kernel", "os",
                  "hostname", "python", "python_implementation", "gcc",
                  "packages": {name: version or null},   # ioladder, rich, every peer package
                  "rlimit_nofile": [soft, hard], "threads_limit", "perf",
                  "clock_ticks_per_s", "io_uring_disabled"},
      "servers": [{"name", "kind": "rung"|"peer"|"floor", "description",
                   "available": bool, "reason": str|null}],   # ladder order, peers, floor
      "notes": [str],                      # skipped servers, caps, single repetition, ...
      "cases": [{
        "id": "c100-s64-d1" | "c100-s64-d1-r40000",
        "label": "100 conns, 64 B, depth 1",
        "connections": 100, "requested_connections": 100, "capped": str|null,
        "size": 64, "depth": 1, "rate": 0.0,            # rate > 0: fixed offered rt/s
        "kind": "closed" | "fixed-rate",
        "ceiling": {"server", "rt_per_s", "client_cpu_util"} | null,
        "results": {server_name: {
          "status": "ok" | "unreachable" | "error" | "skipped",
          "reason": str|null,                 # why not ok; or a note on an ok cell
          "near_ceiling": bool,               # closed loop: within 10 % of the ceiling
          "vs_floor": {"rt_per_s": ratio, "cpu_us_per_rt": ratio} | null,
          "summary": {metric: {"median", "min", "max", "n"}},   # over ok runs
          "runs": [{"rep", "status", "reason", "order",
                    "rt_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us", "messages",
                    "elapsed_s", "connections", "errors", "connect_errors",
                    "server_cpu_s", "server_cpu_util", "cpu_source": "schedstat"|"stat",
                    "cpu_us_per_rt", "cpu_s_per_100k",
                    "rss_idle_kib", "rss_held_kib", "rss_load_kib", "rss_hwm_kib",
                    "rss_per_conn_b", "threads_idle", "threads_held", "threads",
                    "syscalls", "syscalls_per_rt", "syscalls_note",
                    "client_cpu_util", "offered_rate", "server_exit", "other_on_server_cpu",
                    "steal_server_cpu", "load_cpu_busy", "other_on_load_cpu", "interference",
                    "load": {...LoadResult.to_dict() without per_process...}}]}}
      }]
    }

Summary metrics are the run fields above that are numbers. Every ratio is against a server
measured in the same run, never against a stored number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import rungs
from . import metrics, peers

SCHEMA = "ioladder-bench/1"
FLOOR = "c-epoll"
HOST = "127.0.0.1"
NOFILE_HEADROOM = 64         # descriptors each side keeps for itself beyond the connections
CEILING_FRACTION = 0.9       # within 10 % of the ceiling: flagged
RATE_SUSTAINED = 0.97        # fixed rate: below this fraction of the offered rate is noted
FIXED_RATE_SPIN_US = 50.0    # the generator polls for the last 50 us before a paced send
START_TIMEOUT = 20.0
PERF_MAX_THREADS = 1024      # above this, syscalls are not counted (see run_one)
INTERFERENCE = 0.05          # another process used > 5 % of the server's core: noted
PEER_PACKAGES = ["uvloop", "trio", "gevent"]
REPORT_PACKAGES = ["ioladder", "rich", "hdrhistogram", "matplotlib", *PEER_PACKAGES]

#: threads a thread-per-connection rung needs per connection, for rungs that do not say so
#: themselves with a ``threads_per_connection`` class attribute.
THREADS_PER_CONNECTION = {"blocking": 1.0, "eventselect": 1 / 63}

# ----------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    connections: int
    size: int
    depth: int
    rate: float = 0.0                     # > 0: fixed offered round trips/s (all connections)
    requested: int | None = None          # before the RLIMIT_NOFILE cap
    capped: str | None = None

    @property
    def id(self) -> str:
        base = f"c{self.requested or self.connections}-s{self.size}-d{self.depth}"
        return f"{base}-r{self.rate:.0f}" if self.rate else base

    @property
    def kind(self) -> str:
        return "fixed-rate" if self.rate else "closed"

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} B"
        text = f"{self.connections:,} conns, {size}, depth {self.depth}"
        if self.rate:
            text = f"fixed {self.rate:,.0f} rt/s, " + text
        return text


@dataclass
class Profile:
    name: str
    description: str
    cases: list[Case]
    warmup: float
    duration: float
    repeat: int


FULL_CONNECTIONS = [1, 10, 100, 1000, 10000]
FIXED = Case(100, 64, 1, 40000.0)


def _matrix(connections: Iterable[int], sizes: Iterable[int], depths: Iterable[int]) -> list[Case]:
    return [Case(c, s, d) for s in sizes for d in depths for c in connections]


PROFILES: dict[str, Callable[[], Profile]] = {
    "quick": lambda: Profile(
        "quick", "the demo: 64 B at 100 connections (depth 1 and 16), 1,000 connections at "
        "depth 1, and the fixed-rate case; short windows, one repetition",
        [Case(100, 64, 1), Case(100, 64, 16), Case(1000, 64, 1), FIXED],
        warmup=0.25, duration=0.8, repeat=1),
    "echo": lambda: Profile(
        "echo", "issue 3's echo cases: 64 B, 100 connections, depth 1 and 16, fixed 40k rt/s",
        [Case(100, 64, 1), Case(100, 64, 16), FIXED], warmup=0.5, duration=2.0, repeat=3),
    "docs": lambda: Profile(
        "docs", "what docs/benchmarks.md shows: 64 B at 1 to 10,000 connections (depth 1), "
        "100 connections at depth 16 and with 4 KiB, the fixed-rate case; 5 repetitions (on a "
        "shared 2-core machine one run of a case swings by 5-10 %: the medians need them)",
        [*_matrix([1, 100, 1000, 10000], [64], [1]), Case(100, 64, 16), Case(100, 4096, 1),
         Case(100, 4096, 16), FIXED],
        warmup=0.5, duration=1.5, repeat=5),
    "full": lambda: Profile(
        "full", "the whole matrix: 1 to 10,000 connections x 64 B and 4 KiB x depth 1 and 16, "
        "plus the fixed-rate case; 3 repetitions",
        [*_matrix(FULL_CONNECTIONS, [64, 4096], [1, 16]), FIXED],
        warmup=1.0, duration=3.0, repeat=3),
}


def cap_cases(cases: list[Case], limit: int, why: str) -> tuple[list[Case], list[str]]:
    """Cap connection counts at ``limit``; return the cases and a note for each cap."""
    out, notes = [], []
    for case in cases:
        if case.connections > limit:
            text = (f"{case.connections:,} connections capped to {limit:,}: {why} minus "
                    f"{NOFILE_HEADROOM} descriptors of headroom")
            notes.append(text)
            case = dataclasses.replace(case, connections=limit, requested=case.connections,
                                       capped=text)
        out.append(case)
    return out, notes


# ------------------------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    name: str
    kind: str                              # rung | peer | floor
    description: str
    reason: str | None = None              # unavailable here, and why
    structural_limit: int | None = None
    threads_per_connection: float = 0.0
    mechanism: str = ""
    fds_per_connection: float = 1.0        # descriptors the server holds per idle connection

    def argv(self) -> list[str]:
        if self.kind == "rung":
            return [sys.executable, "-m", "ioladder", "serve", "--model", self.name,
                    "--app", "echo", "--host", HOST, "--port", "0"]
        if self.kind == "peer":
            return [sys.executable, "-m", "ioladder.bench.peers", "--peer", self.name,
                    "--host", HOST, "--port", "0"]
        from .floor import build_floor
        return [str(build_floor()), "0"]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "available": self.reason is None, "reason": self.reason}


def all_servers() -> list[ServerSpec]:
    """Every server the bench knows, ladder order first, then the peers, then the floor."""
    specs: list[ServerSpec] = []
    for name in rungs.names():
        why = rungs.reason(name)
        try:
            cls = rungs.get(name)
        except ImportError as exc:
            specs.append(ServerSpec(name, "rung", "?", why or f"cannot load: {exc}"))
            continue
        tpc = getattr(cls, "threads_per_connection", None)
        if tpc is None:
            tpc = THREADS_PER_CONNECTION.get(name, 0.0)
        specs.append(ServerSpec(name, "rung", f"rung: {cls.mechanism}", why,
                                cls.structural_limit, float(tpc), cls.mechanism,
                                float(getattr(cls, "fds_per_connection", 1))))
    for name in peers.names():
        peer = peers.PEERS[name]
        specs.append(ServerSpec(name, "peer", f"peer: {peer.description}", peers.reason(name)))
    why = None
    try:
        from .floor import FloorBuildError, build_floor
        try:
            build_floor()
        except FloorBuildError as exc:
            why = str(exc)
    except ImportError as exc:
        why = f"floor module missing: {exc}"
    specs.append(ServerSpec(FLOOR, "floor", "floor: minimal C epoll echo server (gcc -O2)", why))
    return specs


#: ``--servers`` groups of the echo bench: a name selects the specs whose kind it keeps
ECHO_GROUPS: dict[str, Callable[[Any], bool]] = {
    "rungs": lambda s: s.kind == "rung",
    "peers": lambda s: s.kind == "peer",
    "floor": lambda s: s.kind == "floor",
}


def select_servers(specs: list[Any], wanted: str | None,
                   groups: dict[str, Callable[[Any], bool]] | None = None,
                   command: str = "ioladder bench") -> tuple[list[Any], list[str]]:
    """Resolve ``--servers``: names, ``all`` and the ``groups`` (default: rungs, peers, floor).

    The chosen specs keep the order of ``specs``; the notes say which are skipped and why.
    """
    groups = ECHO_GROUPS if groups is None else groups
    by_name = {s.name: s for s in specs}
    chosen: list[Any] = []
    for item in (w.strip() for w in (wanted or "all").split(",")):
        if not item:
            continue
        if item == "all":
            group = specs
        elif item in groups:
            group = [s for s in specs if groups[item](s)]
        elif item in by_name:
            group = [by_name[item]]
        else:
            raise SystemExit(f"{command}: unknown server {item!r}; choose from "
                             f"{', '.join(by_name)} (or {', '.join(groups)}, all)")
        chosen.extend(s for s in group if s not in chosen)
    order = {s.name: i for i, s in enumerate(specs)}
    chosen.sort(key=lambda s: order[s.name])
    notes = [f"{s.name} skipped: {s.reason}" for s in chosen if s.reason is not None]
    return chosen, notes


_READY = {
    "rung": re.compile(r"serving app .* on 127\.0\.0\.1:(\d+)"),
    "peer": re.compile(r"^LISTENING (\d+)"),
    "floor": re.compile(r"^LISTENING (\d+)"),
}

#: every child process still alive, so an interrupted run can always kill them all
_LIVE: set[subprocess.Popen[Any]] = set()


def note_interference(rec: dict[str, Any], core0: metrics.CoreSample,
                      core1: metrics.CoreSample, window: float, server_cpu: int, load_cpu: int,
                      load_util: float | None, load_name: str) -> None:
    """Record what else ran on the server's and the load's cores over the measured window.

    ``rec["interference"]`` says so when other work (or steal) took more than INTERFERENCE of
    the server's core, or twice that of the load's (ticks: +-1 % of a 1 s window).
    """
    if window <= 0:
        return
    busy, steal = core1.since(core0, server_cpu)
    lbusy, _ = core1.since(core0, load_cpu)
    rec["other_on_server_cpu"] = max(0.0, busy / window - (rec["server_cpu_util"] or 0))
    rec["steal_server_cpu"] = steal / window
    rec["load_cpu_busy"] = lbusy / window
    rec["other_on_load_cpu"] = max(0.0, lbusy / window - (load_util or 0))
    if rec["other_on_server_cpu"] > INTERFERENCE or rec["steal_server_cpu"] > INTERFERENCE:
        rec["interference"] = (
            f"other work used {rec['other_on_server_cpu']:.0%} of server CPU {server_cpu}"
            + (f", steal {rec['steal_server_cpu']:.0%}" if rec["steal_server_cpu"] > 0.01
               else ""))
    elif load_cpu != server_cpu and rec["other_on_load_cpu"] > 2 * INTERFERENCE:
        rec["interference"] = (f"other work used {rec['other_on_load_cpu']:.0%} of "
                               f"{load_name} CPU {load_cpu}")


def note_syscalls(rec: dict[str, Any], perf: Any, per_s: float) -> None:
    """Stop the perf syscall count and record it, per round trip (or why there is none)."""
    count, pwin, perr = perf.finish()
    rec["syscalls"] = count
    if count is not None and pwin > 0 and per_s > 0:
        rec["syscalls_per_rt"] = count / (per_s * pwin)
    else:
        rec["syscalls_note"] = perr or "perf: empty window"


def _reap(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM, wait, SIGKILL: the child is gone when this returns."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        _LIVE.discard(proc)
    return proc.returncode


def kill_children() -> None:
    """Kill every child the runner started and has not reaped (Ctrl-C, exceptions)."""
    for proc in list(_LIVE):
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _LIVE.discard(proc)


class ServerProcess:
    """One server under test: started pinned, ready when it prints its port."""

    def __init__(self, spec: ServerSpec, cpu: int, nice: int = 0) -> None:
        self.spec = spec
        self.cpu = cpu
        self.nice = nice
        self.port = 0
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(spec.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env,
                                     start_new_session=True)  # Ctrl-C is ours to handle
        _LIVE.add(self.proc)
        # Pin before it starts any thread (threads inherit the mask); pin_tree() again later.
        try:
            os.sched_setaffinity(self.proc.pid, {cpu})
        except OSError:
            pass
        if nice:
            metrics.renice_tree(self.proc.pid, nice)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        pattern = _READY[self.spec.kind]
        while True:
            for line in buf.decode(errors="replace").splitlines():
                m = pattern.search(line)
                if m:
                    self.port = int(m.group(1))
                    metrics.pin_tree(self.pid, {self.cpu})
                    if self.nice:
                        metrics.renice_tree(self.pid, self.nice)
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.spec.name} did not print its port within "
                                   f"{timeout:.0f} s{self._stderr_tail()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(2)
                    raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode} "
                                       f"before listening{self._stderr_tail()}")
                buf += chunk

    def _stderr_tail(self) -> str:
        self._err.seek(0)
        text = self._err.read().decode(errors="replace").strip()
        return f": {text[-400:]}" if text else ""

    def stop(self, timeout: float = 10.0) -> tuple[int, str]:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``); its exit code, stderr tail."""
        rc = _reap(self.proc, timeout)
        tail = self._stderr_tail()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        return rc, tail


# --------------------------------------------------------------------------- one run


@dataclass
class Options:
    server_cpu: int = 0
    load_cpu: int = 1
    perf: bool = True
    connect_timeout: float = 10.0
    nice: int = 0                 # < 0: server and generator outrank other work on their CPUs


#: The generator process. It imports the generator *while the server starts*, pins itself,
#: then waits for its parameters (one JSON line on stdin, read byte by byte so nothing past it
#: is consumed); `run_raw` then connects everything, writes READY to stdout and waits for the
#: GO byte on the same stdin -- the protocol of `loadgen --worker`, which the runner drives
#: itself because it must act at READY (RSS with connections held, attach perf) and know
#: when GO went, to bound the measured window.
_WORKER = """
import json, os, sys
from ioladder.bench.loadgen import run_raw
os.sched_setaffinity(0, {int(sys.argv[1])})
line = b""
while not line.endswith(b"\\n"):
    c = os.read(0, 1)
    if not c:
        sys.exit(3)
    line += c
raw = run_raw(**json.loads(line), ready_fd=1, go_fd=0)
sys.stdout.write(json.dumps(raw, separators=(",", ":")) + "\\n")
"""


def _spawn_worker(cpu: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(cpu)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _LIVE.add(proc)
    return proc


def _worker_params(port: int, case: Case, profile: Profile, opts: Options) -> bytes:
    params = {"host": HOST, "port": port, "connections": case.connections, "size": case.size,
              "depth": case.depth, "warmup": profile.warmup, "duration": profile.duration,
              "rate": case.rate, "connect_timeout": opts.connect_timeout, "connect_batch": 128,
              "spin_us": FIXED_RATE_SPIN_US if case.rate else 0.0}
    return json.dumps(params).encode() + b"\n"


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("load generator did not report READY in time")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


def _sleep_until(t: float, proc: subprocess.Popen[Any]) -> bool:
    """Sleep until monotonic ``t``; False if ``proc`` exited first."""
    left = t - time.monotonic()
    if left > 0:
        try:
            proc.wait(left)
            return False
        except subprocess.TimeoutExpired:
            return True
    return proc.poll() is None


def run_one(spec: ServerSpec, case: Case, profile: Profile, opts: Options,
            perf_reason: str | None) -> dict[str, Any]:
    """Start ``spec`` fresh, drive ``case`` once, stop it; one run record (see schema)."""
    from .loadgen import merge_raw

    rec: dict[str, Any] = {"status": "ok", "reason": None}
    worker: subprocess.Popen[bytes] | None = _spawn_worker(opts.load_cpu)
    server = ServerProcess(spec, opts.server_cpu, opts.nice)
    perf: metrics.SyscallCounter | None = None
    try:
        assert worker is not None and worker.stdin is not None
        if opts.nice:
            metrics.renice_tree(worker.pid, opts.nice)
        server.wait_ready()
        idle = metrics.status_fields(metrics.tree_pids(server.pid))
        rec["rss_idle_kib"] = idle["VmRSS"]
        rec["threads_idle"] = idle["Threads"]
        worker.stdin.write(_worker_params(server.port, case, profile, opts))
        worker.stdin.flush()
        line = _read_line(worker, 30.0 + opts.connect_timeout + case.connections / 200.0)
        if line.strip() != b"READY":
            worker.wait(5)
            err = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
            raise RuntimeError(f"load generator failed before READY: {err.strip()[-300:]}")
        pids = metrics.tree_pids(server.pid)  # fixed from here: cheap samples in the window
        held = metrics.status_fields(pids)
        rec["rss_held_kib"] = held["VmRSS"]
        rec["threads_held"] = held["Threads"]
        perf_skip = None
        if held["Threads"] > PERF_MAX_THREADS:
            # perf opens one counter per thread; enabling thousands takes seconds and the
            # generator's CPU, inside the window it is meant to count
            perf_skip = (f"not counted: {held['Threads']:,} threads (perf would open a "
                         "counter per thread)")
        elif opts.perf and perf_reason is None:
            perf = metrics.SyscallCounter(server.pid, opts.load_cpu)
        assert worker.stdin is not None
        worker.stdin.write(b"G")
        worker.stdin.close()
        worker.stdin = None
        t_go = time.monotonic()
        # The generator's window is [GO + warm-up, GO + warm-up + duration). Ours sits a margin
        # inside it, so the samples never catch the ramp at its start or the drain and closes
        # at its end (at depth 1 the closes start the moment the window ends); per-round-trip
        # figures divide by rt/s x our window, which steady state makes exact.
        margin = min(0.02, profile.duration * 0.02)
        t_w0 = t_go + profile.warmup + margin
        t_w1 = t_go + profile.warmup + profile.duration - margin
        cpu0 = cpu1 = None
        core0 = core1 = metrics.CoreSample({}, {})
        if _sleep_until(t_w0, worker):
            cpu0 = metrics.CpuSample.take(pids)
            core0 = metrics.CoreSample.take()
            if perf is not None:
                perf.enable()
            # memory and threads under load: late in the window, still before its end
            if _sleep_until(t_w0 + 0.8 * (t_w1 - t_w0), worker):
                load = metrics.status_fields(pids)
                rec["rss_load_kib"] = load["VmRSS"]
                rec["rss_hwm_kib"] = load["VmHWM"]
                rec["threads"] = load["Threads"]
                if _sleep_until(t_w1, worker):
                    if perf is not None:
                        perf.disable()
                    cpu1 = metrics.CpuSample.take(pids)
                    core1 = metrics.CoreSample.take()
        out, err = worker.communicate(timeout=profile.duration + profile.warmup + 90.0)
        _LIVE.discard(worker)
        if worker.returncode != 0 or not out.strip():
            raise RuntimeError(f"load generator exited {worker.returncode}: "
                               f"{err.decode(errors='replace').strip()[-300:]}")
        raw = json.loads(out.decode().strip().splitlines()[-1])
        result = merge_raw([raw], host=HOST, port=server.port, warmup=profile.warmup,
                           duration=profile.duration, rate=case.rate, cpus=[opts.load_cpu])
        load_dict = result.to_dict()
        load_dict.pop("per_process", None)
        rec["load"] = load_dict
        rec.update(rt_per_s=result.rt_per_s, mb_per_s=result.mb_per_s, p50_us=result.p50_us,
                   p99_us=result.p99_us, p999_us=result.p999_us, messages=result.messages,
                   elapsed_s=result.elapsed, connections=result.connections,
                   errors=result.errors, connect_errors=result.connect_errors,
                   client_cpu_util=result.client_cpu_util, offered_rate=case.rate)
        if cpu0 is None or cpu1 is None:
            raise RuntimeError("the load generator ended before its measured window did")
        cpu_s, source = cpu1.seconds_since(cpu0)
        window = cpu1.t - cpu0.t
        rec["server_cpu_s"] = cpu_s
        rec["server_cpu_util"] = cpu_s / window if window > 0 else None
        rec["cpu_source"] = source
        note_interference(rec, core0, core1, window, opts.server_cpu, opts.load_cpu,
                          result.client_cpu_util, "generator")
        done = result.rt_per_s * window
        rec["cpu_us_per_rt"] = cpu_s / done * 1e6 if done > 0 else None
        rec["cpu_s_per_100k"] = cpu_s / done * 1e5 if done > 0 else None
        if result.connections:
            rec["rss_per_conn_b"] = ((rec["rss_held_kib"] - rec["rss_idle_kib"]) * 1024
                                     / result.connections)
        if perf is not None:
            note_syscalls(rec, perf, result.rt_per_s)
            perf = None
        else:
            rec["syscalls_note"] = ("off (--no-perf)" if not opts.perf
                                    else perf_reason or perf_skip)
        # what makes the numbers not a measurement of this case
        if result.connections < case.connections:
            rec["status"] = "unreachable"
            rec["reason"] = (f"opened {result.connections:,} of {case.connections:,} "
                             f"connections: {result.connect_error or 'connect failed'}")
        elif result.errors:
            rec["status"] = "error"
            rec["reason"] = (f"{result.errors} errors ({result.verify_errors} bytes wrong, "
                             f"{result.close_errors} connections closed or reset)")
        elif result.messages == 0:
            rec["status"] = "error"
            rec["reason"] = "no round trip completed in the measured window"
        elif case.rate and result.rt_per_s < RATE_SUSTAINED * case.rate:
            rec["reason"] = f"sustained {result.rt_per_s:,.0f} of {case.rate:,.0f} rt/s offered"
        elif case.rate and result.rt_per_s > (2 - RATE_SUSTAINED) * case.rate:
            # the timeline is fixed: slots missed while the generator was held up are sent
            # late, in a burst, so a stalled generator shows up as more than the offered rate
            rec["reason"] = (f"{result.rt_per_s:,.0f} rt/s, above the {case.rate:,.0f} offered: "
                             "the generator fell behind its timeline and caught up")
    except (RuntimeError, TimeoutError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        rec["status"] = "error"
        rec["reason"] = str(exc)
    finally:
        if perf is not None:
            perf.close()
        if worker is not None:
            _reap(worker, 2.0)
            for f in (worker.stdout, worker.stderr):
                if f is not None:
                    f.close()
        rc, tail = server.stop()
        rec["server_exit"] = rc
        if rc == -signal.SIGKILL:
            rec["shutdown_note"] = "did not exit within 10 s of SIGTERM: killed"
        elif rc not in (0, -signal.SIGTERM) and rec["status"] == "ok":
            rec["status"] = "error"
            rec["reason"] = f"server exited with {rc} after the run{tail}"
    return rec


# --------------------------------------------------------------------------- summaries

SUMMARY_METRICS = ("rt_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us", "server_cpu_s",
                   "server_cpu_util", "cpu_us_per_rt", "cpu_s_per_100k", "rss_idle_kib",
                   "rss_held_kib", "rss_load_kib", "rss_hwm_kib", "rss_per_conn_b",
                   "threads_idle", "threads_held", "threads", "syscalls_per_rt", "client_cpu_util",
                   "other_on_server_cpu", "steal_server_cpu", "load_cpu_busy",
                   "other_on_load_cpu")


def summarize(runs: list[dict[str, Any]],
              metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict[str, Any]:
    """Median, min, max and count of each of ``metrics`` over the runs that succeeded."""
    ok = [r for r in runs if r.get("status") == "ok"]
    out: dict[str, Any] = {}
    for m in metrics:
        values = [r[m] for r in ok if isinstance(r.get(m), (int, float))]
        if values:
            out[m] = {"median": statistics.median(values), "min": min(values),
                      "max": max(values), "n": len(values)}
    return out


def finish_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("status") == "ok"]
    cell: dict[str, Any] = {"runs": runs, "summary": summarize(runs), "near_ceiling": False,
                            "vs_floor": None}
    if ok:
        cell["status"] = "ok"
        notes = sorted({r["reason"] for r in ok if r.get("reason")})
        bad = [r for r in runs if r.get("status") != "ok"]
        if bad:
            notes.append(f"{len(bad)} of {len(runs)} runs failed: {bad[0]['reason']}")
        disturbed = [r for r in ok if r.get("interference")]
        if disturbed:
            notes.append(f"disturbed: {disturbed[0]['interference']}"
                         + (f" ({len(disturbed)} of {len(ok)} runs)" if len(ok) > 1 else ""))
        syscall_notes = sorted({r["syscalls_note"] for r in ok if r.get("syscalls_note")})
        cell["reason"] = "; ".join(notes) or None
        cell["syscalls_note"] = syscall_notes[0] if syscall_notes and not any(
            "syscalls_per_rt" in r for r in ok) else None
    else:
        first = runs[0] if runs else {"status": "error", "reason": "not run"}
        cell["status"] = first.get("status", "error")
        cell["reason"] = first.get("reason")
    return cell


def _median(cell: dict[str, Any], metric: str) -> float | None:
    m = cell.get("summary", {}).get(metric)
    return m["median"] if m else None


def finish_case(case_rec: dict[str, Any]) -> None:
    """Ceiling, near-ceiling flags and ratios against the floor, from this case's cells."""
    results = case_rec["results"]
    ok = {n: c for n, c in results.items() if c["status"] == "ok"}
    floor = ok.get(FLOOR)
    if floor is not None:
        f_rt, f_cpu = _median(floor, "rt_per_s"), _median(floor, "cpu_us_per_rt")
        for cell in ok.values():
            rt, cpu = _median(cell, "rt_per_s"), _median(cell, "cpu_us_per_rt")
            cell["vs_floor"] = {
                "rt_per_s": rt / f_rt if rt and f_rt else None,
                "cpu_us_per_rt": cpu / f_cpu if cpu and f_cpu else None,
            }
    case_rec["ceiling"] = None
    if case_rec["kind"] != "closed" or not ok:
        return
    best_name = max(ok, key=lambda n: _median(ok[n], "rt_per_s") or 0.0)
    ceiling = _median(ok[best_name], "rt_per_s") or 0.0
    case_rec["ceiling"] = {"server": best_name, "rt_per_s": ceiling,
                           "client_cpu_util": _median(ok[best_name], "client_cpu_util")}
    for cell in ok.values():
        rt = _median(cell, "rt_per_s") or 0.0
        cell["near_ceiling"] = ceiling > 0 and rt >= CEILING_FRACTION * ceiling


def cannot_reach(spec: ServerSpec, case: Case, threads: tuple[int, str],
                 nofile: int | None = None) -> str | None:
    """Why ``spec`` cannot hold ``case``'s connections here, decided before running.

    ``nofile``: the server's RLIMIT_NOFILE; connection counts are already capped for servers
    holding one descriptor per connection, a rung holding more (``fds_per_connection``) may
    still not fit."""
    if spec.structural_limit is not None and case.connections > spec.structural_limit:
        return (f"cannot reach: {spec.name} holds at most {spec.structural_limit:,} connections "
                f"by construction ({spec.mechanism})")
    if nofile is not None and spec.fds_per_connection > 1:
        need = int(case.connections * spec.fds_per_connection) + NOFILE_HEADROOM
        if need > nofile:
            return (f"cannot reach: {spec.name} holds {spec.fds_per_connection:g} descriptors "
                    f"per connection (~{need:,} for {case.connections:,} connections), over "
                    f"RLIMIT_NOFILE ({nofile:,})")
    if spec.threads_per_connection:
        need = int(case.connections * spec.threads_per_connection) + 16
        limit, what = threads
        if need > limit:
            return (f"cannot reach: {spec.name} needs ~{need:,} threads for "
                    f"{case.connections:,} connections, over the thread limit ({what})")
    return None


# ------------------------------------------------------------------------------ driver


@dataclass
class Bench:
    profile: Profile
    servers: list[ServerSpec]
    out: Path
    opts: Options = field(default_factory=Options)
    notes: list[str] = field(default_factory=list)
    command: str = ""

    def run(self, progress: Callable[[str], None] | None = None,
            on_case: Callable[[dict[str, Any]], None] | None = None,
            advance: Callable[[], None] | None = None) -> dict[str, Any]:
        perf_reason = metrics.perf_unavailable_reason() if self.opts.perf else None
        threads = metrics.thread_limit()
        nofile = metrics.raise_nofile()[0]  # what the servers (children) inherit
        runnable = [s for s in self.servers if s.reason is None]
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "command": self.command,
            "interrupted": False,
            "elapsed_s": 0.0,
            "profile": {
                "name": self.profile.name, "description": self.profile.description,
                "warmup_s": self.profile.warmup, "duration_s": self.profile.duration,
                "repeat": self.profile.repeat, "server_cpu": self.opts.server_cpu,
                "load_cpu": self.opts.load_cpu, "nice": self.opts.nice, "perf": self.opts.perf and perf_reason is None,
                "order": "for each case, for each repetition, every server in turn (order "
                         "rotated each repetition); a fresh server process per run",
            },
            "machine": metrics.machine_info(REPORT_PACKAGES),
            "servers": [s.to_dict() for s in self.servers],
            "notes": list(self.notes),
            "cases": [],
        }
        if perf_reason and self.opts.perf:
            results["notes"].append(f"syscalls per round trip not counted: {perf_reason}")
        t_start = time.monotonic()
        try:
            for case in self.profile.cases:
                case_rec: dict[str, Any] = {
                    "id": case.id, "label": case.label, "connections": case.connections,
                    "requested_connections": case.requested or case.connections,
                    "capped": case.capped, "size": case.size, "depth": case.depth,
                    "rate": case.rate, "kind": case.kind, "ceiling": None, "results": {}}
                results["cases"].append(case_rec)
                runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in runnable}
                blocked = {s.name: why for s in runnable
                           if (why := cannot_reach(s, case, threads, nofile)) is not None}
                live = [s for s in runnable if s.name not in blocked]
                for rep in range(self.profile.repeat):
                    k = rep % len(live) if live else 0
                    for order, spec in enumerate(live[k:] + live[:k]):
                        if progress:
                            progress(f"{case.label} · rep {rep + 1}/{self.profile.repeat} · "
                                     f"{spec.name}")
                        rec = run_one(spec, case, self.profile, self.opts, perf_reason)
                        rec["rep"] = rep
                        rec["order"] = order
                        runs[spec.name].append(rec)
                        if advance:
                            advance()
                    if advance:
                        for _ in blocked:
                            advance()
                for spec in runnable:
                    if spec.name in blocked:
                        case_rec["results"][spec.name] = {
                            "status": "unreachable", "reason": blocked[spec.name], "runs": [],
                            "summary": {}, "near_ceiling": False, "vs_floor": None}
                    else:
                        case_rec["results"][spec.name] = finish_cell(runs[spec.name])
                finish_case(case_rec)
                if on_case:
                    on_case(case_rec)
        except KeyboardInterrupt:
            results["interrupted"] = True
            results["notes"].append("interrupted (Ctrl-C): results are partial")
            if results["cases"] and not results["cases"][-1]["results"]:
                results["cases"].pop()
        finally:
            kill_children()
            results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        return results


def save(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


_TOP_KEYS = {"schema", "created", "command", "interrupted", "elapsed_s", "profile", "machine",
             "servers", "notes", "cases"}
_PROFILE_KEYS = {"name", "description", "warmup_s", "duration_s", "repeat", "server_cpu",
                 "load_cpu", "perf", "order"}
_MACHINE_KEYS = {"cpu_model", "cores", "kernel", "python", "packages", "rlimit_nofile", "perf"}
_CASE_KEYS = {"id", "label", "connections", "requested_connections", "capped", "size", "depth",
              "rate", "kind", "ceiling", "results"}
_CELL_KEYS = {"status", "reason", "near_ceiling", "vs_floor", "summary", "runs"}
_RUN_KEYS = {"rep", "status", "reason", "rt_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us",
             "server_cpu_s", "cpu_us_per_rt", "cpu_s_per_100k", "rss_idle_kib", "rss_held_kib",
             "rss_per_conn_b", "threads", "client_cpu_util", "load"}
STATUSES = {"ok", "unreachable", "error", "skipped"}


def validate(data: dict[str, Any]) -> list[str]:
    """Problems with ``data`` against the documented schema (empty: it conforms)."""
    problems: list[str] = []

    def need(obj: Any, keys: set[str], where: str) -> None:
        if not isinstance(obj, dict):
            problems.append(f"{where}: not an object")
            return
        missing = keys - set(obj)
        if missing:
            problems.append(f"{where}: missing {sorted(missing)}")

    need(data, _TOP_KEYS, "results")
    if problems:
        return problems
    if data["schema"] != SCHEMA:
        problems.append(f"schema is {data['schema']!r}, expected {SCHEMA!r}")
    need(data["profile"], _PROFILE_KEYS, "profile")
    need(data["machine"], _MACHINE_KEYS, "machine")
    for s in data["servers"]:
        need(s, {"name", "kind", "description", "available", "reason"}, "server")
    for case in data["cases"]:
        need(case, _CASE_KEYS, f"case {case.get('id')}")
        for name, cell in case.get("results", {}).items():
            where = f"case {case.get('id')} / {name}"
            need(cell, _CELL_KEYS, where)
            if cell.get("status") not in STATUSES:
                problems.append(f"{where}: status {cell.get('status')!r}")
            for metric, stat in cell.get("summary", {}).items():
                need(stat, {"median", "min", "max", "n"}, f"{where} summary {metric}")
            for run in cell.get("runs", []):
                if run.get("status") == "ok":
                    need(run, _RUN_KEYS, f"{where} run {run.get('rep')}")
    return problems


def load(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise ValueError(f"{path}: not an ioladder bench results file "
                         f"(schema {schema!r}, expected {SCHEMA!r})")
    return data


# ------------------------------------------------------------------------- command line


def build_profile(args: argparse.Namespace) -> Profile:
    name = "full" if args.full else "quick" if args.quick else args.profile
    profile = PROFILES[name]()
    if args.connections or args.sizes or args.depths:
        conns = _ints(args.connections) or sorted({c.connections for c in profile.cases
                                                   if not c.rate})
        sizes = _ints(args.sizes) or [64]
        depths = _ints(args.depths) or [1]
        fixed = [c for c in profile.cases if c.rate] if args.fixed_rate is None else []
        profile.cases = [*_matrix(conns, sizes, depths), *fixed]
        profile.name += "+custom"
    if args.fixed_rate is not None:
        profile.cases = [c for c in profile.cases if not c.rate]
        if args.fixed_rate > 0:
            profile.cases.append(Case(100, 64, 1, args.fixed_rate))
    if args.repeat is not None:
        profile.repeat = args.repeat
    if args.duration is not None:
        profile.duration = args.duration
    if args.warmup is not None:
        profile.warmup = args.warmup
    return profile


def _ints(text: str | None) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()] if text else []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ioladder bench",
        description="Measure every available rung beside asyncio, uvloop, trio, gevent and a "
                    "C epoll floor, under one verifying load generator. Writes results.json, "
                    "PNG plots and report.html into --out.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the demo profile (~2 minutes)")
    g.add_argument("--full", action="store_true", help="the whole matrix, 3 repetitions")
    g.add_argument("--profile", default="quick", choices=sorted([*PROFILES, "http"]),
                   help="named profile (default quick); http: wrk against the http app, "
                        "its own options (ioladder bench --profile http --help)")
    g.add_argument("--http", action="store_true", help="the same as --profile http")
    p.add_argument("--servers", help="comma list of servers or groups: rungs, peers, floor, all "
                                     f"(servers: rung ids, {', '.join(peers.names())}, {FLOOR})")
    p.add_argument("--repeat", type=int, help="repetitions per case and server")
    p.add_argument("--duration", type=float, help="measured seconds per run")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (not measured)")
    p.add_argument("--connections", help="custom matrix: connection counts, e.g. 10,100")
    p.add_argument("--sizes", help="custom matrix: message sizes in bytes, e.g. 64,4096")
    p.add_argument("--depths", help="custom matrix: messages in flight, e.g. 1,16")
    p.add_argument("--fixed-rate", type=float, default=None, metavar="RT_PER_S",
                   help="the fixed-rate case's offered load at 100 conns, 64 B (0: none)")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=None, help="default: 1 (0 on one CPU)")
    p.add_argument("--no-perf", action="store_true", help="do not count syscalls with perf")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run server and generator at nice N (e.g. -10 on a shared machine; "
                        "needs root or CAP_SYS_NICE)")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots and HTML")
    p.add_argument("--list", action="store_true", help="list the servers and exit")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="print per-case ratios NEW/OLD of two results.json files and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``ioladder bench``; 130 after Ctrl-C or SIGTERM, with every child process gone."""
    # --- HTTP profile hook: wrk against the http app has its own driver and options
    words = list(argv) if argv is not None else sys.argv[1:]
    from . import http as http_bench
    if http_bench.wants_http(words):
        return http_bench.main(words)
    # --- end of the HTTP profile hook
    prev = signal.signal(signal.SIGTERM, _sigterm)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("ioladder bench: interrupted", file=sys.stderr)
        return 130
    finally:
        kill_children()
        signal.signal(signal.SIGTERM, prev)


def _main(argv: Sequence[str] | None) -> int:
    from rich.console import Console

    from . import report

    args = parser().parse_args(list(argv) if argv is not None else None)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.compare:
        try:
            old, new = load(args.compare[0]), load(args.compare[1])
        except (OSError, ValueError) as exc:
            print(f"ioladder bench: {exc}", file=sys.stderr)
            return 2
        console.print(report.compare_table(old, new))
        return 0
    specs = all_servers()
    if args.list:
        for s in specs:
            state = "available" if s.reason is None else f"unavailable: {s.reason}"
            console.print(f"{s.name:18} {s.kind:6} {state}  [dim]{s.description}[/]")
        return 0
    servers, notes = select_servers(specs, args.servers)
    if not [s for s in servers if s.reason is None]:
        print("ioladder bench: no server to measure", file=sys.stderr)
        return 2
    profile = build_profile(args)
    soft, hard = metrics.raise_nofile()
    profile.cases, cap_notes = cap_cases(
        profile.cases, soft - NOFILE_HEADROOM,
        f"RLIMIT_NOFILE is {soft:,} (soft) / {hard:,} (hard) for both server and generator")
    notes += cap_notes
    ncpu = len(os.sched_getaffinity(0))
    load_cpu = args.load_cpu if args.load_cpu is not None else (1 if ncpu > 1 else 0)
    if load_cpu == args.server_cpu:
        notes.append(f"server and load generator share CPU {load_cpu}: numbers are not "
                     "comparable with a two-core run")
    if profile.repeat == 1:
        notes.append("one repetition per case (quick profile): no min-max spread; use --full "
                      "or --repeat 3 for medians")
    if args.nice:
        # a throw-away child tries it first: lowering nice below 0 needs privilege
        probe = subprocess.run([sys.executable, "-c",
                                f"import os; os.setpriority(os.PRIO_PROCESS, 0, {args.nice})"],
                               capture_output=True)
        if probe.returncode != 0:
            notes.append(f"--nice {args.nice} ignored: not permitted (needs root or "
                         "CAP_SYS_NICE)")
            args.nice = 0
        else:
            notes.append(f"server and generator ran at nice {args.nice}")
    opts = Options(server_cpu=args.server_cpu, load_cpu=load_cpu, perf=not args.no_perf,
                   nice=args.nice)
    out = Path(args.out)
    command = "ioladder bench " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    bench = Bench(profile, servers, out, opts, notes, command.strip())

    # The runner sleeps most of the time; it shares the generator's CPU, never the server's.
    try:
        os.sched_setaffinity(0, {load_cpu})
    except OSError:
        pass
    runnable = [s for s in servers if s.reason is None]
    total = len(profile.cases) * len(runnable) * profile.repeat
    console.print(f"[bold]ioladder bench[/] profile [cyan]{profile.name}[/]: "
                  f"{len(profile.cases)} cases x {len(runnable)} servers x {profile.repeat} "
                  f"rep = {total} runs, {profile.warmup:g} s warm-up + {profile.duration:g} s "
                  f"each; server on CPU {opts.server_cpu}, generator on CPU {load_cpu}")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")

    results = report.run_with_progress(bench, console, total)
    kill_children()
    path = save(results, out)
    written = [path]
    table_txt = out / "table.txt"
    table_txt.write_text(report.table_text(results))
    written.append(table_txt)
    console.print(report.summary_tables(results, console.width))
    for line in report.footer_lines(results):
        console.print(line)
    if not args.no_plots:
        plots = report.write_plots(results, out)
        written += list(plots.values())
        written.append(report.write_html(results, out, plots))
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 130 if results["interrupted"] else 0


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
