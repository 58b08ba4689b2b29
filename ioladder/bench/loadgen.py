"""The load generator: orchestration around the C hot loop in `_loadgen`.

A benchmark is only as good as its load generator, so this one keeps four promises:

1. It runs apart from the server: each generator is its own process (``python -m
   ioladder.bench.loadgen --worker``), pinned to its own CPU, driving its share of the
   connections from one thread in C with the GIL released. Several processes can share a run;
   they connect first, report READY, and start the load together on one GO.
2. It verifies every echoed byte (see `_loadgen.c`); `errors` counts corrupted, reordered,
   truncated or surplus bytes and connections the server closed or reset.
3. It measures latency per round trip into an HdrHistogram (1 ns .. 60 s, 3 significant
   figures), from the moment a message was *due*: at a fixed offered rate a stalled server
   cannot hide behind a paused client (no coordinated omission).
4. It says what it cost: the generator's own CPU seconds in the measured window, so a report
   can show whether the generator, not the server, was the ceiling.

`run_load()` is the API, `main()` the command line (one JSON line on stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

HIST_LOWEST_NS = 1
HIST_HIGHEST_NS = 60_000_000_000
HIST_SIG_FIGS = 3
DRAIN_S = 2.0  # the C loop's wait for in-flight echoes after the measured window


def _is_loopback(host: str) -> bool:
    if host in ("127.0.0.1", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::1")
    except ValueError:
        return False


def check_host(host: str) -> None:
    """The generator drives loopback only: anything else is a ValueError."""
    if not _is_loopback(host):
        raise ValueError(f"load generator only targets loopback (127.0.0.1 or ::1), not {host!r}")


# ------------------------------------------------------------------------- histograms


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_NS, HIST_HIGHEST_NS, HIST_SIG_FIGS)


def histogram_from_pairs(pairs: Iterable[Sequence[int]]) -> HdrHistogram:
    """Rebuild the C histogram: each (value_ns, count) is one non-zero bucket of the same layout."""
    h = new_histogram()
    for value, count in pairs:
        h.record_value(int(value), int(count))
    return h


def decode_histogram(encoded: str) -> HdrHistogram:
    h = new_histogram()
    if encoded:
        h.add(HdrHistogram.decode(encoded))
    return h


def merge_histograms(parts: Iterable[HdrHistogram | str | LoadResult]) -> HdrHistogram:
    """One histogram holding every sample of `parts` (histograms, encodings or results)."""
    total = new_histogram()
    for part in parts:
        if isinstance(part, LoadResult):
            part = part.latency_hdr
        if isinstance(part, str):
            part = decode_histogram(part)
        if part.get_total_count():
            total.add(part)
    return total


def latency_summary(h: HdrHistogram) -> dict[str, float]:
    """p50/p99/p99.9 (and mean, max) in microseconds; zeros for an empty histogram."""
    if h.get_total_count() == 0:
        return {"p50_us": 0.0, "p99_us": 0.0, "p999_us": 0.0, "mean_us": 0.0, "max_us": 0.0}
    return {
        "p50_us": h.get_value_at_percentile(50.0) / 1e3,
        "p99_us": h.get_value_at_percentile(99.0) / 1e3,
        "p999_us": h.get_value_at_percentile(99.9) / 1e3,
        "mean_us": h.get_mean_value() / 1e3,
        "max_us": h.get_max_value() / 1e3,
    }


# ------------------------------------------------------------------------- result


@dataclass
class LoadResult:
    """One load run, all generator processes merged. Latencies in microseconds."""

    host: str
    port: int
    connections_requested: int
    connections: int  # opened: connected and completed one verified round trip
    connect_errors: int
    connect_error: str  # first connect failure's reason, "" if none
    size: int
    depth: int
    rate: float  # offered round trips/s in total; 0 = closed loop
    warmup: float
    duration: float
    processes: int
    cpus: list[int] | None
    messages: int  # round trips completed inside the measured window
    bytes: int  # payload bytes echoed in the window (counted once, not per direction)
    errors: int  # verify_errors + close_errors
    verify_errors: int
    close_errors: int
    unfinished: int  # messages still in flight when the generator gave up draining
    elapsed: float  # measured window, seconds (the longest process's)
    rt_per_s: float
    mb_per_s: float
    p50_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    min_us: float
    max_us: float
    client_cpu_s: float  # generator CPU seconds in the window, all processes
    client_cpu_util: float  # client_cpu_s / elapsed: 1.0 = one core busy
    client_cpu_util_max: float  # busiest single generator process (1.0 = it was saturated)
    connect_s: float
    # busiest generator CPU's busy share from /proc/stat over the window, whoever used it: a
    # cross-check of client_cpu_util (well above it = other work on that CPU); -1 unless each
    # process was pinned to a single CPU
    client_core_busy: float = -1.0
    client_core_softirq: float = -1.0
    spin_us: float = 0.0
    latency_hdr: str = ""  # HdrHistogram V2 base64 (1 ns .. 60 s, 3 significant figures), ns
    per_process: list[dict[str, Any]] = field(default_factory=list)

    def histogram(self) -> HdrHistogram:
        return decode_histogram(self.latency_hdr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def merge_raw(raws: Sequence[dict[str, Any]], *, host: str, port: int, warmup: float,
              duration: float, rate: float, cpus: list[int] | None) -> LoadResult:
    """Merge the dicts returned by concurrent `_loadgen.run` calls into one LoadResult."""
    h = new_histogram()
    for raw in raws:
        for value, count in raw["hist"]:
            h.record_value(int(value), int(count))
    lat = latency_summary(h)
    sampled = [r for r in raws if r["messages"]]
    min_ns = min((r["hist_min_ns"] for r in sampled), default=0)
    max_ns = max((r["hist_max_ns"] for r in sampled), default=0)
    elapsed = max((r["elapsed"] for r in raws), default=0.0)
    cpu_s = sum(r["client_cpu_s"] for r in raws)
    per_process = []
    for i, r in enumerate(raws):
        util = r["client_cpu_s"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
        per_process.append({
            "cpu": cpus[i % len(cpus)] if cpus else None,
            "connections": r["connections"],
            "messages": r["messages"],
            "rt_per_s": r["rt_per_s"],
            "client_cpu_s": r["client_cpu_s"],
            "client_cpu_util": util,
            "pinned_cpu": r.get("pinned_cpu", -1),
            "core_busy": r.get("core_busy", -1.0),
            "core_softirq": r.get("core_softirq", -1.0),
        })
    first_err = next((r["connect_error"] for r in raws if r["connect_error"]), "")
    return LoadResult(
        host=host,
        port=port,
        connections_requested=sum(r["connections_requested"] for r in raws),
        connections=sum(r["connections"] for r in raws),
        connect_errors=sum(r["connect_errors"] for r in raws),
        connect_error=first_err,
        size=raws[0]["size"] if raws else 0,
        depth=raws[0]["depth"] if raws else 0,
        rate=rate,
        warmup=warmup,
        duration=duration,
        processes=len(raws),
        cpus=cpus,
        messages=sum(r["messages"] for r in raws),
        bytes=sum(r["bytes"] for r in raws),
        errors=sum(r["errors"] for r in raws),
        verify_errors=sum(r["verify_errors"] for r in raws),
        close_errors=sum(r["close_errors"] for r in raws),
        unfinished=sum(r["unfinished"] for r in raws),
        elapsed=elapsed,
        # the processes' windows run side by side: rates add up
        rt_per_s=sum(r["rt_per_s"] for r in raws),
        mb_per_s=sum(r["mb_per_s"] for r in raws),
        p50_us=lat["p50_us"],
        p99_us=lat["p99_us"],
        p999_us=lat["p999_us"],
        mean_us=lat["mean_us"],
        min_us=min_ns / 1e3,
        max_us=max_ns / 1e3,
        client_cpu_s=cpu_s,
        client_cpu_util=cpu_s / elapsed if elapsed > 0 else 0.0,
        client_cpu_util_max=max((p["client_cpu_util"] for p in per_process), default=0.0),
        connect_s=max((r["connect_s"] for r in raws), default=0.0),
        client_core_busy=max((p["core_busy"] for p in per_process), default=-1.0),
        client_core_softirq=max((p["core_softirq"] for p in per_process), default=-1.0),
        spin_us=raws[0]["spin_us"] if raws else 0.0,
        latency_hdr=h.encode().decode("ascii") if h.get_total_count() else "",
        per_process=per_process,
    )


# ------------------------------------------------------------------------- running


def run_raw(host: str, port: int, connections: int, size: int, depth: int, warmup: float,
            duration: float, rate: float = 0.0, connect_timeout: float = 5.0,
            connect_batch: int = 128, spin_us: float = 0.0, ready_fd: int = -1,
            go_fd: int = -1) -> dict[str, Any]:
    """One C run in *this* process and thread (blocks it; the GIL is released)."""
    from ioladder.bench import _loadgen

    check_host(host)
    return _loadgen.run(host, port, connections, size, depth, warmup, duration, rate=rate,
                        connect_timeout=connect_timeout, connect_batch=connect_batch,
                        ready_fd=ready_fd, go_fd=go_fd, spin_us=spin_us)


def run_inprocess(host: str, port: int, connections: int = 100, size: int = 64, depth: int = 1,
                  warmup: float = 1.0, duration: float = 5.0, rate: float = 0.0,
                  connect_timeout: float = 5.0, connect_batch: int = 128,
                  spin_us: float = 0.0) -> LoadResult:
    """`run_load` without the child process or pinning: for tests and quick checks."""
    raw = run_raw(host, port, connections, size, depth, warmup, duration, rate=rate,
                  connect_timeout=connect_timeout, connect_batch=connect_batch, spin_us=spin_us)
    return merge_raw([raw], host=host, port=port, warmup=warmup, duration=duration, rate=rate,
                     cpus=None)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Read one line from a worker's stdout, byte by byte so nothing past it is consumed."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("load generator worker did not report READY in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


def run_load(host: str = "127.0.0.1", port: int = 0, connections: int = 100, size: int = 64,
             depth: int = 1, warmup: float = 1.0, duration: float = 5.0, rate: float = 0.0,
             cpu: int | Sequence[int] | None = None, processes: int = 1,
             connect_timeout: float = 5.0, connect_batch: int = 128, spin_us: float = 0.0,
             ready_timeout: float | None = None) -> LoadResult:
    """Drive an echo server on loopback from `processes` pinned generator processes.

    `connections` and `rate` are split evenly across the processes; process i is pinned to
    ``cpus[i % len(cpus)]``. Every process connects first, then all start together. Raises
    ValueError for a non-loopback host, RuntimeError if a worker fails.
    """
    check_host(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, not {port}")
    if processes < 1 or connections < processes:
        raise ValueError("need 1 <= processes <= connections")
    cpus = [cpu] if isinstance(cpu, int) else (list(cpu) if cpu is not None else None)
    counts = _split(connections, processes)
    if ready_timeout is None:
        # connecting is bounded in C by per-connection timeouts and stall detection; this is
        # only the backstop for a wedged worker
        ready_timeout = 30.0 + connect_timeout + connections / 200.0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, n in enumerate(counts):
            argv = [sys.executable, "-m", "ioladder.bench.loadgen", "--worker",
                    "--host", host, "--port", str(port), "--connections", str(n),
                    "--size", str(size), "--depth", str(depth), "--warmup", repr(warmup),
                    "--duration", repr(duration), "--rate", repr(rate * n / connections),
                    "--connect-timeout", repr(connect_timeout),
                    "--connect-batch", str(connect_batch), "--spin-us", repr(spin_us)]
            if cpus:
                argv += ["--cpu", str(cpus[i % len(cpus)])]
            procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
        deadline = time.monotonic() + ready_timeout
        for p in procs:
            line = _read_line(p, deadline)
            if line.strip() != b"READY":
                p.wait(5)
                err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                raise RuntimeError(f"load generator worker failed before READY: {err.strip()}")
        for p in procs:  # GO: one byte each, as close together as we can
            assert p.stdin is not None
            p.stdin.write(b"G")
            p.stdin.close()
            p.stdin = None  # communicate() must not touch the closed pipe
        raws = []
        for p in procs:
            out, err = p.communicate(timeout=warmup + duration + DRAIN_S + 60.0)
            if p.returncode != 0:
                raise RuntimeError(f"load generator worker exited {p.returncode}: "
                                   f"{err.decode(errors='replace').strip()}")
            raws.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
    return merge_raw(raws, host=host, port=port, warmup=warmup, duration=duration, rate=rate,
                     cpus=cpus)


# ------------------------------------------------------------------------- command line


def _parse_cpus(text: str | None) -> list[int] | None:
    if not text:
        return None
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ioladder.bench.loadgen",
        description="Verifying TCP echo load generator (loopback only). Prints one JSON line.",
    )
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 or ::1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="message size, bytes")
    p.add_argument("--depth", type=int, default=1, help="messages in flight per connection")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds, not measured")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered round trips/s over all connections (0: closed loop)")
    p.add_argument("--cpu", default=None, help="CPU(s) to pin generator processes to: 1 or 1,2")
    p.add_argument("--processes", type=int, default=1, help="generator processes")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--connect-batch", type=int, default=128,
                   help="most connections connecting (not yet echoed once) at a time")
    p.add_argument("--spin-us", type=float, default=0.0,
                   help="fixed rate: poll instead of sleeping when the next send is this close")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _worker(args: argparse.Namespace) -> int:
    cpus = _parse_cpus(args.cpu)
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    # READY goes straight to fd 1 from C; nothing has been printed before it
    raw = run_raw(args.host, args.port, args.connections, args.size, args.depth, args.warmup,
                  args.duration, rate=args.rate, connect_timeout=args.connect_timeout,
                  connect_batch=args.connect_batch, spin_us=args.spin_us, ready_fd=1, go_fd=0)
    sys.stdout.write(json.dumps(raw, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI: run a load and print one JSON line. Exit 0 if clean, 1 on any error or failed
    connection (the JSON line is printed either way), 2 on bad arguments."""
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    try:
        result = run_load(args.host, args.port, args.connections, args.size, args.depth,
                          args.warmup, args.duration, rate=args.rate,
                          cpu=_parse_cpus(args.cpu), processes=args.processes,
                          connect_timeout=args.connect_timeout,
                          connect_batch=args.connect_batch, spin_us=args.spin_us)
    except (ValueError, RuntimeError, TimeoutError) as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    print(result.to_json(), flush=True)
    clean = result.errors == 0 and result.connect_errors == 0 and result.connections > 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
